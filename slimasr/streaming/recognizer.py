"""Streaming recognition with a model directory (PyTorch): a causal model, chunk by chunk.

    recognizer = StreamingRecognizer("exp/causal_student", chunk_ms=160)
    stream = recognizer.stream()
    for samples in audio_chunks:                 # float32 in [-1, 1] at 16 kHz, any length
        partial = stream.accept(samples)         # the text so far
    final = stream.finish()
    text = recognizer.transcribe(audio)          # the same, on a whole array, in chunk_ms pieces
    recognizer = load_streaming_recognizer(path) # a model dir, or a bundle (onnxruntime)

Only a causal model streams: the unidirectional CRNN with causal convolutions (its state: each
conv's last input frames and each recurrent layer's (h, c); ``slimasr.models.crnn``). Features are
computed online and normalized with the model's global CMVN; the model sees exactly the frames it
would see offline, so the streamed log-probs equal the offline ones (tests/streaming).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from slimasr.decode import word_separator
from slimasr.errors import DataError
from slimasr.frontend import Frontend
from slimasr.streaming.features import online_features
from slimasr.streaming.stream import DEFAULT_CHUNK_MS, Stream, chunk_samples_for, stream_array


def streaming_problem(model) -> str | None:
    """Why ``model`` cannot run chunk by chunk, or None when it can."""
    check = getattr(model, "streaming_problem", None)
    if check is not None:
        return check()
    if model.arch == "conformer":
        return "its self-attention and convolution modules see the whole utterance (full context)"
    if model.arch == "dnn" and model.config.context_right > 0:
        return (f"its frame stacking looks {model.config.context_right} frames ahead "
                "(model.config.context_right)")
    return f"streaming is built for the unidirectional, causal CRNN, not for a {model.arch} model"


class TorchStep:
    """The model on the next frames of one stream: CMVN, ``forward_chunk``, state kept here."""

    def __init__(self, model, frontend: Frontend):
        self.model = model
        self.cmvn = frontend.cmvn
        self.state = model.init_stream(batch=1)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """``(T, F)`` raw log-mel frames -> ``(T', V)`` log-probs."""
        x = torch.from_numpy(feats)[None]
        if self.cmvn is not None:
            x = self.cmvn(x)
        with torch.inference_mode():
            log_probs, self.state = self.model.forward_chunk(x, self.state)
        return log_probs[0].numpy()


class StreamingRecognizer:
    """A causal model directory ready to stream. ``chunk_ms``: audio between two model runs;
    ``features``: the online fbank (``lhotse``, exactly the offline features, or
    ``kaldi-native-fbank``, sherpa-onnx's; slimasr.streaming.features)."""

    def __init__(self, model_dir: str | Path, chunk_ms: float = DEFAULT_CHUNK_MS,
                 features: str = "lhotse"):
        from slimasr.models import load_model

        model_dir = Path(model_dir)
        self.model = load_model(model_dir).eval()
        problem = streaming_problem(self.model)
        if problem is not None:
            raise DataError(model_dir / "config.json", f"cannot stream this model: {problem}")
        self.frontend = Frontend.load(model_dir)
        if self.model.config.num_features != self.frontend.features.num_mel_bins:
            raise DataError(model_dir / "config.json", f"the model takes {self.model.config.num_features} "
                            f"features, the feature config gives {self.frontend.features.num_mel_bins}")
        self.feature_backend = features
        online_features(self.frontend.features, features)  # fails now on a config that cannot stream
        self.chunk_ms = chunk_ms
        self.chunk_samples = chunk_samples_for(chunk_ms, self.sampling_rate)

    @property
    def sampling_rate(self) -> int:
        return self.frontend.features.sampling_rate

    def stream(self, keep_log_probs: bool = False) -> Stream:
        """A new utterance (its own features, model state and text)."""
        return Stream(online_features(self.frontend.features, self.feature_backend),
                      TorchStep(self.model, self.frontend), self.chunk_samples, self.model.subsampling,
                      self.frontend.tokenizer.tokens, word_separator(self.frontend.tokenizer.kind),
                      keep_log_probs=keep_log_probs)

    def transcribe(self, audio: np.ndarray) -> str:
        """Stream a whole array in ``chunk_ms`` pieces; the final text."""
        return stream_array(self.stream(), audio, self.chunk_ms, self.sampling_rate)


def load_streaming_recognizer(path: str | Path, chunk_ms: float = DEFAULT_CHUNK_MS):
    """The streaming recognizer a folder calls for: ``OnnxStreamingRecognizer`` (onnxruntime) for
    an exported bundle (or its .onnx files), else ``StreamingRecognizer`` (PyTorch)."""
    from slimasr.runtime import is_bundle

    if is_bundle(path):
        from slimasr.runtime.streaming import OnnxStreamingRecognizer

        return OnnxStreamingRecognizer(path, chunk_ms)
    return StreamingRecognizer(path, chunk_ms)
