"""Catching bad input: audio files at import, and utterances a model cannot learn from.

Every problem is one line that names the file (``path: problem``) and has a *reason* key, so runs
can skip bad items and report a count per reason (``SkipReport``).

- ``probe_recording(path)`` / ``validate_recording(path)``: missing, empty, unreadable, corrupt or
  truncated audio (soundfile info, the header's claim, and a real decode of every frame), and
  samples no model can read (NaN/inf, an absurd peak: ``slimasr.data.audio.samples_problem``).
- ``filter_cuts(cuts, tokenizer, normalize, frames_after_subsampling)``: drops cuts whose
  transcript is empty after normalization, holds characters outside the vocabulary, or is longer
  than CTC can label in the frames the model outputs for that audio (``ctc_min_frames``), and
  cuts that feature precomputation marked as bad audio (``slimasr.data.audio.mark_bad_audio``).
- ``filter_cuts(..., scoring=True)``: the same checks as evaluation applies them (``CutCheck``).
- ``cut_audio_problem(cut, samples)``: bad samples found where audio is decoded anyway (a batch
  computed on the fly, an evaluation batch), so nothing reads every file twice.

``filter_cuts`` works on lazy CutSets without loading them: it returns a lazily filtered set and a
``SkipReport`` that fills while that set is iterated. The counts are final (``report.final``)
once the filtered set has been iterated to its end once (e.g. after the first epoch); a pass that
stops early is forgotten and the next pass counts afresh; later passes never count twice. On an
eager CutSet the check runs at once and the report is final on return.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.lazy import LazyFilter
from lhotse.utils import compute_num_frames

from slimasr.data.audio import (
    TARGET_SAMPLE_RATE,
    UNREADABLE_MESSAGE,
    bad_audio_mark,
    check_decode,
    header_problem,
    samples_problem,
)

# Reasons (stable keys: they appear in corpus.json and in training reports).
MISSING_AUDIO = "missing_audio"
EMPTY_AUDIO = "empty_audio"
UNREADABLE_AUDIO = "unreadable_audio"  # not an audio file soundfile can open
DAMAGED_AUDIO = "damaged_audio"  # truncated or corrupt: the header promises frames the file lacks
BAD_AUDIO = "bad_audio"  # decodes, but holds NaN/inf samples or an absurd peak (samples_problem)
EMPTY_TRANSCRIPT = "empty_transcript"
OOV_CHARACTERS = "oov_characters"
TOO_SHORT = "too_short"
BAD_ANNOTATION = "bad_annotation"  # a transcript/alignment file the corpus parser cannot read
BAD_SEGMENT = "bad_segment"  # a manifest segment that lies outside its audio
DUPLICATE = "duplicate"
# What evaluation excludes from scoring, besides TOO_SHORT and BAD_AUDIO (CutCheck(scoring=True)).
EMPTY_REFERENCE = "empty_reference"  # nothing left after normalization (= metrics.EMPTY_REFERENCE)
UNKNOWN_CHARACTERS = "unknown_characters"  # not one character of the reference is in the vocabulary

MAX_EXAMPLES = 5  # how many one-line messages a SkipReport keeps to show
FRAME_SHIFT_S = 0.01  # default feature frame shift (10 ms, as in lhotse's Fbank)


class Problem(NamedTuple):
    """Why one item is skipped: a reason key and a one-line message naming the file."""

    reason: str
    message: str


@dataclass
class SkipReport:
    """Counts of skipped items per reason, plus the first few one-line messages."""

    counts: Counter = field(default_factory=Counter)  # reason -> number skipped
    examples: list[str] = field(default_factory=list)  # first MAX_EXAMPLES messages
    checked: int = 0  # items looked at (kept + skipped)
    final: bool = True  # False while a lazy pass has not reached the end yet

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    @property
    def kept(self) -> int:
        return self.checked - self.skipped

    def add(self, problem: Problem) -> None:
        self.counts[problem.reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(problem.message)

    def reset(self) -> None:
        self.counts.clear()
        self.examples.clear()
        self.checked = 0

    def summary(self) -> str:
        """One line, e.g. ``skipped 3 of 120: empty_transcript 2, too_short 1``."""
        if not self.counts:
            return f"skipped 0 of {self.checked}"
        parts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items()))
        return f"skipped {self.skipped} of {self.checked}: {parts}"

    def log(self, console: Any = None) -> None:
        """Print the summary and the example messages (``console``: anything with ``.print``)."""
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        console.print(
            self.summary() + ("" if self.final else " (so far)"), markup=False, highlight=False
        )
        for message in self.examples:
            console.print(f"  {message}", markup=False, highlight=False)

    def as_dict(self) -> dict:
        return {
            "checked": self.checked,
            "kept": self.kept,
            "skipped": dict(sorted(self.counts.items())),
            "examples": list(self.examples),
            "final": self.final,
        }


# ---------------------------------------------------------------------------------------------
# Audio files


def probe_recording(path: str | Path) -> Problem | None:
    """Check one audio file: exists, non-empty, opens, header honest, every frame decodes."""
    path = Path(path)
    if not path.is_file():
        return Problem(MISSING_AUDIO, f"{path}: audio file not found")
    if path.stat().st_size == 0:
        return Problem(EMPTY_AUDIO, f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):  # libsndfile's own text here is misleading
        return Problem(UNREADABLE_AUDIO, f"{path}: {UNREADABLE_MESSAGE}")
    if info.frames <= 0:
        return Problem(EMPTY_AUDIO, f"{path}: holds no audio samples")
    if problem := header_problem(path, info):
        return Problem(DAMAGED_AUDIO, f"{path}: {problem}")
    decoded = check_decode(path, info)
    if decoded.damage:
        return Problem(DAMAGED_AUDIO, f"{path}: {decoded.damage}")
    if decoded.samples:
        return Problem(BAD_AUDIO, f"{path}: {decoded.samples}")
    return None


def validate_recording(path: str | Path) -> str | None:
    """The one-line problem with an audio file (``path: problem``), or None if it is usable."""
    problem = probe_recording(path)
    return None if problem is None else problem.message


def cut_audio_problem(cut: Cut, samples: np.ndarray) -> Problem | None:
    """``BAD_AUDIO`` naming the cut's file when its decoded ``samples`` are NaN/inf or absurdly
    loud (``samples_problem``), else None."""
    problem = samples_problem(samples)
    return None if problem is None else Problem(BAD_AUDIO, f"{_cut_name(cut)}: {problem}")


# ---------------------------------------------------------------------------------------------
# Utterances against a model


def ctc_min_frames(token_ids: Sequence[int]) -> int:
    """Fewest output frames CTC needs for ``token_ids``: one per label, plus a blank between each
    pair of equal adjacent labels (``[5, 5, 3]`` needs 4)."""
    repeats = sum(1 for a, b in zip(token_ids, token_ids[1:], strict=False) if a == b)
    return len(token_ids) + repeats


@dataclass
class CutCheck:
    """The per-cut check behind ``filter_cuts``; calling it returns True to keep the cut.

    ``scoring`` (evaluation) differs from training in two ways: a reference with *some* characters
    outside the vocabulary is kept (the model cannot write them, so they count as its errors) and
    only one with none it knows is excluded; and the reasons are named for references
    (``EMPTY_REFERENCE``, ``UNKNOWN_CHARACTERS``).
    """

    tokenizer: Any = None  # encode(text) -> list[int]; optional oov(text) -> set[str]
    normalize: Callable[[str], str] | None = None  # raw transcript -> text the tokenizer sees
    frames_after_subsampling: Callable[[int], int] | None = None  # input frames -> output frames
    frame_shift: float = FRAME_SHIFT_S  # seconds per input feature frame
    report: SkipReport = field(default_factory=SkipReport)
    scoring: bool = False  # evaluation's rules (see above) instead of training's

    def problem(self, cut: Cut) -> Problem | None:
        """Why ``cut`` cannot be trained on or scored, or None."""
        name = _cut_name(cut)
        if bad := bad_audio_mark(cut):
            return Problem(BAD_AUDIO, f"{name}: {bad}")
        text = " ".join(s.text or "" for s in cut.supervisions)
        if self.normalize is not None:
            text = self.normalize(text)
        if not text.strip():
            return Problem(EMPTY_REFERENCE if self.scoring else EMPTY_TRANSCRIPT,
                           f"{name}: empty {'reference' if self.scoring else 'transcript'}")
        if self.tokenizer is None:
            return None
        oov = self.tokenizer.oov(text) if hasattr(self.tokenizer, "oov") else set()
        if oov and self.scoring:
            text = " ".join("".join(c for c in text if c not in oov).split())  # what it can write
            if not text:
                return Problem(UNKNOWN_CHARACTERS,
                               f"{name}: no character of the reference is in the vocabulary")
        elif oov:
            shown = ", ".join(repr(c) for c in _in_text_order(oov, text))
            return Problem(OOV_CHARACTERS, f"{name}: characters not in the vocabulary: {shown}")
        return self._too_short(cut, name, self.tokenizer.encode(text))

    def _too_short(self, cut: Cut, name: str, token_ids: Sequence[int]) -> Problem | None:
        in_frames = compute_num_frames(cut.duration, self.frame_shift, TARGET_SAMPLE_RATE)
        out_frames = (
            in_frames
            if self.frames_after_subsampling is None
            else self.frames_after_subsampling(in_frames)
        )
        need = ctc_min_frames(token_ids)
        if out_frames >= need:
            return None
        return Problem(
            TOO_SHORT,
            f"{name}: too short for the model: {cut.duration:.2f} s gives {out_frames} output "
            f"frames, but its {len(token_ids)} tokens need at least {need} for CTC",
        )

    def __call__(self, cut: Cut) -> bool:
        problem = self.problem(cut)
        if not self.report.final:  # count during the first complete pass only
            self.report.checked += 1
            if problem is not None:
                self.report.add(problem)
        return problem is None


class _ReportingFilter(LazyFilter):
    """lhotse's lazy filter that marks the report final at the end of the first complete pass."""

    def __iter__(self) -> Iterator[Cut]:
        report = self.predicate.report
        if not report.final:
            report.reset()  # an earlier pass stopped early: count this one from scratch
        yield from filter(self.predicate, self.iterator)
        report.final = True


