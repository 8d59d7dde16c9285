"""The data directory on disk, and reading the manifests a user hands to ``evaluate``.

A data directory (written by the synthesizer and the importers) holds, per split::

    DIR/{split}_recordings.jsonl.gz   DIR/{split}_supervisions.jsonl.gz   DIR/{split}_cuts.jsonl.gz

and ``DIR/corpus.json``, written last: its presence means the folder is complete. One cut per
recording (or per segment of a NeMo manifest entry with ``offset``), with one supervision holding
the transcript (``text``) and speaker. Audio loads as 16 kHz mono (see ``slimasr.data.audio``).

``load_cuts(path)`` reads either a lhotse cuts manifest (lazily) or a NeMo-style JSONL manifest
(``{"audio_filepath", "duration", "text"[, "offset"]}`` per line); relative audio paths are resolved
against the manifest's folder.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from lhotse import (
    CutSet,
    MonoCut,
    MultiCut,
    Recording,
    RecordingSet,
    SupervisionSegment,
    SupervisionSet,
)
from lhotse.cut import Cut
from lhotse.serialization import open_best
from lhotse.utils import fastcopy

from slimasr.data import audio  # registers the DownmixMono transform that manifests may name
from slimasr.errors import DataError
from slimasr.io import atomic_path, write_json_atomic

CORPUS_JSON = "corpus.json"
SPLITS = ("train", "dev", "test")
MANIFEST_KINDS = ("recordings", "supervisions", "cuts")
# A NeMo segment may overrun its file by this much (manifests round durations).
SEGMENT_END_TOLERANCE_S = 0.05
SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # split names that make safe file names
UNKNOWN_SPEAKER = "unknown"  # speaker of a NeMo entry without a "speaker" key
LHOTSE_CUT_TYPES = {"MonoCut", "MultiCut", "MixedCut", "PaddingCut"}


# ---------------------------------------------------------------------------------------------
# The data directory


def split_path(data_dir: str | Path, split: str, kind: str = "cuts") -> Path:
    """``DIR/{split}_{kind}.jsonl.gz`` with kind in recordings/supervisions/cuts."""
    return Path(data_dir) / f"{split}_{kind}.jsonl.gz"


def write_split(
    out_dir: str | Path,
    split: str,
    recordings: RecordingSet | Iterable[Recording],
    supervisions: SupervisionSet | Iterable[SupervisionSegment],
    cuts: CutSet | Iterable[Cut] | None = None,
) -> None:
    """Write one split's three manifests, each atomically. ``cuts=None`` builds one cut per
    recording, with the recording's id and its supervisions."""
    if not isinstance(recordings, RecordingSet):
        recordings = RecordingSet.from_recordings(recordings)
    if not isinstance(supervisions, SupervisionSet):
        supervisions = SupervisionSet.from_segments(supervisions)
    if cuts is None:
        by_recording = defaultdict(list)
        for supervision in supervisions:
            by_recording[supervision.recording_id].append(supervision)
        cuts = CutSet.from_cuts(
            fastcopy(r.to_cut(), supervisions=by_recording[r.id]) for r in recordings
        )
    elif not isinstance(cuts, CutSet):
        cuts = CutSet.from_cuts(cuts)
    for kind, manifest in zip(MANIFEST_KINDS, (recordings, supervisions, cuts), strict=True):
        with atomic_path(split_path(out_dir, split, kind)) as tmp:
            manifest.to_file(tmp)


def read_split(data_dir: str | Path, split: str) -> CutSet:
    """The cuts of one split of a complete data directory, read lazily (16 kHz mono audio)."""
    data_dir = Path(data_dir)
    if not (data_dir / CORPUS_JSON).is_file():
        raise DataError(
            data_dir,
            f"not a complete data directory (no {CORPUS_JSON}); create or import the corpus again",
        )
    path = split_path(data_dir, split)
    if not path.is_file():
        raise DataError(path, f"file not found: this corpus has no '{split}' split")
    return _lazy_cuts(path)


