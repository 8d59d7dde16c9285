"""The Festival Speech Synthesis System (Debian ``festival`` + ``festvox-*``), by subprocess."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from slimasr.data.synthesizers.base import (NORMAL_RATE, Prosody, Synthesizer, debian_version,
                                            fixed_addresses)

_SCALE = 0.5  # volume factor (text2wave's -scale): at 1.0 the diphone voices clip (peak 1.0)
_DONE = "slimasr-festival-done"  # printed after each utterance, to know when it is written
# Lisp heap cells. Festival's default (10,000,000) is initialized cell by cell at every start:
# measured, a start took 0.28 s and 80,000 page faults with it against 0.06 s and 9,700 with
# 1,000,000, and starts were ~30% of the default corpus's synthesis CPU (one per batch of
# utterances). A long sentence in each voice still speaks with 100,000; the whole default corpus
# came out byte-identical with this heap.
_HEAP_CELLS = 1_000_000


class Festival(Synthesizer):
    """Festival's English voices in Debian main.

    kal_diphone and ked_diphone are residual-LPC diphone voices (16 kHz, US male); the
    cmu_us_slt_arctic_hts voice is an HMM (HTS) voice of the CMU ARCTIC speaker SLT (US female,
    32 kHz). Rate sets Festival's Duration_Stretch on diphone voices and the HTS engine's speed
    (``-r``) on HTS voices. Pitch is not used: the diphone voices' intonation models take absolute
    targets per voice, and Festival's HTS module passes only ``-m`` and ``-r`` to the engine
    (``-fm`` was tried and changed nothing).

    One ``festival --pipe`` process per instance speaks every utterance (starting Festival took
    ~0.3 s with its default heap, 0.06 s with ours). Each utterance selects its voice afresh and
    sets every parameter it uses, so the audio depends on the arguments and the utterances before
    it in the process (tested against history); it is byte-identical to ``text2wave -scale
    0.5``'s. The process runs without address-space randomization (``fixed_addresses``): with it,
    the diphone voices' output after other utterances varied from run to run.
    """

    name = "festival"
    programs = ("festival",)
    VOICES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
              "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}  # fmt: skip

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="slimasr-festival-")

    @classmethod
    def installed_voices(cls) -> list[str]:
        done = subprocess.run(["festival", "--batch", "(print (voice.list))"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        listed = done.stdout.replace("(", " ").replace(")", " ").split()
        return sorted(set(listed) & set(cls.VOICES))

    def synthesize(self, text: str, voice: str, prosody: Prosody = Prosody()
                   ) -> tuple[np.ndarray, int]:  # fmt: skip
        self._check_voice(voice)
        wav = Path(self._tmp.name) / "out.wav"
        wav.unlink(missing_ok=True)
        self._run(_commands(text, voice, prosody, wav))
        if not wav.is_file():
            raise RuntimeError(f"festival wrote no audio for {text!r} ({voice})")
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
        return audio[:, 0].copy(), int(rate)

    def versions(self) -> dict[str, str]:
        return {"festival": debian_version("festival"), **super().versions()}

    def close(self) -> None:
        """End the Festival process (it also ends by itself when this process exits)."""
        if self._process is not None:
            self._process.stdin.close()
            self._process.wait(timeout=30)
            self._process = None

    def _run(self, commands: str) -> None:
        """Send Scheme ``commands`` and wait until Festival has carried them out."""
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                ["festival", "--heap", str(_HEAP_CELLS), "--pipe"], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                preexec_fn=fixed_addresses,
            )  # fmt: skip
        # The marker goes to stderr: Festival's stdout is block-buffered in a pipe, its stderr not.
        self._process.stdin.write(f'{commands}\n(format stderr "{_DONE}\\n")\n')
        self._process.stdin.flush()
        said = []
        for line in self._process.stderr:
            if _DONE in line:
                return
            said.append(line.strip())
        self._process = None
        raise RuntimeError(f"festival ended: {' '.join(said)[-300:]}")


def _commands(text: str, voice: str, prosody: Prosody, wav: Path) -> str:
    """Festival Scheme that speaks ``text`` into ``wav`` as text2wave would."""
    speed = prosody.rate / NORMAL_RATE
    if voice.endswith("_hts"):
        setting = f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {speed:.4f}))))'
    else:
        setting = f"(Parameter.set 'Duration_Stretch {1 / speed:.4f})"
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return "\n".join([f"(voice_{voice})", setting, f'(set! slimasr_utt (SynthText "{quoted}"))',
                      f"(utt.wave.rescale slimasr_utt {_SCALE})",
                      f'(utt.save.wave slimasr_utt "{wav}" (quote riff))'])  # fmt: skip
