"""Surgery: a unit whose outgoing weights are exactly zero contributes nothing, so pruning it away
must leave the outputs unchanged (on padded batches) and remove exactly the parameters it owned."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimasr.models import build_model, load_model, save_model
from slimasr.prune import group_by_name, params_per_unit, prunable_groups, prune_model, select_layers
from tests.prune.helpers import random_model

FEATS, VOCAB = 8, 7
T_MAX, T_SHORT = 23, 14  # two lengths: the second sequence is padded


def make(name: str, cfg: dict, seed: int = 0):
    """Random model in eval mode with non-trivial BatchNorm statistics."""
    return random_model(name, cfg, VOCAB, seed)


def outputs(model) -> list[torch.Tensor]:
    """Log-probs on the valid frames of a padded two-utterance batch."""
    torch.manual_seed(123)
    x = torch.randn(2, T_MAX, FEATS)
    with torch.no_grad():
        y, lens = model(x, torch.tensor([T_MAX, T_SHORT]))
    return [y[i, :n] for i, n in enumerate(lens.tolist())]


def assert_same_outputs(a, b) -> None:
    for ya, yb in zip(outputs(a), outputs(b)):
        torch.testing.assert_close(ya, yb, atol=1e-5, rtol=0)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_(model, name: str, index) -> None:
    with torch.no_grad():
        model.get_parameter(name)[index] = 0.0


def others(n: int, removed: list[int]) -> list[int]:
    return [i for i in range(n) if i not in removed]


# ---- DNN --------------------------------------------------------------------------------------

DNN = dict(num_features=FEATS, context_left=1, context_right=1, hidden_sizes=[9, 7, 5])


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_dnn_neurons_with_zero_outgoing_weights_prune_exactly(layer):
    model = make("dnn", DNN)
    removed, sizes = [1, 3], DNN["hidden_sizes"]
    reader = f"layers.{layer + 1}.weight" if layer < 2 else "head.weight"
    zero_(model, reader, (slice(None), removed))
    small = prune_model(model, {f"layers.{layer}": others(sizes[layer], removed)})
    assert_same_outputs(model, small)
    inputs = [3 * FEATS] + sizes
    outs = sizes[1:] + [VOCAB]
    assert n_params(model) - n_params(small) == 2 * (inputs[layer] + 1 + outs[layer])
    assert small.config.hidden_sizes == [s - 2 if i == layer else s for i, s in enumerate(sizes)]


def test_adjacent_groups_prune_together():
    """layers.1's rows and columns both shrink (two groups slicing one tensor)."""
    model = make("dnn", DNN)
    zero_(model, "layers.1.weight", (slice(None), [0]))
    zero_(model, "layers.2.weight", (slice(None), [6]))
    small = prune_model(model, {"layers.0": others(9, [0]), "layers.1": others(7, [6])})
    assert_same_outputs(model, small)
    assert small.state_dict()["layers.1.weight"].shape == (6, 8)
    torch.testing.assert_close(small.state_dict()["layers.1.weight"], model.layers[1].weight[:6, 1:])
    # layers.0 unit: 24 + 1 in, 7 out; layers.1 unit: 9 + 1 in, 5 out; one weight entry shared
    assert n_params(model) - n_params(small) == (24 + 1 + 7) + (9 + 1 + 5) - 1


# ---- CRNN -------------------------------------------------------------------------------------

