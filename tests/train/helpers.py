"""A tiny learnable corpus and a tiny recipe for the training tests; also a script entry point.

Each letter is a fixed tone burst (its own frequency), and so is the word separator (a low hum);
bursts are separated by short silences. A small CTC model learns to "read" this in seconds.

    python -m tests.train.helpers RECIPE DATA OUT RESULT_JSON [--resume] [--pause-at-checkpoint N MARKER]

runs ``train_model`` and writes its result to ``RESULT_JSON`` (``{rank}`` is replaced by the
process rank under torchrun). ``--pause-at-checkpoint N MARKER``: when the N-th checkpoint is
about to be written, create ``MARKER`` and sleep (so a test can SIGKILL the run at that point:
steps past the previous checkpoint are done, the next checkpoint is not).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import Recording, SupervisionSegment

SR = 16000
WORDS = ["on", "off", "lamp", "fan", "door", "open", "red", "lamp on", "fan off", "a"]
LETTERS = sorted(set("".join(WORDS)) - {" "})
LETTER_S, GAP_S, EDGE_S = 0.07, 0.02, 0.1  # burst, silence after each burst, silence at the ends
SPACE_FREQ = 200.0  # Hz of the word-separator burst
NOISE = 0.003  # white noise std (about -45 dB re a 0.3 amplitude tone)


def letter_freq(letter: str) -> float:
    return SPACE_FREQ if letter == " " else 400.0 * 1.25 ** LETTERS.index(letter)


def synth(text: str, rng: np.random.Generator) -> np.ndarray:
    """float32 audio ``(S,)`` of ``text`` (letters of LETTERS and spaces)."""
    t = np.arange(int(LETTER_S * SR)) / SR
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    parts = [np.zeros(int(EDGE_S * SR))]
    for ch in text:
        f = letter_freq(ch)
        parts.append(0.3 * fade * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)))
        parts.append(np.zeros(int(GAP_S * SR)))
    parts.append(np.zeros(int(EDGE_S * SR)))
    audio = np.concatenate(parts)
    return (audio + NOISE * rng.standard_normal(audio.size)).astype(np.float32)


def sentences(n: int) -> list[str]:
    """``n`` distinct-ish sentences of 1-3 words."""
    out = []
    for i in range(n):
        k = 1 + i % 3
        out.append(" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(k)))
    return out


def make_corpus(root: Path, n_train: int = 20, n_dev: int | None = None, dev_same: bool = True,
                extra_train: dict[str, str] | None = None) -> Path:
    """A complete data directory (slimasr contract). ``dev_same``: dev holds the training
    sentences (new noise), for over-fitting tests. ``extra_train``: id -> text added to train
    (audio of one letter), e.g. to exercise filtering."""
    from slimasr.data.manifests import finish_corpus, write_split

    rng = np.random.default_rng(0)
    train = sentences(n_train)
    dev = train[: n_dev or n_train] if dev_same else sentences(n_train + (n_dev or 5))[n_train:]
    for split, texts in (("train", train), ("dev", dev)):
        items = [(f"{split}-{i:03d}", text, synth(text, rng)) for i, text in enumerate(texts)]
        if split == "train":
            items += [(uid, text, synth("a", rng)) for uid, text in (extra_train or {}).items()]
        recs, sups = [], []
        for uid, text, audio in items:
            path = root / "audio" / f"{uid}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, audio, SR, subtype="PCM_16")
            rec = Recording.from_file(path, recording_id=uid)
            rec.sources[0].source = f"audio/{uid}.wav"  # relative, as the contract allows
            recs.append(rec)
            sups.append(SupervisionSegment(uid, uid, 0.0, rec.duration, text=text, speaker="s0"))
        write_split(root, split, recs, sups)
    finish_corpus(root, {"name": "tones", "splits": {"train": {}, "dev": {}}})
    return root


def tiny_recipe(**train: object) -> dict:
    """A recipe (mapping) for a ~10k-parameter CRNN that learns the tone corpus in seconds."""
    return {
        "model": {"preset": None, "architecture": "crnn", "config": {
            "num_features": 40, "subsampling_channels": [8, 8], "subsampling_kernels": [3, 3],
            "subsampling_strides": [[2, 2], [1, 2]], "rnn_hidden_sizes": [32],
            "rnn_dropout": 0.0}},
        "features": {"num_mel_bins": 40, "dither": 0.0},
        "augment": {"spec_augment": False},
        "train": {"epochs": 40, "max_duration": 5.0, "lr": 5e-3, "warmup_steps": 10,
                  "schedule": "cosine", "checkpoint_every_steps": 20, "log_every_steps": 5,
                  "num_threads": 1, "cmvn_max_cuts": None, **train},
    }


def kill_when_paused(cmd: list[str], marker: Path, wait_s: float, cwd: Path) -> None:
    """Start ``cmd``, wait until it creates ``marker`` (it pauses there), then SIGKILL it. Fails
    the test if it ends first or never gets there within ``wait_s`` seconds."""
    import signal
    import subprocess

    import pytest

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + wait_s
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "the run never reached the point of the kill"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def main(argv: list[str]) -> None:
    recipe, data, out, result = argv[:4]
    resume = "--resume" in argv
    if "--pause-at-checkpoint" in argv:
        i = argv.index("--pause-at-checkpoint")
        _pause_at_checkpoint(int(argv[i + 1]), Path(argv[i + 2]))
    from slimasr.train import train_model

    metrics = train_model(recipe, data, out, resume=resume, show_progress=False)
    path = Path(result.replace("{rank}", os.environ.get("RANK", "0")))
    path.write_text(json.dumps(metrics))


def _pause_at_checkpoint(n: int, marker: Path) -> None:
    from slimasr.train import loop

    original, calls = loop.save_checkpoint, [0]

    def save(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            marker.write_text("paused")
            time.sleep(600)
        return original(*args, **kwargs)

    loop.save_checkpoint = save


if __name__ == "__main__":
    main(sys.argv[1:])
