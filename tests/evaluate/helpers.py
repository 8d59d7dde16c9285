"""A sentencepiece-tokenized tiny model whose output is known: one word piece on every frame.

Training it to read the tone corpus would take minutes; instead the tiny CRNN is trained for two
steps (a real model directory with a real ``tokenizer.model``), then its output layer is set so
that every frame's best token is the piece ``"▁lamp"``: greedy decoding gives exactly that piece,
which a decoder must write as the word ``lamp``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slimasr.text import load_tokenizer
from slimasr.train import train_model
from tests.train.helpers import make_corpus, tiny_recipe

PIECE = "\u2581lamp"  # "▁lamp": a word-initial piece of the tone corpus's bpe vocabulary
WORD = "lamp"  # what it must decode to


def constant_piece_model(root: Path, mel_bins: int = 40) -> Path:
    """``root/model``: a bpe model (data in ``root/data``) that outputs ``PIECE`` on every frame."""
    data = make_corpus(root / "data", n_train=10)
    recipe = tiny_recipe(epochs=1, max_steps=2)
    recipe["tokenizer"] = {"kind": "bpe", "vocab_size": 24}
    recipe["model"]["config"]["num_features"] = mel_bins
    recipe["features"]["num_mel_bins"] = mel_bins
    model_dir = root / "model"
    train_model(recipe, data, model_dir, show_progress=False)
    piece = load_tokenizer(model_dir).tokens.index(PIECE)
    weights = load_file(model_dir / "model.safetensors")
    weights["head.weight"] = torch.zeros_like(weights["head.weight"])
    weights["head.bias"] = torch.full_like(weights["head.bias"], -10.0)
    weights["head.bias"][piece] = 10.0
    save_file(weights, model_dir / "model.safetensors")
    return model_dir