def crnn_cfg(rnn_type="lstm", bidirectional=True, sizes=(6, 5, 4), norm="batch") -> dict:
    return dict(num_features=FEATS, subsampling_channels=[3, 4], subsampling_norm=norm,
                rnn_type=rnn_type, rnn_hidden_sizes=list(sizes), bidirectional=bidirectional)


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_rnn_units_with_zero_outgoing_weights_prune_exactly(rnn_type, bidirectional):
    sizes = [6, 5, 4]
    cfg = crnn_cfg(rnn_type, bidirectional, sizes)
    gates, dirs_n = (4 if rnn_type == "lstm" else 3), (2 if bidirectional else 1)
    dirs = ["fwd", "bwd"][:dirs_n]
    inputs = [4 * 2] + [dirs_n * h for h in sizes]  # 4 channels x F' = 2 features into layer 0
    for layer, removed in [(0, [0, 4]), (1, [2]), (2, [1, 2, 3])]:
        model = make("crnn", cfg, seed=layer)
        h, k = sizes[layer], len(removed)
        cols = [j + d * h for d in range(dirs_n) for j in removed]  # [forward | backward] features
        for d in dirs:  # nobody reads the unit: not the layer itself, not the next layer or head
            zero_(model, f"rnns.{layer}.{d}.weight_hh_l0", (slice(None), removed))
            if layer < 2:
                zero_(model, f"rnns.{layer + 1}.{d}.weight_ih_l0", (slice(None), cols))
        if layer == 2:
            zero_(model, "head.weight", (slice(None), cols))
        small = prune_model(model, {f"rnns.{layer}": others(h, removed)})
        assert_same_outputs(model, small)
        own = dirs_n * gates * (k * inputs[layer] + h * h - (h - k) ** 2 + 2 * k)
        reader = dirs_n * gates * sizes[layer + 1] * dirs_n * k if layer < 2 else VOCAB * dirs_n * k
        assert n_params(model) - n_params(small) == own + reader, (layer, removed)
        if k == 1:
            assert own + reader == params_per_unit(model, group_by_name(model)[f"rnns.{layer}"])


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_conv_channels_with_zero_outgoing_weights_prune_exactly(norm):
    cfg = crnn_cfg(sizes=(5,), norm=norm)
    bn = 2 if norm == "batch" else 0
    model = make("crnn", cfg)
    zero_(model, "subsample.convs.1.weight", (slice(None), [1]))
    small = prune_model(model, {"subsample.convs.0": [0, 2]})
    assert_same_outputs(model, small)
    assert n_params(model) - n_params(small) == (9 + 1 + bn) + 4 * 9
    model = make("crnn", cfg)
    freq = model.subsample.out_freq  # 2
    cols = [c * freq + f for c in (0, 3) for f in range(freq)]
    for d in ("fwd", "bwd"):
        zero_(model, f"rnns.0.{d}.weight_ih_l0", (slice(None), cols))
    small = prune_model(model, {"subsample.convs.1": [1, 2]})
    assert_same_outputs(model, small)
    assert n_params(model) - n_params(small) == 2 * ((3 * 9 + 1 + bn) + 2 * freq * 4 * 5)
    assert small.config.subsampling_channels == [3, 2]


# ---- Conformer --------------------------------------------------------------------------------

CONF = dict(num_features=FEATS, subsampling_channels=[3, 4], d_model=8, num_blocks=2,
            num_heads=[2, 3], head_dim=4, ffn_dim=[12, 6, 5, 9], conv_channels=[8, 6],
            conv_kernel=3, max_relative_position=3)
D, DH, K, REL = 8, 4, 3, 7  # d_model, head_dim, conv_kernel, 2 * max_relative_position + 1


def test_conformer_units_with_zero_outgoing_weights_prune_exactly():
    model = make("conformer", CONF)
    b = "blocks.1."
    zero_(model, b + "attn.out_proj.weight", (slice(None), list(range(DH, 2 * DH))))  # head 1
    zero_(model, b + "ffn1.down.weight", (slice(None), [0, 3]))
    zero_(model, b + "ffn2.down.weight", (slice(None), [8]))
    zero_(model, b + "conv.pw_out.weight", (slice(None), [2, 5]))
    zero_(model, "input_proj.weight", (slice(None), [2, 3]))  # channel 1 of the last conv, F' = 2
    keep = {"blocks.1.attn": [0, 2], "blocks.1.ffn1": others(5, [0, 3]),
            "blocks.1.ffn2": others(9, [8]), "blocks.1.conv": others(6, [2, 5]),
            "subsample.convs.1": [0, 2, 3]}
    small = prune_model(model, keep)
    assert_same_outputs(model, small)
    expected = (3 * DH * (D + 1) + DH * D + REL) + 3 * (2 * D + 1) + 2 * (2 * (D + 1) + K + 1 + 2 + D) \
        + (3 * 9 + 1 + 2 * D)
    assert n_params(model) - n_params(small) == expected
    assert (small.config.num_heads, small.config.ffn_dim, small.config.conv_channels) == \
        ([2, 2], [12, 6, 3, 8], [8, 4])