def check_out_dir(out_dir: str | Path, overwrite: bool, splits: Iterable[str] | None = None) -> None:
    """Refuse to replace a complete data directory unless ``overwrite`` (DataError naming it).
    ``splits``: the import adds (or, with ``overwrite``, replaces) only these splits and keeps the
    others, so only a split that exists already is refused."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "exists and is not a directory")
    if not (out_dir / CORPUS_JSON).is_file() or overwrite:
        return
    if splits is None:
        raise DataError(
            out_dir,
            "already holds a complete corpus; pass overwrite=True (--overwrite) to replace it",
        )
    taken = [s for s in splits if s in _listed_names(_read_corpus_json(out_dir))]
    if taken:
        raise DataError(
            out_dir,
            f"already holds split {', '.join(map(repr, taken))}; pass overwrite=True (--overwrite) "
            "to replace it (the corpus's other splits are kept)",
        )


def begin_overwrite(out_dir: str | Path) -> list[str]:
    """Before rewriting a complete data directory: drop its corpus.json, so a crash midway leaves
    it marked incomplete rather than mixing old and new manifests under a "complete" marker.
    Returns the split and part names the old corpus.json listed."""
    corpus_json = Path(out_dir) / CORPUS_JSON
    names = _listed_names(_read_corpus_json(out_dir))
    corpus_json.unlink(missing_ok=True)
    return names


def begin_split_update(out_dir: str | Path, names: Iterable[str]) -> dict:
    """Before adding or replacing the splits ``names`` of a data directory whose other splits
    stay: rewrite its corpus.json without ``names`` (so a crash midway never leaves a half-written
    split listed as complete; the other splits stay usable). Returns that corpus.json, to pass to
    ``finish_corpus(kept=...)``; ``{}`` when the folder holds no complete corpus."""
    names = set(names)
    meta = _read_corpus_json(out_dir)
    if not meta:
        return {}
    kept = {**meta, **{key: {k: v for k, v in meta[key].items() if k not in names}
                       for key in ("splits", "parts", "split_parts") if isinstance(meta.get(key), dict)}}
    if kept != meta:
        write_json_atomic(Path(out_dir) / CORPUS_JSON, kept)
    return kept


def finish_corpus(out_dir: str | Path, meta: dict, stale_splits: Iterable[str] = (),
                  kept: dict | None = None) -> dict:
    """Remove the manifests of ``stale_splits`` (listed by an overwritten corpus, absent from the
    new one), then write corpus.json last. Other files in ``out_dir`` are left alone. ``kept``: the
    corpus.json of the splits an import added to (``begin_split_update``); the new one lists
    them too (``skipped`` counts this import). Returns what corpus.json now holds."""
    out_dir = Path(out_dir)
    for split in stale_splits:
        for kind in MANIFEST_KINDS:
            split_path(out_dir, split, kind).unlink(missing_ok=True)
    meta = merge_corpus_meta(kept, meta) if kept else meta
    write_json_atomic(out_dir / CORPUS_JSON, meta)
    return meta


def merge_corpus_meta(kept: dict, new: dict) -> dict:
    """corpus.json of a data directory whose ``kept`` splits stay beside ``new``'s: splits,
    parts and split_parts of both, ``source`` per split, ``corpus`` naming both kinds."""
    merged = {**kept, **new}
    for key in ("splits", "parts", "split_parts"):
        merged[key] = {**(kept.get(key) or {}), **(new.get(key) or {})}
    merged["source"] = {**_sources(kept), **_sources(new)}
    kinds = [k for k in str(kept.get("corpus", "")).split("+") if k]
    if new.get("corpus") and new["corpus"] not in kinds:
        kinds.append(new["corpus"])
    merged["corpus"] = "+".join(kinds) or new.get("corpus")
    return merged


def _sources(meta: dict) -> dict:
    """``{split or part: source}`` of a corpus.json (whose source is one folder, or per split)."""
    source = meta.get("source")
    if isinstance(source, dict):
        return dict(source)
    return {name: source for name in _listed_names(meta)} if source is not None else {}


def _read_corpus_json(out_dir: str | Path) -> dict:
    """The corpus.json of ``out_dir`` as a dict; ``{}`` when absent or unreadable."""
    try:
        meta = json.loads((Path(out_dir) / CORPUS_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _listed_names(meta: dict) -> list[str]:
    """The split and part names a corpus.json lists (safe file names only)."""
    names = [n for key in ("splits", "parts") if isinstance(meta.get(key), dict) for n in meta[key]]
    return [n for n in names if SPLIT_NAME.match(n)]


def split_summary(cuts: Iterable[Cut]) -> dict:
    """``{"num_cuts", "hours", "num_speakers"}`` of a split."""
    n, seconds, speakers = 0, 0.0, set()
    for cut in cuts:
        n += 1
        seconds += cut.duration
        speakers.update(s.speaker for s in cut.supervisions)
    return {"num_cuts": n, "hours": round(seconds / 3600, 4), "num_speakers": len(speakers)}


# ---------------------------------------------------------------------------------------------
# Manifests a user hands over


def load_cuts(path: str | Path) -> CutSet:
    """Cuts from a lhotse cuts manifest (jsonl / jsonl.gz, read lazily) or a NeMo-style JSONL
    manifest (read eagerly; each audio file's header is read). Audio loads as 16 kHz mono;
    relative paths are resolved against the manifest's folder. DataError naming the file else."""
    path = Path(path)
    if path.is_dir():
        hint = (
            " (a data directory: pass one of its *_cuts.jsonl.gz)"
            if (path / CORPUS_JSON).exists()
            else ""
        )
        raise DataError(path, f"is a directory, not a manifest{hint}")
    first = _first_json_object(path)
    if "audio_filepath" in first:
        return cuts_from_nemo(read_nemo_manifest(path))
    if first.get("type") in LHOTSE_CUT_TYPES or ("recording" in first and "id" in first):
        return _lazy_cuts(path)
    if "sources" in first:
        raise DataError(
            path, "is a lhotse recordings manifest; pass the cuts manifest (*_cuts.jsonl.gz)"
        )
    keys = ", ".join(sorted(first)) or "none"
    raise DataError(
        path,
        f"neither a lhotse cuts manifest nor a NeMo JSONL manifest (first line has keys: {keys})",
    )


def _lazy_cuts(path: Path) -> CutSet:
    base = path.parent.absolute()
    return CutSet.from_jsonl_lazy(path).map(partial(_as_mono_16k, base=base))


def _as_mono_16k(cut: Cut, base: Path) -> Cut:
    """Resolve relative audio paths against ``base``; load at 16 kHz; a MultiCut becomes a MonoCut
    of the channels' average (a MonoCut keeps the one channel it names)."""
    recording = getattr(cut, "recording", None)
    if recording is None:
        return cut
    sources = [
        fastcopy(s, source=str(base / s.source))
        if s.type == "file" and not Path(s.source).is_absolute()
        else s
        for s in recording.sources
    ]
    recording = fastcopy(recording, sources=sources)
    if isinstance(cut, MultiCut):
        supervisions = [fastcopy(s, channel=0) for s in cut.supervisions]
        return MonoCut(
            id=cut.id,
            start=cut.start,
            duration=cut.duration,
            channel=0,
            recording=audio.to_mono_16k(recording),
            supervisions=supervisions,
            custom=cut.custom,
        )
    return fastcopy(cut, recording=recording.resample(audio.TARGET_SAMPLE_RATE))


def _first_json_object(path: Path) -> dict:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with open_best(path) as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    return _parse_json_line(line, f"{path}:{lineno}")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(path, f"cannot be read as a text manifest ({e})") from None
    raise DataError(path, "empty manifest")


def _parse_json_line(line: str, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(where, f"not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(where, "expected a JSON object")
    return obj


# ---------------------------------------------------------------------------------------------
# NeMo-style JSONL


@dataclass(frozen=True)
class NemoEntry:
    """One line of a NeMo manifest. ``offset``/``duration`` in seconds; offset None = whole file."""

    audio: Path  # absolute path of the audio file
    text: str
    duration: float | None
    offset: float | None
    speaker: str
    where: str  # "manifest:line", for messages


def read_nemo_manifest(path: str | Path) -> list[NemoEntry]:
    """Parse every line; a malformed line is a DataError naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    base = path.parent.absolute()
    entries = []
    with open_best(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                entries.append(
                    _nemo_entry(
                        _parse_json_line(line, f"{path}:{lineno}"), base, f"{path}:{lineno}"
                    )
                )
    if not entries:
        raise DataError(path, "empty manifest")
    return entries


def _nemo_entry(obj: dict, base: Path, where: str) -> NemoEntry:
    for key in ("audio_filepath", "text"):
        if not isinstance(obj.get(key), str):
            raise DataError(where, f"'{key}' must be a string (got {obj.get(key)!r})")
    duration, offset = _seconds(obj, "duration", where), _seconds(obj, "offset", where)
    if offset is not None and duration is None:
        raise DataError(where, "an entry with 'offset' needs a 'duration'")
    audio_path = Path(obj["audio_filepath"]).expanduser()
    return NemoEntry(
        audio=audio_path if audio_path.is_absolute() else base / audio_path,
        text=obj["text"],
        duration=duration,
        offset=offset,
        speaker=str(obj.get("speaker", UNKNOWN_SPEAKER)),
        where=where,
    )


def _seconds(obj: dict, key: str, where: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise DataError(where, f"'{key}' must be a non-negative number of seconds (got {value!r})")
    return float(value)


def nemo_cut(entry: NemoEntry, recording: Recording, cut_id: str) -> MonoCut:
    """The cut for one entry: the whole recording, or ``[offset, offset + duration]`` of it."""
    start = entry.offset or 0.0
    duration = recording.duration if entry.offset is None else entry.duration
    if duration <= 0:
        raise DataError(entry.where, "segment has zero duration")
    if start + duration > recording.duration + SEGMENT_END_TOLERANCE_S:
        raise DataError(
            entry.where,
            f"segment {start:.2f}-{start + duration:.2f} s lies past the end of {entry.audio} "
            f"({recording.duration:.2f} s)",
        )
    duration = min(duration, recording.duration - start)
    supervision = SupervisionSegment(
        id=cut_id,
        recording_id=recording.id,
        start=0.0,
        duration=duration,
        channel=0,
        text=entry.text,
        speaker=entry.speaker,
    )
    return MonoCut(
        id=cut_id,
        start=start,
        duration=duration,
        channel=0,
        recording=recording,
        supervisions=[supervision],
    )


def cuts_from_nemo(entries: list[NemoEntry]) -> CutSet:
    """Eager cuts for parsed entries; a missing or unreadable audio file is a DataError."""
    recordings: dict[Path, Recording] = {}
    ids = RecordingIds()
    cuts: dict[str, tuple[MonoCut, str]] = {}
    for entry in entries:
        if entry.audio not in recordings:
            try:
                recordings[entry.audio] = audio.recording_from_file(
                    entry.audio, ids.recording_id(entry.audio)
                )
            except DataError as e:
                raise DataError(entry.audio, f"{e.problem} (listed at {entry.where})") from None
        recording = recordings[entry.audio]
        cut_id = ids.cut_id(recording.id, entry)
        if cut_id in cuts:
            raise DataError(
                entry.where,
                f"duplicate entry: {entry.audio} is already listed at {cuts[cut_id][1]}",
            )
        cuts[cut_id] = (nemo_cut(entry, recording, cut_id), entry.where)
    return CutSet.from_cuts(cut for cut, _ in cuts.values())


class RecordingIds:
    """Unique, readable ids for NeMo entries: the file stem (``-2``, ``-3``... on collisions);
    a segment's cut adds its offset in milliseconds (``stem-001500``)."""

    def __init__(self) -> None:
        self._by_path: dict[Path, str] = {}
        self._taken: set[str] = set()

    def recording_id(self, path: Path) -> str:
        if path not in self._by_path:
            rid, n = path.stem, 1
            while rid in self._taken:
                n += 1
                rid = f"{path.stem}-{n}"
            self._taken.add(rid)
            self._by_path[path] = rid
        return self._by_path[path]

    @staticmethod
    def cut_id(recording_id: str, entry: NemoEntry) -> str:
        if entry.offset is None:
            return recording_id
        return f"{recording_id}-{round(entry.offset * 1000):06d}"


def transcript(cut) -> str:
    """A cut's text: its supervisions' texts in order (one supervision by the data contract)."""
    return " ".join(s.text for s in sorted(cut.supervisions, key=lambda s: s.start) if s.text)
