"""eSpeak NG through ctypes: audio, voices, determinism, and the listen-free variant check."""

from __future__ import annotations

import numpy as np
import pytest

from slimasr.data.espeak import (
    ENGLISH_BASES,
    EXCLUDED_VARIANTS,
    ESpeak,
    list_english_voices,
    list_variants,
)

SENTENCE = "set a timer for twenty five minutes"


@pytest.fixture(scope="module")
def espeak() -> ESpeak:
    return ESpeak()


def voiced_share(audio: np.ndarray, sample_rate: int = ESpeak.sample_rate) -> float:
    """Share of non-silent 40 ms frames whose normalized autocorrelation at a 60-400 Hz lag > 0.5.

    audio: (num_samples,) int16. The listen-free check behind EXCLUDED_VARIANTS.
    """
    x = audio.astype(np.float64) / 32768
    size = int(0.04 * sample_rate)
    frames = np.lib.stride_tricks.sliding_window_view(x, size)[:: size // 2]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames**2).sum(axis=1)
    frames, energy = frames[energy > 1e-4 * size], energy[energy > 1e-4 * size]
    spectrum = np.fft.rfft(frames, n=2 * size, axis=1)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :size] / energy[:, None]
    lo, hi = sample_rate // 400, sample_rate // 60
    return float((autocorr[:, lo:hi].max(axis=1) > 0.5).mean())


def test_voices_cover_bases_and_variants() -> None:
    variants = list_variants()
    voices = list_english_voices()
    assert len(variants) >= 90 and "m3" in variants and "f2" in variants
    assert not set(EXCLUDED_VARIANTS) & set(variants)
    assert len(voices) == len(ENGLISH_BASES) * len(variants)
    assert "en-us+m3" in voices and "en-gb-scotland+f2" in voices


def test_synthesize_gives_non_silent_22050_hz_int16(espeak: ESpeak) -> None:
    audio = espeak.synthesize(SENTENCE, "en-us+m3", rate=170, pitch=50)
    assert ESpeak.sample_rate == 22050
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert 1.0 < len(audio) / ESpeak.sample_rate < 4.0
    rms = np.sqrt(np.mean(audio.astype(np.float64) ** 2))
    assert rms > 300


def test_length_grows_with_text_and_falls_with_rate(espeak: ESpeak) -> None:
    short = espeak.synthesize("lights on", "en+m1", rate=170, pitch=50)
    long = espeak.synthesize("turn on the lights in the kitchen please", "en+m1", 170, 50)
    slow = espeak.synthesize(SENTENCE, "en+m1", rate=120, pitch=50)
    fast = espeak.synthesize(SENTENCE, "en+m1", rate=300, pitch=50)
    assert len(long) > 2 * len(short)
    assert len(slow) > 1.8 * len(fast)


def test_output_does_not_depend_on_history(espeak: ESpeak) -> None:
    # eSpeak keeps state between utterances; ESpeak reloads the library so this holds anyway.
    for variant in ("m3", "Reed", "croak"):  # plain, speechPlayer (rand()), flutter
        first = espeak.synthesize(SENTENCE, f"en-us+{variant}", 170, 50, seed=7)
        espeak.synthesize("what is the weather like in paris", "en-gb-x-rp+f2", 250, 90, 90)
        again = espeak.synthesize(SENTENCE, f"en-us+{variant}", 170, 50, seed=7)
        np.testing.assert_array_equal(first, again)


def test_pitch_changes_the_audio(espeak: ESpeak) -> None:
    low = espeak.synthesize(SENTENCE, "en-us+m3", 170, pitch=10)
    high = espeak.synthesize(SENTENCE, "en-us+m3", 170, pitch=90)
    assert len(low) != len(high) or not np.array_equal(low, high)


def test_unknown_voices_raise(espeak: ESpeak) -> None:
    with pytest.raises(ValueError, match="nosuchvariant"):
        espeak.synthesize("hello", "en-us+nosuchvariant", 170, 50)
    with pytest.raises(RuntimeError, match="xx-yy"):
        espeak.synthesize("hello", "xx-yy", 170, 50)


def test_kept_variants_are_voiced_speech_of_normal_length(espeak: ESpeak) -> None:
    """The listen-free check: every kept variant is voiced and of ordinary duration."""
    text = "turn the kitchen lights to fifty percent"
    audio = {v: espeak.synthesize(text, f"en-us+{v}", 170, 50) for v in list_variants()}
    median = np.median([len(a) for a in audio.values()])
    for variant, samples in audio.items():
        assert 0.7 < len(samples) / median < 1.5, variant
        assert voiced_share(samples) >= 0.2, variant
    for variant in ("whisper", "whisperf"):  # excluded: practically no voicing at all
        assert voiced_share(espeak.synthesize(text, f"en-us+{variant}", 170, 50)) < 0.1
