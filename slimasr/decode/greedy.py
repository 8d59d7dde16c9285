"""Greedy CTC decoding: best token per frame, merge repeats, drop blanks.

ids = greedy_decode(log_probs, lens)                 # list[list[int]]
texts = GreedyDecoder(tokenizer.tokens).decode_batch(log_probs, lens)
"""

from __future__ import annotations

from typing import Sequence

import torch

BLANK_ID = 0  # the CTC blank is token 0 in every slimasr vocabulary
WORD_SEP = " "  # default word separator token (characters); sentencepiece vocabularies use "▁"
SPM_WORD_SEP = "\u2581"  # "▁": sentencepiece's word-start marker, the separator of bpe/unigram pieces


def word_separator(kind: str) -> str:
    """The token that marks a word boundary in a tokenizer of ``kind`` ("char", "bpe",
    "unigram"): a space for characters, "▁" for sentencepiece pieces."""
    return WORD_SEP if kind == "char" else SPM_WORD_SEP


def greedy_decode(
    log_probs: torch.Tensor, lens: torch.Tensor, blank_id: int = BLANK_ID
) -> list[list[int]]:
    """Best path of each utterance. ``log_probs: (N, T, V)`` (any scores; only argmax matters),
    ``lens: (N,)`` valid frames. Returns N lists of token ids, repeats merged, blanks removed."""
    best = log_probs.argmax(dim=-1)  # (N, T)
    n, t = best.shape
    frames = torch.arange(t, device=best.device).unsqueeze(0)  # (1, T)
    changed = torch.ones_like(best, dtype=torch.bool)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = changed & (best != blank_id) & (frames < lens.to(best.device).unsqueeze(1))
    counts = keep.sum(dim=1).tolist()
    return [ids.tolist() for ids in torch.split(best[keep].cpu(), counts)] if n else []


def ids_to_text(ids: Sequence[int], tokens: Sequence[str], word_sep: str = WORD_SEP) -> str:
    """Join tokens and turn every ``word_sep`` into a word boundary: characters
    (``["h", "i", " ", "y", "o"]``) and sentencepiece pieces (``["▁hi", "▁y", "o"]``) alike.
    Leading, trailing and repeated separators vanish."""
    text = "".join(tokens[i] for i in ids).replace(word_sep, " ")
    return " ".join(text.split())


class GreedyDecoder:
    """``decode_batch(log_probs (N, T, V), lens (N,)) -> N texts`` by greedy decoding."""

    def __init__(self, tokens: Sequence[str], word_sep: str = WORD_SEP, blank_id: int = BLANK_ID):
        self.tokens = list(tokens)
        self.word_sep = word_sep
        self.blank_id = blank_id

    def decode_batch(self, log_probs: torch.Tensor, lens: torch.Tensor) -> list[str]:
        ids = greedy_decode(log_probs, lens, self.blank_id)
        return [ids_to_text(seq, self.tokens, self.word_sep) for seq in ids]
