"""Features: fbank shapes, lilcom precomputation, global CMVN, spectral gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

from slimasr.data.features import (
    CMVN_STD_FLOOR,
    FEATURE_CUTS_NAME,
    FeatureConfig,
    GlobalCmvn,
    compute_fbank,
    fbank_extractor,
    num_frames,
    precompute_features,
    spectral_gate,
)
from slimasr.data.audio import bad_audio_mark
from slimasr.errors import ConfigError, DataError
from tests.data.fixtures import BAD_SAMPLES, write_bad_audio

SR = 16000
LILCOM_ATOL = 2.0**-5  # lilcom tick_power=-5 rounds to multiples of 1/32 (error <= 1/64), + slack


def write_cuts(root: Path, durations: list[float], seed: int = 0) -> Path:
    """Tone + noise wav files and a lazy-readable cut manifest; returns the manifest path."""
    rng = np.random.default_rng(seed)
    cuts = []
    for i, dur in enumerate(durations):
        t = np.arange(int(round(dur * SR))) / SR
        audio = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.02 * rng.standard_normal(t.size)
        path = root / f"utt{i}.wav"
        sf.write(path, audio.astype(np.float32), SR)
        rec = Recording.from_file(path, recording_id=f"utt{i}")
        sup = SupervisionSegment(f"utt{i}", rec.id, 0.0, rec.duration, text=f"utt {i}")
        cuts.append(MonoCut(f"utt{i}", 0.0, rec.duration, 0, recording=rec, supervisions=[sup]))
    manifest = root / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(manifest)
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cuts(tmp_path_factory.mktemp("corpus"), [0.5, 1.0, 0.77, 1.234])


@pytest.fixture(scope="module")
def cfg() -> FeatureConfig:
    return FeatureConfig(dither=0.0)  # deterministic, so stored and fresh features can match


@pytest.mark.parametrize("num_samples,expected", [(16000, 100), (12345, 77), (8080, 51), (400, 3)])
def test_fbank_shape_matches_lhotse_frame_rule(num_samples: int, expected: int) -> None:
    cfg = FeatureConfig()
    audio = np.random.default_rng(0).standard_normal(num_samples).astype(np.float32) * 0.1
    feats = compute_fbank(audio, cfg)
    assert num_frames(num_samples, cfg) == expected
    assert feats.shape == (expected, 80) and feats.dtype == torch.float32


def test_extractor_is_kaldi_fbank_unless_denoising() -> None:
    assert fbank_extractor(FeatureConfig()).name == "kaldi-fbank"
    assert fbank_extractor(FeatureConfig(denoise=True)).name == "slimasr-gated-fbank"
    assert fbank_extractor(FeatureConfig(num_mel_bins=40)).feature_dim(SR) == 40


def test_dither_changes_features_only_when_on() -> None:
    audio = np.zeros(4000, dtype=np.float32)  # digital silence
    plain = compute_fbank(audio, FeatureConfig(dither=0.0), dither=True)
    assert torch.equal(plain, compute_fbank(audio, FeatureConfig(dither=0.0), dither=True))
    dithered = compute_fbank(audio, FeatureConfig(), dither=True)
    assert dithered.mean() > plain.mean() + 1  # high bins leave the log floor
    assert not torch.equal(dithered, compute_fbank(audio, FeatureConfig(), dither=True))


@pytest.mark.parametrize("denoise", [False, True])
def test_features_are_deterministic_unless_training_asks_for_dither(denoise: bool) -> None:
    """Inference features: the same audio gives bit-identical features, whatever the config's
    dither (it is a training augmentation; runtimes such as sherpa-onnx use dither 0)."""
    audio = np.random.default_rng(1).standard_normal(8000).astype(np.float32) * 0.01
    audio[:2000] = 0.0  # digital silence, where dither shows most
    cfg = FeatureConfig(denoise=denoise)
    assert cfg.dither > 0
    first = compute_fbank(audio, cfg)
    assert torch.equal(first, compute_fbank(audio, cfg))
    assert torch.equal(first, compute_fbank(audio, FeatureConfig(denoise=denoise, dither=0.0)))
    assert not torch.equal(first, compute_fbank(audio, cfg, dither=True))


def test_precomputed_equal_on_the_fly(corpus: Path, cfg: FeatureConfig, tmp_path: Path) -> None:
    cuts = CutSet.from_jsonl_lazy(corpus)
    out = precompute_features(cuts, tmp_path / "feats", cfg, show_progress=False)
    assert out.is_lazy
    assert sorted(p.name for p in (tmp_path / "feats").iterdir()) == [FEATURE_CUTS_NAME, "feats-0.lca"]
    assert [p.name for p in tmp_path.iterdir()] == ["feats"]  # no temporary leftovers
    assert [c.id for c in out] == [c.id for c in cuts]
    for cut in out:
        stored = torch.from_numpy(cut.load_features())
        fresh = compute_fbank(cut.load_audio(), cfg)
        assert stored.shape == fresh.shape == (num_frames(cut.num_samples, cfg), 80)
        assert torch.allclose(stored, fresh, atol=LILCOM_ATOL)


def test_precompute_parallel_keeps_order_and_values(corpus: Path, cfg: FeatureConfig, tmp_path: Path) -> None:
    cuts = CutSet.from_jsonl_lazy(corpus)
    serial = precompute_features(cuts, tmp_path / "a", cfg, show_progress=False)
    parallel = precompute_features(cuts, tmp_path / "b", cfg, num_jobs=2, show_progress=False)
    assert [c.id for c in parallel] == [c.id for c in serial]
    assert {Path(c.features.storage_path).name for c in parallel} == {"feats-0.lca", "feats-1.lca"}
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a.load_features(), b.load_features())


def test_precompute_bad_audio_is_one_line_error_and_keeps_old_output(
    corpus: Path, cfg: FeatureConfig, tmp_path: Path
) -> None:
    good = CutSet.from_jsonl_lazy(corpus)
    precompute_features(good, tmp_path / "feats", cfg, show_progress=False)
    before = (tmp_path / "feats" / FEATURE_CUTS_NAME).read_bytes()
    broken = tmp_path / "broken.wav"
    sf.write(broken, np.zeros(SR, dtype=np.float32), SR)
    rec = Recording.from_file(broken, recording_id="bad")
    broken.write_bytes(b"RIFF but not really a wav file")  # corrupt after the manifest is made
    bad = CutSet.from_cuts([MonoCut("bad", 0.0, rec.duration, 0, recording=rec)])
    with pytest.raises(DataError) as err:
        precompute_features(bad, tmp_path / "feats", cfg, show_progress=False)
    assert str(err.value).startswith(str(broken)) and "cut bad" in str(err.value)
    assert "\n" not in str(err.value)
    assert (tmp_path / "feats" / FEATURE_CUTS_NAME).read_bytes() == before


def test_precompute_refuses_a_folder_it_does_not_own(corpus: Path, cfg: FeatureConfig, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train_cuts.jsonl.gz").write_text("precious")
    with pytest.raises(DataError, match="train_cuts.jsonl.gz"):
        precompute_features(CutSet.from_jsonl_lazy(corpus), tmp_path / "data", cfg, show_progress=False)
    assert (tmp_path / "data" / "train_cuts.jsonl.gz").read_text() == "precious"


def test_cmvn_normalizes_its_own_data_and_round_trips(corpus: Path, cfg: FeatureConfig, tmp_path: Path) -> None:
    cuts = CutSet.from_jsonl_lazy(corpus)
    cmvn = GlobalCmvn.compute(cuts, cfg, show_progress=False)
    assert cmvn.mean.shape == cmvn.std.shape == (80,)
    all_feats = torch.cat([compute_fbank(c.load_audio(), cfg) for c in cuts])  # (sum T, F)
    normed = cmvn(all_feats)
    assert torch.allclose(normed.mean(dim=0), torch.zeros(80), atol=1e-4)
    assert torch.allclose(normed.std(dim=0, unbiased=False), torch.ones(80), atol=1e-3)
    batched = cmvn(all_feats[None])  # (1, T, F) works too
    assert torch.equal(batched[0], normed)

    cmvn.save(tmp_path / "cmvn.json")
    loaded = GlobalCmvn.load(tmp_path / "cmvn.json")
    assert torch.equal(loaded.mean, cmvn.mean) and torch.equal(loaded.std, cmvn.std)


def test_cmvn_from_stored_features_matches_fresh(corpus: Path, cfg: FeatureConfig, tmp_path: Path) -> None:
    cuts = CutSet.from_jsonl_lazy(corpus)
    stored = precompute_features(cuts, tmp_path / "feats", cfg, show_progress=False)
    a = GlobalCmvn.compute(cuts, cfg, show_progress=False)
    b = GlobalCmvn.compute(stored, cfg, show_progress=False)
    assert torch.allclose(a.mean, b.mean, atol=LILCOM_ATOL)


def test_cmvn_max_cuts_uses_first_cuts(corpus: Path, cfg: FeatureConfig) -> None:
    cuts = CutSet.from_jsonl_lazy(corpus)
    cmvn = GlobalCmvn.compute(cuts, cfg, max_cuts=2, show_progress=False)
    first_two = torch.cat([compute_fbank(c.load_audio(), cfg) for c in cuts.subset(first=2)])
    assert torch.allclose(cmvn.mean, first_two.mean(dim=0).float(), atol=1e-4)


def test_cmvn_std_floor() -> None:
    cmvn = GlobalCmvn(mean=torch.zeros(2), std=torch.tensor([0.0, 2.0]).clamp_min(CMVN_STD_FLOOR))
    assert torch.isfinite(cmvn(torch.ones(3, 2))).all()


@pytest.mark.parametrize(
    "content,problem",
    [
        ("not json", "not valid JSON"),
        (json.dumps({"mean": [0.0]}), "not a CMVN file"),
        (json.dumps({"dim": 2, "mean": [0.0], "std": [1.0, 1.0]}), "must both have 2 values"),
        (json.dumps({"dim": 1, "mean": [0.0], "std": [0.0]}), "std positive"),
        (json.dumps({"dim": 1, "mean": ["a"], "std": [1.0]}), "lists of numbers"),
    ],
)
def test_cmvn_load_rejects_bad_files(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "cmvn.json"
    path.write_text(content)
    with pytest.raises(DataError, match=problem) as err:
        GlobalCmvn.load(path)
    assert str(err.value).startswith(str(path))


def test_feature_config_from_dict_rejects_unknown_keys() -> None:
    assert FeatureConfig.from_dict({"num_mel_bins": 40}).num_mel_bins == 40
    assert FeatureConfig.from_dict(FeatureConfig().to_dict()) == FeatureConfig()
    with pytest.raises(ConfigError, match="num_mels"):
        FeatureConfig.from_dict({"num_mels": 40})
    with pytest.raises(ConfigError, match="odd"):
        FeatureConfig(denoise_smooth_time=4)


def _tone_in_noise(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, slice, slice]:
    """1.2 s of white noise (std 0.03) with a 1 kHz tone (amp 0.3) from 0.4 s to 0.9 s."""
    rng = np.random.default_rng(seed)
    n = int(1.2 * SR)
    noise = 0.03 * rng.standard_normal(n)
    tone = np.zeros(n)
    on = slice(int(0.4 * SR), int(0.9 * SR))
    tone[on] = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(on.stop - on.start) / SR)
    quiet = slice(int(0.05 * SR), int(0.35 * SR))  # noise only, away from the tone's edges
    inner = slice(on.start + 800, on.stop - 800)  # tone, away from its edges
    return torch.tensor(tone + noise, dtype=torch.float32), torch.tensor(tone), quiet, inner


def _db(x: torch.Tensor) -> float:
    return float(10 * torch.log10(x.double().pow(2).mean()))


def test_spectral_gate_removes_noise_keeps_tone() -> None:
    noisy, tone, quiet, inner = _tone_in_noise()
    gated = spectral_gate(noisy, FeatureConfig(denoise=True))
    assert gated.shape == noisy.shape
    assert _db(gated[quiet]) < _db(noisy[quiet]) - 15  # noise-only region: > 15 dB quieter
    # The tone survives: its projection keeps its level within 0.1 dB.
    t = tone[inner] / tone[inner].norm()
    kept = float(gated[inner].double() @ t) / float(tone[inner] @ t)
    assert abs(20 * np.log10(kept)) < 0.1


def test_denoise_front_end_lowers_noise_frames_in_features() -> None:
    noisy, _, quiet, inner = _tone_in_noise()
    plain = compute_fbank(noisy.numpy(), FeatureConfig(dither=0.0))
    gated = compute_fbank(noisy.numpy(), FeatureConfig(dither=0.0, denoise=True))
    assert plain.shape == gated.shape
    q = slice(quiet.start // 160 + 2, quiet.stop // 160 - 2)
    i = slice(inner.start // 160 + 2, inner.stop // 160 - 2)
    assert gated[q].mean() < plain[q].mean() - 3  # log-mel: noise frames lose > e^3 in energy
    tone_bin = plain[i].mean(dim=0).argmax()
    assert abs(gated[i, tone_bin].mean() - plain[i, tone_bin].mean()) < 0.2


def test_spectral_gate_leaves_clips_shorter_than_a_window() -> None:
    short = torch.randn(100)
    assert torch.equal(spectral_gate(short, FeatureConfig(denoise=True)), short)


# ---------------------------------------------------------------------------------------------
# Audio with NaN/inf or absurd samples


def _with_bad_cut(corpus: Path, tmp_path: Path, kind: str) -> CutSet:
    """The corpus's cuts plus one whose file holds NaN/inf or absurd samples."""
    path = write_bad_audio(tmp_path / f"{kind}.wav", kind)
    rec = Recording.from_file(path, recording_id="bad")
    sup = SupervisionSegment("bad", "bad", 0.0, rec.duration, text="bad")
    bad = MonoCut("bad", 0.0, rec.duration, 0, recording=rec, supervisions=[sup])
    return CutSet.from_cuts([*CutSet.from_jsonl_lazy(corpus), bad])


