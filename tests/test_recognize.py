"""Inference is deterministic: the same file gives bit-identical log-probs and the same text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimasr.cli import main
from slimasr.data.audio import load_audio
from slimasr.data.features import FeatureConfig
from slimasr.recognize import Recognizer
from slimasr.train import train_model
from tests.train.helpers import make_corpus, tiny_recipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recognize")
    data = make_corpus(root / "data", n_train=10)
    recipe = tiny_recipe(epochs=2)
    recipe["features"]["dither"] = FeatureConfig().dither  # the default: training dithers
    train_model(recipe, data, root / "model", show_progress=False)
    return root / "model"


def test_same_file_gives_bit_identical_log_probs(model_dir: Path) -> None:
    audio = load_audio(next((model_dir.parent / "data" / "audio").glob("dev-*.wav")))
    first = Recognizer(model_dir)
    assert first.frontend.features.dither > 0
    a, b = first.log_probs(audio), first.log_probs(audio)
    c = Recognizer(model_dir).log_probs(audio)  # a fresh load, too
    assert a.shape[0] > 0 and torch.equal(a, b) and torch.equal(a, c)


def test_transcribe_twice_prints_the_same(model_dir: Path, capsys) -> None:
    wavs = sorted(str(p) for p in (model_dir.parent / "data" / "audio").glob("dev-00*.wav"))[:3]
    assert main(["transcribe", "--model", str(model_dir), *wavs]) == 0
    once = capsys.readouterr().out
    assert main(["transcribe", "--model", str(model_dir), *wavs]) == 0
    assert capsys.readouterr().out == once and len(once.splitlines()) == 3
