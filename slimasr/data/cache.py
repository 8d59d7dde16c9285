"""The feature cache of a data directory, shared by train, distill, prune and evaluate.

:func:`feature_cuts`: a split's cuts with fbank features precomputed once per data directory and
feature config, cached in ``DATA_DIR/fbank/<config hash>/<split>/`` and reused while the split's
manifest is unchanged (a stamp file, written last, records the config and the manifest's
size/mtime: its presence means the cache is complete).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lhotse import CutSet

from slimasr.config import config_to_dict
from slimasr.data.features import FEATURE_CUTS_NAME, FeatureConfig, precompute_features
from slimasr.data.manifests import read_split, split_path
from slimasr.errors import DataError
from slimasr.io import read_json, waiting_lock, write_json_atomic

FEATURE_CACHE = "fbank"  # default cache folder inside the data directory
CONFIG_HASH_CHARS = 10  # hex digits of the feature config's hash naming its cache folder



def feature_cache_dir(data_dir: str | Path, cfg: FeatureConfig, root: str | Path | None = None) -> Path:
    """``root/<hash of cfg>`` (``root`` defaults to ``data_dir/fbank``)."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:CONFIG_HASH_CHARS]
    return (Path(root) if root is not None else Path(data_dir) / FEATURE_CACHE) / key


def feature_cuts(data_dir: str | Path, split: str, cfg: FeatureConfig, cache_dir: str | Path,
                 num_jobs: int = 1, show_progress: bool = True) -> CutSet:
    """The split's cuts with stored features, computed now unless a complete cache matches.
    Two processes asking at once (a pipeline's stages side by side) compute it once: the second
    waits on ``<split>.lock`` and reuses the first's."""
    cache_dir = Path(cache_dir)
    stamp_path, manifest = cache_dir / f"{split}.json", cache_dir / split / FEATURE_CUTS_NAME
    stamp = _feature_stamp(data_dir, split, cfg)
    with waiting_lock(cache_dir / f"{split}.lock"):
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