def test_conformer_with_attention_layer_scale_prunes_heads_exactly():
    """The per-channel attention LayerScale (d_model wide) is not sliced by head pruning; a block
    whose heads all go loses it with the attention module."""
    model = make("conformer", dict(CONF, attention_layer_scale=0.3))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.layer_scale.uniform_(0.1, 2.0)
    zero_(model, "blocks.1.attn.out_proj.weight", (slice(None), list(range(2 * DH, 3 * DH))))  # head 2
    for p in ("weight", "bias"):
        zero_(model, "blocks.0.attn.out_proj." + p, slice(None))
    small = prune_model(model, {"blocks.0.attn": [], "blocks.1.attn": [0, 1]})
    assert_same_outputs(model, small)
    head = 3 * DH * (D + 1) + DH * D + REL
    whole = 2 * head + D + 2 * D + D  # 2 heads, out_proj bias, its LayerNorm, its LayerScale
    assert n_params(model) - n_params(small) == head + whole
    assert "blocks.0.attn.layer_scale" not in small.state_dict()
    torch.testing.assert_close(small.blocks[1].attn.layer_scale, model.blocks[1].attn.layer_scale)


def test_glu_value_and_gate_rows_go_together():
    """Only GLU value row 2 is zero (its gate is not): channel 2 outputs 0 = 0 * sigmoid(gate),
    so removing value 2 with gate 2 is exact, and any other gate pairing changes the outputs."""
    model = make("conformer", CONF)
    c = 2
    zero_(model, "blocks.0.conv.pw_value.weight", c)
    zero_(model, "blocks.0.conv.pw_value.bias", c)
    zero_(model, "blocks.0.conv.depthwise.bias", c)  # 0 stays 0 through depthwise, BN, SiLU
    model.blocks[0].conv.norm.running_mean[c] = 0.0
    zero_(model, "blocks.0.conv.norm.bias", c)
    small = prune_model(model, {"blocks.0.conv": others(8, [c])})
    assert_same_outputs(model, small)
    wrong = prune_model(model, {"blocks.0.conv": others(8, [c])})
    with torch.no_grad():  # the gate of channel 3 paired with the value of channel 2 instead
        wrong.blocks[0].conv.pw_gate.weight[c:] = model.blocks[0].conv.pw_gate.weight[c:-1]
    assert not torch.allclose(outputs(wrong)[0], outputs(model)[0], atol=1e-4)


def test_conformer_submodules_pruned_to_zero_disappear():
    model = make("conformer", CONF)
    b = "blocks.0."
    for p in ("attn.out_proj", "ffn1.down", "ffn2.down", "conv.pw_out"):
        zero_(model, b + p + ".weight", slice(None))
        zero_(model, b + p + ".bias", slice(None))
    small = prune_model(model, {b + "attn": [], b + "ffn1": [], b + "ffn2": [], b + "conv": []})
    assert_same_outputs(model, small)
    assert not [k for k in small.state_dict() if k.startswith(b) and not k.startswith(b + "norm_out")]
    assert (small.config.num_heads, small.config.ffn_dim, small.config.conv_channels) == \
        ([0, 3], [0, 0, 5, 9], [0, 6])
    assert [g.name for g in prunable_groups(small)][2:] == \
        ["blocks.1.ffn1", "blocks.1.attn", "blocks.1.conv", "blocks.1.ffn2"]


def test_conformer_with_int_widths_gets_per_block_lists():
    cfg = {**CONF, "num_heads": 2, "ffn_dim": 6, "conv_channels": 4}
    small = prune_model(make("conformer", cfg), {"blocks.1.ffn2": [0, 1], "blocks.0.attn": [1]})
    assert (small.config.num_heads, small.config.ffn_dim, small.config.conv_channels) == \
        ([1, 2], [6, 6, 6, 2], 4)


# ---- the model directory, the input model, validation -----------------------------------------

@pytest.mark.parametrize("name,cfg,keep", [
    ("crnn", crnn_cfg("gru", True, (6, 5)), {"rnns.0": [1, 4], "subsample.convs.1": [0, 3]}),
    ("conformer", CONF, {"blocks.0.attn": [], "blocks.1.conv": [0, 5], "blocks.0.ffn1": [3]}),
])
def test_pruned_model_round_trips_through_the_model_directory(tmp_path, name, cfg, keep):
    small = prune_model(make(name, cfg), keep)
    save_model(small, tmp_path / "m")
    reloaded = load_model(tmp_path / "m")
    for a, b in zip(outputs(small), outputs(reloaded)):
        assert torch.equal(a, b)
    widths = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    for name_, g in group_by_name(small).items():
        field = widths[g.config_field]
        assert (field if isinstance(field, int) else field[g.config_index]) == g.size