def filter_cuts(
    cuts: CutSet,
    tokenizer: Any = None,
    normalize: Callable[[str], str] | None = None,
    frames_after_subsampling: Callable[[int], int] | None = None,
    frame_shift: float = FRAME_SHIFT_S,
    scoring: bool = False,
) -> tuple[CutSet, SkipReport]:
    """Drop cuts with an empty transcript, out-of-vocabulary characters, or too few output frames,
    and cuts marked as bad audio.

    ``frames_after_subsampling(T)`` gives the model's output length for ``T`` input frames of
    ``frame_shift`` seconds (identity if None). Without a tokenizer only empty transcripts are
    checked. ``scoring``: evaluation's rules (see ``CutCheck``). A lazy ``cuts`` stays lazy (see
    the module docstring for when the report is final).
    """
    check = CutCheck(tokenizer, normalize, frames_after_subsampling, frame_shift, scoring=scoring)
    check.report.final = False
    if cuts.is_lazy:
        return CutSet(_ReportingFilter(cuts, check)), check.report
    kept = cuts.filter(check)
    check.report.final = True
    return kept, check.report


def _cut_name(cut: Cut) -> str:
    """The audio file behind a cut (what a user can look at), else the cut id."""
    recording = getattr(cut, "recording", None)
    if recording is not None and recording.sources and recording.sources[0].type == "file":
        return str(recording.sources[0].source)
    return cut.id


def _in_text_order(chars: Iterable[str], text: str) -> list[str]:
    """``chars`` in the order they first appear in ``text`` (then any others, sorted)."""
    chars = set(chars)
    ordered = [c for c in dict.fromkeys(text) if c in chars]
    return ordered + sorted(chars - set(ordered))
