"""Shared by the streaming tests: a tiny trained causal CRNN (unidirectional LSTM, causal convs)
with 80 log-mel bins (sherpa-onnx's feature_dim), on the tone corpus of tests/train/helpers.py.
150 epochs at lr 5e-3 (about 25 s) reach dev WER 0: real, non-empty transcripts (60 epochs at
2e-2, enough for the bidirectional model of tests/export, leave this one with empty ones)."""

from __future__ import annotations

from pathlib import Path

from slimasr.train import train_model
from tests.train.helpers import make_corpus, tiny_recipe

MEL_BINS = 80
CHUNK_MS = [80, 160, 320, 130]  # 130 ms: chunks end in the middle of an output frame


def train_causal(root: Path) -> Path:
    """Train into ``root/model`` on the tone corpus in ``root/data``; returns the model directory."""
    data = make_corpus(root / "data", n_train=20)
    recipe = tiny_recipe(epochs=150, lr=5e-3)
    recipe["model"]["config"].update(num_features=MEL_BINS, bidirectional=False)
    recipe["features"]["num_mel_bins"] = MEL_BINS
    train_model(recipe, data, root / "model", show_progress=False)
    return root / "model"


def dev_audio(model_dir: Path) -> list[Path]:
    """The dev split's audio files, sorted."""
    return sorted((model_dir.parent / "data" / "audio").glob("dev-*.wav"))


def random_model_dir(out: Path, like: Path, arch: str, config: dict) -> Path:
    """An untrained ``arch`` model in ``out`` with the front end (tokenizer, CMVN, features) of the
    model directory ``like``: enough to load, transcribe and export."""
    from slimasr.frontend import Frontend
    from slimasr.models import build_model, save_model

    frontend = Frontend.load(like)
    model = build_model(arch, {"num_features": MEL_BINS, **config}, vocab_size=len(frontend.tokenizer.tokens))
    save_model(model, out, extra=frontend.config_entry())
    frontend.save(out)
    return out
