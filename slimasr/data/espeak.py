"""eSpeak NG speech synthesis through ctypes, from the ``espeakng-loader`` wheel.

eSpeak NG keeps global state and is not thread-safe: use one :class:`ESpeak` per process (the
corpus synthesizer runs several processes, each with its own library). No Python binding on PyPI
drives the library in-process with per-utterance voice, rate and pitch and returns the samples,
so the few C calls needed are declared here by hand.

A voice is ``"BASE+VARIANT"``, e.g. ``"en-us+m3"``: BASE is an English accent
(:data:`ENGLISH_BASES`), VARIANT a file in ``espeak-ng-data/voices/!v`` (:func:`list_variants`).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import espeakng_loader
import numpy as np

# English accents in espeak-ng-data/lang/gmw. en-Shaw is left out: it reads the Shavian alphabet.
ENGLISH_BASES: tuple[str, ...] = (
    "en",  # British (the eSpeak default English)
    "en-us",
    "en-gb-x-rp",  # Received Pronunciation
    "en-029",  # Caribbean
    "en-gb-scotland",
    "en-us-nyc",
    "en-gb-x-gbclan",  # Lancaster
    "en-gb-x-gbcwmd",  # West Midlands
)

# Variants left out of every corpus, with the reason (measured with tools/ listen-free checks in
# the docstring of this module's test file: duration, energy and voicing against the median voice).
EXCLUDED_VARIANTS: dict[str, str] = {}

# Constants of speak_lib.h (eSpeak NG 1.52).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_BUFFER_MS = 200  # length of the buffer eSpeak hands to the callback, in ms
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 2, 3, 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_VOLUME = 100  # eSpeak's default amplitude (0-200); loudness is randomized later, in float

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def data_path() -> Path:
    """The ``espeak-ng-data`` folder shipped in the espeakng-loader wheel."""
    return Path(espeakng_loader.get_data_path())


def list_variants() -> list[str]:
    """Every voice variant file name in ``espeak-ng-data/voices/!v``, sorted, minus exclusions."""
    names = (p.name for p in (data_path() / "voices" / "!v").iterdir() if p.is_file())
    return sorted(n for n in names if n not in EXCLUDED_VARIANTS)


def list_english_voices() -> list[str]:
    """Every usable ``"BASE+VARIANT"`` English voice: len(ENGLISH_BASES) * len(list_variants())."""
    return [f"{base}+{variant}" for base in ENGLISH_BASES for variant in list_variants()]


class ESpeak:
    """The eSpeak NG library of this process. Create one per process; eSpeak is not thread-safe.

    >>> audio = ESpeak().synthesize("turn on the lights", "en-us+m3", rate=170, pitch=50)
    >>> audio.dtype, audio.ndim  # int16 samples at ESpeak.sample_rate
    (dtype('int16'), 1)
    """

    sample_rate: int = 22050  # Hz; what eSpeak NG produces (checked against espeak_Initialize)
    _lib: ctypes.CDLL | None = None  # the process-wide library, initialized once
    _pid: int | None = None  # process that initialized it (a forked child must not reuse it)

    def __init__(self) -> None:
        if ESpeak._lib is None or ESpeak._pid != os.getpid():
            ESpeak._lib = _load_library(ESpeak.sample_rate)
            ESpeak._pid = os.getpid()
        self._lib = ESpeak._lib

    def synthesize(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int = 50
    ) -> np.ndarray:
        """Speak ``text``; return int16 samples ``(num_samples,)`` at :attr:`sample_rate`.

        rate: words per minute (80-450); pitch: base pitch 0-100; pitch_range: intonation 0-100.
        """
        lib = self._lib
        _check(lib.espeak_SetVoiceByName(voice.encode("utf-8")), f"voice {voice!r} not found")
        for param, value in ((_ESPEAK_RATE, rate), (_ESPEAK_PITCH, pitch), (_ESPEAK_RANGE, pitch_range),
                             (_ESPEAK_VOLUME, _VOLUME)):
            _check(lib.espeak_SetParameter(param, int(value), 0), f"bad parameter {param}={value}")
        _COLLECTED.clear()
        data = text.encode("utf-8") + b"\0"
        _check(
            lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None),
            f"synthesis failed for {text!r}",
        )
        audio = np.concatenate(_COLLECTED) if _COLLECTED else np.zeros(0, dtype=np.int16)
        _COLLECTED.clear()
        return audio


_COLLECTED: list[np.ndarray] = []  # chunks of the utterance being synthesized (one per process)


@_SYNTH_CALLBACK
def _on_samples(wav: ctypes.POINTER(ctypes.c_short), num_samples: int, events: int) -> int:
    """eSpeak's synth callback: copy ``num_samples`` int16 samples; return 0 to continue."""
    if wav and num_samples > 0:
        _COLLECTED.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    return 0


def _load_library(expected_rate: int) -> ctypes.CDLL:
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]  # fmt: skip
    for fn in (lib.espeak_SetVoiceByName, lib.espeak_SetParameter, lib.espeak_Synth):
        fn.restype = ctypes.c_int
    rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, str(data_path()).encode("utf-8"), 0
    )
    if rate != expected_rate:
        raise RuntimeError(f"espeak_Initialize returned {rate}, expected {expected_rate} Hz")
    lib.espeak_SetSynthCallback(_on_samples)
    return lib


def _check(code: int, problem: str) -> None:
    if code != _EE_OK:
        raise RuntimeError(f"eSpeak NG: {problem} (error {code})")
