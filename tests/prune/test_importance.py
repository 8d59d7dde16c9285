"""Importance criteria: one finite score per unit of every group; magnitude and Taylor against an
explicit per-entry reference (each weight of a unit counted once); activation statistics blind to
padding; a dead ReLU unit scores 0; random is seeded.

``build``, ``FAMILIES`` and ``make_batches`` are shared with test_plan.py and test_sensitivity.py."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from slimasr.models import build_model
from slimasr.prune import (
    activation_scores,
    magnitude_scores,
    prunable_groups,
    random_scores,
    score_model,
    taylor_scores,
)
from slimasr.train.loop import compute_loss
from tests.prune.helpers import random_model

FEATS, VOCAB = 8, 7

FAMILIES = {
    "dnn": ("dnn", dict(num_features=FEATS, context_left=1, context_right=1, stride=2,
                        hidden_sizes=[9, 7, 5])),
    "crnn_bilstm": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4],
                                 rnn_hidden_sizes=[6, 5, 4])),
    "crnn_gru": ("crnn", dict(num_features=FEATS, subsampling_channels=[3], rnn_type="gru",
                              subsampling_strides=[[2, 2]], subsampling_kernels=[3],
                              rnn_hidden_sizes=[6, 5], bidirectional=False, subsampling_norm="none")),
    "conformer": ("conformer", dict(num_features=FEATS, subsampling_channels=[3, 4], d_model=8,
                                    num_blocks=2, num_heads=[2, 3], head_dim=4, ffn_dim=[12, 6, 0, 9],
                                    conv_channels=[8, 0], conv_kernel=3, max_relative_position=3)),
}
CRITERIA = ("magnitude", "taylor", "activation", "apoz", "random")


def build(key: str, seed: int = 0, **overrides):
    """Tiny random model in eval mode with non-trivial BatchNorm statistics."""
    name, cfg = FAMILIES[key]
    return random_model(name, {**cfg, **overrides}, VOCAB, seed)


def make_batch(lens: list[int], frames: int | None = None, seed: int = 0, garbage: bool = False) -> dict:
    """One AsrDataset-style batch: features zero-padded (or random garbage) beyond each length."""
    gen = torch.Generator().manual_seed(seed)
    frames = max(lens) if frames is None else frames
    x = torch.randn(len(lens), max(lens), FEATS, generator=gen)
    padded = torch.randn(len(lens), frames, FEATS) if garbage else torch.zeros(len(lens), frames, FEATS)
    for i, n in enumerate(lens):
        padded[i, :n] = x[i, :n]
    target_lens = torch.tensor([2, 3, 1, 2][:len(lens)])
    targets = torch.randint(1, VOCAB, (len(lens), 3), generator=gen)
    return {"features": padded, "feature_lens": torch.tensor(lens), "targets": targets,
            "target_lens": target_lens}


def make_batches(n: int = 2) -> list[dict]:
    return [make_batch([31, 22, 17], seed=s) for s in range(n)]


def unit_masks(model, group) -> list[dict[str, torch.Tensor]]:
    """Per unit: parameter name -> bool mask of the entries it owns (union of its slices)."""
    params = dict(model.named_parameters())
    out = []
    for j in range(group.size):
        masks: dict[str, torch.Tensor] = {}
        for s in group.slices:
            if s.tensor in params:
                m = masks.setdefault(s.tensor, torch.zeros_like(params[s.tensor], dtype=torch.bool))
                m.movedim(s.dim, 0)[s.positions[j]] = True
        out.append(masks)
    return out


# ---- every criterion, every family ----------------------------------------------------------

@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_every_criterion_scores_every_unit_of_every_group(key, criterion):
    model = build(key)
    scores = score_model(model, criterion, make_batches(1))
    groups = prunable_groups(model)
    assert list(scores) == [g.name for g in groups]
    for g in groups:
        s = scores[g.name]
        assert s.shape == (g.size,) and s.dtype == torch.float32, g.name
        assert bool(torch.isfinite(s).all()) and bool((s >= 0).all()), g.name


# ---- magnitude ------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_magnitude_is_the_norm_of_each_weight_the_unit_owns_once(key, p):
    model = build(key)
    scores = magnitude_scores(model, p=p)
    params = dict(model.named_parameters())
    for g in prunable_groups(model):
        expected = [sum(float((params[k].detach().double().abs() ** p)[m].sum()) for k, m in masks.items())
                    ** (1 / p) for masks in unit_masks(model, g)]
        torch.testing.assert_close(scores[g.name].double(), torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6, msg=g.name)


def test_magnitude_l1_and_l2_by_hand_on_a_tiny_dnn():
    model = build_model("dnn", dict(num_features=2, context_left=0, context_right=0, stride=1,
                                    hidden_sizes=[2, 3]), vocab_size=2)
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))
        model.layers[0].bias.copy_(torch.tensor([0.5, -1.0]))
        model.layers[1].weight.copy_(torch.tensor([[1.0, 0.0], [2.0, -1.0], [0.0, 0.0]]))
    l1, l2 = magnitude_scores(model, p=1)["layers.0"], magnitude_scores(model, p=2)["layers.0"]
    # unit 0: own 1, -2, bias 0.5; read by 1, 2, 0. unit 1: own 0, 3, bias -1; read by 0, -1, 0
    torch.testing.assert_close(l1, torch.tensor([6.5, 5.0]))
    torch.testing.assert_close(l2, torch.tensor([math.sqrt(10.25), math.sqrt(11.0)]))


@pytest.mark.parametrize("key, group, unit", [("crnn_bilstm", "rnns.1", 2), ("conformer", "blocks.1.attn", 1),
                                              ("crnn_bilstm", "subsample.convs.1", 0)])
def test_a_unit_with_all_weights_zero_scores_zero_and_lowest(key, group, unit):
    model = build(key)
    g = {g.name: g for g in prunable_groups(model)}[group]
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in unit_masks(model, g)[unit].items():
            params[name][mask] = 0.0
    s = magnitude_scores(model)[group]
    assert float(s[unit]) == 0.0 and int(s.argmin()) == unit
    assert bool((s[torch.arange(g.size) != unit] > 0).all())


# ---- Taylor ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["dnn", "crnn_bilstm", "conformer"])
def test_taylor_matches_an_explicit_autograd_computation(key):
    model = build(key)
    batches = make_batches(2)
    scores = taylor_scores(model, batches)
    params = dict(model.named_parameters())
    groups = prunable_groups(model)
    expected = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    for batch in batches:
        loss = compute_loss(model, batch, torch.device("cpu"), "mean", contextlib.nullcontext())
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
        for g in groups:
            per_unit = [sum(float((params[k].detach() * grads[k])[m].sum()) for k, m in masks.items()
                            if grads[k] is not None) for masks in unit_masks(model, g)]
            expected[g.name] += torch.tensor(per_unit, dtype=torch.float64).abs()
    for g in groups:
        torch.testing.assert_close(scores[g.name].double(), expected[g.name], rtol=1e-4, atol=1e-7,
                                   msg=g.name)


def test_taylor_restores_mode_and_flags_and_clears_grads():
    model = build("crnn_bilstm").train()
    model.rnns[0].fwd.weight_ih_l0.requires_grad_(False)
    first = taylor_scores(model, make_batches(1))
    assert model.training
    assert not model.rnns[0].fwd.weight_ih_l0.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "rnns.0.fwd.weight_ih_l0")
    assert all(p.grad is None for p in model.parameters())
    again = taylor_scores(model, make_batches(1))  # no dropout: the same scores again
    for name in first:
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)
    assert float(first["rnns.0"].sum()) > 0  # the frozen weight still counts


def test_max_batches_stops_early_without_drawing_more():
    model = build("dnn")
    batches = make_batches(3)
    drawn = []

    def stream():
        for b in batches:
            drawn.append(b)
            yield b
    limited = taylor_scores(model, stream(), max_batches=1)
    assert len(drawn) == 1
    first = taylor_scores(model, batches[:1])
    for name in first:
        torch.testing.assert_close(limited[name], first[name], rtol=0, atol=0)


# ---- activations ----------------------------------------------------------------------------

@pytest.mark.parametrize("statistic", ["mean_abs", "apoz"])
@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_activation_scores_ignore_padding(key, statistic):
    """The same utterances padded to 31 frames with zeros or to 45 frames with garbage: every
    site's statistic over valid frames is the same (RNN outputs and biases differ on padding)."""
    model = build(key)
    lens = [31, 22, 17]
    tight = activation_scores(model, [make_batch(lens)], statistic)
    loose = activation_scores(model, [make_batch(lens, frames=45, garbage=True)], statistic)
    for name in tight:
        torch.testing.assert_close(tight[name], loose[name], rtol=1e-5, atol=1e-6, msg=name)


