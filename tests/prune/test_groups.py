"""Group declarations: names, kinds, configs, positions that tile each sliced dim, activation sites
that exist and have the declared width, and params_per_unit against hand-written formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimasr.models import build_model
from slimasr.models.common import AcousticModel
from slimasr.prune import (
    ActivationSite,
    Group,
    layer_stack,
    params_per_unit,
    prunable_groups,
    register_groups,
)

FEATS, VOCAB = 8, 7

CONFIGS = {
    "dnn": ("dnn", dict(num_features=FEATS, context_left=1, context_right=1, hidden_sizes=[9, 7, 5])),
    "crnn_bilstm": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4],
                                 rnn_hidden_sizes=[6, 5, 4])),
    "crnn_unigru": ("crnn", dict(num_features=FEATS, subsampling_channels=[3], rnn_type="gru",
                                 subsampling_strides=[[2, 2]], subsampling_kernels=[3],
                                 rnn_hidden_sizes=[6, 5], bidirectional=False,
                                 subsampling_norm="none")),
    "conformer": ("conformer", dict(num_features=FEATS, subsampling_channels=[3, 4], d_model=8,
                                    num_blocks=2, num_heads=[2, 3], head_dim=4, ffn_dim=[12, 6, 0, 9],
                                    conv_channels=[8, 0], conv_kernel=3, max_relative_position=3)),
    "conformer_layernorm": ("conformer", dict(num_features=FEATS, subsampling_channels=[3], d_model=8,
                                              subsampling_strides=[[2, 2]], subsampling_kernels=[3],
                                              subsampling_norm="batch",
                                              num_blocks=1, num_heads=1, head_dim=4, ffn_dim=5,
                                              conv_channels=6, conv_kernel=3, conv_norm="layer")),
}


def build(key: str) -> AcousticModel:
    torch.manual_seed(0)
    name, cfg = CONFIGS[key]
    return build_model(name, cfg, vocab_size=VOCAB).eval()


def summary(model) -> list[tuple]:
    return [(g.name, g.kind, g.size, g.config_field, g.config_index, g.min_size)
            for g in prunable_groups(model)]


def test_dnn_groups():
    assert summary(build("dnn")) == [("layers.0", "neuron", 9, "hidden_sizes", 0, 1),
                                     ("layers.1", "neuron", 7, "hidden_sizes", 1, 1),
                                     ("layers.2", "neuron", 5, "hidden_sizes", 2, 1)]


def test_crnn_groups():
    assert summary(build("crnn_bilstm")) == [
        ("subsample.convs.0", "conv_channel", 3, "subsampling_channels", 0, 1),
        ("subsample.convs.1", "conv_channel", 4, "subsampling_channels", 1, 1),
        ("rnns.0", "rnn_unit", 6, "rnn_hidden_sizes", 0, 1),
        ("rnns.1", "rnn_unit", 5, "rnn_hidden_sizes", 1, 1),
        ("rnns.2", "rnn_unit", 4, "rnn_hidden_sizes", 2, 1)]


def test_conformer_groups_skip_absent_submodules():
    assert summary(build("conformer")) == [
        ("subsample.convs.0", "conv_channel", 3, "subsampling_channels", 0, 1),
        ("subsample.convs.1", "conv_channel", 4, "subsampling_channels", 1, 1),
        ("blocks.0.ffn1", "ffn_unit", 12, "ffn_dim", 0, 0),
        ("blocks.0.attn", "head", 2, "num_heads", 0, 0),
        ("blocks.0.conv", "glu_channel", 8, "conv_channels", 0, 0),
        ("blocks.0.ffn2", "ffn_unit", 6, "ffn_dim", 1, 0),
        ("blocks.1.attn", "head", 3, "num_heads", 1, 0),
        ("blocks.1.ffn2", "ffn_unit", 9, "ffn_dim", 3, 0)]


def test_lstm_unit_slices_every_gate_both_directions_and_the_reader():
    g = {g.name: g for g in prunable_groups(build("crnn_bilstm"))}["rnns.1"]
    by_key = {(s.tensor, s.dim): s for s in g.slices}
    rows = by_key[("rnns.1.bwd.weight_ih_l0", 0)].positions
    assert rows[2].tolist() == [2, 7, 12, 17]  # H = 5, gates i, f, g, o
    assert by_key[("rnns.1.fwd.weight_hh_l0", 1)].positions[2].tolist() == [2]
    reader = by_key[("rnns.2.bwd.weight_ih_l0", 1)]
    assert reader.consumer and reader.positions[2].tolist() == [2, 7]  # [forward | backward]
    assert sorted(k for k, _ in by_key) == sorted(
        [f"rnns.1.{d}.{n}" for d in ("fwd", "bwd")
         for n in ("weight_ih_l0", "weight_hh_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
        + ["rnns.2.fwd.weight_ih_l0", "rnns.2.bwd.weight_ih_l0"])


def test_last_conv_channel_owns_its_flattened_columns():
    model = build("crnn_bilstm")  # 8 features, freq strides 2 and 2 -> F' = 2
    g = prunable_groups(model)[1]
    reader = [s for s in g.slices if s.tensor == "rnns.0.fwd.weight_ih_l0"][0]
    assert reader.positions.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert {s.tensor for s in g.slices} >= {f"subsample.norms.1.{n}" for n in
                                            ("weight", "bias", "running_mean", "running_var")}
    assert "subsample.norms.1.num_batches_tracked" not in {s.tensor for s in g.slices}


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_slices_tile_their_dims_exactly(key):
    """Every sliced (tensor, dim) is partitioned by the units: each index owned exactly once."""
    model = build(key)
    state = model.state_dict()
    for g in prunable_groups(model):
        assert len({(s.tensor, s.dim) for s in g.slices}) == len(g.slices), g.name
        for s in g.slices:
            owned = sorted(s.positions.flatten().tolist())
            assert owned == list(range(state[s.tensor].shape[s.dim])), (g.name, s.tensor)


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_activation_sites_exist_and_have_the_declared_width(key):
    model = build(key)
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for g in prunable_groups(model):
        site = g.activation
        module = model.get_submodule(site.module)

        def grab(name, value):
            seen[name] = value[0] if isinstance(value, tuple) else value
        if site.port == "input":
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=g.name: grab(name, args[0])))
        else:
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=g.name: grab(name, out)))
    with torch.no_grad():
        model(torch.randn(2, 13, FEATS), torch.tensor([13, 9]))
    for h in handles:
        h.remove()
    for g in prunable_groups(model):
        width = seen[g.name].shape[g.activation.dim]
        assert sorted(g.activation.positions.flatten().tolist()) == list(range(width)), g.name


def test_params_per_unit_matches_hand_formulas():
    dnn = build("dnn")  # in = 3 * 8 stacked features
    assert [params_per_unit(dnn, g) for g in prunable_groups(dnn)] == [24 + 1 + 7, 9 + 1 + 5, 7 + 1 + VOCAB]
    crnn = build("crnn_bilstm")  # conv front-end: 1 -> 3 -> 4 channels, k = 3, F' = 2
    g = {g.name: g for g in prunable_groups(crnn)}
    assert params_per_unit(crnn, g["subsample.convs.0"]) == 9 + 1 + 2 + 4 * 9  # + BN weight, bias
    assert params_per_unit(crnn, g["subsample.convs.1"]) == 3 * 9 + 1 + 2 + 2 * (4 * 6 * 2)
    gates, dirs = 4, 2

    def lstm_unit(inp, hidden, reader_rows):  # own rows + recurrent column (shared entry per gate)
        return dirs * gates * (inp + 2 * hidden + 1) + dirs * reader_rows
    assert params_per_unit(crnn, g["rnns.0"]) == lstm_unit(8, 6, dirs * gates * 5)
    assert params_per_unit(crnn, g["rnns.1"]) == lstm_unit(12, 5, dirs * gates * 4)
    assert params_per_unit(crnn, g["rnns.2"]) == lstm_unit(10, 4, VOCAB)
    conf = build("conformer")
    g = {g.name: g for g in prunable_groups(conf)}
    d, dh = 8, 4
    assert params_per_unit(conf, g["blocks.0.attn"]) == 3 * dh * (d + 1) + dh * d + 7
    assert params_per_unit(conf, g["blocks.0.ffn1"]) == d + 1 + d
    assert params_per_unit(conf, g["blocks.0.conv"]) == 2 * (d + 1) + 3 + 1 + 2 + d


def test_layer_stacks():
    assert [s.prefix for s in map(layer_stack, map(build, ("dnn", "crnn_bilstm", "conformer")))] == \
        ["layers", "rnns", "blocks"]
    assert layer_stack(build("crnn_bilstm")).widths == ((8, 12), (12, 10), (10, 8))
    assert layer_stack(build("conformer")).widths is None


def test_unregistered_family_is_an_error_and_registration_dispatches():
    class Toy(AcousticModel):
        arch = "toy-for-groups-test"

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 3)

    with pytest.raises(ValueError, match="toy-for-groups-test"):
        prunable_groups(Toy())

    @register_groups("toy-for-groups-test")
    def toy_groups(model):
        site = ActivationSite("lin", "output", -1, torch.arange(3)[:, None])
        return [Group("lin", "neuron", 3, (), "width", 0, 1, site)]
    assert [g.name for g in prunable_groups(Toy())] == ["lin"]


def test_group_checks_position_rows_against_its_size():
    site = ActivationSite("acts.0", "output", -1, torch.arange(4)[:, None])
    with pytest.raises(ValueError, match="bad"):
        Group("bad", "neuron", 3, (), "hidden_sizes", 0, 1, site)
