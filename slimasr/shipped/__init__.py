"""Models shipped with slimasr as package data, one folder each, loadable by name.

    from slimasr import pretrained, load_model
    model = load_model(pretrained("smarthome-crnn"))      # the folder is a model directory

Each folder is a model directory (config.json, model.safetensors in float16, cmvn.json,
tokenizer.json) with a provenance.json: how it was trained, on which corpus, and what it scores
(docs/pretrained.md). Wherever slimasr takes a model folder (``--model``, ``--teacher``, a
pipeline stage's ``model`` / ``teacher``) a shipped name works too: see :func:`resolve_model`.
Importing this module does not import torch.
"""

from __future__ import annotations

from pathlib import Path

from slimasr.errors import ConfigError, DataError

SHIPPED_DIR = Path(__file__).resolve().parent  # the folders of the shipped models
SHIPPED = {"smarthome-crnn": "smarthome_crnn",  # name -> folder under SHIPPED_DIR
           "smarthome-crnn-causal": "smarthome_crnn_causal"}  # its causal streaming student
REQUIRED_FILES = ("config.json", "model.safetensors", "cmvn.json", "tokenizer.json",
                  "provenance.json")  # fmt: skip
PROVENANCE_NAME = "provenance.json"  # how the model was made and what it scores


def pretrained(name: str) -> Path:
    """The folder of the shipped model ``name`` (a model directory for ``load_model``).

    ConfigError for an unknown name (listing the known ones); DataError naming the folder when a
    file of it is missing (an install without the package data)."""
    if name not in SHIPPED:
        raise ConfigError(f"unknown shipped model {name!r} (known: {', '.join(sorted(SHIPPED))})")
    folder = SHIPPED_DIR / SHIPPED[name]
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(folder, f"shipped model {name!r} is incomplete: missing {', '.join(missing)} "
                                "(reinstall slimasr with its package data)")
    return folder


def resolve_model(value: str) -> str:
    """``value`` when it exists as a path; the shipped folder when it is a shipped model's name;
    else ``value`` unchanged (so whatever reads it reports a missing folder as before)."""
    if Path(value).exists() or value not in SHIPPED:
        return value
    return str(pretrained(value))


def provenance(name: str) -> dict:
    """The shipped model's provenance.json."""
    from slimasr.io import read_json

    return read_json(pretrained(name) / PROVENANCE_NAME)
