"""Reading audio files: 16 kHz mono float32, with every bad file turned into a one-line DataError.

Two ways audio reaches a model:

- ``load_audio(path)`` reads a whole file now (``transcribe``): decode with soundfile, average the
  channels, resample with soxr.
- Manifests (training, ``evaluate``): a lhotse ``Recording`` points at the original file, and
  ``to_mono_16k(recording)`` adds *lazy* transforms (downmix, then lhotse's ``Resample``) so nothing
  is re-encoded on disk; ``cut.load_audio()`` then gives ``(1, T)`` float32 at 16 kHz.

The header checks here also serve the import-time probe in ``slimasr.data.validate``, and
``samples_problem`` (NaN/inf samples, an absurd peak) serves every place that decodes audio: a
file that decodes without error can still hold samples no model can read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from lhotse import Recording
from lhotse.augmentation.transform import AudioTransform
from lhotse.cut import Cut
from lhotse.utils import Seconds, fastcopy

from slimasr.errors import DataError

TARGET_SAMPLE_RATE = 16000  # every model in slimasr consumes 16 kHz audio
DECODE_BLOCK_FRAMES = 1 << 18  # frames per read when decoding a file to check it (~16 s at 16 kHz)
LOSSY_FORMATS = {"OGG", "MPEG"}  # their headers only estimate the length
LOSSY_SHORTFALL_S = 0.05  # so a lossy file may decode this much shorter than its header says
NIST_HEADER_BYTES = 1024  # a NIST SPHERE header is one 1024-byte ASCII block
UNREADABLE_MESSAGE = "not a readable audio file (unknown format or damaged header)"
SOXR_QUALITY = "HQ"  # soxr's high quality preset (what soxr.resample uses by default)
# Largest |sample| accepted in float audio. Float audio is nominally within [-1, 1]; overshoot
# by a few dB is normal (inter-sample peaks, resampling ringing, a hot float mix), but a peak 40 dB
# over full scale means the samples are not float audio (int16 values stored as float, garbage):
# features of such audio sit far outside anything the model saw, and its output is noise.
MAX_ABS_AMPLITUDE = 100.0
BAD_AUDIO_KEY = "bad_audio"  # cut.custom key: why the cut's samples are unusable (mark_bad_audio)


@dataclass
class DownmixMono(AudioTransform):
    """Lazy lhotse transform: average all channels into one, ``(C, T) -> (1, T)``.

    lhotse's own ways to downmix either keep only one channel (``MonoCut(channel=0)``) or decode
    the audio into memory (``MultiCut.to_mono(mono_downmix=True)``), which would embed the audio
    in the manifest; this transform keeps the manifest pointing at the file. It is registered with
    lhotse by being defined, so import ``slimasr.data.audio`` before reading such manifests
    (``slimasr.data.manifests`` does).
    """

    def __call__(self, samples: np.ndarray, *args, **kwargs) -> np.ndarray:
        samples = np.atleast_2d(samples)
        return samples.mean(axis=0, keepdims=True).astype(samples.dtype, copy=False)

    def reverse_timestamps(
        self, offset: Seconds, duration: Seconds | None, sampling_rate: int
    ) -> tuple[Seconds, Seconds | None]:
        return offset, duration  # downmixing does not move time


def to_mono_16k(recording: Recording, target_sr: int = TARGET_SAMPLE_RATE) -> Recording:
    """The same recording, loading as one channel at ``target_sr``; lazy, nothing is re-encoded.

    A multi-channel file becomes a recording that *declares* one channel (so cuts of it are plain
    ``MonoCut``s) and averages the file's channels when loaded.
    """
    if recording.num_channels > 1:
        if len(recording.sources) != 1:
            raise DataError(
                recording.id, "multi-channel recordings spread over several files are not supported"
            )
        source = fastcopy(recording.sources[0], channels=[0])
        recording = fastcopy(
            recording,
            sources=[source],
            channel_ids=[0],
            transforms=[DownmixMono(), *(recording.transforms or [])],
        )
    return recording.resample(target_sr)


def recording_from_file(path: str | Path, recording_id: str | None = None) -> Recording:
    """A 16 kHz mono ``Recording`` of ``path`` (absolute), or DataError naming the file."""
    path = Path(path).absolute()
    _open_info(path)  # clear messages for missing, empty and unreadable files
    try:
        recording = Recording.from_file(path, recording_id=recording_id)
    except Exception as e:  # lhotse wraps backend errors in several types
        raise DataError(path, f"not a readable audio file ({_first_line(e)})") from None
    return to_mono_16k(recording)


def header_problem(path: str | Path, info: sf._SoundFileInfo) -> str | None:
    """A truncation that the header reveals but libsndfile silently forgives, else None.

    libsndfile shortens a truncated WAV or NIST file to the frames present and reads it without
    error, so a cut-off download would pass unnoticed: compare the header's claim with the file.
    """
    if info.format == "WAV" or info.format == "WAVEX":
        match = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info, re.M)
        if match:
            claimed, present = int(match.group(1)), int(match.group(2))
            return f"truncated: header says {claimed} bytes of audio data, the file holds {present}"
    if info.format == "NIST":
        claimed = _nist_sample_count(path)
        if claimed is not None and claimed > info.frames:
            return f"truncated: header says {claimed} samples, the file holds {info.frames}"
    return None


def samples_problem(samples: np.ndarray) -> str | None:
    """Why decoded samples are not usable audio (NaN/inf values, a peak beyond
    ``MAX_ABS_AMPLITUDE``), else None. ``samples``: any shape, e.g. ``(T,)`` or ``(C, T)``."""
    return _stats_problem(*_sample_stats(np.asarray(samples)))


def _sample_stats(samples: np.ndarray) -> tuple[int, float]:
    """``(number of NaN/inf samples, largest |finite sample|)``."""
    finite = np.isfinite(samples)
    peak = np.abs(samples, where=finite, out=np.zeros(samples.shape, samples.dtype))
    return samples.size - int(np.count_nonzero(finite)), float(peak.max(initial=0.0))


def _stats_problem(nonfinite: int, peak: float) -> str | None:
    if nonfinite:
        return f"holds {nonfinite} NaN/inf samples"
    if peak > MAX_ABS_AMPLITUDE:
        return (f"peak amplitude {peak:.2g} is absurd "
                "(float audio should be within about [-1, 1])")
    return None


def mark_bad_audio(cut: Cut, problem: str) -> Cut:
    """A copy of ``cut`` that says why its samples are unusable (``samples_problem``): feature
    precomputation writes such a cut without features, and ``filter_cuts`` skips and counts it."""
    return fastcopy(cut, custom={**(cut.custom or {}), BAD_AUDIO_KEY: problem})


def bad_audio_mark(cut: Cut) -> str | None:
    """The problem ``mark_bad_audio`` recorded on ``cut``, else None."""
    return (getattr(cut, "custom", None) or {}).get(BAD_AUDIO_KEY)


@dataclass
class DecodeCheck:
    """What decoding a whole file found: damage (corrupt, truncated) and bad samples, or None."""

    damage: str | None = None  # the file stops decoding, or holds fewer frames than its header says
    samples: str | None = None  # samples_problem of the decoded samples


def check_decode(path: str | Path, info: sf._SoundFileInfo) -> DecodeCheck:
    """Decode the whole file block by block (bounded memory), checking the samples on the way."""
    decoded, nonfinite, peak = 0, 0, 0.0
    try:
        with sf.SoundFile(str(path)) as f:
            block = np.empty((DECODE_BLOCK_FRAMES, f.channels), dtype=np.float32)
            while (got := len(f.read(out=block))) > 0:
                decoded += got
                bad, top = _sample_stats(block[:got])
                nonfinite, peak = nonfinite + bad, max(peak, top)
                if got < DECODE_BLOCK_FRAMES:
                    break
    except (sf.LibsndfileError, RuntimeError) as e:
        where = f"after {decoded} of {info.frames} frames"
        return DecodeCheck(damage=f"corrupt or truncated: decoding failed {where} ({_first_line(e)})")
    slack = int(LOSSY_SHORTFALL_S * info.samplerate) if info.format in LOSSY_FORMATS else 0
    if decoded + slack < info.frames:
        return DecodeCheck(damage=f"truncated: header says {info.frames} frames, only {decoded} "
                                  "could be decoded")
    return DecodeCheck(samples=_stats_problem(nonfinite, peak))


def load_audio(path: str | Path, target_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Read a whole audio file as mono float32 at ``target_sr``: shape ``(T,)``.

    Channels are averaged; other sample rates are resampled with soxr. Raises DataError naming the
    file if it is missing, empty, unreadable, corrupt or truncated, or holds NaN/inf samples or an
    absurd peak (``samples_problem``).
    """
    path = Path(path)
    info = _open_info(path)
    if problem := header_problem(path, info):
        raise DataError(path, problem)
    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(path, f"corrupt or truncated: decoding failed ({_first_line(e)})") from None
    if len(samples) < info.frames:
        raise DataError(
            path,
            f"truncated: header says {info.frames} frames, only {len(samples)} could be decoded",
        )
    if problem := samples_problem(samples):
        raise DataError(path, problem)
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if sr != target_sr:
        mono = soxr.resample(mono, sr, target_sr, quality=SOXR_QUALITY)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _open_info(path: Path) -> sf._SoundFileInfo:
    """``soundfile.info`` for a file that must exist, be non-empty and hold samples."""
    if not path.is_file():
        raise DataError(path, "audio file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):  # libsndfile says "does not exist" for garbage
        raise DataError(path, UNREADABLE_MESSAGE) from None
    if info.frames <= 0:
        raise DataError(path, "holds no audio samples")
    return info


def _nist_sample_count(path: str | Path) -> int | None:
    """``sample_count`` from a NIST SPHERE header (``sample_count -i 32000``), if present."""
    with open(path, "rb") as f:
        header = f.read(NIST_HEADER_BYTES).decode("ascii", errors="replace")
    match = re.search(r"^sample_count\s+-i\s+(\d+)", header, re.M)
    return int(match.group(1)) if match else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
