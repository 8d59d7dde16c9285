"""Acoustic effects for the synthesized corpus: rooms, microphones, telephone lines, codecs.

Each effect is a pure function ``effect(audio, sample_rate, rng) -> audio`` of a float64 mono
signal ``(num_samples,)`` (full scale 1): the output has the same length, and every random choice
comes from ``rng``, so the same generator state gives the same samples. They are meant for
16 kHz audio (the corpus rate); the telephone line works at 8 kHz inside.

- :func:`reverb`: a small or mid-sized room heard from near (short decay, direct sound strong).
- :func:`far_field`: a talker across the room (long decay, reverberation as loud as the direct
  sound or louder); the corpus also lowers the level of such utterances.
- :func:`microphone`: the colouring of a cheap microphone and its housing (random EQ).
- :func:`telephone`: a narrowband phone call (8 kHz, 300-3400 Hz, G.711 mu-law or GSM 06.10).
- :func:`codec`: a round trip through a lossy codec that libsndfile writes (Vorbis, Opus, MP3).

Reverberation uses lhotse's ``ReverbWithImpulseResponse`` with impulse responses from Polack's
statistical room model (a direct impulse plus exponentially decaying Gaussian noise): lhotse's own
generator (``FastRandomRIRGenerator``) needs torchaudio, which slimasr does not install, and no
package here ships measured room responses. Codecs are lhotse's ``Compress``.
"""

from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr
from lhotse.augmentation import Compress, ReverbWithImpulseResponse
from scipy import signal

TELEPHONE_RATE = 8000  # Hz, a narrowband call
TELEPHONE_BAND = (300.0, 3400.0)  # Hz, the ITU-T voice channel
TELEPHONE_CODECS = ("pcm", "mulaw", "gsm")  # each line picks one: none, G.711 mu-law, GSM 06.10
_MU = 255.0  # G.711 mu-law constant
CODEC_HEADROOM = 0.5  # peak the codec sees at most: the decoded wave may overshoot the input
CODEC_LEVELS = (0.2, 0.9)  # compression level range (libsndfile: 0 best quality, 1 smallest file)
_CODEC_SUBTYPES = {"vorbis": ("OGG", "VORBIS"), "opus": ("OGG", "OPUS"),
                   "mp3": ("MP3", "MPEG_LAYER_III")}  # fmt: skip


