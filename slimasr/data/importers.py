"""Import a local corpus into a data directory: LibriSpeech, TIMIT, or NeMo-style JSONL manifests.

Audio is not copied: recordings point at the original files by absolute path, and audio that is
not 16 kHz mono gets lazy lhotse transforms (see ``slimasr.data.audio.to_mono_16k``).

Every audio file is probed first (header, and a full decode): missing, empty, unreadable, corrupt
and truncated files are skipped with one warning line each (logger ``slimasr.data.importers``), as
are empty transcripts; corpus.json counts the skips per reason. Nothing is written when the source
is missing or has no expected layout, when nothing usable remains, or when ``out_dir`` already
holds a complete corpus and ``overwrite`` is False.

LibriSpeech and TIMIT layouts are read with lhotse's recipe code: we call its per-utterance
parsers (``librispeech.parse_utterance``, ``timit.prepare_recording``) and its TIMIT speaker lists
rather than ``prepare_librispeech`` / ``prepare_timit`` themselves, because those stop at the
first unreadable file or empty transcript line instead of skipping it.
"""

from __future__ import annotations

import logging
import os
import zlib
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from lhotse import MonoCut, Recording, SupervisionSegment
from lhotse.recipes import librispeech, timit
from lhotse.utils import fastcopy

from slimasr.data.audio import TARGET_SAMPLE_RATE, to_mono_16k
from slimasr.data.manifests import (
    CORPUS_JSON,
    SPLIT_NAME,
    NemoEntry,
    RecordingIds,
    begin_overwrite,
    begin_split_update,
    check_out_dir,
    finish_corpus,
    nemo_cut,
    read_nemo_manifest,
    split_summary,
    write_split,
)
from slimasr.data.validate import (
    BAD_ANNOTATION,
    BAD_SEGMENT,
    DUPLICATE,
    EMPTY_TRANSCRIPT,
    Problem,
    SkipReport,
    probe_recording,
)
from slimasr.errors import DataError
from slimasr.progress import progress_bar

logger = logging.getLogger(__name__)

MAX_PROBE_JOBS = 8  # threads probing audio at most (libsndfile decodes outside the GIL)
TIMIT_NUM_PHONES = 48  # phone set of TIMIT's phone alignments (lhotse's default)
LIBRISPEECH_DEV_PARTS = ("dev-clean", "dev-clean-2", "dev-other")  # first one present is "dev"
LIBRISPEECH_TEST_PARTS = ("test-clean", "test-other")  # first one present is "test"


@dataclass
class Utterance:
    """One usable utterance: a 16 kHz mono recording, its supervision, the cut spanning both."""

    recording: Recording
    supervision: SupervisionSegment
    cut: MonoCut

    @classmethod
    def whole(cls, recording: Recording, supervision: SupervisionSegment) -> Utterance:
        recording = to_mono_16k(recording)
        supervision = fastcopy(supervision, start=0.0, duration=recording.duration, channel=0)
        cut = MonoCut(
            id=recording.id,
            start=0.0,
            duration=recording.duration,
            channel=0,
            recording=recording,
            supervisions=[supervision],
        )
        return cls(recording, supervision, cut)


Task = Callable[[], "Utterance | Problem"]


# ---------------------------------------------------------------------------------------------
# LibriSpeech


def import_librispeech(
    src: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    show_progress: bool = True,
    num_jobs: int | None = None,
) -> dict:
    """Import ``src`` = a LibriSpeech folder holding parts (``train-clean-100/``, ``dev-clean/``...)
    laid out as ``{part}/{spk}/{chapter}/{spk}-{chapter}-{utt}.flac`` beside
    ``{part}/{spk}/{chapter}/{spk}-{chapter}.trans.txt``.

    Writes every part under its own name, plus ``train`` (all train-* parts), ``dev``
    (dev-clean, else dev-clean-2, else dev-other) and ``test`` (test-clean, else test-other).
    Returns the corpus.json contents.
    """
    src = _source_dir(src)
    check_out_dir(out_dir, overwrite)
    names = sorted(
        set(librispeech.LIBRISPEECH + librispeech.MINI_LIBRISPEECH)
        & {p.name for p in src.iterdir()}
    )
    if not names:
        raise DataError(
            src,
            "no LibriSpeech parts found (expected folders like train-clean-100/, dev-clean/, "
            "test-clean/)",
        )
    report = SkipReport()
    parts = {
        name: _run(
            _librispeech_tasks(src / name, report),
            f"LibriSpeech {name}",
            report,
            show_progress,
            num_jobs,
        )
        for name in names
    }
    split_parts = {
        "train": [n for n in names if n.startswith("train-")],
        "dev": [n for n in LIBRISPEECH_DEV_PARTS if n in names][:1],
        "test": [n for n in LIBRISPEECH_TEST_PARTS if n in names][:1],
    }
    return _write_corpus(
        out_dir, parts, split_parts, {"corpus": "librispeech", "source": str(src)}, report
    )


