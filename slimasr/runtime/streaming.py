"""Streaming recognition with a bundle on onnxruntime: the counterpart of slimasr.streaming.

    recognizer = OnnxStreamingRecognizer("exp/causal_bundle", chunk_ms=160)
    stream = recognizer.stream()
    for samples in audio_chunks:                 # float32 in [-1, 1] at 16 kHz, any length
        partial = stream.accept(samples)         # the text so far
    final = stream.finish()

It runs the bundle's ``model.streaming.onnx`` (written by ``slimasr export`` for a causal model), or
with ``int8`` its ``model.streaming.int8.onnx`` (``slimasr export --int8``):
``x`` (1, T, F) raw fbank and the state tensors -> ``log_probs`` (1, T', V) and the new states,
which go back in with the next chunk; every state starts at zero. ``bundle.json``'s ``streaming``
entry lists them (docs/streaming.md). Nothing here imports training code or a PyTorch model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slimasr.errors import DataError
from slimasr.runtime.bundle import (
    BUNDLE_FILE,
    INT8_FILE,
    MODEL_FILE,
    STREAMING_FILE,
    STREAMING_INT8_FILE,
    read_bundle,
)
from slimasr.runtime.recognizer import open_session
from slimasr.streaming.features import online_features
from slimasr.streaming.stream import DEFAULT_CHUNK_MS, Stream, chunk_samples_for, stream_array


class OnnxStep:
    """The streaming graph on the next frames of one stream; the state tensors are kept here."""

    def __init__(self, session, states: list[dict[str, Any]]):
        self.session = session
        self.names = [s["name"] for s in states]
        self.state = {s["name"]: np.zeros(s["shape"], dtype=s["dtype"]) for s in states}

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """``(T, F)`` raw log-mel frames -> ``(T', V)`` log-probs."""
        x = np.ascontiguousarray(feats[None], dtype=np.float32)
        log_probs, *states = self.session.run(None, {"x": x, **self.state})
        self.state = dict(zip(self.names, states))
        return log_probs[0]


class OnnxStreamingRecognizer:
    """A bundle's streaming graph ready to stream. ``path``: the bundle folder or one of its
    streaming .onnx files (``model.streaming.int8.onnx`` means ``int8``); ``chunk_ms`` and
    ``features`` as for ``slimasr.streaming.StreamingRecognizer``."""

    def __init__(self, path: str | Path, chunk_ms: float = DEFAULT_CHUNK_MS, features: str = "lhotse",
                 num_threads: int = 1, int8: bool = False):
        folder, int8 = streaming_graph(Path(path), int8)
        self.bundle = read_bundle(folder)
        self.info = self.bundle.info.get("streaming")
        if not self.info:
            raise DataError(folder / BUNDLE_FILE, f"has no streaming graph ({STREAMING_FILE}): its model "
                            "is not causal (slimasr export writes one for a unidirectional, causal CRNN)")
        name = self.info.get("int8_file") if int8 else self.info["file"]
        if not name or not (folder / name).is_file():
            raise DataError(folder, f"has no {STREAMING_INT8_FILE} (export the causal model with --int8)")
        self.int8 = int8
        self.session = open_session(folder / name, num_threads)
        self.feature_backend = features
        online_features(self.bundle.features, features)  # fails now on a config that cannot stream
        self.chunk_ms = chunk_ms
        self.chunk_samples = chunk_samples_for(chunk_ms, self.sampling_rate)

    @property
    def sampling_rate(self) -> int:
        return self.bundle.features.sampling_rate

    def stream(self, keep_log_probs: bool = False) -> Stream:
        """A new utterance (its own features, graph state and text)."""
        return Stream(online_features(self.bundle.features, self.feature_backend),
                      OnnxStep(self.session, self.info["states"]), self.chunk_samples,
                      int(self.info["chunk_multiple"]), self.bundle.tokens, self.bundle.word_separator,
                      keep_log_probs=keep_log_probs)

    def transcribe(self, audio: np.ndarray) -> str:
        """Stream a whole array in ``chunk_ms`` pieces; the final text."""
        return stream_array(self.stream(), audio, self.chunk_ms, self.sampling_rate)


def streaming_graph(path: Path, int8: bool) -> tuple[Path, bool]:
    """``(bundle folder, int8)`` for a bundle folder or one of its graphs: an offline graph names
    the streaming graph of the same precision (model.int8.onnx: model.streaming.int8.onnx)."""
    if path.suffix != ".onnx":
        return path, int8
    names = {STREAMING_FILE: False, MODEL_FILE: False, STREAMING_INT8_FILE: True, INT8_FILE: True}
    if path.name not in names:
        raise DataError(path, f"not a bundle graph (streaming runs the bundle's {STREAMING_FILE} or "
                              f"{STREAMING_INT8_FILE}): pass one of those or the bundle folder")
    return path.parent, int8 or names[path.name]