def available_codecs() -> tuple[str, ...]:
    """The lossy codecs this libsndfile writes, among Vorbis, Opus and MP3 (MP3 needs 1.1+)."""
    formats = sf.available_formats()
    return tuple(
        name for name, (fmt, subtype) in _CODEC_SUBTYPES.items()
        if fmt in formats and subtype in sf.available_subtypes(fmt)
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Rooms
# ---------------------------------------------------------------------------------------------
def reverb(audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A near talker in a room: decay time T60 0.15-0.6 s, direct-to-reverberant ratio 3-15 dB."""
    t60, drr_db = rng.uniform(0.15, 0.6), rng.uniform(3.0, 15.0)
    return apply_room(audio, sample_rate, room_impulse_response(sample_rate, t60, drr_db, rng))


def far_field(audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A talker across the room: T60 0.4-1.0 s, direct-to-reverberant ratio -5 to +3 dB."""
    t60, drr_db = rng.uniform(0.4, 1.0), rng.uniform(-5.0, 3.0)
    return apply_room(audio, sample_rate, room_impulse_response(sample_rate, t60, drr_db, rng))


def room_impulse_response(
    sample_rate: int, t60: float, drr_db: float, rng: np.random.Generator
) -> np.ndarray:
    """Polack's model: a unit direct impulse, then Gaussian noise decaying 60 dB in ``t60`` s.

    The tail's energy is ``drr_db`` below the direct sound's; reflections start 1 ms after it.
    Returns ``(num_samples,)`` float32, the direct sound at index 0.
    """
    length = int(round(t60 * sample_rate))
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * 10.0 ** (-3.0 * t / t60)  # amplitude: -60 dB at t60
    tail[: max(1, sample_rate // 1000)] = 0.0
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail**2))
    tail = np.clip(tail, -0.9, 0.9)  # the direct impulse stays the largest sample
    tail[0] = 1.0
    return tail.astype(np.float32)


def apply_room(audio: np.ndarray, sample_rate: int, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir`` (lhotse: aligned on the direct sound, same power, same length)."""
    effect = ReverbWithImpulseResponse(rir_generator=lambda nsource=1: rir[None, :])
    out = effect(audio.astype(np.float32)[None, :], sample_rate)[0]
    return out.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Microphones
# ---------------------------------------------------------------------------------------------
def microphone(audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Random EQ: a 60-250 Hz high-pass, low and high shelves (+-6 and +-9 dB) and two
    resonances (+-8 dB, Q 0.7-4, 300-5000 Hz), as small microphones and housings colour sound."""
    nyquist = sample_rate / 2
    sections = [
        signal.butter(2, rng.uniform(60.0, 250.0), "highpass", fs=sample_rate, output="sos"),
        _biquad("lowshelf", rng.uniform(100.0, 400.0), rng.uniform(-6.0, 6.0), 0.7, sample_rate),
        _biquad("highshelf", min(rng.uniform(2000.0, 6000.0), 0.8 * nyquist),
                rng.uniform(-9.0, 9.0), 0.7, sample_rate),
    ]  # fmt: skip
    for _ in range(2):
        f0 = min(float(np.exp(rng.uniform(np.log(300.0), np.log(5000.0)))), 0.8 * nyquist)
        sections.append(_biquad("peak", f0, rng.uniform(-8.0, 8.0), rng.uniform(0.7, 4.0),
                                sample_rate))  # fmt: skip
    return signal.sosfilt(np.vstack(sections), audio)


def _biquad(kind: str, f0: float, gain_db: float, q: float, sample_rate: int) -> np.ndarray:
    """One second-order section ``(1, 6)`` from the Audio EQ Cookbook (R. Bristow-Johnson)."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * f0 / sample_rate
    alpha, cos = np.sin(w0) / (2.0 * q), np.cos(w0)
    if kind == "peak":
        b = [1 + alpha * a, -2 * cos, 1 - alpha * a]
        den = [1 + alpha / a, -2 * cos, 1 - alpha / a]
    else:
        sign = 1.0 if kind == "lowshelf" else -1.0
        root = 2.0 * np.sqrt(a) * alpha
        b = [a * ((a + 1) - sign * (a - 1) * cos + root), sign * 2 * a * ((a - 1) - sign * (a + 1) * cos),
             a * ((a + 1) - sign * (a - 1) * cos - root)]  # fmt: skip
        den = [(a + 1) + sign * (a - 1) * cos + root, -sign * 2 * ((a - 1) + sign * (a + 1) * cos),
               (a + 1) + sign * (a - 1) * cos - root]  # fmt: skip
    return np.array([*b, *den]) / den[0]


# ---------------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------------
def telephone(audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A phone call: down to 8 kHz, one of TELEPHONE_CODECS, the 300-3400 Hz band, and back."""
    narrow = soxr.resample(audio, sample_rate, TELEPHONE_RATE)
    line = TELEPHONE_CODECS[int(rng.integers(len(TELEPHONE_CODECS)))]
    if line == "mulaw":
        narrow = _mu_law_round_trip(narrow)
    elif line == "gsm":
        coded = Compress(codec="gsm", compression_level=0.0)(narrow.astype(np.float32)[None, :], TELEPHONE_RATE)[0]
        narrow = _fit(coded.astype(np.float64), len(narrow))
    band = signal.butter(6, TELEPHONE_BAND, "bandpass", fs=TELEPHONE_RATE, output="sos")
    narrow = signal.sosfilt(band, narrow)
    return _fit(soxr.resample(narrow, TELEPHONE_RATE, sample_rate), len(audio))


def codec(audio: np.ndarray, sample_rate: int, rng: np.random.Generator,
          name: str = "opus") -> np.ndarray:  # fmt: skip
    """A lossy round trip through ``name`` (see :func:`available_codecs`) at a random
    compression level in [0.2, 0.9] (libsndfile's scale: 0 best quality, 1 smallest file)."""
    level = float(rng.uniform(*CODEC_LEVELS))
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    scale = CODEC_HEADROOM / peak if peak > CODEC_HEADROOM else 1.0
    coded = Compress(codec=name, compression_level=level)(
        (audio * scale).astype(np.float32)[None, :], sample_rate
    )[0]
    return _fit(coded.astype(np.float64) / scale, len(audio))


def _mu_law_round_trip(audio: np.ndarray) -> np.ndarray:
    """G.711-style 8-bit mu-law quantization (continuous companding law, 256 levels)."""
    x = np.clip(audio, -1.0, 1.0)
    compressed = np.sign(x) * np.log1p(_MU * np.abs(x)) / np.log1p(_MU)
    quantized = np.round(compressed * 127.0) / 127.0  # 255 levels: 8 bits
    return np.sign(quantized) * ((1.0 + _MU) ** np.abs(quantized) - 1.0) / _MU


def _fit(audio: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad the end to ``length`` samples (resamplers may be off by one)."""
    if len(audio) >= length:
        return audio[:length]
    return np.concatenate([audio, np.zeros(length - len(audio))])
