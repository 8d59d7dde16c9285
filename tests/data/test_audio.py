"""load_audio and lazy 16 kHz mono recordings: every kind of bad file, resampling, downmixing."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr
from lhotse import CutSet, MonoCut, Recording

from slimasr.data.audio import (
    MAX_ABS_AMPLITUDE,
    DownmixMono,
    load_audio,
    recording_from_file,
    samples_problem,
    to_mono_16k,
)
from slimasr.errors import DataError
from tests.data.fixtures import (
    BAD_SAMPLES,
    corrupt,
    make_empty,
    tone_noise,
    truncate,
    write_audio,
    write_bad_audio,
)


def test_load_audio_reads_16k_mono_exactly(tmp_path):
    path = write_audio(tmp_path / "a.flac", 0.5, seed=1)
    expected, _ = sf.read(path, dtype="float32")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.shape == (8000,)
    np.testing.assert_array_equal(audio, expected)


def test_load_audio_downmixes_stereo_to_the_channel_mean(tmp_path):
    path = write_audio(tmp_path / "st.wav", 0.5, channels=2, seed=2)
    both, _ = sf.read(path, dtype="float32")
    audio = load_audio(path)
    assert audio.shape == (8000,)
    np.testing.assert_allclose(audio, both.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("sr", [8000, 22050, 44100])
def test_load_audio_resamples_with_soxr(tmp_path, sr):
    path = write_audio(tmp_path / f"x{sr}.wav", 0.5, sr=sr, seed=3)
    original, _ = sf.read(path, dtype="float32")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.shape == (8000,)
    np.testing.assert_allclose(audio, soxr.resample(original, sr, 16000, quality="HQ"), atol=1e-6)
    assert load_audio(path, target_sr=sr).shape == (len(original),)


def _bad_files(tmp_path):
    return {
        "missing": (tmp_path / "missing.wav", "audio file not found"),
        "empty": (make_empty(tmp_path / "empty.wav"), "empty file (0 bytes)"),
        "corrupt": (corrupt(tmp_path / "corrupt.flac"), "not a readable audio file"),
        "truncated flac": (truncate(write_audio(tmp_path / "t.flac", 1.0)), "corrupt or truncated"),
        "truncated wav": (
            truncate(write_audio(tmp_path / "t.wav", 1.0)),
            "truncated: header says 32000 bytes",
        ),
        "truncated sphere": (
            truncate(write_audio(tmp_path / "t.WAV", 1.0, format="NIST")),
            "truncated: header says 16000 samples",
        ),
        "no samples": (write_audio(tmp_path / "zero.wav", 0.0), "holds no audio samples"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "corrupt",
        "truncated flac",
        "truncated wav",
        "truncated sphere",
        "no samples",
    ],
)
def test_load_audio_names_the_file_of_every_bad_case(tmp_path, case):
    path, problem = _bad_files(tmp_path)[case]
    with pytest.raises(DataError) as info:
        load_audio(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {problem}") and "\n" not in message


def test_truncated_wav_is_still_readable_by_soundfile(tmp_path):
    """Why the header check exists: libsndfile silently shortens a truncated WAV."""
    path = truncate(write_audio(tmp_path / "t.wav", 1.0))
    assert 0 < sf.info(str(path)).frames < 16000
    assert len(sf.read(path)[0]) == sf.info(str(path)).frames


def test_stereo_44k_recording_is_a_plain_monocut_at_16k(tmp_path):
    path = write_audio(tmp_path / "st.flac", 0.5, sr=44100, channels=2, seed=4)
    both, _ = sf.read(path, dtype="float32")
    recording = recording_from_file(path, recording_id="st")
    assert (
        recording.sampling_rate == 16000
        and recording.num_channels == 1
        and recording.num_samples == 8000
    )
    assert recording.sources[0].source == str(path.absolute())  # nothing re-encoded
    cut = recording.to_cut()
    assert type(cut) is MonoCut
    samples = cut.load_audio()
    assert samples.shape == (1, 8000) and samples.dtype == np.float32  # lhotse's mono shape (1, T)
    reference = soxr.resample(both.mean(axis=1), 44100, 16000)
    assert np.corrcoef(samples[0], reference)[0, 1] > 0.999


def test_downmix_survives_a_manifest_round_trip(tmp_path):
    path = write_audio(tmp_path / "st.wav", 0.5, channels=2, seed=5)
    both, _ = sf.read(path, dtype="float32")
    cut = to_mono_16k(Recording.from_file(path)).to_cut()
    assert [type(t) for t in cut.recording.transforms] == [DownmixMono]
    CutSet.from_cuts([cut]).to_file(tmp_path / "cuts.jsonl.gz")
    (loaded,) = list(CutSet.from_jsonl_lazy(tmp_path / "cuts.jsonl.gz"))
    assert type(loaded) is MonoCut
    np.testing.assert_allclose(loaded.load_audio()[0], both.mean(axis=1), atol=1e-7)
    part = loaded.truncate(offset=0.25, duration=0.125).load_audio()
    np.testing.assert_allclose(part[0], both.mean(axis=1)[4000:6000], atol=1e-7)


def test_16k_mono_recording_gets_no_transforms(tmp_path):
    path = write_audio(tmp_path / "a.wav", 0.5)
    recording = recording_from_file(path, "a")
    assert not recording.transforms and recording.num_samples == len(tone_noise(0.5)) == 8000
    np.testing.assert_array_equal(recording.load_audio()[0], sf.read(path, dtype="float32")[0])


def test_recording_from_file_names_a_bad_file(tmp_path):
    with pytest.raises(DataError, match="empty file"):
        recording_from_file(make_empty(tmp_path / "e.wav"))


# ---------------------------------------------------------------------------------------------
# Samples no model can read


def test_samples_problem_counts_nan_inf_and_names_an_absurd_peak():
    audio = tone_noise(0.5)
    assert samples_problem(audio) is None
    assert samples_problem(np.full(10, MAX_ABS_AMPLITUDE, dtype=np.float32)) is None  # the limit
    spoiled = audio.copy()
    spoiled[[3, 50, 99]] = [np.nan, np.inf, -np.inf]
    assert samples_problem(spoiled) == "holds 3 NaN/inf samples"
    assert samples_problem(spoiled[None, :]) == "holds 3 NaN/inf samples"  # (C, T) too
    loud = audio.copy()
    loud[7] = -3.2e6
    assert samples_problem(loud) == BAD_SAMPLES["loud"]
    assert samples_problem(np.zeros(0, dtype=np.float32)) is None


@pytest.mark.parametrize("kind", sorted(BAD_SAMPLES))
def test_load_audio_refuses_nan_inf_and_absurd_samples(tmp_path, kind):
    """Ten NaN samples used to come back as audio (and transcribe to empty text)."""
    path = write_bad_audio(tmp_path / f"{kind}.wav", kind)
    with pytest.raises(DataError) as info:
        load_audio(path)
    assert str(info.value) == f"{path}: {BAD_SAMPLES[kind]}"


def test_float_audio_a_little_over_full_scale_is_read(tmp_path):
    audio = tone_noise(0.5) * 4.0  # +12 dB over full scale: hot, but audio
    path = tmp_path / "hot.wav"
    sf.write(str(path), audio, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), audio)

