"""probe_recording on every bad file; filter_cuts: empty, out-of-vocabulary, too short; laziness."""

from __future__ import annotations

import io

import pytest
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from rich.console import Console

from slimasr.data.audio import mark_bad_audio
from slimasr.data.validate import (
    BAD_AUDIO,
    DAMAGED_AUDIO,
    EMPTY_AUDIO,
    EMPTY_REFERENCE,
    EMPTY_TRANSCRIPT,
    MAX_EXAMPLES,
    MISSING_AUDIO,
    OOV_CHARACTERS,
    TOO_SHORT,
    UNKNOWN_CHARACTERS,
    UNREADABLE_AUDIO,
    Problem,
    SkipReport,
    ctc_min_frames,
    cut_audio_problem,
    filter_cuts,
    probe_recording,
    validate_recording,
)
from tests.data.fixtures import (
    BAD_SAMPLES,
    corrupt,
    make_empty,
    tone_noise,
    truncate,
    write_audio,
    write_bad_audio,
)


class Chars:
    """A duck-typed character tokenizer: a-z and space, blank at 0."""

    vocab = " abcdefghijklmnopqrstuvwxyz"

    def oov(self, text: str) -> set[str]:
        return {c for c in text if c not in self.vocab}

    def encode(self, text: str) -> list[int]:
        return [self.vocab.index(c) + 1 for c in text]


def _cut(tmp_path, name: str, text: str, seconds: float = 0.5) -> MonoCut:
    recording = Recording.from_file(
        write_audio(tmp_path / f"{name}.flac", seconds), recording_id=name
    )
    cut = recording.to_cut()
    cut.supervisions = [
        SupervisionSegment(name, name, 0.0, recording.duration, text=text, speaker="s")
    ]
    return cut


# ---------------------------------------------------------------------------------------------
# Audio files


def test_probe_names_every_kind_of_bad_file(tmp_path):
    cases = {
        tmp_path / "missing.flac": (MISSING_AUDIO, "audio file not found"),
        make_empty(tmp_path / "empty.flac"): (EMPTY_AUDIO, "empty file (0 bytes)"),
        write_audio(tmp_path / "zero.wav", 0.0): (EMPTY_AUDIO, "holds no audio samples"),
        corrupt(tmp_path / "garbage.flac"): (UNREADABLE_AUDIO, "not a readable audio file"),
        truncate(write_audio(tmp_path / "cut.flac", 1.0)): (
            DAMAGED_AUDIO,
            "corrupt or truncated: decoding failed",
        ),
        truncate(write_audio(tmp_path / "cut.wav", 1.0)): (
            DAMAGED_AUDIO,
            "truncated: header says 32000 bytes",
        ),
        truncate(write_audio(tmp_path / "cut.WAV", 1.0, format="NIST")): (
            DAMAGED_AUDIO,
            "truncated: header says 16000 samples",
        ),
    }
    for path, (reason, text) in cases.items():
        problem = probe_recording(path)
        assert problem is not None and problem.reason == reason, path
        assert problem.message.startswith(f"{path}: {text}") and "\n" not in problem.message
        assert validate_recording(path) == problem.message


def test_probe_accepts_good_files_of_any_rate_and_channels(tmp_path):
    for path in [
        write_audio(tmp_path / "a.flac", 0.5),
        write_audio(tmp_path / "b.wav", 0.5, sr=8000, channels=2),
        write_audio(tmp_path / "c.WAV", 0.5, format="NIST"),
    ]:
        assert probe_recording(path) is None and validate_recording(path) is None


@pytest.mark.parametrize("kind", sorted(BAD_SAMPLES))
def test_probe_names_nan_inf_and_absurd_samples(tmp_path, kind):
    """Such files decode without error; they used to be imported as good audio."""
    path = write_bad_audio(tmp_path / f"{kind}.wav", kind)
    assert probe_recording(path) == Problem(BAD_AUDIO, f"{path}: {BAD_SAMPLES[kind]}")


def test_import_skips_and_counts_a_file_with_nan_samples(tmp_path):
    from slimasr.data.importers import import_jsonl

    good = write_audio(tmp_path / "good.wav", 0.5)
    bad = write_bad_audio(tmp_path / "bad.wav", "nan")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(
        f'{{"audio_filepath": "{p.name}", "duration": 0.5, "text": "hello"}}\n' for p in (good, bad)))
    result = import_jsonl(manifest, tmp_path / "data", show_progress=False)
    assert result["skipped"] == {BAD_AUDIO: 1}
    imported = CutSet.from_file(tmp_path / "data" / "train_cuts.jsonl.gz")
    assert [c.recording.sources[0].source for c in imported] == [str(good)]


