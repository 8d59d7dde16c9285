"""Online features equal the offline ones (slimasr.data.features.compute_fbank), whatever pieces
the audio arrives in; the last frames come only with finish()."""

from __future__ import annotations

import numpy as np
import pytest

from slimasr.data.features import FeatureConfig, compute_fbank, num_frames
from slimasr.errors import ConfigError
from slimasr.streaming import online_features
from tests.train.helpers import synth

CONFIGS = [FeatureConfig(num_mel_bins=80, dither=0.0),
           FeatureConfig(num_mel_bins=40, sampling_rate=8000, dither=0.0)]


def audios(sampling_rate: int) -> dict[str, np.ndarray]:
    """Tone-corpus speech, and clips shorter than one window, one window, and one frame hop."""
    rng = np.random.default_rng(0)
    speech = synth("lamp on fan", rng)[:: 16000 // sampling_rate]
    return {"speech": speech, "tiny": speech[:150], "window": speech[:sampling_rate // 40],
            "odd": speech[:12347]}


def stream_features(cfg: FeatureConfig, backend: str, audio: np.ndarray, piece: int) -> np.ndarray:
    online = online_features(cfg, backend)
    frames = [online.accept(audio[i:i + piece]) for i in range(0, len(audio), piece)]
    return np.concatenate([*frames, online.finish()])


@pytest.mark.parametrize("cfg", CONFIGS, ids=["80 bins 16 kHz", "40 bins 8 kHz"])
def test_lhotse_online_frames_equal_the_offline_frames_for_every_frame(cfg):
    for name, audio in audios(cfg.sampling_rate).items():
        offline = compute_fbank(audio, cfg).numpy()
        assert offline.shape == (num_frames(len(audio), cfg), cfg.num_mel_bins)
        for piece in (1, 77, 160, 1280, len(audio)):
            if piece == 1 and len(audio) > 2000:
                continue  # sample by sample only on the short clips (seconds otherwise)
            online = stream_features(cfg, "lhotse", audio, piece)
            assert online.shape == offline.shape, (name, piece)
            assert np.abs(online - offline).max() <= 1e-4, (name, piece)


@pytest.mark.parametrize("backend", ["lhotse", "kaldi-native-fbank"])
def test_the_last_frames_come_only_with_finish(backend):
    cfg = CONFIGS[0]
    audio = audios(cfg.sampling_rate)["speech"]
    online = online_features(cfg, backend)
    early = len(online.accept(audio))
    late = len(online.finish())
    # frame t's 400-sample window starts at sample 160 t - 120 (the first 120 reflected): frames
    # whose window reaches past the last sample wait for finish(), which reflects the audio's end
    complete = (len(audio) + 120 - 400) // 160 + 1
    assert (early, early + late) == (complete, num_frames(len(audio), cfg)) and late > 0


@pytest.mark.parametrize("cfg", CONFIGS, ids=["80 bins 16 kHz", "40 bins 8 kHz"])
def test_kaldi_native_fbank_is_configured_like_the_offline_fbank(cfg):
    """sherpa-onnx's fbank with our options. Brown noise: after pre-emphasis its spectrum is flat,
    so float32 rounding stays far below 1e-4 and any differing option (window, mel scale, pre-
    emphasis, DC removal, edges, sample scale) would show. (On tonal audio two float32 fbanks
    differ by up to ~1e-3 in bins 40-90 dB below a frame's peak: docs/streaming.md.)"""
    rng = np.random.default_rng(1)
    audio = (0.002 * np.cumsum(rng.standard_normal(cfg.sampling_rate))).astype(np.float32)
    offline = compute_fbank(audio, cfg).numpy()
    for piece in (77, 1280):
        online = stream_features(cfg, "kaldi-native-fbank", audio, piece)
        assert online.shape == offline.shape
        assert np.abs(online - offline).max() <= 1e-4


def test_a_feature_config_that_cannot_stream_is_refused_in_words():
    with pytest.raises(ConfigError, match="spectral gate .* cannot run on a stream"):
        online_features(FeatureConfig(denoise=True))
    with pytest.raises(ConfigError, match="unknown online feature backend 'torchaudio'"):
        online_features(FeatureConfig(), "torchaudio")
