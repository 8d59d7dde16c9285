"""The synthesized corpus: contract, voice and sentence splits, audio, determinism, safety."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, RecordingSet, SupervisionSet

from slimasr.data import synth
from slimasr.data.espeak import ESpeak
from slimasr.data.manifests import read_split
from slimasr.data.synth import (
    SAMPLE_RATE,
    SPLITS,
    SynthConfig,
    UtterancePlan,
    colored_noise,
    render_utterance,
    split_variants,
    synthesize_corpus,
)
from slimasr.errors import ConfigError, DataError


def tiny(**overrides) -> SynthConfig:
    """About 36 s of train audio and 6 dev + 6 test utterances: a second or two to build."""
    values = dict(hours=0.01, min_eval_utterances=6, dev_variants=2, test_variants=3,
                  num_workers=1)  # fmt: skip
    return SynthConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize_corpus(out, tiny(), show_progress=False)
    return out


def cuts_of(root: Path, split: str) -> list:
    return list(CutSet.from_jsonl_lazy(root / f"{split}_cuts.jsonl.gz"))


def manifest_lines(root: Path) -> list[str]:
    """Every manifest line of every split, with the corpus folder written as DIR."""
    lines = []
    for split in SPLITS:
        for kind in ("recordings", "supervisions", "cuts"):
            with gzip.open(root / f"{split}_{kind}.jsonl.gz", "rt") as f:
                lines += [line.replace(str(root.resolve()), "DIR") for line in f]
    return lines


def audio_of(root: Path) -> dict[str, np.ndarray]:
    files = sorted((root / "audio").rglob("*.flac"))
    return {str(p.relative_to(root)): sf.read(p, dtype="int16")[0] for p in files}


# ---- the data-directory contract ------------------------------------------------------------
def test_layout_and_summary(corpus: Path) -> None:
    for split in SPLITS:
        for kind in ("recordings", "supervisions", "cuts"):
            assert (corpus / f"{split}_{kind}.jsonl.gz").is_file()
    summary = json.loads((corpus / "corpus.json").read_text())
    assert summary["seed"] == 0 and summary["sample_rate"] == SAMPLE_RATE
    assert summary["config"]["hours"] == 0.01
    assert summary["vocabulary_size"] >= 300
    assert summary["grammar_sentences_at_least"] == 100_000
    assert [summary["splits"][s]["utterances"] for s in ("dev", "test")] == [6, 6]
    assert summary["test_unseen_sentence_share"] == 0.5
    assert not list(corpus.parent.glob(".tmp-*"))  # no temporary folders left beside it


def test_train_holds_the_requested_hours_and_no_more(corpus: Path) -> None:
    durations = [c.duration for c in cuts_of(corpus, "train")]
    assert sum(durations) >= 0.01 * 3600 > sum(durations[:-1])
    summary = json.loads((corpus / "corpus.json").read_text())
    assert summary["splits"]["train"]["hours"] == pytest.approx(sum(durations) / 3600, abs=1e-4)
    assert len(list((corpus / "audio" / "train").iterdir())) == len(durations)


def test_cuts_are_lhotse_loadable_and_match_the_audio(corpus: Path) -> None:
    for split in SPLITS:
        recordings = RecordingSet.from_jsonl_lazy(corpus / f"{split}_recordings.jsonl.gz")
        supervisions = SupervisionSet.from_jsonl_lazy(corpus / f"{split}_supervisions.jsonl.gz")
        assert len(list(recordings)) == len(list(supervisions)) == len(cuts_of(corpus, split))
        for cut in read_split(corpus, split):  # (resolves the relative audio paths)
            (sup,) = cut.supervisions
            assert sup.text and sup.speaker == f"{cut.custom['accent']}+{cut.custom['variant']}"
            assert sup.custom["intent"] and isinstance(sup.custom["slots"], dict)
            assert sup.start == 0 and sup.duration == cut.duration
            audio = cut.load_audio()
            assert audio.shape == (1, cut.recording.num_samples)
            assert cut.duration == pytest.approx(audio.shape[1] / SAMPLE_RATE, abs=1e-9)


def test_audio_is_16_bit_16_khz_mono_flac_without_silence_or_clipping(corpus: Path) -> None:
    for path in sorted((corpus / "audio").rglob("*.flac")):
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == (
            "FLAC", "PCM_16", SAMPLE_RATE, 1)  # fmt: skip
        audio = sf.read(path, dtype="int16")[0].astype(np.int32)
        assert np.abs(audio).max() <= 32768 * 10 ** (-1 / 20) + 20  # peak <= -1 dBFS + dither
        zero_runs = np.diff(np.flatnonzero(np.concatenate([[1], audio, [1]])))
        assert zero_runs.max() < 30  # dither: never digital silence


def test_audio_paths_are_relative_so_a_moved_corpus_trains_and_evaluates(tmp_path: Path) -> None:
    from slimasr.evaluate.run import EvalConfig, evaluate_model
    from slimasr.train import train_model
    from tests.train.helpers import tiny_recipe

    synthesize_corpus(tmp_path / "made", tiny(hours=0.002), show_progress=False)
    moved = (tmp_path / "made").rename(tmp_path / "moved")
    for cut in cuts_of(moved, "test"):
        assert cut.recording.sources[0].source == f"audio/test/{cut.id}.flac"
    train_model(tiny_recipe(epochs=1, max_steps=1), moved, tmp_path / "model", show_progress=False)
    result = evaluate_model(tmp_path / "model", moved / "test_cuts.jsonl.gz",
                            EvalConfig(latency_seconds=0.5), show_progress=False)
    assert result["num_utterances"] == 6


def test_relative_paths_false_writes_absolute_paths(tmp_path: Path) -> None:
    out = tmp_path / "c"
    synthesize_corpus(out, tiny(hours=0.002, relative_paths=False), show_progress=False)
    for cut in cuts_of(out, "dev"):
        assert cut.recording.sources[0].source == str(out.resolve() / "audio" / "dev" / f"{cut.id}.flac")


# ---- voice and sentence splits --------------------------------------------------------------
def test_dev_and_test_variants_never_occur_in_train(corpus: Path) -> None:
    used = {s: {c.custom["variant"] for c in cuts_of(corpus, s)} for s in SPLITS}
    assigned = split_variants(tiny())
    for split in SPLITS:
        assert used[split] <= set(assigned[split])
    assert not used["train"] & used["dev"] and not used["train"] & used["test"]
    assert not used["dev"] & used["test"]
    assert set(assigned["train"]) | set(assigned["dev"]) | set(assigned["test"]) == set(
        tiny().variants)  # fmt: skip


def test_half_of_test_sentences_are_unseen_in_train(corpus: Path) -> None:
    train = {c.supervisions[0].text for c in cuts_of(corpus, "train")}
    for split in ("dev", "test"):
        texts = [c.supervisions[0].text for c in cuts_of(corpus, split)]
        assert sum(t not in train for t in texts) == 3


# ---- determinism ----------------------------------------------------------------------------
def test_same_seed_gives_identical_output_with_two_workers(corpus: Path, tmp_path: Path) -> None:
    other = tmp_path / "two_workers"
    summary = synthesize_corpus(other, tiny(num_workers=2), show_progress=False)
    assert summary["splits"] == json.loads((corpus / "corpus.json").read_text())["splits"]
    assert manifest_lines(other) == manifest_lines(corpus)
    mine, theirs = audio_of(corpus), audio_of(other)
    assert mine.keys() == theirs.keys()
    for name in mine:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)


def test_another_seed_gives_other_output(corpus: Path, tmp_path: Path) -> None:
    other = tmp_path / "seed1"
    synthesize_corpus(other, tiny(seed=1, hours=0.002), show_progress=False)
    texts = {c.supervisions[0].text for c in cuts_of(other, "test")}
    assert texts != {c.supervisions[0].text for c in cuts_of(corpus, "test")}
    assert split_variants(tiny(seed=1)) != split_variants(tiny())


# ---- safety ---------------------------------------------------------------------------------
def test_refuses_to_overwrite_a_complete_corpus(corpus: Path) -> None:
    before = (corpus / "corpus.json").read_text()
    with pytest.raises(DataError, match=str(corpus)):
        synthesize_corpus(corpus, tiny(seed=3), show_progress=False)
    assert (corpus / "corpus.json").read_text() == before


def test_overwrite_replaces_a_corpus(tmp_path: Path) -> None:
    out = tmp_path / "c"
    synthesize_corpus(out, tiny(hours=0.002, seed=1), show_progress=False)
    summary = synthesize_corpus(out, tiny(hours=0.002, seed=2), overwrite=True, show_progress=False)
    assert json.loads((out / "corpus.json").read_text()) == summary
    assert summary["seed"] == 2


def test_refuses_a_non_empty_folder_that_is_not_a_corpus(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="without corpus.json"):
        synthesize_corpus(tmp_path, tiny(), overwrite=True, show_progress=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_an_interrupted_run_leaves_nothing_and_keeps_the_old_corpus(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = synth.render_utterance
    monkeypatch.setattr(synth, "render_utterance", crash)
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(tmp_path / "new", tiny(), show_progress=False)
    assert list(tmp_path.iterdir()) == []
    before = manifest_lines(corpus)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(corpus, tiny(seed=5), overwrite=True, show_progress=False)
    assert manifest_lines(corpus) == before
    assert not list(corpus.parent.glob(".tmp-*"))


def test_bad_config_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match="hours must be > 0.*rate_min must be <= rate_max"):
        SynthConfig(hours=0, rate_min=300, rate_max=100)
    with pytest.raises(ConfigError, match="leave >= 1 variant for train"):
        SynthConfig(variants=["m1", "m2"], dev_variants=1, test_variants=1)
    with pytest.raises(ConfigError, match="variants must be files of"):
        SynthConfig(variants=["m1", "m2", "m3", "nosuchvoice"], dev_variants=1, test_variants=1)


def test_dev_and_test_sizes_scale_with_hours_above_a_minimum() -> None:
    assert [SynthConfig().eval_size(s) for s in ("dev", "test")] == [250, 400]
    assert [SynthConfig(hours=3).eval_size(s) for s in ("dev", "test")] == [500, 800]
    assert [SynthConfig(hours=0.1).eval_size(s) for s in ("dev", "test")] == [100, 100]


# ---- rendering ------------------------------------------------------------------------------
def plan(**overrides) -> UtterancePlan:
    values = dict(split="train", index=0, text="turn on the lights", intent="lights_on", slots={},
                  accent="en-us", variant="m3", rate=170, pitch=50, pitch_range=50,
                  noise="none", snr_db=None, peak_dbfs=-6.0, lead_s=0.25, trail_s=0.5, seed=3)
    return UtterancePlan(**{**values, **overrides})  # fmt: skip


def test_render_sets_peak_silence_and_snr() -> None:
    espeak, config = ESpeak(), SynthConfig()
    clean = render_utterance(espeak, plan(), config).astype(np.float64)
    assert np.abs(clean).max() == pytest.approx(32768 * 10 ** (-6 / 20), rel=0.01)
    lead = clean[: int(0.25 * SAMPLE_RATE)]
    assert np.std(lead) == pytest.approx(config.dither_lsb, rel=0.2)  # only dither before speech
    noisy = render_utterance(espeak, plan(noise="white", snr_db=10.0), config).astype(np.float64)
    assert len(noisy) == len(clean)
    noise_in_lead = np.std(noisy[: int(0.25 * SAMPLE_RATE)])
    assert noise_in_lead > 20 * np.std(lead)


@pytest.mark.parametrize("color, slope", [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_colored_noise_has_unit_rms_and_the_right_slope(color: str, slope: float) -> None:
    noise = colored_noise(48001, color, np.random.default_rng(0))
    assert noise.shape == (48001,)
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0)
    power = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(len(noise), 1 / SAMPLE_RATE)
    low = power[(freqs > 200) & (freqs < 400)].mean()
    high = power[(freqs > 3200) & (freqs < 6400)].mean()
    assert np.log2(high / low) / 4 == pytest.approx(slope, abs=0.25)  # 4 octaves apart