def _librispeech_tasks(part_path: Path, report: SkipReport) -> list[Task]:
    """One task per transcript line; a malformed line or an empty transcript is reported at once
    (lhotse's parser would look for an audio file the line does not name, or fail)."""
    tasks = []
    for trans in sorted(part_path.rglob("*.trans.txt")):
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(trans, f"cannot be read as UTF-8 text ({e})") from None
        for lineno, line in enumerate(lines, start=1):
            if problem := _transcript_line_problem(trans, lineno, line):
                _skip(report, problem)
            elif line.strip():
                tasks.append(partial(_librispeech_utterance, part_path, line))
    return tasks


def _transcript_line_problem(trans: Path, lineno: int, line: str) -> Problem | None:
    """A line must be ``{spk}-{chapter}-{utt} TRANSCRIPT``, speaker and chapter those of its
    ``{spk}-{chapter}.trans.txt``."""
    fields = line.split(maxsplit=1)
    chapter = trans.name.removesuffix(".trans.txt")
    if fields and not re.fullmatch(rf"{re.escape(chapter)}-\d+", fields[0]):
        shape = f"expected '{chapter}-NNNN TRANSCRIPT', got {line.strip()[:60]!r}"
        return Problem(BAD_ANNOTATION, f"{trans}:{lineno}: malformed line ({shape})")
    if len(fields) == 1:
        return Problem(EMPTY_TRANSCRIPT, f"{trans}:{lineno}: empty transcript for {fields[0]}")
    return None


def _librispeech_utterance(part_path: Path, line: str) -> Utterance | Problem:
    utt_id = line.split(maxsplit=1)[0]
    audio = part_path / Path(utt_id.replace("-", "/")).parent / f"{utt_id}.flac"  # lhotse's rule
    if problem := probe_recording(audio):
        return problem
    recording, supervision = librispeech.parse_utterance(part_path, line, alignments={})
    return Utterance.whole(recording, supervision)


# ---------------------------------------------------------------------------------------------
# TIMIT


def import_timit(
    src: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    show_progress: bool = True,
    num_jobs: int | None = None,
) -> dict:
    """Import ``src`` = a TIMIT folder: ``data/{TRAIN,TEST}/DR*/{SPEAKER}/*.WAV`` (lhotse's layout)
    or ``{TRAIN,TEST}/DR*/...`` (LDC's), each NIST SPHERE ``.WAV`` beside its ``.TXT``, ``.WRD``,
    ``.PHN``. Splits as lhotse makes them: train = TRAIN; dev = TEST's 50 dev speakers; test = the
    24-speaker core test set. Returns the corpus.json contents."""
    src = _source_dir(src)
    check_out_dir(out_dir, overwrite)
    root = next(
        (r for r in (src / "data", src) if (r / "TRAIN").is_dir() or (r / "TEST").is_dir()), None
    )
    if root is None:
        raise DataError(
            src,
            "no TIMIT layout found (expected data/TRAIN/DR*/SPEAKER/*.WAV "
            "or TRAIN/DR*/SPEAKER/*.WAV)",
        )
    dev_speakers, test_speakers = timit.get_speakers()
    wavs = {
        "train": sorted(root.glob("TRAIN/*/*/*.WAV")),
        "dev": [
            w for w in sorted(root.glob("TEST/*/*/*.WAV")) if w.parent.name.lower() in dev_speakers
        ],
        "test": [
            w for w in sorted(root.glob("TEST/*/*/*.WAV")) if w.parent.name.lower() in test_speakers
        ],
    }
    if not any(wavs.values()):
        raise DataError(root, "no .WAV files of TIMIT speakers under TRAIN/ or TEST/")
    phones = timit.get_phonemes(TIMIT_NUM_PHONES)
    report = SkipReport()
    parts = {
        split: _run(
            [partial(_timit_utterance, w, phones) for w in files],
            f"TIMIT {split}",
            report,
            show_progress,
            num_jobs,
        )
        for split, files in wavs.items()
    }
    meta = {"corpus": "timit", "source": str(src)}
    return _write_corpus(out_dir, parts, {split: [split] for split in parts}, meta, report)