def test_conv_site_statistic_by_hand_over_its_own_valid_frames():
    """The Conformer's first conv halves time (k 3, stride 2, pad 1+1: 31, 22, 17 -> 16, 11, 9
    frames) and the model quarters it: the first conv's channels average its own valid frames."""
    model = build("conformer")
    batch = make_batch([31, 22, 17], frames=40)
    seen = {}
    handle = model.subsample.acts[0].register_forward_hook(lambda m, a, out: seen.setdefault("a", out))
    with torch.no_grad():
        model(batch["features"], batch["feature_lens"])
    handle.remove()
    a = seen["a"]  # (N, C, T0, F0)
    assert a.shape[2] == 20
    valid = torch.cat([a[i, :, :n].abs().flatten(1) for i, n in enumerate([16, 11, 9])], dim=1)
    torch.testing.assert_close(activation_scores(model, [batch])["subsample.convs.0"], valid.mean(1))


def test_padding_would_change_unmasked_statistics():
    """Guard for the test above: on padded frames the sites really do hold non-zero garbage."""
    model = build("crnn_bilstm")
    seen = {}
    handle = model.rnns[0].register_forward_hook(lambda m, a, out: seen.setdefault("y", out))
    with torch.no_grad():
        model(torch.randn(1, 45, FEATS), torch.tensor([17]))
    handle.remove()
    valid = int(model.output_lengths(torch.tensor([17]))[0])
    assert float(seen["y"][0, valid:].abs().mean()) > 1e-3


