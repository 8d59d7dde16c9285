"""Data preparation for training, and the front end a trained model directory carries (the
feature cache is ``slimasr.data.cache``, shared with prune, distill and evaluate).

- :func:`prepare_assets`: tokenizer (from normalized training text) and global CMVN, saved into
  the model directory; the same files are read back by every rank.
- :func:`filter_split`: drop cuts the model cannot learn from, counting why (``SkipReport``).
- :func:`load_frontend`: the ``slimasr.frontend.Frontend`` of a model directory (tokenizer,
  feature config, CMVN, normalizer), for evaluation and transcription.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import torch
from lhotse import CutSet

from slimasr.data.features import FeatureConfig, GlobalCmvn
from slimasr.data.manifests import transcript
from slimasr.data.validate import SkipReport, filter_cuts
from slimasr.frontend import CMVN_FILE, Frontend
from slimasr.text import NormalizerConfig, Tokenizer, build_tokenizer, normalize_text
from slimasr.text.tokenizer import TOKENIZER_JSON

CMVN_NAME = CMVN_FILE  # global CMVN statistics in the model directory

Normalize = Callable[[str], str]


def make_normalizer(cfg: NormalizerConfig) -> Normalize:
    """``text -> normalized text`` with ``cfg`` (a picklable partial, for DataLoader workers)."""
    return partial(normalize_text, config=cfg)


# ---------------------------------------------------------------------------------------------
# Tokenizer and CMVN


def prepare_assets(train_cuts: CutSet, out_dir: Path, kind: str, vocab_size: int,
                   normalize: Normalize, feature_cfg: FeatureConfig, cmvn_max_cuts: int | None,
                   reuse: bool, show_progress: bool = True) -> None:
    """Write ``tokenizer.json`` (+ ``tokenizer.model``) and ``cmvn.json`` into ``out_dir``.

    ``reuse``: keep files already there (a resumed run must keep the vocabulary it started with).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (reuse and (out_dir / TOKENIZER_JSON).is_file()):
        texts = (normalize(transcript(cut)) for cut in train_cuts)
        build_tokenizer(kind, texts, out_dir, vocab_size=vocab_size)
    if not (reuse and (out_dir / CMVN_NAME).is_file()):
        cmvn = GlobalCmvn.compute(train_cuts, feature_cfg, max_cuts=cmvn_max_cuts,
                                  show_progress=show_progress)
        cmvn.save(out_dir / CMVN_NAME)


def filter_split(cuts: CutSet, tokenizer: Tokenizer, normalize: Normalize,
                 output_lengths: Callable[[torch.Tensor], torch.Tensor],
                 frame_shift: float) -> tuple[CutSet, SkipReport, float]:
    """Drop empty, out-of-vocabulary and too-short-for-CTC cuts (lazily), then make one counting
    pass so the report is final. Returns ``(kept cuts, report, kept seconds of audio)``."""

    def frames_after_subsampling(num: int) -> int:
        return int(output_lengths(torch.tensor([num], dtype=torch.int64))[0])

    kept, report = filter_cuts(cuts, tokenizer, normalize, frames_after_subsampling, frame_shift)
    seconds = sum(cut.duration for cut in kept)
    return kept, report, seconds


# ---------------------------------------------------------------------------------------------
# A trained model's front end


def load_frontend(model_dir: str | Path) -> Frontend:
    """The tokenizer, feature config, CMVN and normalizer a model directory was trained with
    (``slimasr.frontend.Frontend``: ``.tokenizer``, ``.features``, ``.cmvn``, ``.normalize(text)``,
    ``.batch(audios)``)."""
    return Frontend.load(model_dir)
