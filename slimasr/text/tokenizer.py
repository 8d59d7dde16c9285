"""Tokenizers for CTC: characters or sentencepiece pieces, with the CTC blank always at id 0.

Tokenizers do not normalize: give them text that went through ``normalize_text`` (training texts
and the texts to encode alike).

- ``CharTokenizer``: ``tokens = ["<blk>", " ", "'", "a", ..., "z"]`` by default. The word
  separator is the plain space character ``" "`` (not wav2vec2's ``"|"``), so ``decode`` needs no
  mapping and a literal ``"|"`` in text is simply out of vocabulary.
- ``SentencePieceTokenizer``: BPE (default) or unigram, trained with the ``sentencepiece`` library.
  The blank is sentencepiece's *pad* piece renamed ``<blk>`` at id 0 (a control symbol: encode never
  produces it, decode drops it), ``<unk>`` is id 1, there is no BOS/EOS.

Both are saved beside the model: ``tokenizer.json`` (type and tokens), plus ``tokenizer.model``
for sentencepiece; ``load_tokenizer(model_dir)`` rebuilds either kind. Nothing is pickled.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Protocol, Sequence, runtime_checkable

import sentencepiece as spm

from slimasr.errors import ConfigError, DataError
from slimasr.io import atomic_path, read_json, write_json_atomic

BLANK = "<blk>"  # the CTC blank token; always id 0
UNK = "<unk>"  # sentencepiece's unknown piece; id 1 (never produced: encode rejects OOV text)
DEFAULT_CHARS = " '" + "abcdefghijklmnopqrstuvwxyz"  # what normalize_text's default config emits
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"
SPM_MODEL_TYPES = ("bpe", "unigram")
ERROR_EXCERPT_CHARS = 60  # how much of the offending text an out-of-vocabulary error quotes


class OutOfVocabularyError(DataError):
    """Text holds characters the tokenizer cannot encode; ``chars`` lists them."""

    def __init__(self, chars: set[str], text: str):
        self.chars = chars
        shown = ", ".join(repr(c) for c in sorted(chars))
        cut = ERROR_EXCERPT_CHARS
        excerpt = text if len(text) <= cut else text[: cut - 3] + "..."
        problem = f"characters not in the tokenizer vocabulary: {shown} (in {excerpt!r})"
        super().__init__(None, problem)


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer offers. ``blank_id`` is 0 and never produced by ``encode``."""

    kind: str  # "char", "bpe" or "unigram"

    @property
    def vocab_size(self) -> int: ...
    @property
    def blank_id(self) -> int: ...
    @property
    def tokens(self) -> list[str]: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def oov(self, text: str) -> set[str]: ...
    def save(self, model_dir: str | Path) -> None: ...


# ---------------------------------------------------------------------------------------------
# Characters


