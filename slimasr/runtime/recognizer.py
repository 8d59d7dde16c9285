"""Recognize audio with an ONNX bundle on onnxruntime: the counterpart of ``slimasr.recognize``.

    recognizer = OnnxRecognizer("exp/teacher_bundle")          # model.onnx (fp32)
    recognizer = OnnxRecognizer("exp/teacher_bundle/model.int8.onnx")
    log_probs = recognizer.log_probs(audio)                     # (T', V) float32
    text = recognizer.transcribe(audio)                         # audio: (S,) float32 at 16 kHz
    log_probs, lens = recognizer(x, x_lens)                     # a batch, like a slimasr model

Features are computed exactly as training computed them (``slimasr.data.features``, no dither)
but without CMVN, which the graph holds. Audio with NaN/inf samples or an absurd peak is refused
with the one-line DataError that ``load_audio`` gives for such a file (``checked_audio``).
Nothing here imports training code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from slimasr.data.audio import samples_problem
from slimasr.data.features import compute_fbank
from slimasr.decode import DecodeConfig, make_decoder
from slimasr.errors import DataError
from slimasr.frontend import Frontend
from slimasr.runtime.bundle import bundle_graph, read_bundle
from slimasr.runtime.timing import latency_stats

FRAMES_PER_SECOND = 100  # 10 ms fbank frames (the latency input's length)
AUDIO_NAME = "audio"  # what a DataError about an array (no file) names


@dataclass
class TokenList:
    """The part of a tokenizer that decoding needs: a bundle ships tokens, not a tokenizer model."""

    tokens: list[str]  # tokens[0] is the blank


def checked_audio(audio: np.ndarray) -> np.ndarray:
    """``audio`` as ``(S,)`` float32, or a one-line DataError: not mono samples, NaN/inf samples or
    an absurd peak (``slimasr.data.audio.samples_problem``, what ``load_audio`` refuses in a file)."""
    samples = np.asarray(audio)
    if samples.ndim != 1:
        raise DataError(AUDIO_NAME, f"has shape {samples.shape}; expected (S,) mono samples")
    if problem := samples_problem(samples):
        raise DataError(AUDIO_NAME, problem)
    return samples.astype(np.float32, copy=False)


def open_session(path: str | Path, num_threads: int = 1):
    """An onnxruntime CPU session with ``num_threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, x: torch.Tensor | np.ndarray, x_lens: torch.Tensor | np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """``x: (N, T, F)`` float32, ``x_lens: (N,)`` int64 -> ``(N, T', V)`` float32, ``(N,)`` int64."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    x_lens = np.ascontiguousarray(x_lens, dtype=np.int64)
    log_probs, lens = session.run(None, {"x": x, "x_lens": x_lens})
    return log_probs, lens


class OnnxRecognizer:
    """A bundle ready to transcribe: its front end (no CMVN), an onnxruntime session, a decoder.
    ``path``: the bundle folder (its fp32 model.onnx) or one of its .onnx files."""

    def __init__(self, path: str | Path, decode: DecodeConfig | None = None, num_threads: int = 1):
        folder, int8 = bundle_graph(path)
        self.bundle = read_bundle(folder)
        self.model_path = self.bundle.model_path(int8=int8)
        self.session = open_session(self.model_path, num_threads)
        tokenizer = self.bundle.tokenizer() or TokenList(self.bundle.tokens)
        self.frontend = Frontend(tokenizer, self.bundle.features, None, self.bundle.normalizer)
        self.decoder = make_decoder(self.bundle.tokens, decode or DecodeConfig(),
                                    word_sep=self.bundle.word_separator)
        self._lens_session = None  # the graph's x_lens -> log_probs_len part (output_lengths)

    def __call__(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A slimasr model's contract: ``(N, T, F)`` raw fbank, ``(N,)`` -> ``(N, T', V)``, ``(N,)``."""
        log_probs, lens = run_session(self.session, x.cpu().numpy(), x_lens.cpu().numpy())
        return torch.from_numpy(log_probs), torch.from_numpy(lens)

    def output_lengths(self, x_lens: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(N,)`` input frames -> ``(N,)`` int64 output frames, as the graph computes them (its
        ``x_lens -> log_probs_len`` part, cut out once: no features are run)."""
        if self._lens_session is None:
            self._lens_session = lengths_session(self.model_path)
        lens = np.ascontiguousarray(x_lens, dtype=np.int64)
        return self._lens_session.run(None, {"x_lens": lens})[0]

    def features(self, audio: np.ndarray) -> torch.Tensor:
        """``audio: (S,)`` 16 kHz float mono in [-1, 1] -> ``(T, F)`` raw log-mel fbank."""
        return compute_fbank(checked_audio(audio), self.bundle.features)

    def log_probs(self, audio: np.ndarray) -> torch.Tensor:
        """``audio: (S,)`` float32 mono at 16 kHz -> ``(T', V)`` float32 log-posteriors."""
        feats = self.features(audio)
        log_probs, lens = self(feats[None], torch.tensor([feats.shape[0]], dtype=torch.int64))
        return log_probs[0, : int(lens[0])]

    def transcribe(self, audio: np.ndarray) -> str:
        """The decoded text of one utterance."""
        return self.transcribe_batch([audio])[0]

    def transcribe_batch(self, audios: Sequence[np.ndarray]) -> list[str]:
        """The decoded texts of several utterances, run as one padded batch."""
        x, x_lens = self.frontend.batch([checked_audio(a) for a in audios])
        return self.decoder.decode_batch(*self(x, x_lens))

    def latency(self, seconds: float = 3.0, warmup: int = 5, runs: int = 30) -> dict[str, float]:
        """Batch-1 latency on ``seconds`` of random fbank, with this session's threads:
        ``{"latency_ms_p50", "latency_ms_p90", "rtf"}`` (the keys ``evaluate`` reports)."""
        return measure_session_latency(self.session, self.bundle.features.num_mel_bins, seconds,
                                       warmup, runs)


def lengths_session(model_path: str | Path):
    """An onnxruntime session of the part of a bundle graph that turns ``x_lens`` into
    ``log_probs_len`` (``onnx.utils.Extractor``): the output lengths without running the model."""
    import onnx
    import onnx.utils
    import onnxruntime as ort

    part = onnx.utils.Extractor(onnx.load(str(model_path))).extract_model(["x_lens"], ["log_probs_len"])
    return ort.InferenceSession(part.SerializeToString(), providers=["CPUExecutionProvider"])


def measure_session_latency(session, feat_dim: int, seconds: float = 3.0, warmup: int = 5,
                            runs: int = 30) -> dict[str, float]:
    """Batch-1 wall-clock latency of one session call on ``seconds`` of input, after warm-up."""
    frames = int(round(seconds * FRAMES_PER_SECOND))
    x = np.random.default_rng(0).standard_normal((1, frames, feat_dim)).astype(np.float32)
    x_lens = np.array([frames], dtype=np.int64)
    timings = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        run_session(session, x, x_lens)
        if i >= warmup:
            timings.append(time.perf_counter() - start)
    return latency_stats(timings, seconds)
