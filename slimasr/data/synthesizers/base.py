"""What every synthesizer family offers, and the helpers the command-line ones share."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import soundfile as sf

NORMAL_RATE = 175  # words per minute that every family speaks at when not told otherwise


@dataclass(frozen=True)
class Prosody:
    """How to speak; each family uses what it can (see its ``synthesize``)."""

    rate: int = NORMAL_RATE  # words per minute; others scale their durations by NORMAL_RATE/rate
    pitch: int = 50  # 0-100, 50 = the voice's own (eSpeak only: base pitch)
    pitch_range: int = 50  # 0-100, intonation (eSpeak only)
    seed: int = 0  # eSpeak's own random generator (the others are deterministic)


class Synthesizer:
    """A family of voices behind one interface: :meth:`voices` and :meth:`synthesize`.

    ``VOICES`` maps each English voice the family must offer to the Debian package that ships
    it: a corpus is defined by this table, so a machine missing one voice is refused rather than
    silently making a different corpus.
    """

    name: ClassVar[str]  # the family, as written in SynthConfig.synthesizers
    programs: ClassVar[tuple[str, ...]] = ()  # executables that must be on PATH
    VOICES: ClassVar[dict[str, str]] = {}  # voice -> Debian package (or PyPI distribution)

    @classmethod
    def missing(cls) -> str | None:
        """Why this family cannot run here (one phrase), or None when it can."""
        absent = [p for p in cls.programs if shutil.which(p) is None]
        if absent:
            return f"{', '.join(absent)} not found"
        lacking = sorted(set(cls.VOICES) - set(cls.installed_voices()))
        return f"voice(s) {', '.join(lacking)} not installed" if lacking else None

    @classmethod
    def install_command(cls) -> str:
        """The command that installs what this family needs."""
        packages = " ".join(sorted(set(cls.VOICES.values())))
        return f"apt-get install --no-install-recommends {packages}"

    @classmethod
    def installed_voices(cls) -> list[str]:
        """The voices of ``VOICES`` this machine has (the family's own list, filtered)."""
        return sorted(cls.VOICES)

    def voices(self) -> list[str]:
        """The family's voices, sorted."""
        return sorted(self.VOICES)

    def synthesize(self, text: str, voice: str, prosody: Prosody = Prosody()
                   ) -> tuple[np.ndarray, int]:  # fmt: skip
        """Speak ``text``: float32 samples ``(num_samples,)`` (full scale 1) and their rate (Hz)."""
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        """Version of each package the family's voices come from (for corpus.json)."""
        return {p: debian_version(p) for p in sorted(set(self.VOICES.values()))}

    def _check_voice(self, voice: str) -> None:
        if voice not in self.VOICES:
            raise ValueError(f"{self.name}: unknown voice {voice!r} (known: {', '.join(self.voices())})")


def debian_version(package: str) -> str:
    """``dpkg-query``'s version of an installed Debian package, or "unknown"."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                             capture_output=True, text=True, check=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def python_version(distribution: str) -> str:
    """An installed Python distribution's version, or "unknown"."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


ADDR_NO_RANDOMIZE = 0x0040000  # Linux personality flag (sys/personality.h)
_QUERY = 0xFFFFFFFF  # personality(0xffffffff) returns the current persona, changing nothing


def _personality() -> Callable[[int], int] | None:
    """libc's ``personality`` (Linux), looked up here in the parent: None elsewhere."""
    try:
        return ctypes.CDLL(None, use_errno=True).personality
    except (OSError, AttributeError):
        return None


_PERSONALITY = _personality()


def fixed_addresses() -> None:
    """``preexec_fn`` of a synthesizer's process: turn off address-space randomization for the
    program it runs. Festival's diphone voices read memory whose contents depend on where things
    lie: a ked_diphone utterance spoken after four others in one process came out in 10 variants
    over 40 runs with randomization, and the same in 50 of 50 without. Where the system does not
    allow it (some container seccomp profiles refuse the call), the program runs as before."""
    if _PERSONALITY is not None:
        current = _PERSONALITY(_QUERY)
        if current != -1:
            _PERSONALITY(current | ADDR_NO_RANDOMIZE)


def randomization_off() -> bool:
    """Whether ``fixed_addresses`` takes effect on this system: a child started with it reports
    the ADDR_NO_RANDOMIZE persona (Linux ``/proc/self/personality``)."""
    try:
        done = subprocess.run(["cat", "/proc/self/personality"], capture_output=True, text=True,
                              preexec_fn=fixed_addresses, timeout=30)
        return done.returncode == 0 and bool(int(done.stdout, 16) & ADDR_NO_RANDOMIZE)
    except (OSError, ValueError, subprocess.SubprocessError):
        return False


def run_to_wav(command: list[str], stdin: str | None = None) -> tuple[np.ndarray, int]:
    """Run ``command`` with ``{wav}`` in it replaced by a temporary file; read that file back.

    Returns float32 samples ``(num_samples,)`` and the sample rate. RuntimeError naming the
    program and its message if it fails or writes no audio.
    """
    with tempfile.TemporaryDirectory(prefix="slimasr-tts-") as tmp:
        wav = str(Path(tmp) / "out.wav")
        argv = [wav if part == "{wav}" else part for part in command]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120,
                              preexec_fn=fixed_addresses)
        if done.returncode != 0 or not Path(wav).is_file():
            message = " ".join((done.stderr or done.stdout).split())[:300]
            raise RuntimeError(f"{command[0]} failed (exit {done.returncode}): {message}")
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    return audio[:, 0].copy(), int(rate)
