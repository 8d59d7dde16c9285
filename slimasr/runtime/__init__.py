"""Offline runtime for exported bundles (onnxruntime): no training code, no PyTorch model.

    recognizer = OnnxRecognizer("exp/teacher_bundle")   # same interface as slimasr.recognize
    text = recognizer.transcribe(audio)

``slimasr export`` writes the bundle (``slimasr.runtime.bundle`` describes its files).
"""

from slimasr.runtime.bundle import (
    BUNDLE_FILE,
    INT8_FILE,
    MODEL_FILE,
    TOKENS_FILE,
    Bundle,
    is_bundle,
    read_bundle,
    tokens_txt,
)
from slimasr.runtime.recognizer import OnnxRecognizer, measure_session_latency, open_session, run_session

__all__ = [
    "BUNDLE_FILE", "INT8_FILE", "MODEL_FILE", "TOKENS_FILE", "Bundle", "OnnxRecognizer",
    "is_bundle", "measure_session_latency", "open_session", "read_bundle", "run_session",
    "tokens_txt",
]
