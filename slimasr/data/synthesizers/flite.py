"""CMU Flite (Debian package ``flite``): diphone and statistical-parametric voices, by subprocess."""

from __future__ import annotations

import subprocess

import numpy as np

from slimasr.data.synthesizers.base import NORMAL_RATE, Prosody, Synthesizer, run_to_wav


class Flite(Synthesizer):
    """The English voices built into Debian's ``flite`` binary.

    kal is a diphone voice at 8 kHz, kal16 its 16 kHz diphone sibling; awb (Scottish English), rms
    and slt (US) are clustergen voices trained on CMU ARCTIC recordings. awb_time, a
    limited-domain voice that only says times, is left out. Flite is deterministic; rate scales
    its ``duration_stretch`` (pitch settings have no effect on the clustergen voices, so none
    are used).
    """

    name = "flite"
    programs = ("flite",)
    VOICES = {"kal": "flite", "kal16": "flite", "awb": "flite", "rms": "flite", "slt": "flite"}

    @classmethod
    def installed_voices(cls) -> list[str]:
        done = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=60)
        listed = done.stdout.partition(":")[2].split()  # "Voices available: kal awb_time ..."
        return sorted(set(listed) & set(cls.VOICES))

    def synthesize(self, text: str, voice: str, prosody: Prosody = Prosody()
                   ) -> tuple[np.ndarray, int]:  # fmt: skip
        self._check_voice(voice)
        stretch = f"{NORMAL_RATE / prosody.rate:.4f}"
        return run_to_wav(["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}",
                           "-t", text, "-o", "{wav}"])  # fmt: skip