def test_truncation_at_a_flac_frame_boundary_is_caught(tmp_path):
    """Keep only whole frames: no decode error, but fewer frames than the header promises."""
    path = write_audio(tmp_path / "a.flac", 2.0)
    full = path.read_bytes()
    for keep in (0.3, 0.5, 0.7, 0.9):
        path.write_bytes(full[: int(len(full) * keep)])
        problem = probe_recording(path)
        assert problem is not None and problem.reason == DAMAGED_AUDIO, keep


# ---------------------------------------------------------------------------------------------
# Utterances


def test_ctc_min_frames_counts_labels_and_adjacent_repeats():
    assert ctc_min_frames([]) == 0
    assert ctc_min_frames([5]) == 1
    assert ctc_min_frames([5, 5, 3]) == 4
    assert ctc_min_frames([1, 1, 1, 2, 2]) == 8
    assert ctc_min_frames([1, 2, 1, 2]) == 4


def test_filter_cuts_skips_each_reason_with_a_one_line_message(tmp_path):
    cuts = CutSet.from_cuts(
        [
            _cut(
                tmp_path, "good", "turn on the light", seconds=1.0
            ),  # 100 frames -> 25 out, needs 17
            _cut(tmp_path, "blank", "   "),
            _cut(tmp_path, "punct", "?!"),  # empty once normalized
            _cut(tmp_path, "accents", "café straße"),
            _cut(tmp_path, "short", "a very long transcript for half a second", seconds=0.5),
            _cut(tmp_path, "repeats", "aab", seconds=0.16),  # 16 frames -> 4 out, needs 4: kept
            _cut(tmp_path, "repeats_short", "aab", seconds=0.15),  # 15 frames -> 3 out: too short
        ]
    )
    normalize = lambda text: "".join(c for c in text.lower() if c not in "?!.,")  # noqa: E731
    subsample4 = lambda frames: frames // 4  # noqa: E731
    kept, report = filter_cuts(
        cuts,
        tokenizer=Chars(),
        normalize=normalize,
        frames_after_subsampling=subsample4,
        frame_shift=0.01,
    )
    assert sorted(c.id for c in kept) == ["good", "repeats"]
    assert report.final and report.checked == 7 and report.kept == 2
    assert dict(report.counts) == {EMPTY_TRANSCRIPT: 2, OOV_CHARACTERS: 1, TOO_SHORT: 2}
    audio = {c.id: c.recording.sources[0].source for c in cuts}
    assert report.examples == [
        f"{audio['blank']}: empty transcript",
        f"{audio['punct']}: empty transcript",
        f"{audio['accents']}: characters not in the vocabulary: 'é', 'ß'",
        f"{audio['short']}: too short for the model: 0.50 s gives 12 output frames, "
        "but its 40 tokens need at least 40 for CTC",
        f"{audio['repeats_short']}: too short for the model: 0.15 s gives 3 output frames, "
        "but its 3 tokens need at least 4 for CTC",
    ]


def test_filter_cuts_skips_and_counts_cuts_marked_as_bad_audio(tmp_path):
    """Feature precomputation marks a cut whose samples are NaN/inf (instead of storing NaN)."""
    good, bad = _cut(tmp_path, "good", "on"), _cut(tmp_path, "bad", "on")
    cuts = CutSet.from_cuts([good, mark_bad_audio(bad, BAD_SAMPLES["nan"])])
    kept, report = filter_cuts(cuts, tokenizer=Chars())
    assert [c.id for c in kept] == ["good"] and dict(report.counts) == {BAD_AUDIO: 1}
    assert report.examples == [f"{bad.recording.sources[0].source}: {BAD_SAMPLES['nan']}"]


def test_cut_audio_problem_names_the_file(tmp_path):
    cut = _cut(tmp_path, "c", "on")
    audio = tone_noise(0.5)
    assert cut_audio_problem(cut, audio) is None
    audio[3] = float("nan")
    assert cut_audio_problem(cut, audio) == Problem(
        BAD_AUDIO, f"{cut.recording.sources[0].source}: holds 1 NaN/inf samples")


