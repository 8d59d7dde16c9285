"""Shared by the export tests: a tiny trained model with 80 log-mel bins (sherpa-onnx's feature_dim).

The tone corpus of tests/train/helpers.py; 60 epochs at lr 2e-2 (about 10 s) reach dev WER 0, so
the int8 gate passes on merit and every transcript is a real, non-empty one.
"""

from __future__ import annotations

from pathlib import Path

from slimasr.train import train_model
from tests.train.helpers import make_corpus, tiny_recipe

MEL_BINS = 80


def train_tiny(root: Path) -> Path:
    """Train into ``root/model`` on the tone corpus in ``root/data``; returns the model directory."""
    data = make_corpus(root / "data", n_train=20)
    recipe = tiny_recipe(epochs=60, lr=2e-2)
    recipe["model"]["config"]["num_features"] = MEL_BINS
    recipe["features"]["num_mel_bins"] = MEL_BINS
    train_model(recipe, data, root / "model", show_progress=False)
    return root / "model"


def dev_audio(model_dir: Path) -> list[Path]:
    """The dev split's audio files, sorted."""
    return sorted((model_dir.parent / "data" / "audio").glob("dev-*.wav"))
