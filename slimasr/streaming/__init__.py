"""Streaming recognition: a causal model fed by online features, chunk by chunk, greedy CTC.

    recognizer = StreamingRecognizer("exp/causal_student", chunk_ms=160)   # PyTorch
    recognizer = load_streaming_recognizer("exp/causal_bundle")            # or onnxruntime
    stream = recognizer.stream()
    for samples in audio_chunks:
        partial = stream.accept(samples)     # the text so far
    final = stream.finish()

docs/streaming.md describes the state carried between chunks, the streaming ONNX graph and the
measurements.
"""

from slimasr.streaming.features import FEATURE_BACKENDS, online_features
from slimasr.streaming.recognizer import StreamingRecognizer, load_streaming_recognizer, streaming_problem
from slimasr.streaming.stream import (
    DEFAULT_CHUNK_MS,
    Stream,
    chunk_frames_for,
    chunk_samples_for,
    stream_array,
)

__all__ = ["DEFAULT_CHUNK_MS", "FEATURE_BACKENDS", "Stream", "StreamingRecognizer", "chunk_frames_for",
           "chunk_samples_for",
           "load_streaming_recognizer", "online_features", "stream_array", "streaming_problem"]
