"""Data preparation for training, and the front end a trained model directory carries.

- :func:`feature_cuts`: a split's cuts with fbank features precomputed once per data directory
  and feature config, cached in ``DATA_DIR/fbank/<config hash>/<split>/`` and reused while the
  split's manifest is unchanged (a stamp file records the config and the manifest's size/mtime).
- :func:`prepare_assets`: tokenizer (from normalized training text) and global CMVN, saved into
  the model directory; the same files are read back by every rank.
- :func:`filter_split`: drop cuts the model cannot learn from, counting why (``SkipReport``).
- :func:`load_frontend`: the ``slimasr.frontend.Frontend`` of a model directory (tokenizer,
  feature config, CMVN, normalizer), for evaluation and transcription.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from lhotse import CutSet

from slimasr.config import config_to_dict
from slimasr.data.features import FEATURE_CUTS_NAME, FeatureConfig, GlobalCmvn, precompute_features
from slimasr.data.manifests import read_split, split_path
from slimasr.data.validate import SkipReport, filter_cuts
from slimasr.errors import DataError
from slimasr.frontend import CMVN_FILE, Frontend
from slimasr.io import read_json, write_json_atomic
from slimasr.text import NormalizerConfig, Tokenizer, build_tokenizer, normalize_text
from slimasr.text.tokenizer import TOKENIZER_JSON

CMVN_NAME = CMVN_FILE  # global CMVN statistics in the model directory
FEATURE_CACHE = "fbank"  # default cache folder inside the data directory
CONFIG_HASH_CHARS = 10  # hex digits of the feature config's hash naming its cache folder

Normalize = Callable[[str], str]


def make_normalizer(cfg: NormalizerConfig) -> Normalize:
    """``text -> normalized text`` with ``cfg`` (a picklable partial, for DataLoader workers)."""
    return partial(normalize_text, config=cfg)


def transcript(cut) -> str:
    """A cut's text: its supervisions' texts in order (one supervision by the data contract)."""
    return " ".join(s.text for s in sorted(cut.supervisions, key=lambda s: s.start) if s.text)


# ---------------------------------------------------------------------------------------------
# Features


def feature_cache_dir(data_dir: str | Path, cfg: FeatureConfig, root: str | Path | None = None) -> Path:
    """``root/<hash of cfg>`` (``root`` defaults to ``data_dir/fbank``)."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:CONFIG_HASH_CHARS]
    return (Path(root) if root is not None else Path(data_dir) / FEATURE_CACHE) / key


def feature_cuts(data_dir: str | Path, split: str, cfg: FeatureConfig, cache_dir: str | Path,
                 num_jobs: int = 1, show_progress: bool = True) -> CutSet:
    """The split's cuts with stored features, computed now unless a complete cache matches."""
    cache_dir = Path(cache_dir)
    stamp_path, manifest = cache_dir / f"{split}.json", cache_dir / split / FEATURE_CUTS_NAME
    stamp = _feature_stamp(data_dir, split, cfg)
    if manifest.is_file() and stamp_path.is_file() and _read_stamp(stamp_path) == stamp:
        return CutSet.from_jsonl_lazy(manifest)
    stamp_path.unlink(missing_ok=True)  # the folder is about to change: no stale stamp meanwhile
    cuts = precompute_features(read_split(data_dir, split), cache_dir / split, cfg,
                               num_jobs=num_jobs, show_progress=show_progress)
    write_json_atomic(stamp_path, stamp)  # written last: its presence means the cache is complete
    return cuts


def _feature_stamp(data_dir: str | Path, split: str, cfg: FeatureConfig) -> dict:
    source = split_path(data_dir, split)
    if not source.is_file():
        read_split(data_dir, split)  # raises the one-line DataError naming what is missing
    stat = source.stat()
    # "dither": stored features are computed without dither (caches older than that are redone).
    return {"features": config_to_dict(cfg), "dither": False, "source": str(source.resolve()),
            "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_stamp(path: Path) -> dict | None:
    try:
        return read_json(path)
    except DataError:
        return None


def split_cuts(data_dir: str | Path, split: str, cfg: FeatureConfig, cache_dir: Path,
               precompute: bool, num_jobs: int = 1, show_progress: bool = True) -> CutSet:
    """Cuts with precomputed features when ``precompute``, else the manifest's (audio only)."""
    if precompute:
        return feature_cuts(data_dir, split, cfg, cache_dir, num_jobs, show_progress)
    return read_split(data_dir, split)


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
