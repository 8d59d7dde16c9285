"""Augmentation: SpecAugment masks, speed perturbation, noise mixing, config checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment

from slimasr.data.augment import AugmentConfig, cut_transforms, load_noise_cuts, spec_augment
from slimasr.data.features import FeatureConfig, compute_fbank, num_frames
from slimasr.errors import ConfigError, DataError

SR = 16000


def make_cut(root: Path, name: str, audio: np.ndarray, text: str = "hi") -> MonoCut:
    path = root / f"{name}.wav"
    sf.write(path, audio.astype(np.float32), SR, subtype="FLOAT")
    rec = Recording.from_file(path, recording_id=name)
    sup = SupervisionSegment(name, name, 0.0, rec.duration, text=text)
    return MonoCut(name, 0.0, rec.duration, 0, recording=rec, supervisions=[sup])


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> MonoCut:
    t = np.arange(SR) / SR  # 1.0 s
    return make_cut(tmp_path_factory.mktemp("speech"), "speech", 0.3 * np.sin(2 * np.pi * 300 * t))


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> CutSet:
    audio = 0.1 * np.random.default_rng(0).standard_normal(3 * SR)  # 3 s, longer than speech
    return CutSet.from_cuts([make_cut(tmp_path_factory.mktemp("noise"), "noise", audio)])


def _masked_columns(x: torch.Tensor) -> int:
    """Mel bins of a ``(T, F)`` matrix that are constant over time (i.e. masked)."""
    return int((x.std(dim=0) == 0).sum())


def test_spec_augment_masks_only_valid_frames() -> None:
    torch.manual_seed(0)
    cfg = AugmentConfig(spec_augment_prob=1.0, time_warp=0)
    feats = torch.randn(2, 300, 80)
    lens = torch.tensor([300, 200])
    out = spec_augment(cfg)(feats, lens)
    assert out.shape == feats.shape
    assert not torch.equal(out[0], feats[0]) and not torch.equal(out[1, :200], feats[1, :200])
    assert torch.equal(out[1, 200:], feats[1, 200:])  # padding untouched
    assert feats.std() > 0.99  # input not modified in place
    changed_frames = (out[1, :200] != feats[1, :200]).all(dim=1).sum()
    assert changed_frames <= 0.15 * 200  # time masks stay within max_time_mask_fraction


def test_spec_augment_freq_masks_only() -> None:
    torch.manual_seed(1)
    cfg = AugmentConfig(spec_augment_prob=1.0, time_warp=0, num_time_masks=0, num_freq_masks=2)
    feats = torch.randn(4, 100, 80)
    out = spec_augment(cfg)(feats)
    for i in range(4):
        masked = _masked_columns(out[i])
        assert 1 <= masked <= 2 * (cfg.freq_mask_width - 1)
        # no time mask: every frame still has unmasked bins equal to the input
        assert ((out[i] == feats[i]).any(dim=1)).all()


def test_spec_augment_disabled_parts_are_identity() -> None:
    cfg = AugmentConfig(spec_augment_prob=1.0, time_warp=0, num_time_masks=0, num_freq_masks=0)
    feats = torch.randn(2, 50, 80)
    assert torch.equal(spec_augment(cfg)(feats), feats)
    never = AugmentConfig(spec_augment_prob=0.0)
    assert torch.equal(spec_augment(never)(feats), feats)


def test_spec_augment_skips_utterances_too_short_to_mask() -> None:
    cfg = AugmentConfig(spec_augment_prob=1.0)
    feats = torch.randn(1, 5, 80)  # 5 frames * 0.15 < 1 frame
    assert torch.equal(spec_augment(cfg)(feats, torch.tensor([5])), feats)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_frames(speech: MonoCut, factor: float) -> None:
    (perturb,) = cut_transforms(AugmentConfig(speed_perturb=(factor,)))
    (cut,) = perturb(CutSet.from_cuts([speech]))
    assert cut.id == speech.id
    audio = cut.load_audio()
    assert abs(audio.shape[-1] - speech.num_samples / factor) <= 1
    frames = compute_fbank(audio, FeatureConfig()).shape[0]
    assert frames == num_frames(audio.shape[-1], FeatureConfig())
    assert abs(frames - 100 / factor) <= 1  # 1.0 s = 100 frames before perturbation


def test_noise_mixing_keeps_length_hits_snr_and_changes_features(speech: MonoCut, noise: CutSet) -> None:
    cfg = AugmentConfig(noise_prob=1.0, noise_snr=(5.0, 5.0))
    (mix,) = cut_transforms(cfg, noise_cuts=noise)
    (mixed,) = mix(CutSet.from_cuts([speech]))
    assert mixed.id == speech.id and mixed.duration == speech.duration
    clean, noisy = speech.load_audio()[0], mixed.load_audio()[0]
    assert noisy.shape == clean.shape
    snr = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert abs(snr - 5.0) < 0.5
    cfg_f = FeatureConfig(dither=0.0)
    a, b = compute_fbank(clean, cfg_f), compute_fbank(noisy, cfg_f)
    assert a.shape == b.shape and (b - a).abs().mean() > 0.5


def test_noise_prob_zero_and_no_noise_give_no_transform(noise: CutSet) -> None:
    assert cut_transforms(AugmentConfig()) == []
    assert cut_transforms(AugmentConfig(noise_prob=0.0), noise_cuts=noise) == []


def test_load_noise_cuts_from_recordings_and_errors(noise: CutSet, tmp_path: Path) -> None:
    recs = RecordingSet.from_recordings([c.recording for c in noise])
    recs.to_file(tmp_path / "noise_recordings.jsonl.gz")
    loaded = load_noise_cuts(tmp_path / "noise_recordings.jsonl.gz")
    assert len(loaded) == 1 and loaded[0].duration == 3.0
    with pytest.raises(DataError, match="not found"):
        load_noise_cuts(tmp_path / "nope.jsonl.gz")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="cannot read noise manifest"):
        load_noise_cuts(tmp_path / "bad.jsonl")
    cfg = AugmentConfig(noise_cuts=str(tmp_path / "noise_recordings.jsonl.gz"), noise_prob=1.0)
    assert len(cut_transforms(cfg)) == 1 and cfg.on_waveform


def test_augment_config_checks() -> None:
    cfg = AugmentConfig.from_dict({"speed_perturb": [0.9, 1.0, 1.1], "noise_snr": [5, 15]})
    assert cfg.speed_perturb == (0.9, 1.0, 1.1) and cfg.noise_snr == (5.0, 15.0)
    assert cfg.on_waveform and not AugmentConfig().on_waveform
    assert AugmentConfig.from_dict(AugmentConfig().to_dict()) == AugmentConfig()
    with pytest.raises(ConfigError, match="unknown keys"):
        AugmentConfig.from_dict({"specaug": True})
    with pytest.raises(ConfigError, match="noise_snr"):
        AugmentConfig(noise_snr=(20.0, 10.0))
    with pytest.raises(ConfigError, match="noise_prob"):
        AugmentConfig(noise_prob=1.5)
