"""Prefix beam search for CTC through ``pyctcdecode``, optionally fused with a word n-gram LM.

    decoder = BeamSearchDecoder(tokens, lm_path="exp/lm/3gram.arpa", lexicon=train_vocabulary)
    texts = decoder.decode_batch(log_probs, lens)

Words the acoustic model almost spells right ("dor", "lingrom") are the most common errors on a
small domain (FINDINGS #5): beam search snaps them to known words in one of two ways.

- With an LM: shallow fusion, ``score = acoustic + alpha * ln p_LM + beta * words``; a word
  outside the vocabulary (``lexicon``, or the LM's unigrams) costs ``unk_score_offset``, and so
  does a partial word that no known word starts with.
- Without an LM, with a ``lexicon``: pyctcdecode's hotwords; every complete in-lexicon word earns
  ``hotword_weight`` and partial words are rewarded by how much of a known word they spell.

The LM is read by ``slimasr.decode.lm.load_ngram_lm`` (KenLM when installed, else pure Python) and
plugged into pyctcdecode through its ``AbstractLanguageModel`` interface, so the scoring rules are
pyctcdecode's own (``LanguageModel.score``) without needing the kenlm module for ARPA files.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from slimasr.decode import BeamConfig
from slimasr.decode.greedy import BLANK_ID, WORD_SEP
from slimasr.decode.lm import EOS, INSTALL_HINT, LanguageModel, load_ngram_lm
from slimasr.errors import SlimasrError

# pyctcdecode warns about things this module handles itself: at import, twice, that kenlm is
# missing (with a URL to install it from; ARPA files need no kenlm, and a binary LM without it is
# a one-line error from load_ngram_lm), then few unigrams on a small domain, multi-character
# tokens. Keep its log quiet from before the import on.
logging.getLogger("pyctcdecode").setLevel(logging.ERROR)

try:
    from pyctcdecode.alphabet import BPE_TOKEN, UNK_BPE_TOKEN, UNK_TOKEN, Alphabet
    from pyctcdecode.decoder import BeamSearchDecoderCTC
    from pyctcdecode.language_model import AbstractLanguageModel
except ImportError as e:  # an optional extra
    raise SlimasrError(f"beam search needs the pyctcdecode package: {INSTALL_HINT}") from e

LN10 = math.log(10.0)  # ARPA/KenLM scores are log10; pyctcdecode adds natural-log scores
UNK_PIECE = "<unk>"  # sentencepiece's unknown piece, mapped to pyctcdecode's own UNK label
# Partial words longer than this many characters get a proportionally larger OOV penalty
# (pyctcdecode's AVG_TOKEN_LEN rule).
AVG_WORD_LEN = 6


def pyctcdecode_labels(
    tokens: Sequence[str], word_sep: str = WORD_SEP, blank_id: int = BLANK_ID
) -> list[str]:
    """Our tokens as pyctcdecode labels: blank -> ``""``, word separator -> ``" "`` (characters)
    or the ``"▁"`` prefix (sentencepiece pieces), ``<unk>`` -> pyctcdecode's unknown label."""
    pieces = _is_pieces(tokens, word_sep)
    labels = []
    for i, token in enumerate(tokens):
        if i == blank_id:
            labels.append("")
        elif token == UNK_PIECE:
            labels.append(UNK_BPE_TOKEN if pieces else UNK_TOKEN)
        elif pieces:
            labels.append(
                BPE_TOKEN + token[len(word_sep) :] if token.startswith(word_sep) else token
            )
        else:
            labels.append(" " if token == word_sep else token)
    return labels


class FusionLM(AbstractLanguageModel):
    """pyctcdecode's ``LanguageModel`` scoring on any ``slimasr.decode.lm.LanguageModel``."""

    def __init__(self, lm: LanguageModel, vocabulary: Iterable[str] | None, config: BeamConfig):
        self._lm = lm
        self._config = config
        self._known = frozenset(vocabulary) if vocabulary is not None else lm.vocabulary
        self._prefixes = {w[:i] for w in self._known for i in range(1, len(w) + 1)}

    @property
    def order(self) -> int:
        return self._lm.order

    def get_start_state(self) -> object:
        return self._lm.begin_state()

    def score_partial_token(self, partial_token: str) -> float:
        """Penalty for a word being spelled that no known word starts with."""
        if not self._known or partial_token in self._prefixes:
            return 0.0
        return self._config.unk_score_offset * max(1.0, len(partial_token) / AVG_WORD_LEN)

    def score(
        self, prev_state: object, word: str, is_last_word: bool = False
    ) -> tuple[float, object]:
        """Fusion score of one more word (``""``: only the sentence end) and the new state."""
        raw, bonus, state = 0.0, 0.0, prev_state
        if word:
            raw, state = self._lm.score(prev_state, word)
            if self._known and word not in self._known:
                raw += self._config.unk_score_offset
            bonus = self._config.beta
        if is_last_word:
            raw += self._lm.score(state, EOS)[0]
        return self._config.alpha * raw * LN10 + bonus, state


class BeamSearchDecoder:
    """``decode_batch(log_probs (N, T, V), lens (N,)) -> N texts`` by CTC prefix beam search.

    ``lm_path``: ARPA or KenLM binary word n-gram LM (None: no LM). ``lexicon``: the domain's words
    (e.g. ``corpus_vocabulary(train_texts)``): with an LM, the words not penalized as unknown
    (default: the LM's unigrams); without one, hotwords."""

    def __init__(
        self,
        tokens: Sequence[str],
        word_sep: str = WORD_SEP,
        lm_path: str | Path | None = None,
        lexicon: Iterable[str] | None = None,
        config: BeamConfig | None = None,
        blank_id: int = BLANK_ID,
    ):
        self.config = config or BeamConfig()
        lexicon = None if lexicon is None else sorted(set(lexicon))
        alphabet = Alphabet(
            pyctcdecode_labels(tokens, word_sep, blank_id), is_bpe=_is_pieces(tokens, word_sep)
        )
        lm = None
        if lm_path is not None:
            lm = FusionLM(load_ngram_lm(lm_path), lexicon, self.config)
        self._decoder = BeamSearchDecoderCTC(alphabet, lm)
        self._hotwords = lexicon if lm is None else None

    def decode_one(self, log_probs: np.ndarray) -> str:
        """Best text for one utterance. ``log_probs: (T, V)`` float array (T may be 0)."""
        if log_probs.shape[0] == 0:
            return ""
        beams = self._decoder.decode_beams(
            log_probs,
            beam_width=self.config.beam_width,
            beam_prune_logp=self.config.beam_prune_logp,
            token_min_logp=self.config.token_min_logp,
            hotwords=self._hotwords,
            hotword_weight=self.config.hotword_weight,
        )
        return beams[0][0]

    def decode_batch(self, log_probs: torch.Tensor, lens: torch.Tensor) -> list[str]:
        scores = log_probs.detach().float().cpu().numpy()
        return [self.decode_one(scores[i, : int(n)]) for i, n in enumerate(lens.tolist())]

    def close(self) -> None:
        """Release the LM (pyctcdecode keeps decoders' LMs in a class-level registry)."""
        self._decoder.cleanup()

    def __del__(self) -> None:
        decoder = getattr(self, "_decoder", None)
        if decoder is not None:
            decoder.cleanup()


def _is_pieces(tokens: Sequence[str], word_sep: str) -> bool:
    """Whether the separator starts word pieces ("▁the") rather than being a token of its own."""
    return any(t.startswith(word_sep) and t != word_sep for t in tokens)
