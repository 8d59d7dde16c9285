"""bench/peers.py without the peer packages: a Conformer narrowed the way ModelOpt's FastNAS
narrows one (smaller FFN Linears) comes back as our model directory, exactly."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from slimasr.frontend import Frontend
from slimasr.models import build_model, load_model, save_model
from slimasr.prune import model_cost

_SCRIPT = Path(__file__).parents[2] / "bench" / "peers.py"
_spec = importlib.util.spec_from_file_location("bench_peers", _SCRIPT)
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)

SHIPPED = Path(__file__).parents[2] / "slimasr" / "shipped" / "smarthome_crnn"
TINY = {"d_model": 32, "num_blocks": 2, "num_heads": 2, "head_dim": 16, "ffn_dim": 64,
        "conv_channels": 32, "conv_kernel": 5, "subsampling_channels": [8, 8], "dropout": 0.0}


def tiny_conformer(tmp_path: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    frontend = Frontend.load(SHIPPED)
    model = build_model("conformer", TINY, vocab_size=frontend.tokenizer.vocab_size).eval()
    source = tmp_path / "source"
    save_model(model, source, {**frontend.config_entry(), "tokenizer": {
        "kind": frontend.tokenizer.kind, "vocab_size": frontend.tokenizer.vocab_size}})
    frontend.save(source)
    return model, source


def narrow_ffn(ffn: nn.Module, keep: int) -> None:
    """What ModelOpt's export leaves: ``up`` and ``down`` replaced by Linears of ``keep`` units."""
    up, down = nn.Linear(ffn.up.in_features, keep), nn.Linear(keep, ffn.down.out_features)
    with torch.no_grad():
        up.weight.copy_(ffn.up.weight[:keep]), up.bias.copy_(ffn.up.bias[:keep])
        down.weight.copy_(ffn.down.weight[:, :keep]), down.bias.copy_(ffn.down.bias)
    ffn.up, ffn.down = up, down


def test_narrowed_conformer_becomes_our_model_dir(tmp_path):
    original, source = tiny_conformer(tmp_path)
    pruned = copy.deepcopy(original)
    narrow_ffn(pruned.blocks[0].ffn1, 32)
    narrow_ffn(pruned.blocks[1].ffn2, 16)
    assert peers.changed_tensors(original, pruned)["blocks.0.ffn1.up.weight"] == [[64, 32], [32, 32]]

    ours = peers.conformer_from_pruned(pruned, original)
    assert ours.config.ffn_dim == [32, 64, 64, 16]
    peers.save_like(ours, source, tmp_path / "out", {"peer": "test"})
    reloaded = load_model(tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "cmvn.json").is_file()
    assert model_cost(reloaded, "macs") < model_cost(original, "macs")
    x, lens = torch.randn(2, 120, 80), torch.tensor([120, 90])
    with torch.no_grad():
        assert torch.allclose(pruned(x, lens)[0], reloaded(x, lens)[0], atol=1e-5)


def test_width_our_config_cannot_hold_is_an_error(tmp_path):
    original, _ = tiny_conformer(tmp_path)
    pruned = copy.deepcopy(original)
    pruned.blocks[0].attn.q_proj = nn.Linear(32, 24)  # 1.5 heads of 16: no per-block head count says that
    with pytest.raises(RuntimeError):
        peers.conformer_from_pruned(pruned, original)


def test_torchao_targets_name_real_tensors(tmp_path):
    conformer, _ = tiny_conformer(tmp_path)
    crnn = build_model("crnn", {"subsampling_channels": [4, 4], "rnn_hidden_sizes": [16, 16]}, vocab_size=29)
    for model in (conformer, crnn):
        for _, root, fqns in peers.torchao_targets(model):
            state = model.get_submodule(root).state_dict()
            assert fqns and all(f in state for f in fqns)
