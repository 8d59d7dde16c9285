"""The Festival Speech Synthesis System (Debian ``festival`` + ``festvox-*``), by subprocess."""

from __future__ import annotations

import subprocess

import numpy as np

from slimasr.data.synthesizers.base import (
    NORMAL_RATE,
    Prosody,
    Synthesizer,
    debian_version,
    run_to_wav,
)

_SCALE = 0.5  # text2wave's volume factor: at 1.0 the diphone voices clip (peak 1.0 measured)


class Festival(Synthesizer):
    """Festival's English voices in Debian main, driven through ``text2wave``.

    kal_diphone and ked_diphone are residual-LPC diphone voices (16 kHz, US male); the
    cmu_us_slt_arctic_hts voice is an HMM (HTS) voice of the CMU ARCTIC speaker SLT (US female,
    32 kHz). Rate sets Festival's Duration_Stretch on diphone voices and the HTS engine's speed
    (``-r``) on HTS voices. Pitch is not used: the diphone voices' intonation models take absolute
    targets per voice, and Festival's HTS module passes only ``-m`` and ``-r`` to the engine
    (``-fm`` was tried and changed nothing).
    """

    name = "festival"
    programs = ("festival", "text2wave")
    VOICES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
              "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}  # fmt: skip

    @classmethod
    def installed_voices(cls) -> list[str]:
        done = subprocess.run(["festival", "--batch", "(print (voice.list))"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        listed = done.stdout.replace("(", " ").replace(")", " ").split()
        return sorted(set(listed) & set(cls.VOICES))

    def synthesize(self, text: str, voice: str, prosody: Prosody = Prosody()
                   ) -> tuple[np.ndarray, int]:  # fmt: skip
        self._check_voice(voice)
        speed = prosody.rate / NORMAL_RATE
        if voice.endswith("_hts"):
            setting = (f'(set! hts_engine_params (append hts_engine_params '
                       f'(list (list "-r" {speed:.4f}))))')  # fmt: skip
        else:
            setting = f"(Parameter.set 'Duration_Stretch {1 / speed:.4f})"
        command = ["text2wave", "-scale", str(_SCALE), "-eval", f"(voice_{voice})",
                   "-eval", setting, "-o", "{wav}"]  # fmt: skip
        return run_to_wav(command, stdin=text + "\n")

    def versions(self) -> dict[str, str]:
        return {"festival": debian_version("festival"), **super().versions()}
