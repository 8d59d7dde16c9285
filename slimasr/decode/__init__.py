"""CTC decoding: greedy or prefix beam search (optionally with a word n-gram LM).

    decoder = make_decoder(tokenizer.tokens, DecodeConfig(method="beam", lm_path="3gram.arpa"),
                           word_sep=word_separator(tokenizer.kind),
                           lexicon=corpus_vocabulary(train_texts))
    texts = decoder.decode_batch(log_probs, lens)   # log_probs: (N, T, V), lens: (N,)

Beam search needs ``pyctcdecode`` (and ``kenlm`` only for KenLM binary files), imported when a
beam decoder is made: ``pip install "slimasr[lm]"``. The configs live here so that they load
without either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

import torch

from slimasr.config import check_numbers
from slimasr.decode.greedy import (
    SPM_WORD_SEP,
    WORD_SEP,
    GreedyDecoder,
    greedy_decode,
    ids_to_text,
    word_separator,
)
from slimasr.decode.lm import build_ngram_lm, corpus_vocabulary, load_ngram_lm, read_arpa
from slimasr.errors import ConfigError

DECODE_METHODS = ("greedy", "beam")


class Decoder(Protocol):
    """Turns a batch of CTC outputs into texts."""

    def decode_batch(self, log_probs: torch.Tensor, lens: torch.Tensor) -> list[str]:
        """``log_probs: (N, T, V)``, ``lens: (N,)`` valid frames -> N texts."""
        ...


@dataclass
class BeamConfig:
    """Beam search settings. Defaults are pyctcdecode's, except the narrower beam."""

    beam_width: int = 32  # hypotheses kept per frame (pyctcdecode's default: 100, slower)
    alpha: float = 0.5  # LM weight in shallow fusion (multiplies the natural-log LM probability)
    beta: float = 1.5  # bonus per word, balancing the LM's preference for short outputs
    # Penalty for a word outside the vocabulary (log10, then scaled by alpha like the LM score)
    # and for a partial word no known word starts with (natural log).
    unk_score_offset: float = -10.0
    hotword_weight: float = 10.0  # bonus per in-lexicon word when there is no LM (natural log)
    beam_prune_logp: float = -10.0  # drop hypotheses this much worse than the best one
    token_min_logp: float = -5.0  # ignore tokens less likely than this in a frame (unless best)

    def __post_init__(self) -> None:
        check_numbers("decode.beam", self, positive=("beam_width",))


@dataclass
class DecodeConfig:
    """How to decode. ``beam`` applies only to ``method="beam"``."""

    method: str = "greedy"  # "greedy" (best token per frame) or "beam" (prefix beam search)
    lm_path: str | None = None  # word n-gram LM (ARPA or KenLM binary) for beam search; None: none
    use_lexicon: bool = True  # beam search snaps words to the lexicon passed to make_decoder
    beam: BeamConfig = field(default_factory=BeamConfig)  # beam width and fusion weights


def make_decoder(
    tokens: Sequence[str],
    config: DecodeConfig | None = None,
    word_sep: str = WORD_SEP,
    lexicon: Iterable[str] | None = None,
) -> Decoder:
    """A greedy or beam decoder for a vocabulary (``tokens[0]`` is the blank). ``word_sep``: the
    token that separates words (``word_separator(tokenizer.kind)``: " " for characters, "▁" for
    sentencepiece pieces). ``lexicon``: the domain's words (``corpus_vocabulary(train_texts)``),
    used by beam search only."""
    config = config or DecodeConfig()
    if config.method not in DECODE_METHODS:
        raise ConfigError(
            f"decode.method: unknown {config.method!r}; expected one of {DECODE_METHODS}"
        )
    if config.method == "greedy":
        return GreedyDecoder(tokens, word_sep)
    from slimasr.decode.beam import BeamSearchDecoder  # noqa: PLC0415 - needs pyctcdecode

    lexicon = lexicon if config.use_lexicon else None
    return BeamSearchDecoder(tokens, word_sep, config.lm_path, lexicon, config.beam)


__all__ = [
    "DECODE_METHODS",
    "BeamConfig",
    "DecodeConfig",
    "Decoder",
    "SPM_WORD_SEP",
    "WORD_SEP",
    "GreedyDecoder",
    "build_ngram_lm",
    "corpus_vocabulary",
    "greedy_decode",
    "ids_to_text",
    "load_ngram_lm",
    "make_decoder",
    "read_arpa",
    "word_separator",
]
