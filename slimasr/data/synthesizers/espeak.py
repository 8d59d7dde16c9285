"""eSpeak NG (formant synthesis) through :mod:`slimasr.data.espeak`: 8 accents x ~100 variants."""

from __future__ import annotations

import numpy as np

from slimasr.data.espeak import ESpeak, list_english_voices
from slimasr.data.synthesizers.base import Prosody, Synthesizer, python_version


class ESpeakFamily(Synthesizer):
    """Voices ``"BASE+VARIANT"`` (e.g. ``"en-us+m3"``); the library ships in espeakng-loader.

    MBROLA voices (``mb-us1`` ...) would be eSpeak voices too, but the ``mbrola`` program and its
    voices are in Debian's non-free and contrib sections only, which this machine does not use.
    """

    name = "espeak"

    def __init__(self) -> None:
        self._espeak = ESpeak()

    @classmethod
    def missing(cls) -> str | None:
        return None  # a Python dependency of slimasr

    @classmethod
    def install_command(cls) -> str:
        return "pip install espeakng-loader"

    def voices(self) -> list[str]:
        return list_english_voices()

    def synthesize(self, text: str, voice: str, prosody: Prosody = Prosody()
                   ) -> tuple[np.ndarray, int]:  # fmt: skip
        samples = self._espeak.synthesize(text, voice, prosody.rate, prosody.pitch,
                                          prosody.pitch_range, prosody.seed)  # fmt: skip
        return samples.astype(np.float32) / 32768.0, ESpeak.sample_rate

    def versions(self) -> dict[str, str]:
        return {"espeakng-loader": python_version("espeakng-loader")}