def test_input_model_is_untouched_and_mode_dtype_are_copied():
    model = make("crnn", crnn_cfg()).double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = prune_model(model, {"rnns.1": [0, 1], "subsample.convs.0": [2]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.config.rnn_hidden_sizes == [6, 5, 4] and model.config.subsampling_channels == [3, 4]
    assert small.training and next(small.parameters()).dtype == torch.float64
    assert small.config.rnn_hidden_sizes == [6, 2, 4] and small.config.subsampling_channels == [1, 4]
    assert type(small) is type(model) and small is not model


@pytest.mark.parametrize("keep,message", [
    ({"rnns.7": [0]}, "unknown group 'rnns.7'"),
    ({"rnns.1": [0, 5]}, "rnns.1: unit index 5 out of range"),
    ({"rnns.1": [-1]}, "rnns.1: unit index -1 out of range"),
    ({"rnns.1": [1, 1]}, "rnns.1: duplicate"),
    ({"rnns.2": []}, "rnns.2: keeps 0 units, fewer than its minimum 1"),
    ({"subsample.convs.0": [0.5]}, "subsample.convs.0: unit indices must be a sequence of integers"),
    ({"subsample.convs.0": [True]}, "subsample.convs.0: unit indices must be a sequence of integers"),
])
def test_bad_keep_sets_raise_naming_the_group(keep, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        prune_model(make("crnn", crnn_cfg()), keep)


# ---- select_layers ----------------------------------------------------------------------------

RESIDUAL_GAIN = 30.0  # scales the Conformer's residual stream (see the zeroed-block test)

def test_conformer_block_with_zero_branches_equals_the_model_without_it():
    cfg = {**CONF, "num_blocks": 3, "num_heads": 2, "ffn_dim": 6, "conv_channels": 4}
    model = make("conformer", cfg)
    for p in ("attn.out_proj", "ffn1.down", "ffn2.down", "conv.pw_out"):
        zero_(model, f"blocks.1.{p}.weight", slice(None))
        zero_(model, f"blocks.1.{p}.bias", slice(None))
    # block 1 then only re-normalizes block 0's LayerNorm output (affine 1, 0: the default), which
    # is the identity up to LayerNorm's eps / variance: a wide residual stream makes that ~1e-7
    with torch.no_grad():
        model.input_proj.weight.mul_(RESIDUAL_GAIN)
        model.input_proj.bias.mul_(RESIDUAL_GAIN)
    small = select_layers(model, [0, 2])
    assert small.config.num_blocks == 2 and len(small.blocks) == 2
    assert_same_outputs(model, small)
    for k, v in small.state_dict().items():
        old = k.replace("blocks.1.", "blocks.2.") if k.startswith("blocks.1.") else k
        assert torch.equal(v, model.state_dict()[old]), k


def test_conformer_any_subset_and_per_block_lists():
    model = make("conformer", CONF)
    small = select_layers(model, [1])
    assert (small.config.num_heads, small.config.ffn_dim, small.config.conv_channels) == ([3], [5, 9], [6])
    assert torch.equal(small.blocks[0].attn.q_proj.weight, model.blocks[1].attn.q_proj.weight)
    assert len(outputs(small)) == 2


@pytest.mark.parametrize("bidirectional", [True, False])
def test_crnn_keep_first_and_last(bidirectional):
    model = make("crnn", crnn_cfg("lstm", bidirectional, (6, 5, 6)))
    # layer 2 reads layer 1's output width (5 x dirs) != layer 0's (6 x dirs): incompatible
    with pytest.raises(ValueError, match="layer 2 reads width"):
        select_layers(model, [0, 2])
    model = make("crnn", crnn_cfg("lstm", bidirectional, (6, 6, 4)))
    small = select_layers(model, [0, 2])
    assert small.config.rnn_hidden_sizes == [6, 4]
    state, old = small.state_dict(), model.state_dict()
    assert set(state) == {k.replace("rnns.2.", "rnns.1.") for k in old if not k.startswith("rnns.1.")}
    for k, v in state.items():
        assert torch.equal(v, old[k.replace("rnns.1.", "rnns.2.")]), k
    assert outputs(small)[0].shape == outputs(model)[0].shape


def test_dnn_keep_first_and_last_and_errors():
    model = make("dnn", {**DNN, "hidden_sizes": [9, 9, 5]})
    small = select_layers(model, [0, 2])
    assert small.config.hidden_sizes == [9, 5]
    assert torch.equal(small.layers[1].weight, model.layers[2].weight)
    assert torch.equal(small.head.weight, model.head.weight)
    for keep, message in [([1, 2], "layer 0 reads the front-end"), ([0, 1], "the head reads width 5"),
                          ([], "at least one"), ([0, 0, 2], "strictly increasing"),
                          ([0, 3], r"0\.\.2")]:
        with pytest.raises(ValueError, match=message):
            select_layers(model, keep)


# ---- properties over random shapes and keep sets ----------------------------------------------

@st.composite
def crnn_cases(draw):
    n_conv = draw(st.integers(1, 2))
    cfg = crnn_cfg(draw(st.sampled_from(["lstm", "gru"])), draw(st.booleans()),
                   draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)),
                   draw(st.sampled_from(["batch", "none"])))
    cfg.update(subsampling_channels=draw(st.lists(st.integers(1, 4), min_size=n_conv, max_size=n_conv)),
               subsampling_kernels=[3] * n_conv, subsampling_strides=[[2, 2], [1, 2]][:n_conv])
    return "crnn", cfg


@st.composite
def dnn_cases(draw):
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    return "dnn", dict(num_features=FEATS, context_left=draw(st.integers(0, 2)), context_right=1,
                       stride=draw(st.integers(1, 3)), hidden_sizes=sizes)


@st.composite
def conformer_cases(draw):
    blocks = draw(st.integers(1, 2))
    return "conformer", dict(
        num_features=FEATS, subsampling_channels=[draw(st.integers(1, 3)), draw(st.integers(1, 3))],
        d_model=4, num_blocks=blocks, head_dim=2, conv_kernel=3, max_relative_position=2,
        num_heads=draw(st.lists(st.integers(0, 3), min_size=blocks, max_size=blocks)),
        ffn_dim=draw(st.lists(st.integers(0, 5), min_size=2 * blocks, max_size=2 * blocks)),
        conv_channels=draw(st.lists(st.integers(0, 4), min_size=blocks, max_size=blocks)),
        conv_norm=draw(st.sampled_from(["batch", "layer"])))


def random_keep(draw, model) -> dict[str, list[int]]:
    keep = {}
    for g in prunable_groups(model):
        if draw(st.booleans()):
            units = draw(st.lists(st.integers(0, g.size - 1), unique=True, min_size=g.min_size))
            keep[g.name] = draw(st.permutations(units))  # any order is accepted
    return keep


def check_pruned(name: str, cfg: dict, keep: dict) -> None:
    model = make(name, cfg)
    small = prune_model(model, keep)
    groups, new_groups = group_by_name(model), group_by_name(small)
    for g in groups.values():  # widths: config and modules agree with the keep sets
        size = len(keep.get(g.name, range(g.size)))
        assert (g.name in new_groups and new_groups[g.name].size == size) or size == 0
    fresh = build_model(name, small.config, vocab_size=VOCAB)
    assert n_params(small) == n_params(fresh)
    assert {k: v.shape for k, v in small.state_dict().items()} == \
        {k: v.shape for k, v in fresh.state_dict().items()}
    index: dict[str, list[tuple[int, list[int]]]] = {}
    for gname, units in keep.items():
        for s in groups[gname].slices:
            index.setdefault(s.tensor, []).append((s.dim, sorted(s.positions[units].flatten().tolist())))
    old = model.state_dict()
    for k, v in small.state_dict().items():
        expected = old[k]
        for dim, idx in index.get(k, []):
            expected = expected.index_select(dim, torch.tensor(idx, dtype=torch.int64))
        assert torch.equal(v, expected), k
    y = outputs(small)
    assert y[0].shape == (int(small.output_lengths(torch.tensor([T_MAX]))[0]), VOCAB)
    assert all(torch.isfinite(t).all() for t in y)


@settings(max_examples=20, deadline=None)
@given(st.one_of(crnn_cases(), dnn_cases(), conformer_cases()), st.data())
def test_prune_random_shapes_and_keep_sets(case, data):
    name, cfg = case
    keep = random_keep(data.draw, make(name, cfg))
    check_pruned(name, cfg, keep)


@settings(max_examples=15, deadline=None)
@given(st.one_of(crnn_cases(), dnn_cases(), conformer_cases()), st.data())
def test_select_layers_random_subsets(case, data):
    name, cfg = case
    model = make(name, cfg)
    n = len(model.blocks if name == "conformer" else model.rnns if name == "crnn" else model.layers)
    keep = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))
    try:
        small = select_layers(model, keep)
    except ValueError:
        assert name != "conformer"  # only chained stacks can be incompatible
        return
    fresh = build_model(name, small.config, vocab_size=VOCAB)
    assert n_params(small) == n_params(fresh)
    assert len(outputs(small)) == 2