def test_scoring_rules_exclude_only_what_cannot_be_scored(tmp_path):
    """Evaluation keeps a reference with some unknown characters (they count as errors) and
    excludes empty references, references with no known character, and too-short audio."""
    cuts = CutSet.from_cuts([
        _cut(tmp_path, "good", "turn on", seconds=1.0),
        _cut(tmp_path, "some_unknown", "café on", seconds=1.0),  # 'é' is an error to score
        _cut(tmp_path, "empty", "?!"),
        _cut(tmp_path, "unknown", "éé ßß"),
        _cut(tmp_path, "short", "turn on", seconds=0.01),  # 10 ms: 1 frame for 7 labels
    ])
    normalize = lambda text: "".join(c for c in text.lower() if c not in "?!")  # noqa: E731
    kept, report = filter_cuts(cuts, Chars(), normalize, scoring=True)
    assert [c.id for c in kept] == ["good", "some_unknown"]
    assert dict(report.counts) == {EMPTY_REFERENCE: 1, UNKNOWN_CHARACTERS: 1, TOO_SHORT: 1}
    assert report.examples[:2] == [
        f"{cuts['empty'].recording.sources[0].source}: empty reference",
        f"{cuts['unknown'].recording.sources[0].source}: no character of the reference is in "
        "the vocabulary",
    ]
    _, training = filter_cuts(cuts, Chars(), normalize)  # training drops any unknown character
    assert dict(training.counts) == {EMPTY_TRANSCRIPT: 1, OOV_CHARACTERS: 2, TOO_SHORT: 1}


def test_filter_cuts_without_tokenizer_checks_only_empty_transcripts(tmp_path):
    cuts = CutSet.from_cuts([_cut(tmp_path, "a", "ÉÉÉ"), _cut(tmp_path, "b", "")])
    kept, report = filter_cuts(cuts)
    assert [c.id for c in kept] == ["a"] and dict(report.counts) == {EMPTY_TRANSCRIPT: 1}


def test_too_short_without_subsampling_uses_input_frames(tmp_path):
    cuts = CutSet.from_cuts([_cut(tmp_path, "a", "abcdef", seconds=0.05)])  # 5 frames < 6 labels
    kept, report = filter_cuts(cuts, tokenizer=Chars())
    assert (
        list(kept) == []
        and "gives 5 output frames, but its 6 tokens need at least 6" in report.examples[0]
    )


def test_filter_cuts_stays_lazy_and_report_is_final_after_one_pass(tmp_path):
    cuts = CutSet.from_cuts([_cut(tmp_path, f"c{i}", "" if i % 3 == 0 else "ok") for i in range(9)])
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    lazy = CutSet.from_jsonl_lazy(tmp_path / "cuts.jsonl.gz")
    kept, report = filter_cuts(lazy, tokenizer=Chars())
    assert kept.is_lazy and report.checked == 0 and not report.final  # nothing read yet

    iterator = iter(kept)
    next(iterator), next(iterator)  # a partial pass (e.g. a sampler peeking)...
    assert report.checked == 3 and report.counts[EMPTY_TRANSCRIPT] == 1 and not report.final
    del iterator

    assert len(list(kept)) == 6  # ...is forgotten: the first full pass counts from scratch
    assert report.final and report.checked == 9 and dict(report.counts) == {EMPTY_TRANSCRIPT: 3}
    assert len(list(kept)) == 6  # later passes do not count twice
    assert report.checked == 9 and dict(report.counts) == {EMPTY_TRANSCRIPT: 3}


def test_skip_report_summary_log_and_dict():
    report = SkipReport()
    report.checked = 10
    for i in range(7):
        report.add(Problem(TOO_SHORT if i % 2 else EMPTY_TRANSCRIPT, f"f{i}.flac: problem {i}"))
    assert report.summary() == "skipped 7 of 10: empty_transcript 4, too_short 3"
    assert report.as_dict() == {
        "checked": 10,
        "kept": 3,
        "skipped": {"empty_transcript": 4, "too_short": 3},
        "examples": [f"f{i}.flac: problem {i}" for i in range(MAX_EXAMPLES)],
        "final": True,
    }
    out = io.StringIO()
    report.log(Console(file=out, width=200))
    assert out.getvalue().splitlines() == [report.summary()] + [
        f"  f{i}.flac: problem {i}" for i in range(MAX_EXAMPLES)
    ]


@pytest.mark.parametrize("text", ["", " \t"])
def test_empty_transcript_message_names_the_audio(tmp_path, text):
    cut = _cut(tmp_path, "x", text)
    _, report = filter_cuts(CutSet.from_cuts([cut]))
    assert report.examples == [f"{cut.recording.sources[0].source}: empty transcript"]