class CharTokenizer:
    """One token per character, ``tokens[0] == "<blk>"``, the rest sorted by code point."""

    kind = "char"

    def __init__(self, tokens: Sequence[str] | None = None):
        tokens = [BLANK, *DEFAULT_CHARS] if tokens is None else list(tokens)
        _check_char_tokens(tokens)
        self._tokens = tokens
        self._ids = {t: i for i, t in enumerate(tokens) if i != 0}

    @classmethod
    def from_texts(cls, texts: Iterable[str], base: Iterable[str] = DEFAULT_CHARS) -> CharTokenizer:
        """Vocabulary = every character of the (normalized) ``texts`` plus the ``base`` characters,
        sorted, so the same texts always give the same ids. ``base=""`` uses the texts alone."""
        chars = set(base)
        for text in texts:
            chars.update(text)
        return cls([BLANK, *sorted(chars)])

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens)

    def oov(self, text: str) -> set[str]:
        return {c for c in set(text) if c not in self._ids}

    def encode(self, text: str) -> list[int]:
        """``text`` -> ids, shape ``(len(text),)``; raises OutOfVocabularyError naming bad chars."""
        if missing := self.oov(text):
            raise OutOfVocabularyError(missing, text)
        return [self._ids[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        """ids -> text, one character per id; blanks dropped, repeats kept (no CTC collapse)."""
        _check_ids(ids, self.vocab_size)
        return "".join(self._tokens[int(i)] for i in ids if int(i) != 0)

    def save(self, model_dir: str | Path) -> None:
        info = {"type": self.kind, "tokens": self._tokens}
        write_json_atomic(Path(model_dir) / TOKENIZER_JSON, info)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self._tokens == other._tokens

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _check_char_tokens(tokens: list[str]) -> None:
    if not tokens or tokens[0] != BLANK:
        raise ValueError(f"the first token must be the blank {BLANK!r}, got {tokens[:1]}")
    if len(set(tokens)) != len(tokens):
        raise ValueError("tokens are not unique")
    if bad := [t for t in tokens[1:] if not isinstance(t, str) or len(t) != 1]:
        raise ValueError(f"character tokens must be single characters, got {bad[:5]}")


def _check_ids(ids: Sequence[int], vocab_size: int) -> None:
    if bad := [i for i in ids if not 0 <= int(i) < vocab_size]:
        raise ValueError(f"token ids out of range [0, {vocab_size}): {bad[:5]}")


# ---------------------------------------------------------------------------------------------
# SentencePiece


class SentencePieceTokenizer:
    """Subword pieces from a sentencepiece model whose id 0 is the blank and id 1 ``<unk>``."""

    def __init__(self, model_proto: bytes, kind: str):
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.kind = kind
        if self._sp.id_to_piece(0) != BLANK:
            raise ValueError(f"sentencepiece id 0 is {self._sp.id_to_piece(0)!r}, not {BLANK!r}")

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        out_dir: str | Path | None = None,
        vocab_size: int = 256,
        model_type: str = "bpe",
    ) -> SentencePieceTokenizer:
        """Train on (normalized) ``texts``; save into ``out_dir`` if given.

        Deterministic for the same texts. Training happens in memory (sentencepiece's
        ``model_writer``), so nothing is written anywhere but ``out_dir``, atomically.
        """
        if model_type not in SPM_MODEL_TYPES:
            expected = " or ".join(repr(t) for t in SPM_MODEL_TYPES)
            raise ConfigError(f"sentencepiece model_type must be {expected}, got {model_type!r}")
        proto = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=(t for t in texts if t.strip()),
                model_writer=proto,
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=0, pad_piece=BLANK,  # the CTC blank: a control piece at id 0
                unk_id=1, unk_piece=UNK,
                bos_id=-1, eos_id=-1,  # CTC needs no sentence markers
                character_coverage=1.0,  # keep every character of the (already normalized) texts
                normalization_rule_name="identity",  # normalize_text did it; keeps decode exact
                shuffle_input_sentence=False,  # with num_threads=1: same texts -> same model
                num_threads=1,
                minloglevel=2,  # errors only; sentencepiece is chatty
            )  # fmt: skip
        except RuntimeError as e:  # drop sentencepiece's "INTERNAL: file.cc(744) [check] " prefix
            problem = " ".join(str(e).split("] ", 1)[-1].split())
            raise ConfigError(f"sentencepiece training failed: {problem}") from None
        tokenizer = cls(proto.getvalue(), model_type)
        if out_dir is not None:
            tokenizer.save(out_dir)
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def tokens(self) -> list[str]:
        return [self._sp.id_to_piece(i) for i in range(self.vocab_size)]

    def oov(self, text: str) -> set[str]:
        unk = self._sp.unk_id()
        return {c for c in set(text) if not c.isspace() and unk in self._sp.encode(c)}

    def encode(self, text: str) -> list[int]:
        """``text`` -> piece ids, shape ``(num_pieces,)``; raises OutOfVocabularyError if a
        character has no piece (it would otherwise become ``<unk>``)."""
        ids = self._sp.encode(text)
        if self._sp.unk_id() in ids:
            raise OutOfVocabularyError(self.oov(text), text)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """ids -> text; blanks are dropped, repeats are kept (no CTC collapse)."""
        _check_ids(ids, self.vocab_size)
        return self._sp.decode([int(i) for i in ids])

    def save(self, model_dir: str | Path) -> None:
        """Write ``tokenizer.model`` then ``tokenizer.json`` (last: its presence means complete)."""
        model_dir = Path(model_dir)
        with atomic_path(model_dir / TOKENIZER_MODEL) as tmp:
            tmp.write_bytes(self._proto)
        info = {"type": self.kind, "model_file": TOKENIZER_MODEL, "tokens": self.tokens}
        write_json_atomic(model_dir / TOKENIZER_JSON, info)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SentencePieceTokenizer)
            and self.kind == other.kind
            and self._proto == other._proto
        )

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------------------------------
# Building and loading


def build_tokenizer(
    kind: str, texts: Iterable[str], out_dir: str | Path | None = None, vocab_size: int = 256
) -> Tokenizer:
    """Build a "char", "bpe" or "unigram" tokenizer from normalized ``texts``; save it to
    ``out_dir`` if given. ``vocab_size`` applies to sentencepiece only."""
    if kind == "char":
        tokenizer = CharTokenizer.from_texts(texts)
        if out_dir is not None:
            tokenizer.save(out_dir)
        return tokenizer
    if kind in SPM_MODEL_TYPES:
        return SentencePieceTokenizer.train(texts, out_dir, vocab_size=vocab_size, model_type=kind)
    raise ConfigError(f"unknown tokenizer kind {kind!r}: expected 'char', 'bpe' or 'unigram'")


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """Rebuild the tokenizer saved in ``model_dir``; a missing or malformed file is a DataError."""
    path = Path(model_dir) / TOKENIZER_JSON
    info = read_json(path)
    kind = info.get("type") if isinstance(info, dict) else None
    tokens = info.get("tokens") if isinstance(info, dict) else None
    if not isinstance(tokens, list):
        raise DataError(path, "expected an object with a 'tokens' list")
    if kind == "char":
        try:
            return CharTokenizer(tokens)
        except ValueError as e:
            raise DataError(path, f"bad character tokens: {e}") from None
    if kind in SPM_MODEL_TYPES:
        return _load_sentencepiece(path, kind, tokens)
    raise DataError(path, f"unknown tokenizer type {kind!r}: expected 'char', 'bpe' or 'unigram'")


def _load_sentencepiece(json_path: Path, kind: str, tokens: list[str]) -> SentencePieceTokenizer:
    model_path = json_path.parent / TOKENIZER_MODEL
    if not model_path.is_file():
        raise DataError(model_path, "file not found")
    try:
        tokenizer = SentencePieceTokenizer(model_path.read_bytes(), kind)
    except RuntimeError:
        raise DataError(model_path, "not a valid sentencepiece model") from None
    except ValueError as e:  # a sentencepiece model, but not one trained by slimasr
        raise DataError(model_path, str(e)) from None
    if tokenizer.tokens != tokens:
        raise DataError(json_path, f"tokens do not match {model_path.name}")
    return tokenizer
