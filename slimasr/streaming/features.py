"""Online log-mel features: each frame as soon as its window is complete, equal to the offline ones.

    online = online_features(FeatureConfig())      # or online_features(cfg, "kaldi-native-fbank")
    frames = online.accept(samples)    # (t, F) float32: the frames these samples completed
    frames = online.finish()           # (t, F): the last frames, whose windows reach past the end

Together the frames are those of ``slimasr.data.features.compute_fbank`` on the whole audio
(Kaldi fbank, snip_edges false: frame t is centred on sample t * shift + shift / 2; the first
window reflects the audio's start, the last ones its end, so they come only after ``finish``).
Samples are float in [-1, 1] at ``cfg.sampling_rate``; no dither (inference is deterministic).

Two implementations of the same fbank:

- ``lhotse`` (the default): lhotse's own Kaldi fbank, the one training and offline recognition
  use, run on the completed windows only; online frames equal offline ones to float rounding.
- ``kaldi-native-fbank``: the C++ online fbank sherpa-onnx computes with, given every option of
  ours. It agrees with lhotse only to float32 precision: |diff| up to 1.3e-4 on white noise and
  1.7e-3 on the tone corpus, in bins 40-90 dB below the frame's loudest (a float64 reference is
  as far from both; docs/streaming.md).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from slimasr.data.features import FeatureConfig, fbank_extractor
from slimasr.errors import ConfigError

FEATURE_BACKENDS = ("lhotse", "kaldi-native-fbank")  # online fbank implementations
KALDI_LOW_FREQ = 20.0  # Hz: lhotse's Kaldi-compatible mel range (FbankConfig defaults) ...
KALDI_HIGH_FREQ = -400.0  # ... up to Nyquist - 400 Hz
LOG_FLOOR = float(np.finfo(np.float32).eps)  # lhotse's floor on mel power before the log


class OnlineFeatures(Protocol):
    """What the streaming recognizer needs from an online front end."""

    def accept(self, samples: np.ndarray) -> np.ndarray: ...  # (S,) -> (t, F) new frames

    def finish(self) -> np.ndarray: ...  # -> (t, F) the frames only the end completes


def online_features(cfg: FeatureConfig, backend: str = "lhotse") -> OnlineFeatures:
    """A fresh online front end for one stream (``backend``: one of ``FEATURE_BACKENDS``)."""
    if cfg.denoise:
        raise ConfigError("features.denoise: the spectral gate estimates its noise profile over the "
                          "whole utterance, so it cannot run on a stream")
    if backend == "lhotse":
        return LhotseOnlineFbank(cfg)
    if backend == "kaldi-native-fbank":
        return KaldiNativeOnlineFbank(cfg)
    raise ConfigError(f"unknown online feature backend {backend!r} (known: {', '.join(FEATURE_BACKENDS)})")


class LhotseOnlineFbank:
    """lhotse's Kaldi fbank (``Wav2LogFilterBank.online_inference``) on completed windows.

    lhotse's online inference reflects the first samples itself but has no end of stream; the
    last windows are completed here as the offline extractor completes them (the audio's last
    samples reflected), so every frame equals its offline counterpart.
    """

    def __init__(self, cfg: FeatureConfig):
        self.extractor = fbank_extractor(cfg).extractor  # dither 0
        self.length = self.extractor.wav2win._length  # window, in samples (400 at 16 kHz)
        self.shift = self.extractor.wav2win._shift  # hop, in samples (160)
        self.num_bins = cfg.num_mel_bins
        self.pending = np.zeros(0, dtype=np.float32)  # samples before the first window is complete
        self.remainder: torch.Tensor | None = None  # (1, s): samples of windows not yet complete
        self.total = 0  # samples accepted
        self.emitted = 0  # frames returned

    def accept(self, samples: np.ndarray) -> np.ndarray:
        wave = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.total += wave.size
        if self.remainder is None:
            self.pending = np.concatenate([self.pending, wave])
            # lhotse reflects the first window's first (length - shift) / 2 samples itself
            if self.pending.size < self.length - (self.length - self.shift) // 2:
                return self._frames(None)
            wave, self.pending = self.pending, np.zeros(0, dtype=np.float32)
        return self._run(wave)

    def finish(self) -> np.ndarray:
        """The remaining frames: the windows past the end hold the last samples reflected."""
        if self.remainder is None:  # shorter than one window: the offline extractor, whole
            if self.pending.size == 0:
                return self._frames(None)
            with torch.inference_mode():
                return self._frames(self.extractor(torch.from_numpy(self.pending)[None])[0])
        frames = (self.total + self.shift // 2) // self.shift  # what the offline extractor yields
        tail = (frames - 1) * self.shift + self.length - self.total - (self.length - self.shift) // 2
        last = self.remainder[:, self.remainder.shape[1] - tail:]  # the remainder holds >= tail samples
        return self._run(last[0].flip(0).numpy())

    def _run(self, wave: np.ndarray) -> np.ndarray:
        samples = torch.from_numpy(wave)[None]
        if self.remainder is not None and self.remainder.shape[1] + wave.size < self.length:
            self.remainder = torch.cat([self.remainder, samples], dim=1)  # no window completed
            return self._frames(None)
        with torch.inference_mode():
            feats, self.remainder = self.extractor.online_inference(samples, context=self.remainder)
        return self._frames(feats[0])

    def _frames(self, feats: torch.Tensor | None) -> np.ndarray:
        if feats is None or feats.numel() == 0:
            return np.zeros((0, self.num_bins), dtype=np.float32)
        self.emitted += feats.shape[0]
        return feats.numpy().astype(np.float32, copy=False)


class KaldiNativeOnlineFbank:
    """kaldi-native-fbank's ``OnlineFbank`` (sherpa-onnx's front end) with our options."""

    def __init__(self, cfg: FeatureConfig):
        import kaldi_native_fbank as knf

        self.fbank = knf.OnlineFbank(knf_options(cfg))
        self.sampling_rate = cfg.sampling_rate
        self.num_bins = cfg.num_mel_bins
        self.emitted = 0

    def accept(self, samples: np.ndarray) -> np.ndarray:
        wave = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.fbank.accept_waveform(self.sampling_rate, wave)  # float in [-1, 1], not scaled
        return self._new_frames()

    def finish(self) -> np.ndarray:
        self.fbank.input_finished()
        return self._new_frames()

    def _new_frames(self) -> np.ndarray:
        ready = self.fbank.num_frames_ready
        if ready == self.emitted:
            return np.zeros((0, self.num_bins), dtype=np.float32)
        frames = np.stack([self.fbank.get_frame(i) for i in range(self.emitted, ready)])
        self.emitted = ready
        return frames.astype(np.float32, copy=False)


def knf_options(cfg: FeatureConfig):
    """kaldi-native-fbank options equal to lhotse's Kaldi-compatible ``Fbank`` for ``cfg``."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    frame = opts.frame_opts
    frame.samp_freq = float(cfg.sampling_rate)
    frame.frame_shift_ms = cfg.frame_shift * 1000.0
    frame.frame_length_ms = cfg.frame_length * 1000.0
    frame.dither = 0.0  # inference: deterministic
    frame.preemph_coeff = 0.97
    frame.remove_dc_offset = True
    frame.window_type = "povey"
    frame.round_to_power_of_two = True
    frame.snip_edges = False
    mel = opts.mel_opts
    mel.num_bins = cfg.num_mel_bins
    mel.low_freq = KALDI_LOW_FREQ
    mel.high_freq = KALDI_HIGH_FREQ
    mel.is_librosa = False  # Kaldi's mel scale and triangular filters, not librosa's
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    opts.use_log_floor = True
    opts.eps = LOG_FLOOR
    return opts
