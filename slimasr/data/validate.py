"""Catching bad input: audio files at import, and utterances a model cannot learn from.

Every problem is one line that names the file (``path: problem``) and has a *reason* key, so runs
can skip bad items and report a count per reason (``SkipReport``).

- ``probe_recording(path)`` / ``validate_recording(path)``: missing, empty, unreadable, corrupt or
  truncated audio (soundfile info, the header's claim, and a real decode of every frame).
- ``filter_cuts(cuts, tokenizer, normalize, frames_after_subsampling)``: drops cuts whose
  transcript is empty after normalization, holds characters outside the vocabulary, or is longer
  than CTC can label in the frames the model outputs for that audio (``ctc_min_frames``).

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

import soundfile as sf
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.lazy import LazyFilter
from lhotse.utils import compute_num_frames

from slimasr.data.audio import (
    TARGET_SAMPLE_RATE,
    UNREADABLE_MESSAGE,
    decode_problem,
    header_problem,
)

# Reasons (stable keys: they appear in corpus.json and in training reports).
MISSING_AUDIO = "missing_audio"
EMPTY_AUDIO = "empty_audio"
UNREADABLE_AUDIO = "unreadable_audio"  # not an audio file soundfile can open
DAMAGED_AUDIO = "damaged_audio"  # truncated or corrupt: the header promises frames the file lacks
EMPTY_TRANSCRIPT = "empty_transcript"
OOV_CHARACTERS = "oov_characters"
TOO_SHORT = "too_short"
BAD_ANNOTATION = "bad_annotation"  # a transcript/alignment file the corpus parser cannot read
BAD_SEGMENT = "bad_segment"  # a manifest segment that lies outside its audio
DUPLICATE = "duplicate"

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
    if problem := header_problem(path, info) or decode_problem(path, info):
        return Problem(DAMAGED_AUDIO, f"{path}: {problem}")
    return None


def validate_recording(path: str | Path) -> str | None:
    """The one-line problem with an audio file (``path: problem``), or None if it is usable."""
    problem = probe_recording(path)
    return None if problem is None else problem.message


# ---------------------------------------------------------------------------------------------
# Utterances against a model


def ctc_min_frames(token_ids: Sequence[int]) -> int:
    """Fewest output frames CTC needs for ``token_ids``: one per label, plus a blank between each
    pair of equal adjacent labels (``[5, 5, 3]`` needs 4)."""
    repeats = sum(1 for a, b in zip(token_ids, token_ids[1:], strict=False) if a == b)
    return len(token_ids) + repeats


@dataclass
class CutCheck:
    """The per-cut check behind ``filter_cuts``; calling it returns True to keep the cut."""

    tokenizer: Any = None  # encode(text) -> list[int]; optional oov(text) -> set[str]
    normalize: Callable[[str], str] | None = None  # raw transcript -> text the tokenizer sees
    frames_after_subsampling: Callable[[int], int] | None = None  # input frames -> output frames
    frame_shift: float = FRAME_SHIFT_S  # seconds per input feature frame
    report: SkipReport = field(default_factory=SkipReport)

    def problem(self, cut: Cut) -> Problem | None:
        """Why ``cut`` cannot be trained on or scored, or None."""
        name = _cut_name(cut)
        text = " ".join(s.text or "" for s in cut.supervisions)
        if self.normalize is not None:
            text = self.normalize(text)
        if not text.strip():
            return Problem(EMPTY_TRANSCRIPT, f"{name}: empty transcript")
        if self.tokenizer is None:
            return None
        if hasattr(self.tokenizer, "oov") and (oov := self.tokenizer.oov(text)):
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
) -> tuple[CutSet, SkipReport]:
    """Drop cuts with an empty transcript, out-of-vocabulary characters, or too few output frames.

    ``frames_after_subsampling(T)`` gives the model's output length for ``T`` input frames of
    ``frame_shift`` seconds (identity if None). Without a tokenizer only empty transcripts are
    checked. A lazy ``cuts`` stays lazy (see the module docstring for when the report is final).
    """
    check = CutCheck(tokenizer, normalize, frames_after_subsampling, frame_shift)
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
