"""eSpeak NG speech synthesis through ctypes, from the ``espeakng-loader`` wheel.

eSpeak NG keeps global state and is not thread-safe: the corpus synthesizer runs several
processes, each with its own library (a lock guards it within a process). The state it keeps
between utterances also makes output depend on history, so the library is reloaded before every
utterance (see :class:`ESpeak`). No Python binding on PyPI drives the library in-process with
per-utterance voice, rate and pitch and returns the samples, so the few C calls needed are
declared here by hand.

A voice is ``"BASE+VARIANT"``, e.g. ``"en-us+m3"``: BASE is an English accent
(:data:`ENGLISH_BASES`), VARIANT a file in ``espeak-ng-data/voices/!v`` (:func:`list_variants`).
"""

from __future__ import annotations

import ctypes
import threading
import _ctypes
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

# Variants left out of every corpus, and why. Listen-free check (tests/data/test_espeak.py): one
# sentence per variant on en-us at rate 170, pitch 50; the share of 40 ms frames that are voiced
# (normalized autocorrelation > 0.5 at a 60-400 Hz lag) is about 0.6 for the median variant and
# 0.22-0.26 for the rough or buzzy but voiced ones (croak, grandpa, klatt, klatt2,
# robosoft), which stay. Durations of all kept variants are within 0.7-1.5x the median.
EXCLUDED_VARIANTS: dict[str, str] = {
    "whisper": "whispered: no voicing at all (voiced share 0.03)",
    "whisperf": "whispered: no voicing at all (voiced share 0.00)",
    "caleb": "whispered: its voice file sets voicing 0 and breath 100",
    "Demonic": "deliberately distorted: echo and formant settings far outside eSpeak's usual "
    "ranges, spectral centroid 2.4x the median variant's",
}

# Constants of speak_lib.h (eSpeak NG 1.52).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_BUFFER_MS = 200  # length of the buffer eSpeak hands to the callback, in ms
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 2, 3, 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_VOLUME = 40  # amplitude 0-200, default 100: at 100, 29 of 400 sampled voices clip; at 40, none

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
    """The eSpeak NG library of this process; eSpeak is not thread-safe, so use processes.

    eSpeak carries hidden state from one utterance to the next (pitch flutter index, waveform
    phase, echo buffer), so the same call gives slightly different audio depending on what was
    spoken before. To make every utterance a pure function of its arguments, the library is
    unloaded and loaded afresh (``dlclose``/``dlopen``, about 1 ms) before each utterance.

    >>> audio = ESpeak().synthesize("turn on the lights", "en-us+m3", rate=170, pitch=50)
    >>> audio.dtype, audio.ndim  # int16 samples at ESpeak.sample_rate
    (dtype('int16'), 1)
    """

    sample_rate: int = 22050  # Hz; what eSpeak NG produces (checked against espeak_Initialize)

    def __init__(self) -> None:
        self._variants = set(list_variants()) | set(EXCLUDED_VARIANTS)

    def synthesize(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int = 50, seed: int = 0
    ) -> np.ndarray:
        """Speak ``text``; return int16 samples ``(num_samples,)`` at :attr:`sample_rate`.

        voice: "BASE+VARIANT" or "BASE"; rate: words per minute (80-450); pitch: base pitch
        0-100; pitch_range: intonation 0-100; seed: eSpeak's own random generator (breath noise
        of some variants). Deterministic: the audio depends on the arguments only.
        """
        _, _, variant = voice.partition("+")
        if variant and variant not in self._variants:  # eSpeak would silently ignore it
            raise ValueError(f"eSpeak NG voice variant {variant!r} not in {data_path()}")
        with _LOCK:
            lib = _fresh_library()
            lib.espeak_ng_SetRandSeed(seed)
            _LIBC.srand(seed & 0xFFFFFFFF)  # the speechPlayer ("klatt 6") variants use rand()
            _check(lib.espeak_SetVoiceByName(voice.encode("utf-8")), f"voice {voice!r} not found")
            params = {_ESPEAK_RATE: rate, _ESPEAK_PITCH: pitch, _ESPEAK_RANGE: pitch_range,
                      _ESPEAK_VOLUME: _VOLUME}  # fmt: skip
            for param, value in params.items():
                _check(lib.espeak_SetParameter(param, int(value), 0), f"bad parameter {value}")
            data = text.encode("utf-8") + b"\0"
            _COLLECTED.clear()
            code = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            _check(code, f"synthesis failed for {text!r}")
            chunks = list(_COLLECTED)
            _COLLECTED.clear()
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


_LIBC = ctypes.CDLL(None)  # the C library this process runs on (for srand)
_LOCK = threading.Lock()  # one utterance at a time in this process
_LIB: ctypes.CDLL | None = None  # the loaded library, None when unloaded
_COLLECTED: list[np.ndarray] = []  # chunks of the utterance being synthesized (one per process)


@_SYNTH_CALLBACK
def _on_samples(wav: ctypes.POINTER(ctypes.c_short), num_samples: int, events: int) -> int:
    """eSpeak's synth callback: copy ``num_samples`` int16 samples; return 0 to continue."""
    if wav and num_samples > 0:
        _COLLECTED.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    return 0


def _fresh_library() -> ctypes.CDLL:
    """Unload eSpeak if this process used it, then load and initialize a clean copy."""
    global _LIB
    if _LIB is not None:  # also right in a forked child: it unloads the child's copy only
        _LIB.espeak_Terminate()
        _ctypes.dlclose(_LIB._handle)  # the next dlopen maps fresh static data
        _LIB = None
    _LIB = _load_library(ESpeak.sample_rate)
    return _LIB


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
    lib.espeak_Terminate.argtypes = []
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    for fn in (lib.espeak_SetVoiceByName, lib.espeak_SetParameter, lib.espeak_Synth,
               lib.espeak_Terminate):  # fmt: skip
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
