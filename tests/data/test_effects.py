"""Acoustic effects: same length, finite, deterministic for a seed, and the property each has."""

from __future__ import annotations

import numpy as np
import pytest

from slimasr.data import effects

SR = 16000


def white(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1


def band_energy(audio: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    return float(power[(freqs >= low) & (freqs < high)].sum())


def db(ratio: float) -> float:
    return float(10 * np.log10(ratio))


EFFECTS = {
    "reverb": effects.reverb,
    "far_field": effects.far_field,
    "microphone": effects.microphone,
    "telephone": effects.telephone,
    **{f"codec_{name}": (lambda a, sr, rng, n=name: effects.codec(a, sr, rng, n))
       for name in effects.available_codecs()},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_same_length_finite_and_deterministic_for_a_seed(name: str) -> None:
    audio = white(1.0)
    out = EFFECTS[name](audio, SR, np.random.default_rng(5))
    assert out.shape == audio.shape and out.dtype == np.float64 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, EFFECTS[name](audio, SR, np.random.default_rng(5)))
    assert not np.allclose(out, audio, atol=1e-3)  # it did something
    np.testing.assert_array_equal(audio, white(1.0))  # the input is left alone


def test_the_codecs_of_the_corpus_are_available() -> None:
    assert {"vorbis", "opus", "mp3"} <= set(effects.available_codecs())


# ---- rooms ----------------------------------------------------------------------------------
def schroeder_t60(rir: np.ndarray) -> float:
    """T60 from the Schroeder backward integral: the -5 to -25 dB slope, extrapolated (T20)."""
    energy = np.cumsum(rir[::-1].astype(np.float64) ** 2)[::-1]
    curve = 10 * np.log10(energy / energy[0])  # dB
    t5, t25 = np.argmax(curve < -5), np.argmax(curve < -25)
    return 3 * (t25 - t5) / SR


@pytest.mark.parametrize("t60, drr_db", [(0.3, 10.0), (0.8, -3.0)])
def test_impulse_response_has_the_asked_decay_and_direct_to_reverberant_ratio(t60, drr_db):
    rir = effects.room_impulse_response(SR, t60, drr_db, np.random.default_rng(0))
    assert rir.dtype == np.float32 and len(rir) == round(t60 * SR)
    assert rir[0] == 1.0 and np.abs(rir[1:]).max() < 1.0  # the direct sound leads
    assert schroeder_t60(rir[1:]) == pytest.approx(t60, rel=0.1)
    assert db(1.0 / np.sum(rir[1:].astype(np.float64) ** 2)) == pytest.approx(drr_db, abs=1e-3)


def test_rooms_lengthen_the_decay_far_more_than_near() -> None:
    burst = np.zeros(SR)
    burst[2000:4000] = white(2000 / SR)
    after = slice(4000 + SR // 20, 4000 + SR // 4)  # 50-250 ms after the burst ends
    tails = {}
    for name in ("reverb", "far_field"):
        outs = [EFFECTS[name](burst, SR, np.random.default_rng(s)) for s in range(8)]
        tails[name] = np.mean([db(np.sum(o[after] ** 2) / np.sum(o[2000:4000] ** 2)) for o in outs])
    assert tails["reverb"] > -45  # the dry burst has exactly nothing there
    assert tails["far_field"] > tails["reverb"] + 6


def test_reverb_keeps_the_power_and_aligns_on_the_direct_sound() -> None:
    audio = white(1.0)
    out = effects.reverb(audio, SR, np.random.default_rng(1))
    assert np.sum(out**2) == pytest.approx(np.sum(audio**2), rel=1e-3)
    lag = np.argmax(np.correlate(out[:4000], audio[:4000], "full")) - 3999
    assert lag == 0


# ---- microphone -----------------------------------------------------------------------------
def test_microphone_colours_the_spectrum_but_keeps_the_length() -> None:
    audio = white(2.0)
    bands = [(100 * 2**k, 100 * 2 ** (k + 1)) for k in range(6)]  # 100 Hz - 6.4 kHz octaves
    for seed in range(4):
        out = effects.microphone(audio, SR, np.random.default_rng(seed))
        assert len(out) == len(audio)
        gains = [db(band_energy(out, lo, hi) / band_energy(audio, lo, hi)) for lo, hi in bands]
        assert max(gains) - min(gains) > 3  # not a flat gain: a colour
        assert max(abs(g) for g in gains) < 25  # and not a mangling


# ---- channels -------------------------------------------------------------------------------
def test_telephone_keeps_the_voice_band_and_removes_the_rest() -> None:
    audio = white(2.0)
    lines = set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        lines.add(effects.TELEPHONE_CODECS[int(np.random.default_rng(seed).integers(3))])
        out = effects.telephone(audio, SR, rng)
        assert db(band_energy(audio, 3400, 8000) / band_energy(out, 3400, 8000)) > 20
        assert db(band_energy(audio, 0, 200) / band_energy(out, 0, 200)) > 20
        assert abs(db(band_energy(out, 500, 3000) / band_energy(audio, 500, 3000))) < 2
    assert lines == set(effects.TELEPHONE_CODECS)  # every line type was checked


def test_mu_law_has_255_levels() -> None:
    out = effects._mu_law_round_trip(np.linspace(-1, 1, 100_000))
    assert len(np.unique(np.round(out, 12))) == 255


@pytest.mark.parametrize("name", effects.available_codecs())
def test_codec_round_trip_keeps_the_signal_in_place(name: str) -> None:
    t = np.arange(SR) / SR
    audio = 0.5 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    out = effects.codec(audio, SR, np.random.default_rng(0), name)
    assert np.corrcoef(out, audio)[0, 1] > 0.95  # the same signal, no delay
    assert np.abs(out).max() < 1.0