def test_a_dead_relu_unit_has_apoz_score_zero():
    model = build("dnn")
    with torch.no_grad():
        model.layers[0].weight[3] = 0.0
        model.layers[0].bias[3] = -1.0
    batches = make_batches(2)
    apoz = score_model(model, "apoz", batches)["layers.0"]
    mean_abs = score_model(model, "activation", batches)["layers.0"]
    assert float(apoz[3]) == 0.0 and float(mean_abs[3]) == 0.0
    assert bool((apoz[torch.arange(9) != 3] > 0).all()) and bool((apoz <= 1).all())


def test_apoz_at_a_non_rectified_site_counts_near_zero_values():
    """LSTM outputs go negative: a unit whose outputs are all ~0 (zero output gate) scores 0."""
    model = build("crnn_bilstm")
    hidden = 5
    with torch.no_grad():
        for rnn in (model.rnns[1].fwd, model.rnns[1].bwd):
            for t in (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0):
                t[3 * hidden + 2] = 0.0  # output gate row of unit 2
            rnn.bias_ih_l0[3 * hidden + 2] = -30.0  # sigmoid(-30) ~ 1e-13
    s = score_model(model, "apoz", make_batches(1))["rnns.1"]
    assert float(s[2]) == 0.0
    assert bool((s[torch.arange(hidden) != 2] > 0).all())


def test_activation_restores_mode_and_removes_hooks():
    model = build("conformer").train()
    activation_scores(model, make_batches(1))
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---- random and dispatch --------------------------------------------------------------------

def test_random_scores_are_seeded():
    model = build("crnn_bilstm")
    a, b, c = random_scores(model, seed=1), random_scores(model, seed=1), random_scores(model, seed=2)
    for name in a:
        assert torch.equal(a[name], b[name])
        assert bool(((a[name] >= 0) & (a[name] < 1)).all())
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_score_model_dispatches_and_rejects_bad_requests():
    model = build("dnn")
    batches = make_batches(1)
    assert torch.equal(score_model(model, "magnitude", p=1)["layers.1"],
                       magnitude_scores(model, p=1)["layers.1"])
    assert torch.equal(score_model(model, "apoz", batches)["layers.1"],
                       activation_scores(model, batches, "apoz")["layers.1"])
    assert torch.equal(score_model(model, "random", seed=3)["layers.2"], random_scores(model, 3)["layers.2"])
    with pytest.raises(ValueError, match="unknown importance criterion 'l0'"):
        score_model(model, "l0")
    with pytest.raises(ValueError, match="needs calibration batches"):
        score_model(model, "taylor")
    with pytest.raises(ValueError, match="no calibration batches"):
        score_model(model, "activation", [])
