"""Shared by the pruning tests: tiny random models with non-trivial BatchNorm statistics."""

from __future__ import annotations

import torch

from slimasr.models import build_model


def random_model(name: str, cfg: dict, vocab_size: int, seed: int = 0):
    """A random ``name`` model in eval mode whose BatchNorms have non-trivial statistics and
    affine parameters (so that slicing a wrong channel shows in the outputs)."""
    torch.manual_seed(seed)
    model = build_model(name, cfg, vocab_size=vocab_size).eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model
