"""Tiny corpora in the real on-disk layouts, with bad files, for the data tests.

Audio is a tone plus noise (0.5-1 s). Each ``make_*`` returns the corpus root and what an import
of it must find (``Expected``): utterance ids per split and skip counts per reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def tone_noise(seconds: float, sr: int = SR, channels: int = 1, seed: int = 0) -> np.ndarray:
    """float32 audio, ``(T,)`` for one channel else ``(T, channels)``; each channel its own tone."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    chans = [
        0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.02 * rng.standard_normal(len(t))
        for c in range(channels)
    ]
    audio = np.stack(chans, axis=1).astype(np.float32)
    return audio[:, 0] if channels == 1 else audio


def write_audio(
    path: Path,
    seconds: float = 0.5,
    sr: int = SR,
    channels: int = 1,
    seed: int = 0,
    format: str | None = None,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(
        str(path), tone_noise(seconds, sr, channels, seed), sr, format=format, subtype="PCM_16"
    )
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Chop the end off a real file: its header still claims every frame."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def corrupt(path: Path) -> Path:
    """Replace a file's bytes with garbage of the same length."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size if path.exists() else 4000
    path.write_bytes(np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def make_empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


BAD_SAMPLES = {  # kind -> the one-line problem samples_problem reports for write_bad_audio's file
    "nan": "holds 10 NaN/inf samples",
    "inf": "holds 1 NaN/inf samples",
    "loud": "peak amplitude 3.2e+06 is absurd (float audio should be within about [-1, 1])",
}


def write_bad_audio(path: Path, kind: str, seconds: float = 0.5, sr: int = SR,
                    audio: np.ndarray | None = None) -> Path:
    """A 32-bit float WAV (the common format that can hold them) of ``audio`` (default: tone and
    noise) spoiled by ``kind``: ten NaN samples, one inf sample, or one sample of 3.2e6."""
    audio = tone_noise(seconds, sr) if audio is None else np.array(audio, dtype=np.float32)
    middle = len(audio) // 2
    if kind == "nan":
        audio[middle : middle + 10] = np.nan
    elif kind == "inf":
        audio[middle] = -np.inf
    else:
        audio[middle] = 3.2e6
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, subtype="FLOAT")
    return path


@dataclass
class Expected:
    splits: dict[str, list[str]]  # split -> cut ids that must be imported, sorted
    skipped: dict[str, int]  # reason -> count
    parts: dict[str, list[str]] = field(default_factory=dict)  # extra named parts -> cut ids


# ---------------------------------------------------------------------------------------------
# LibriSpeech: LibriSpeech/{part}/{spk}/{chapter}/{spk}-{chapter}-{utt}.flac
#             + LibriSpeech/{part}/{spk}/{chapter}/{spk}-{chapter}.trans.txt


def _libri_chapter(part_dir: Path, spk: str, chapter: str, utts: dict[str, str], seed: int) -> Path:
    folder = part_dir / spk / chapter
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (utt, text) in enumerate(utts.items()):
        uid = f"{spk}-{chapter}-{utt}"
        write_audio(folder / f"{uid}.flac", 0.5 + 0.1 * i, seed=seed + i)
        lines.append(f"{uid} {text}".rstrip())
    (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return folder


def make_librispeech(root: Path) -> tuple[Path, Expected]:
    """Five parts; train-clean-100 holds every kind of bad file beside good, stereo and 44.1 kHz
    ones."""
    src = root / "LibriSpeech"
    bad = _libri_chapter(
        src / "train-clean-100",
        "19",
        "198",
        {
            "0000": "HELLO WORLD",
            "0001": "TURN ON THE LIGHT",
            "0002": "STEREO AUDIO",
            "0003": "",
            "0004": "TRUNCATED",
            "0005": "CORRUPT",
            "0006": "EMPTY FILE",
            "0007": "MISSING FILE",
        },
        seed=10,
    )
    write_audio(bad / "19-198-0001.flac", 0.8, sr=44100, seed=3)  # resampled at import
    write_audio(bad / "19-198-0002.flac", 0.6, channels=2, seed=4)  # downmixed at import
    truncate(bad / "19-198-0004.flac")
    corrupt(bad / "19-198-0005.flac")
    make_empty(bad / "19-198-0006.flac")
    (bad / "19-198-0007.flac").unlink()
    _libri_chapter(src / "train-clean-100", "26", "495", {"0000": "GOOD MORNING"}, seed=20)
    _libri_chapter(src / "train-clean-360", "100", "121669", {"0000": "OPEN THE DOOR"}, seed=30)
    _libri_chapter(
        src / "dev-clean", "84", "121123", {"0000": "CLOSE THE WINDOW", "0001": "STOP"}, seed=40
    )
    _libri_chapter(src / "dev-other", "116", "288045", {"0000": "PLAY MUSIC"}, seed=50)
    _libri_chapter(src / "test-clean", "1089", "134686", {"0000": "WHAT TIME IS IT"}, seed=60)
    expected = Expected(
        splits={
            "train": [
                "100-121669-0000",
                "19-198-0000",
                "19-198-0001",
                "19-198-0002",
                "26-495-0000",
            ],
            "dev": ["84-121123-0000", "84-121123-0001"],
            "test": ["1089-134686-0000"],
        },
        skipped={
            "damaged_audio": 1,
            "empty_audio": 1,
            "empty_transcript": 1,
            "missing_audio": 1,
            "unreadable_audio": 1,
        },
        parts={
            "train-clean-100": ["19-198-0000", "19-198-0001", "19-198-0002", "26-495-0000"],
            "train-clean-360": ["100-121669-0000"],
            "dev-clean": ["84-121123-0000", "84-121123-0001"],
            "dev-other": ["116-288045-0000"],
            "test-clean": ["1089-134686-0000"],
        },
    )
    return src, expected


# ---------------------------------------------------------------------------------------------
# TIMIT: TIMIT/data/{TRAIN,TEST}/DR*/{SPEAKER}/{UTT}.WAV (NIST SPHERE) + .TXT .WRD .PHN


def _timit_utt(folder: Path, utt: str, words: list[str], seed: int, seconds: float = 0.5) -> Path:
    wav = write_audio(folder / f"{utt}.WAV", seconds, seed=seed, format="NIST")
    n = int(seconds * SR)
    (folder / f"{utt}.TXT").write_text(f"0 {n} {' '.join(words)}\n".replace(f"{n} \n", f"{n}\n"))
    step = n // max(len(words), 1)
    (folder / f"{utt}.WRD").write_text(
        "".join(f"{i * step} {(i + 1) * step} {w.lower()}\n" for i, w in enumerate(words))
    )
    (folder / f"{utt}.PHN").write_text(f"0 {step} h#\n{step} {2 * step} sh\n{2 * step} {n} iy\n")
    return wav


def make_timit(root: Path, ldc_layout: bool = False) -> tuple[Path, Expected]:
    """lhotse's layout (``TIMIT/data/TRAIN``), or LDC's (``TIMIT/TRAIN``) if ``ldc_layout``."""
    src = root / "TIMIT"
    base = src if ldc_layout else src / "data"
    train = base / "TRAIN" / "DR1" / "FCJF0"
    _timit_utt(train, "SA1", ["She", "had", "your", "dark", "suit."], seed=1)
    _timit_utt(train, "SA2", ["Don't", "ask", "me."], seed=2, seconds=0.7)
    truncate(_timit_utt(train, "SX1", ["truncated"], seed=3))
    _timit_utt(train, "SX2", ["no", "phones"], seed=4).with_suffix(".PHN").unlink()
    _timit_utt(train, "SX3", [], seed=5)
    _timit_utt(base / "TRAIN" / "DR2" / "MABC0", "SI1", ["Greasy", "wash", "water."], seed=6)
    _timit_utt(base / "TEST" / "DR1" / "FADG0", "SA1", ["A", "dev", "speaker."], seed=7)  # dev list
    _timit_utt(
        base / "TEST" / "DR1" / "FDHC0", "SA1", ["A", "core", "test", "speaker."], seed=8
    )  # core test
    _timit_utt(
        base / "TEST" / "DR2" / "MZZZ0", "SA1", ["Not", "in", "either", "list."], seed=9
    )  # unused
    expected = Expected(
        splits={
            "train": ["FCJF0-SA1", "FCJF0-SA2", "MABC0-SI1"],
            "dev": ["FADG0-SA1"],
            "test": ["FDHC0-SA1"],
        },
        skipped={"bad_annotation": 1, "damaged_audio": 1, "empty_transcript": 1},
    )
    return src, expected


# ---------------------------------------------------------------------------------------------
# NeMo-style JSONL


def make_nemo(root: Path) -> tuple[Path, Expected]:
    """``root/corpus/manifest.jsonl`` with relative paths (one absolute), offsets, bad entries."""
    folder = root / "corpus"
    audio = folder / "audio"
    write_audio(audio / "a.wav", 0.5, seed=1)
    write_audio(audio / "b.flac", 0.6, sr=8000, seed=2)
    write_audio(audio / "c.wav", 0.7, sr=44100, channels=2, seed=3)
    truncate(write_audio(audio / "d.wav", 0.5, seed=4))
    write_audio(audio / "long.wav", 2.0, seed=5)
    write_audio(audio / "f.wav", 0.5, seed=6)
    corrupt(audio / "g.wav")
    entries = [
        {"audio_filepath": "audio/a.wav", "duration": 0.5, "text": "turn on the light"},
        {
            "audio_filepath": "audio/b.flac",
            "duration": 0.6,
            "text": "eight kilohertz",
            "speaker": "spk2",
        },
        {"audio_filepath": str(audio / "c.wav"), "duration": 0.7, "text": "stereo"},
        {"audio_filepath": "audio/d.wav", "duration": 0.5, "text": "truncated"},
        {"audio_filepath": "audio/e.wav", "duration": 0.5, "text": "missing"},
        {"audio_filepath": "audio/long.wav", "duration": 0.8, "offset": 0.0, "text": "first half"},
        {"audio_filepath": "audio/long.wav", "duration": 1.0, "offset": 1.0, "text": "second half"},
        {
            "audio_filepath": "audio/long.wav",
            "duration": 1.0,
            "offset": 1.5,
            "text": "past the end",
        },
        {"audio_filepath": "audio/f.wav", "duration": 0.5, "text": "  "},
        {"audio_filepath": "audio/g.wav", "duration": 0.5, "text": "corrupt"},
        {"audio_filepath": "audio/a.wav", "duration": 0.5, "text": "listed twice"},
    ]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries) + "\n")
    expected = Expected(
        splits={"train": ["a", "b", "c", "long-000000", "long-001000"]},
        skipped={
            "bad_segment": 1,
            "damaged_audio": 1,
            "duplicate": 1,
            "empty_transcript": 1,
            "missing_audio": 1,
            "unreadable_audio": 1,
        },
    )
    return manifest, expected
