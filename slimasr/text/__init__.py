"""Text: transcript normalization and tokenizers (CTC blank = id 0)."""

from slimasr.text.normalize import NormalizerConfig, normalize_text, spell_numbers
from slimasr.text.tokenizer import (
    BLANK,
    DEFAULT_CHARS,
    CharTokenizer,
    OutOfVocabularyError,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

__all__ = [
    "BLANK",
    "DEFAULT_CHARS",
    "CharTokenizer",
    "NormalizerConfig",
    "OutOfVocabularyError",
    "SentencePieceTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "normalize_text",
    "spell_numbers",
]
