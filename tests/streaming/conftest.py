"""Session fixtures: the tiny trained causal CRNN (tests/streaming/helpers.py) and its bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimasr.export import ExportConfig, export_model
from tests.streaming.helpers import random_model_dir, train_causal


@pytest.fixture(scope="session")
def causal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model directory; its data directory is ``causal.parent / "data"``."""
    return train_causal(tmp_path_factory.mktemp("streaming"))


@pytest.fixture(scope="session")
def causal_bundle(causal: Path) -> Path:
    """fp32 bundle of ``causal``: model.onnx and model.streaming.onnx."""
    out = causal.parent / "bundle"
    export_model(causal, out, ExportConfig(max_wer_utterances=3))
    return out


@pytest.fixture(scope="session")
def causal_int8_bundle(causal: Path) -> Path:
    """``causal`` exported with --int8: model.int8.onnx and model.streaming.int8.onnx as well."""
    out = causal.parent / "bundle_int8"
    export_model(causal, out, ExportConfig(int8=True, max_wer_utterances=3))
    return out


@pytest.fixture(scope="session")
def bidirectional(causal: Path) -> Path:
    """An untrained bidirectional CRNN directory (same front end as ``causal``)."""
    return random_model_dir(causal.parent / "bidirectional", causal, "crnn",
                            {"subsampling_channels": [8, 8], "rnn_hidden_sizes": [16]})
