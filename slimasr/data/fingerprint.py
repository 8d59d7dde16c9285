"""A corpus fingerprint: which utterances a data directory holds, independent of where it lies.

    fingerprint = corpus_fingerprint("data/smarthome")    # {"splits": {"test": {...}, ...}}
    warning = fingerprint_mismatch("data/smarthome", recorded)   # None when they agree

Each split is summarized by its utterance count and one sha256 over its sorted
``(cut id, transcript, synthesizer, voice)`` lines: which sentences, spoken by which voices, in
which split. Manifest bytes are not hashed: they hold paths (absolute ones, for some corpora) and
lhotse's formatting. Nor are the samples or the lengths: synthesis is identical from run to run on
one machine (slimasr.data.synth; Festival runs without address-space randomization), but another
CPU may round the resampler's and filters' float sums differently (1 int16 step in some samples,
a silence trimmed a few samples elsewhere) —
which changes nothing about which utterances the corpus holds, and that is what decides whether
a test split is unseen. Two copies synthesized
with the same seed and package versions give the same fingerprint, which is what keeps a shipped
model's test split unseen (docs/pretrained.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from slimasr.errors import DataError

CUTS_SUFFIX = "_cuts.jsonl.gz"  # a split's cuts manifest: DIR/{split}_cuts.jsonl.gz
INT16_SCALE = 32768.0  # decoded samples are float in [-1, 1); int16 = round(x * 32768)


def corpus_fingerprint(data_dir: str | Path, splits: Iterable[str] | None = None) -> dict:
    """``{"splits": {split: {"utterances": n, "sha256": hex}}}`` for ``splits`` (default: every
    ``*_cuts.jsonl.gz`` of ``data_dir``). Reads the manifests only, no audio."""
    data_dir = Path(data_dir)
    names = sorted(splits) if splits is not None else corpus_splits(data_dir)
    return {"splits": {split: split_fingerprint(data_dir, split) for split in names}}


def corpus_splits(data_dir: Path) -> list[str]:
    """The splits of a data directory (its cuts manifests), sorted; DataError when none."""
    names = sorted(p.name[: -len(CUTS_SUFFIX)] for p in data_dir.glob(f"*{CUTS_SUFFIX}"))
    if not names:
        raise DataError(data_dir, f"no *{CUTS_SUFFIX} manifests: not a data directory")
    return names


def split_fingerprint(data_dir: Path, split: str) -> dict:
    """``{"utterances": n, "sha256": hex}`` of one split (DataError if its manifest is missing)."""
    from slimasr.data.manifests import load_cuts, split_path

    path = split_path(data_dir, split)
    if not path.is_file():
        raise DataError(path, f"file not found: this corpus has no '{split}' split")
    lines = sorted(utterance_line(cut) for cut in load_cuts(path))
    digest = hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
    return {"utterances": len(lines), "sha256": digest}


def utterance_line(cut) -> str:
    """``"id\\ttranscript\\tsynthesizer\\tvoice\\n"`` of one cut (transcript: its
    supervisions' texts joined by a space, empty for an unlabelled cut; synthesizer and voice from
    the first supervision's custom fields, empty for recorded speech)."""
    text = " ".join(s.text or "" for s in cut.supervisions)
    custom = (cut.supervisions[0].custom or {}) if cut.supervisions else {}
    fields = [cut.id, text, custom.get("synthesizer", ""), custom.get("voice", "")]
    return "\t".join(fields) + "\n"


def samples_sha256(audio: np.ndarray) -> str:
    """sha256 of audio as little-endian int16 samples (``audio``: float, any shape)."""
    samples = np.clip(np.round(np.asarray(audio, dtype=np.float64) * INT16_SCALE), -32768, 32767)
    return hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest()


def fingerprint_mismatch(data_dir: str | Path, recorded: Mapping,
                         splits: Iterable[str] | None = None) -> str | None:
    """A one-line warning when ``data_dir`` differs from a ``recorded`` fingerprint (a shipped
    model's provenance.json ``corpus.fingerprint``) in ``splits`` (default: every recorded
    split), else None. A split the data directory lacks counts as a difference."""
    wanted = sorted(splits) if splits is not None else sorted(recorded.get("splits", {}))
    data_dir = Path(data_dir)
    differ = []
    for split in wanted:
        expected = recorded.get("splits", {}).get(split)
        try:
            found = split_fingerprint(data_dir, split)
        except DataError:
            found = None
        if found is None or found != expected:
            differ.append(split)
    if not differ:
        return None
    return (f"{data_dir}: split(s) {', '.join(differ)} differ from the corpus the shipped model "
            "was trained and tested on (other package versions or settings?); its test WER "
            "there may not be comparable, and its test utterances may have been heard in training")