def _timit_utterance(wav: Path, phones: dict) -> Utterance | Problem:
    if problem := probe_recording(wav):
        return problem
    try:
        recording, supervision = timit.prepare_recording(str(wav), TIMIT_NUM_PHONES, phones)
    except (OSError, ValueError, KeyError, IndexError) as e:
        return Problem(
            BAD_ANNOTATION, f"{wav}: cannot read its .TXT/.WRD/.PHN files ({type(e).__name__}: {e})"
        )
    if not supervision.text.strip():
        return Problem(EMPTY_TRANSCRIPT, f"{wav.with_suffix('.TXT')}: empty transcript")
    return Utterance.whole(recording, supervision)


# ---------------------------------------------------------------------------------------------
# NeMo-style JSONL


def import_jsonl(
    manifest: str | Path | Mapping[str, str | Path],
    out_dir: str | Path,
    split: str = "train",
    overwrite: bool = False,
    show_progress: bool = True,
    num_jobs: int | None = None,
) -> dict:
    """Import NeMo-style manifests: ``{"audio_filepath", "duration", "text"}`` per line, optional
    ``"offset"`` and ``"speaker"``, relative paths from the manifest's folder.

    ``manifest`` is one file, written as ``split``, or a mapping ``{split: file}``. An entry with
    ``offset`` becomes a cut of that segment; otherwise the cut spans the file. A malformed line
    stops the import (DataError naming ``file:line``). Into a complete data directory the splits
    are added, keeping its others (a split it holds already needs ``overwrite`` and is replaced).
    Returns the corpus.json contents.
    """
    manifests = {
        s: Path(p).absolute()
        for s, p in (manifest.items() if isinstance(manifest, Mapping) else [(split, manifest)])
    }
    for name in manifests:
        if not SPLIT_NAME.match(name):
            raise DataError(None, f"split name {name!r} must be letters, digits, '_', '.' or '-'")
    check_out_dir(out_dir, overwrite, splits=manifests)
    # Parse every manifest before probing anything: a malformed line stops the import at once.
    entries = {s: _read_manifest(p) for s, p in manifests.items()}
    report = SkipReport()
    files = sorted({e.audio for split_entries in entries.values() for e in split_entries})
    probes = _map(probe_recording, files, "probing audio", show_progress, num_jobs)
    bad_audio = {f: p for f, p in zip(files, probes, strict=True) if p is not None}
    ids = RecordingIds()
    parts = {
        s: _nemo_utterances(split_entries, bad_audio, ids, report)
        for s, split_entries in entries.items()
    }
    meta = {"corpus": "jsonl", "source": {s: str(p) for s, p in manifests.items()}}
    return _write_corpus(out_dir, parts, {s: [s] for s in parts}, meta, report, add=True)


def _read_manifest(path: Path) -> list[NemoEntry]:
    """read_nemo_manifest, with a binary or corrupt (e.g. bad gzip) file as a one-line DataError."""
    try:
        return read_nemo_manifest(path)
    except (UnicodeDecodeError, EOFError, zlib.error) as e:
        problem = f"{type(e).__name__}: {e}"
    except OSError as e:
        if e.filename is not None:
            raise  # an unreadable file: the OSError names it
        problem = str(e)  # e.g. gzip's "Not a gzipped file"
    raise DataError(path, f"cannot be read as a UTF-8 text manifest ({problem})")


def _nemo_utterances(
    entries: list[NemoEntry], bad_audio: dict[Path, Problem], ids: RecordingIds, report: SkipReport
) -> list[Utterance]:
    recordings: dict[Path, Recording] = {}
    utterances: dict[str, Utterance] = {}
    for entry in entries:
        problem = bad_audio.get(entry.audio)
        if problem is None and not entry.text.strip():
            problem = Problem(EMPTY_TRANSCRIPT, f"{entry.where}: empty transcript ({entry.audio})")
        if problem is None:
            if entry.audio not in recordings:
                rid = ids.recording_id(entry.audio)
                recordings[entry.audio] = to_mono_16k(
                    Recording.from_file(entry.audio, recording_id=rid)
                )
            problem = _add_nemo_utterance(entry, recordings[entry.audio], ids, utterances)
        if problem is not None:
            _skip(report, problem)
        else:
            report.checked += 1  # kept: the summary says "skipped N of all checked"
    return list(utterances.values())