@pytest.mark.parametrize("kind", ["nan", "loud"])
def test_precompute_marks_bad_samples_instead_of_storing_them(
    corpus: Path, cfg: FeatureConfig, tmp_path: Path, kind: str
) -> None:
    """Ten NaN samples used to be stored as NaN features (and poison CMVN and the model)."""
    out = list(precompute_features(_with_bad_cut(corpus, tmp_path, kind), tmp_path / "feats", cfg,
                                   show_progress=False))
    assert [c.id for c in out] == ["utt0", "utt1", "utt2", "utt3", "bad"]
    assert not out[-1].has_features and bad_audio_mark(out[-1]) == BAD_SAMPLES[kind]
    assert all(c.has_features and bad_audio_mark(c) is None for c in out[:-1])
    assert all(np.isfinite(c.load_features()).all() for c in out[:-1])


def test_cmvn_leaves_out_bad_audio(corpus: Path, cfg: FeatureConfig, tmp_path: Path) -> None:
    clean = GlobalCmvn.compute(CutSet.from_jsonl_lazy(corpus), cfg, show_progress=False)
    with_bad = _with_bad_cut(corpus, tmp_path, "nan")
    fresh = GlobalCmvn.compute(with_bad, cfg, show_progress=False)  # computed from audio
    stored = precompute_features(with_bad, tmp_path / "feats", cfg, show_progress=False)
    marked = GlobalCmvn.compute(stored, cfg, show_progress=False)  # the bad cut is marked
    assert torch.equal(fresh.mean, clean.mean) and torch.equal(fresh.std, clean.std)
    assert torch.allclose(marked.mean, clean.mean, atol=LILCOM_ATOL)
