"""The documented weight layouts are what structured pruning will rely on: removing one unit
(head, FFN unit, GLU channel, LSTM/GRU unit, conv channel) by slicing the listed rows/columns into
a model built from a narrower config gives exactly the outputs of the original model with that
unit's contribution zeroed."""

from __future__ import annotations

import pytest
import torch

from slimasr.models import build_model

FEATS, VOCAB = 8, 7


def keep(n: int, removed: list[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(n) if i not in removed])


def slice_state(state: dict, cuts: dict[str, list[tuple[int, list[int]]]]) -> dict:
    """Copy of ``state`` with indices removed: cuts[name] = [(dim, removed indices), ...]."""
    out = {}
    for name, t in state.items():
        for dim, removed in cuts.get(name, []):
            t = t.index_select(dim, keep(t.shape[dim], removed))
        out[name] = t.clone()
    return out


def assert_same_outputs(a, b):
    torch.manual_seed(5)
    x, lens = torch.randn(2, 19, FEATS), torch.tensor([19, 12])
    with torch.no_grad():
        (ya, la), (yb, lb) = a(x, lens), b(x, lens)
    assert la.tolist() == lb.tolist()
    for i, n in enumerate(la.tolist()):
        torch.testing.assert_close(ya[i, :n], yb[i, :n], atol=1e-5, rtol=0)


def prune_pair(name: str, cfg: dict, narrow: dict, zero: dict, cuts: dict):
    """(original with zeroed unit, narrow model with sliced weights), both in eval mode."""
    torch.manual_seed(0)
    full = build_model(name, cfg, vocab_size=VOCAB).eval()
    with torch.no_grad():
        for pname, index in zero.items():
            dict(full.named_parameters())[pname][index] = 0.0
    small = build_model(name, {**cfg, **narrow}, vocab_size=VOCAB).eval()
    small.load_state_dict(slice_state(full.state_dict(), cuts), strict=True)
    return full, small


def test_conformer_head_ffn_unit_and_glu_channel_are_separable():
    cfg = dict(num_features=FEATS, subsampling_channels=[3, 4], d_model=8, num_blocks=2,
               num_heads=2, head_dim=4, ffn_dim=12, conv_channels=8, conv_kernel=3)
    narrow = dict(num_heads=[1, 2], ffn_dim=[11, 12, 12, 12], conv_channels=[7, 8])
    b = "blocks.0."
    head1 = list(range(4, 8))  # head 1 of head_dim 4
    zero = {b + "attn.out_proj.weight": (slice(None), slice(4, 8)),
            b + "ffn1.down.weight": (slice(None), 3),
            b + "conv.pw_out.weight": (slice(None), 2)}
    cuts = {b + f"attn.{p}_proj.{w}": [(0, head1)] for p in "qkv" for w in ("weight", "bias")}
    cuts[b + "attn.out_proj.weight"] = [(1, head1)]
    cuts[b + "attn.rel_bias"] = [(0, [1])]
    cuts.update({b + f"ffn1.up.{w}": [(0, [3])] for w in ("weight", "bias")})
    cuts[b + "ffn1.down.weight"] = [(1, [3])]
    for p in ("pw_value.weight", "pw_value.bias", "pw_gate.weight", "pw_gate.bias", "depthwise.weight",
              "depthwise.bias", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"):
        cuts[b + "conv." + p] = [(0, [2])]
    cuts[b + "conv.pw_out.weight"] = [(1, [2])]
    assert_same_outputs(*prune_pair("conformer", cfg, narrow, zero, cuts))


def rnn_unit_cuts(prefix: str, hidden: int, unit: int, gates: int) -> dict:
    rows = [g * hidden + unit for g in range(gates)]
    cuts = {prefix + n: [(0, rows)] for n in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0")}
    cuts[prefix + "weight_hh_l0"] = [(0, rows), (1, [unit])]
    return cuts


@pytest.mark.parametrize("rnn_type,bidirectional", [("lstm", True), ("gru", False)])
def test_crnn_rnn_unit_is_separable(rnn_type, bidirectional):
    cfg = dict(num_features=FEATS, subsampling_channels=[3, 4], rnn_type=rnn_type,
               rnn_hidden_sizes=[6, 5], bidirectional=bidirectional)
    gates, unit = (4 if rnn_type == "lstm" else 3), 2
    dirs = ["fwd", "bwd"] if bidirectional else ["fwd"]
    zero, cuts = {}, {}
    for d in dirs:  # a unit whose own rows are all zero stays at h = 0, so it contributes nothing
        rows = [g * 6 + unit for g in range(gates)]
        for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            zero[f"rnns.0.{d}.{n}"] = (rows,)
        cuts.update(rnn_unit_cuts(f"rnns.0.{d}.", 6, unit, gates))
    next_cols = [unit, 6 + unit] if bidirectional else [unit]  # [forward | backward] columns
    for d in dirs:
        cuts[f"rnns.1.{d}.weight_ih_l0"] = [(1, next_cols)]
    assert_same_outputs(*prune_pair("crnn", cfg, dict(rnn_hidden_sizes=[5, 5]), zero, cuts))


def test_crnn_last_conv_channel_is_separable():
    cfg = dict(num_features=FEATS, subsampling_channels=[3, 4], rnn_hidden_sizes=[6])
    c, freq = 1, 2  # 8 features / 4 (freq strides 2, 2) = 2 bins per channel
    cols = list(range(c * freq, (c + 1) * freq))
    zero = {f"rnns.0.{d}.weight_ih_l0": (slice(None), cols) for d in ("fwd", "bwd")}
    cuts = {f"rnns.0.{d}.weight_ih_l0": [(1, cols)] for d in ("fwd", "bwd")}
    for n in ("convs.1.weight", "convs.1.bias", "norms.1.weight", "norms.1.bias",
              "norms.1.running_mean", "norms.1.running_var"):
        cuts["subsample." + n] = [(0, [c])]
    assert_same_outputs(*prune_pair("crnn", cfg, dict(subsampling_channels=[3, 3]), zero, cuts))


def test_dnn_hidden_unit_is_separable():
    cfg = dict(num_features=FEATS, context_left=1, context_right=1, stride=2, hidden_sizes=[9, 7],
               dropout=0.0)
    cuts = {"layers.0.weight": [(0, [4])], "layers.0.bias": [(0, [4])], "layers.1.weight": [(1, [4])]}
    zero = {"layers.1.weight": (slice(None), 4)}
    assert_same_outputs(*prune_pair("dnn", cfg, dict(hidden_sizes=[8, 7]), zero, cuts))