def _add_nemo_utterance(
    entry: NemoEntry, recording: Recording, ids: RecordingIds, utterances: dict[str, Utterance]
) -> Problem | None:
    cut_id = ids.cut_id(recording.id, entry)
    if cut_id in utterances:
        return Problem(
            DUPLICATE, f"{entry.where}: {entry.audio} is listed twice for the same segment"
        )
    try:
        cut = nemo_cut(entry, recording, cut_id)
    except DataError as e:
        return Problem(BAD_SEGMENT, str(e))
    supervision = fastcopy(cut.supervisions[0], start=cut.start)  # relative to the recording
    utterances[cut_id] = Utterance(recording, supervision, cut)
    return None


# ---------------------------------------------------------------------------------------------
# Shared


def _source_dir(src: str | Path) -> Path:
    src = Path(src).expanduser().absolute()
    if not src.is_dir():
        raise DataError(
            src, "source folder not found" if not src.exists() else "source is not a folder"
        )
    return src


def _skip(report: SkipReport, problem: Problem) -> None:
    report.checked += 1
    report.add(problem)
    logger.warning(problem.message)


def _map(
    fn: Callable, items: list, description: str, show_progress: bool, num_jobs: int | None
) -> list:
    """``[fn(x) for x in items]`` on a thread pool, in order, with a progress bar if asked."""
    jobs = num_jobs or min(MAX_PROBE_JOBS, os.cpu_count() or 1)
    with ThreadPoolExecutor(jobs) as pool:
        results = pool.map(fn, items)
        if show_progress:
            with progress_bar(transient=True) as progress:
                return list(progress.track(results, total=len(items), description=description))
        return list(results)


def _run(
    tasks: list[Task],
    description: str,
    report: SkipReport,
    show_progress: bool,
    num_jobs: int | None,
) -> list[Utterance]:
    """Run the tasks; report each Problem, return the usable utterances in task order."""
    utterances = []
    for result in _map(_call, tasks, description, show_progress, num_jobs):
        if isinstance(result, Problem):
            _skip(report, result)
        else:
            report.checked += 1
            utterances.append(result)
    return utterances


def _call(task: Task) -> Utterance | Problem:
    return task()


def _write_corpus(
    out_dir: str | Path,
    parts: dict[str, list[Utterance]],
    split_parts: dict[str, list[str]],
    meta: dict,
    report: SkipReport,
    add: bool = False,
) -> dict:
    """Write every non-empty part, then each split (the utterances of its parts); corpus.json
    last. ``add``: keep the splits of a corpus already in ``out_dir`` beside these."""
    out_dir = Path(out_dir).absolute()
    splits = {s: [u for name in names for u in parts[name]] for s, names in split_parts.items()}
    splits = {s: utts for s, utts in splits.items() if utts}
    if not splits:
        raise _nothing_usable(meta["source"], report)
    extra = {name: utts for name, utts in parts.items() if utts and name not in splits}
    kept = begin_split_update(out_dir, [*splits, *extra]) if add else None
    old_names = [] if add or not (out_dir / CORPUS_JSON).exists() else begin_overwrite(out_dir)
    for name, utts in {**extra, **splits}.items():
        recordings = {u.recording.id: u.recording for u in utts}.values()  # segments may share one
        write_split(out_dir, name, recordings, [u.supervision for u in utts], [u.cut for u in utts])
    meta = {
        **meta,
        "sampling_rate": TARGET_SAMPLE_RATE,
        "splits": {s: split_summary(u.cut for u in utts) for s, utts in splits.items()},
        "parts": {name: split_summary(u.cut for u in utts) for name, utts in extra.items()},
        "split_parts": {s: split_parts[s] for s in splits},
        "skipped": dict(sorted(report.counts.items())),
    }
    meta = finish_corpus(out_dir, meta, stale_splits=sorted(set(old_names) - set(splits) - set(extra)),
                         kept=kept)
    logger.info("%s: %s", out_dir, report.summary())
    return meta


def _nothing_usable(source: str | dict[str, str], report: SkipReport) -> DataError:
    where = source if isinstance(source, str) else ", ".join(source.values())
    if report.checked == 0:
        return DataError(where, "no utterances found")
    return DataError(where, f"no usable utterances ({report.summary()})")
