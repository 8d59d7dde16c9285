"""The synthesized corpus: contract, voice, synthesizer and sentence splits, audio, determinism,
safety."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, RecordingSet, SupervisionSet

from slimasr.data import synth
from slimasr.data.manifests import read_split
from slimasr.data.synth import (
    SAMPLE_RATE,
    SPLITS,
    UNSEEN_SYNTH_SPLIT,
    SynthConfig,
    UtterancePlan,
    colored_noise,
    render_utterance,
    split_voices,
    synthesize_corpus,
)
from slimasr.data.synthesizers.base import randomization_off
from slimasr.data.synthesizers.flite import Flite
from slimasr.data.synthesizers.piper import Piper
from slimasr.errors import ConfigError, DataError
from tests.data.test_synthesizers import needs

ALL_SPLITS = (*SPLITS, UNSEEN_SYNTH_SPLIT)
pytestmark = needs("espeak", "flite", "festival")  # the default synthesizers


def tiny(**overrides) -> SynthConfig:
    """About 36 s of train audio and 6 utterances in each evaluation split: seconds to build."""
    values = dict(hours=0.01, min_eval_utterances=6, dev_variants=2, test_variants=3,
                  num_workers=1)  # fmt: skip
    return SynthConfig(**{**values, **overrides})


def tiny_espeak(**overrides) -> SynthConfig:
    """eSpeak alone, for the tests about the folder rather than the voices (faster)."""
    return tiny(**{"synthesizers": ["espeak"], "unseen_synth": None, **overrides})


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
    for split in ALL_SPLITS:
        for kind in ("recordings", "supervisions", "cuts"):
            with gzip.open(root / f"{split}_{kind}.jsonl.gz", "rt") as f:
                lines += [line.replace(str(root.resolve()), "DIR") for line in f]
    return lines


def audio_of(root: Path) -> dict[str, np.ndarray]:
    files = sorted((root / "audio").rglob("*.flac"))
    return {str(p.relative_to(root)): sf.read(p, dtype="int16")[0] for p in files}


# ---- the data-directory contract ------------------------------------------------------------
def test_layout_and_summary(corpus: Path) -> None:
    for split in ALL_SPLITS:
        for kind in ("recordings", "supervisions", "cuts"):
            assert (corpus / f"{split}_{kind}.jsonl.gz").is_file()
    summary = json.loads((corpus / "corpus.json").read_text())
    assert summary["seed"] == 0 and summary["sample_rate"] == SAMPLE_RATE
    assert summary["config"]["hours"] == 0.01
    assert summary["vocabulary_size"] >= 300
    assert summary["grammar_sentences_at_least"] == 100_000
    assert [summary["splits"][s]["utterances"] for s in ALL_SPLITS[1:]] == [6, 6, 6]
    assert summary["test_unseen_sentence_share"] == 0.5
    assert not list(corpus.parent.glob(".tmp-*"))  # no temporary folders left beside it


def test_train_holds_the_requested_hours_and_no_more(corpus: Path) -> None:
    durations = [c.duration for c in cuts_of(corpus, "train")]
    assert sum(durations) >= 0.01 * 3600 > sum(durations[:-1])
    summary = json.loads((corpus / "corpus.json").read_text())
    assert summary["splits"]["train"]["hours"] == pytest.approx(sum(durations) / 3600, abs=1e-4)
    assert len(list((corpus / "audio" / "train").iterdir())) == len(durations)


def test_cuts_are_lhotse_loadable_and_match_the_audio(corpus: Path) -> None:
    for split in ALL_SPLITS:
        recordings = RecordingSet.from_jsonl_lazy(corpus / f"{split}_recordings.jsonl.gz")
        supervisions = SupervisionSet.from_jsonl_lazy(corpus / f"{split}_supervisions.jsonl.gz")
        assert len(list(recordings)) == len(list(supervisions)) == len(cuts_of(corpus, split))
        for cut in read_split(corpus, split):  # (resolves the relative audio paths)
            (sup,) = cut.supervisions
            assert sup.text and sup.speaker == f"{cut.custom['synthesizer']}:{cut.custom['voice']}"
            assert sup.custom["intent"] and isinstance(sup.custom["slots"], dict)
            assert (sup.custom["synthesizer"], sup.custom["voice"]) == (
                cut.custom["synthesizer"], cut.custom["voice"])  # fmt: skip
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

    synthesize_corpus(tmp_path / "made", tiny_espeak(hours=0.002), show_progress=False)
    moved = (tmp_path / "made").rename(tmp_path / "moved")
    for cut in cuts_of(moved, "test"):
        assert cut.recording.sources[0].source == f"audio/test/{cut.id}.flac"
    train_model(tiny_recipe(epochs=1, max_steps=1), moved, tmp_path / "model", show_progress=False)
    result = evaluate_model(tmp_path / "model", moved / "test_cuts.jsonl.gz",
                            EvalConfig(latency_seconds=0.5), show_progress=False)
    assert result["num_utterances"] == 6


def test_relative_paths_false_writes_absolute_paths(tmp_path: Path) -> None:
    out = tmp_path / "c"
    synthesize_corpus(out, tiny_espeak(hours=0.002, relative_paths=False), show_progress=False)
    for cut in cuts_of(out, "dev"):
        assert cut.recording.sources[0].source == str(out.resolve() / "audio" / "dev" / f"{cut.id}.flac")


# ---- voice, synthesizer and sentence splits ------------------------------------------------
def test_dev_and_test_speakers_never_occur_in_train(corpus: Path) -> None:
    def speakers(split: str) -> set[str]:
        return {f"{c.custom['synthesizer']}:{c.custom['speaker']}" for c in cuts_of(corpus, split)}

    used = {s: speakers(s) for s in ALL_SPLITS}
    assigned = split_voices(tiny())
    for split in ALL_SPLITS:
        assert used[split] <= {f"{f}:{v}" for f, names in assigned[split].items() for v in names}
    for i, first in enumerate(ALL_SPLITS):
        for second in ALL_SPLITS[i + 1 :]:
            assert not used[first] & used[second], (first, second)


def test_voices_are_split_by_family() -> None:
    voices = split_voices(tiny())
    assert voices[UNSEEN_SYNTH_SPLIT] == {"flite": sorted(Flite.VOICES)}  # the whole family
    assert [len(voices[s]["espeak"]) for s in ("dev", "test")] == [2, 3]
    assert len(voices["train"]["espeak"]) == len(tiny().variants) - 5
    assert "festival" not in voices["dev"]  # three voices: one for test, two for train
    assert [len(voices[s]["festival"]) for s in ("train", "test")] == [2, 1]
    assert all("flite" not in voices[s] for s in SPLITS)
    everything = tiny(unseen_synth=None)
    assert UNSEEN_SYNTH_SPLIT not in split_voices(everything)
    assert [len(split_voices(everything)[s]["flite"]) for s in SPLITS] == [3, 1, 1]
    with_piper = split_voices(tiny(synthesizers=["espeak", "flite", "festival", "piper"]))
    assert with_piper["train"]["piper"] == ["joe"]  # one voice: train only
    assert all("piper" not in with_piper[s] for s in ("dev", "test", UNSEEN_SYNTH_SPLIT))
    assert with_piper["train"]["festival"] == split_voices(tiny())["train"]["festival"]


def test_cuts_record_synthesizer_voice_and_conditions(corpus: Path) -> None:
    cuts = [c for s in ALL_SPLITS for c in cuts_of(corpus, s)]
    assert {c.custom["synthesizer"] for c in cuts_of(corpus, UNSEEN_SYNTH_SPLIT)} == {"flite"}
    assert {c.custom["synthesizer"] for c in cuts_of(corpus, "train")} == {"espeak", "festival"}
    for cut in cuts:
        custom = cut.custom
        if custom["synthesizer"] == "espeak":
            assert custom["voice"] == f"{custom['accent']}+{custom['speaker']}"
            assert custom["warp"] == 1.0
        else:
            assert custom["voice"] == custom["speaker"] and custom["accent"] is None
            assert 0.92 <= custom["warp"] <= 1.08
        assert custom["room"] in synth.ROOMS and custom["channel"] in synth.CHANNELS
        assert isinstance(custom["microphone"], bool)
    summary = json.loads((corpus / "corpus.json").read_text())
    assert summary["synthesizers"]["flite"]["packages"] == {"flite": Flite().versions()["flite"]}
    assert summary["synthesizers"]["flite"]["speakers"] == {UNSEEN_SYNTH_SPLIT: sorted(Flite.VOICES)}
    counts = summary["splits"]["train"]["synthesizers"]
    assert sum(counts.values()) == summary["splits"]["train"]["utterances"]
    assert summary["fixed_addresses"] is randomization_off()  # Festival ran without ASLR (if allowed)


@needs("piper")
def test_a_corpus_with_piper_speaks_it_in_train_and_records_its_packages(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    synthesize_corpus(out, tiny(synthesizers=["espeak", "flite", "festival", "piper"], hours=0.03),
                      show_progress=False)  # fmt: skip
    spoken = [c for c in cuts_of(out, "train") if c.custom["synthesizer"] == "piper"]
    assert spoken and all(c.custom["voice"] == "joe" and 0.92 <= c.custom["warp"] <= 1.08
                          for c in spoken)  # fmt: skip
    assert all(c.custom["synthesizer"] != "piper" for s in ("dev", "test") for c in cuts_of(out, s))
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["synthesizers"]["piper"]["packages"] == Piper().versions()
    assert summary["synthesizers"]["piper"]["speakers"] == {"train": ["joe"]}


def test_a_system_that_keeps_randomization_on_is_named_in_one_line(monkeypatch, caplog) -> None:
    import logging

    monkeypatch.setattr(synth, "randomization_off", lambda: False)
    with caplog.at_level(logging.WARNING):
        synth._warn_if_addresses_move(tiny_espeak())  # no Festival: nothing to say
        synth._warn_if_addresses_move(tiny())
    assert [r.getMessage() for r in caplog.records] == [
        "warning: this system does not let Festival run without address-space randomization: a "
        "few of its diphone utterances may differ from run to run (docs/corpus.md)"]


def test_conditions_follow_their_shares() -> None:
    """Planning alone (no audio): 2,000 plans, each share within a few points of its setting."""
    config = SynthConfig()
    voices = split_voices(config)["train"]
    grammar = synth.smart_home_grammar()
    plans = [synth._plan_train(grammar, config, voices, set(), i) for i in range(2000)]
    share = lambda test: sum(map(test, plans)) / len(plans)  # noqa: E731
    assert share(lambda p: p.synthesizer == "espeak") == pytest.approx(0.6, abs=0.04)
    assert share(lambda p: p.room == "near") == pytest.approx(0.25, abs=0.04)
    assert share(lambda p: p.room == "far") == pytest.approx(0.1, abs=0.03)
    assert share(lambda p: p.microphone) == pytest.approx(0.5, abs=0.04)
    assert share(lambda p: p.channel == "telephone") == pytest.approx(0.05, abs=0.02)
    assert share(lambda p: p.channel in ("vorbis", "opus", "mp3")) == pytest.approx(0.1, abs=0.03)
    assert all(-35 <= p.peak_dbfs <= -20 for p in plans if p.room == "far")


def test_half_of_test_sentences_are_unseen_in_train(corpus: Path) -> None:
    train = {c.supervisions[0].text for c in cuts_of(corpus, "train")}
    for split in ALL_SPLITS[1:]:
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
    assert split_voices(tiny(seed=1)) != split_voices(tiny())


# ---- safety ---------------------------------------------------------------------------------
def test_refuses_to_overwrite_a_complete_corpus(corpus: Path) -> None:
    before = (corpus / "corpus.json").read_text()
    with pytest.raises(DataError, match=str(corpus)):
        synthesize_corpus(corpus, tiny(seed=3), show_progress=False)
    assert (corpus / "corpus.json").read_text() == before


def test_overwrite_replaces_a_corpus(tmp_path: Path) -> None:
    out = tmp_path / "c"
    synthesize_corpus(out, tiny_espeak(hours=0.002, seed=1), show_progress=False)
    summary = synthesize_corpus(out, tiny_espeak(hours=0.002, seed=2), overwrite=True,
                                show_progress=False)  # fmt: skip
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
    with pytest.raises(ConfigError, match=r"synthesizers must be distinct names among \['espeak'"):
        SynthConfig(synthesizers=["espeak", "sam"])
    with pytest.raises(ConfigError, match="unseen_synth must be one of synthesizers"):
        SynthConfig(synthesizers=["espeak", "festival"])  # the default unseen_synth is flite
    with pytest.raises(ConfigError, match="unseen_synth must be one of synthesizers, and not the only"):
        SynthConfig(synthesizers=["flite"])
    with pytest.raises(ConfigError, match="reverb_share \\+ far_field_share must be <= 1"):
        SynthConfig(reverb_share=0.8, far_field_share=0.3)
    with pytest.raises(ConfigError, match="codecs must be among"):
        SynthConfig(codecs=["aac"])


def test_a_split_without_voices_is_refused() -> None:
    config = tiny(synthesizers=["festival", "flite"])  # festival holds out no dev voice
    with pytest.raises(ConfigError, match="no voice left for dev"):
        split_voices(config)


def test_a_missing_synthesizer_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(Flite, "missing", classmethod(lambda cls: "flite not found"))
    with pytest.raises(ConfigError, match="synthesizer flite is not usable here .*apt-get install"):
        synthesize_corpus(tmp_path / "c", tiny(), show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_dev_and_test_sizes_scale_with_hours_above_a_minimum() -> None:
    assert [SynthConfig().eval_size(s) for s in ("dev", "test")] == [250, 400]
    assert SynthConfig().eval_size(UNSEEN_SYNTH_SPLIT) == 400
    assert [SynthConfig(hours=3).eval_size(s) for s in ("dev", "test")] == [500, 800]
    assert [SynthConfig(hours=0.1).eval_size(s) for s in ("dev", "test")] == [100, 100]
    assert SynthConfig().splits() == ALL_SPLITS
    assert SynthConfig(unseen_synth=None).splits() == SPLITS


# ---- rendering ------------------------------------------------------------------------------
def plan(**overrides) -> UtterancePlan:
    values = dict(split="train", index=0, text="turn on the lights", intent="lights_on", slots={},
                  synthesizer="espeak", speaker="m3", accent="en-us", rate=170, pitch=50,
                  pitch_range=50, warp=1.0, room="none", microphone=False, channel="none",
                  noise="none", snr_db=None, peak_dbfs=-6.0, lead_s=0.25, trail_s=0.5, seed=3)
    return UtterancePlan(**{**values, **overrides})  # fmt: skip


def test_render_sets_peak_silence_and_snr() -> None:
    config = SynthConfig()
    clean = render_utterance(plan(), config).astype(np.float64)
    assert np.abs(clean).max() == pytest.approx(32768 * 10 ** (-6 / 20), rel=0.01)
    lead = clean[: int(0.25 * SAMPLE_RATE)]
    assert np.std(lead) == pytest.approx(config.dither_lsb, rel=0.2)  # only dither before speech
    noisy = render_utterance(plan(noise="white", snr_db=10.0), config).astype(np.float64)
    assert len(noisy) == len(clean)
    noise_in_lead = np.std(noisy[: int(0.25 * SAMPLE_RATE)])
    assert noise_in_lead > 20 * np.std(lead)


@pytest.mark.parametrize("synthesizer, speaker", [("flite", "slt"), ("festival", "kal_diphone"),
                                                  pytest.param("piper", "joe", marks=needs("piper"))])
def test_warp_resamples_other_families(synthesizer: str, speaker: str) -> None:
    config = SynthConfig()
    base = plan(synthesizer=synthesizer, speaker=speaker, accent=None)
    plain = synth.speak(base, config)
    high = synth.speak(plan(**{**base.__dict__, "warp": 1.08}), config)
    assert len(plain) / len(high) == pytest.approx(1.08, rel=0.01)  # faster, and higher


def band_db(audio: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    return float(10 * np.log10(power[(freqs >= low) & (freqs < high)].sum() / power.sum()))


def test_render_applies_the_planned_conditions() -> None:
    config = SynthConfig()
    dry = render_utterance(plan(), config)
    phone = render_utterance(plan(channel="telephone"), config)
    assert band_db(phone, 4000, 8000) < band_db(dry, 4000, 8000) - 20
    assert len(phone) == len(dry)
    far = render_utterance(plan(room="far", peak_dbfs=-30.0), config)
    assert np.abs(far).max() == pytest.approx(32768 * 10 ** (-30 / 20), rel=0.01)
    trail = slice(len(dry) - int(0.45 * SAMPLE_RATE), len(dry) - int(0.3 * SAMPLE_RATE))
    assert np.std(far[trail]) > 3 * np.std(dry[trail])  # the room rings on after the speech
    for changed in (dict(microphone=True), dict(channel="opus"), dict(room="near")):
        other = render_utterance(plan(**changed), config)
        assert len(other) == len(dry) and not np.array_equal(other, dry), changed
        np.testing.assert_array_equal(other, render_utterance(plan(**changed), config))


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


def test_unlabelled_corpus_has_no_text_and_only_train_voices(tmp_path: Path) -> None:
    out = tmp_path / "unl"
    summary = synthesize_corpus(out, tiny(unlabelled=True, hours=0.004), show_progress=False)
    assert summary["unlabelled"] is True and summary["fixed_addresses"] is randomization_off()
    assert not (out / "unlabelled_supervisions.jsonl.gz").exists()
    assert not (out / "train_cuts.jsonl.gz").exists()
    cuts = cuts_of(out, "unlabelled")
    assert cuts and all(not c.supervisions for c in cuts)
    assert all(c.id.startswith("unlabelled_") for c in cuts)
    train_voices = split_voices(tiny())["train"]
    allowed = {f"{f}:{v}" for f, names in train_voices.items() for v in names}
    assert {f"{c.custom['synthesizer']}:{c.custom['speaker']}" for c in cuts} <= allowed
    # its own random stream: not the labelled train split's first utterances
    labelled = [synth._plan_train(synth.smart_home_grammar(), tiny(), train_voices, set(), i)
                for i in range(len(cuts))]
    unlabelled = [synth._plan_train(synth.smart_home_grammar(), tiny(), train_voices, set(), i,
                                    "unlabelled") for i in range(len(cuts))]
    assert [p.text for p in labelled] != [p.text for p in unlabelled]
    with gzip.open(out / "unlabelled_cuts.jsonl.gz", "rt") as f:
        assert '"text"' not in f.read()  # the manifest holds no text


def test_cli_unlabelled_flag_sets_the_config_field() -> None:
    from slimasr.cli import _synth_config, build_parser

    args = build_parser().parse_args(["corpus", "synth", "--out", "O", "--unlabelled", "--hours", "3"])
    config = _synth_config(args)
    assert config.unlabelled is True and config.hours == 3.0
    assert _synth_config(build_parser().parse_args(["corpus", "synth", "--out", "O"])).unlabelled is False


def test_general_share_draws_train_sentences_from_the_text_and_keeps_evaluation_smart_home(
    tmp_path: Path,
) -> None:
    sentences = ["the cat sat on the mat", "she hummed a melody softly", "a long way from home"]
    text = tmp_path / "general.txt"
    text.write_text("\n".join(sentences) + "\nThe 3 bears\n")  # digits: left out
    out = tmp_path / "corpus"
    summary = synthesize_corpus(out, tiny_espeak(general_share=0.5, general_text=str(text)),
                                show_progress=False)  # fmt: skip
    general = [c for c in cuts_of(out, "train") if c.supervisions[0].text in sentences]
    assert {c.supervisions[0].custom["intent"] for c in general} == {synth.GENERAL_INTENT}
    assert 0 < len(general) < len(cuts_of(out, "train"))
    for split in ("dev", "test"):
        assert not {c.supervisions[0].text for c in cuts_of(out, split)} & set(sentences)
    assert summary["general_text"]["source"] == str(text)
    assert summary["general_text"]["sentences"] == 3 and summary["general_text"]["share"] == 0.5


def test_general_share_zero_leaves_the_train_plans_as_they_were() -> None:
    grammar, voices = synth.smart_home_grammar(), split_voices(tiny_espeak())["train"]
    plain = [synth._plan_train(grammar, tiny_espeak(), voices, set(), i) for i in range(20)]
    unused = [synth._plan_train(grammar, tiny_espeak(), voices, set(), i, "train", ["a b c"])
              for i in range(20)]  # fmt: skip
    assert plain == unused
    mixed = [synth._plan_train(grammar, tiny_espeak(general_share=0.5), voices, set(), i, "train",
                               ["a b c"]) for i in range(40)]  # fmt: skip
    assert 5 < sum(p.text == "a b c" for p in mixed) < 35


def test_a_missing_general_text_is_one_line_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing.txt"):
        synthesize_corpus(tmp_path / "c", tiny_espeak(general_share=0.5,
                                                      general_text=str(tmp_path / "nothing.txt")))
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match="general_share must be in"):
        tiny_espeak(general_share=-0.5)
    with pytest.raises(ConfigError, match="general_share must be < 1"):
        tiny_espeak(general_share=1.0)
