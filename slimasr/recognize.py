"""Recognize audio with a trained model directory: features, the model, a decoder.

    recognizer = Recognizer("exp/teacher")                # or Recognizer(dir, DecodeConfig(...))
    log_probs = recognizer.log_probs(audio)               # (T', V) float32, deterministic
    text = recognizer.transcribe(audio)                   # audio: (S,) float32 at 16 kHz
    recognizer = load_recognizer(path)                    # a model dir, or an ONNX bundle

Inference is deterministic: features carry no dither (``slimasr.data.features``) and the model
runs in eval mode, so the same audio gives bit-identical log-probs on every call. Audio with
NaN/inf samples or an absurd peak is refused with the one-line DataError ``load_audio`` gives
(``slimasr.runtime.recognizer.checked_audio``); text is joined at the tokenizer's word separator
(a space for characters, "▁" for sentencepiece pieces).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from slimasr.decode import DecodeConfig, make_decoder, word_separator
from slimasr.frontend import Frontend
from slimasr.runtime.recognizer import checked_audio


class Recognizer:
    """A model directory ready to transcribe: its front end, model (eval mode) and decoder."""

    def __init__(self, model_dir: str | Path, decode: DecodeConfig | None = None):
        from slimasr.models import load_model

        self.model = load_model(model_dir).eval()
        self.frontend = Frontend.load(model_dir)
        tokenizer = self.frontend.tokenizer
        self.decoder = make_decoder(tokenizer.tokens, decode or DecodeConfig(),
                                    word_sep=word_separator(tokenizer.kind))

    def log_probs(self, audio: np.ndarray) -> torch.Tensor:
        """``audio: (S,)`` float32 mono at 16 kHz -> ``(T', V)`` float32 log-posteriors."""
        x, x_lens = self.frontend.batch([checked_audio(audio)])
        with torch.inference_mode():
            log_probs, lens = self.model(x, x_lens)
        return log_probs[0, : int(lens[0])]

    def transcribe(self, audio: np.ndarray) -> str:
        """The decoded text of one utterance."""
        log_probs = self.log_probs(audio)
        lens = torch.tensor([log_probs.shape[0]], dtype=torch.int64)
        return self.decoder.decode_batch(log_probs[None], lens)[0]


def load_recognizer(path: str | Path, decode: DecodeConfig | None = None):
    """The recognizer a folder calls for: an ``OnnxRecognizer`` (onnxruntime) for an exported
    bundle (a folder holding bundle.json, or one of its .onnx files), else a ``Recognizer``."""
    from slimasr.runtime import OnnxRecognizer, is_bundle

    return OnnxRecognizer(path, decode) if is_bundle(path) else Recognizer(path, decode)
