"""Session fixtures: the tiny trained model (tests/export/helpers.py) and its bundle, made once."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimasr.export import ExportConfig, export_model
from tests.export.helpers import train_tiny


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model directory; its data directory is ``trained.parent / "data"``."""
    return train_tiny(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="session")
def bundle(trained: Path) -> Path:
    """fp32 + int8 bundle of ``trained`` (WER scored on its dev split)."""
    out = trained.parent / "bundle"
    export_model(trained, out, ExportConfig(int8=True))
    return out
