"""Unstructured pruning: exact masks on hand-set weights (per layer and global), which tensors are
selected, masked weights that stay zero under AdamW with weight decay, and a squash that leaves
outputs (LSTM/GRU included) bitwise unchanged and plain layers behind."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from slimasr.prune.unstructured import (
    UnstructuredConfig,
    apply_masks_,
    compute_masks,
    mask_zeros_,
    masks_of,
    select_tensors,
    sparsify_,
    sparsity_report,
    squash_,
    tensor_of,
    weight_scores,
)
from slimasr.train.loop import compute_loss
from tests.prune.helpers import random_model

FEATS, VOCAB = 8, 7


def two_layers() -> nn.Sequential:
    """Linear(3 -> 2) and Linear(2 -> 2) with hand-set weights (biases 0)."""
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -3.0, 1.0], [-0.2, 2.0, -0.5]]))
        model[1].weight.copy_(torch.tensor([[4.0, -0.1], [0.3, -1.0]]))
        model[0].bias.zero_()
        model[1].bias.zero_()
    return model


def crnn(rnn_type: str = "lstm", bidirectional: bool = True):
    cfg = dict(num_features=FEATS, subsampling_channels=[3, 4], rnn_type=rnn_type,
               rnn_hidden_sizes=[6, 5], bidirectional=bidirectional)
    return random_model("crnn", cfg, VOCAB)


def batch(seed: int = 0) -> dict:
    """An AsrDataset-like batch of two padded utterances."""
    gen = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(2, 30, FEATS, generator=gen), "feature_lens": torch.tensor([30, 22]),
            "targets": torch.tensor([[1, 2, 3], [4, 5, 0]]), "target_lens": torch.tensor([3, 2])}


def forward(model) -> torch.Tensor:
    b = batch(7)
    with torch.no_grad():
        return model(b["features"], b["feature_lens"])[0]


# ---- masks -------------------------------------------------------------------------------------

def test_layer_masks_remove_the_smallest_share_of_every_tensor_exactly():
    model = two_layers()
    masks = sparsify_(model, UnstructuredConfig(sparsity=0.5, scope="layer"))
    assert set(masks) == {"0.weight", "1.weight"}  # biases are not selected
    # 0.weight: |w| = .5 3 1 / .2 2 .5 -> round(0.5 * 6) = 3 go: .2, then the tie .5 (first), .5
    assert masks["0.weight"].tolist() == [[False, True, True], [False, True, False]]
    assert masks["1.weight"].tolist() == [[True, False], [False, True]]  # .1 and .3 go
    assert model[0].weight.tolist() == [[0.0, -3.0, 1.0], [0.0, 2.0, 0.0]]
    assert model[1].weight.tolist() == [[4.0, 0.0], [0.0, -1.0]]


def test_global_masks_use_one_threshold_over_all_tensors():
    model = two_layers()
    masks = sparsify_(model, UnstructuredConfig(sparsity=0.6, scope="global"))
    # 10 weights, 6 go: .1 .2 .3 .5 .5 1.0 (1.0 ties with -1.0: the earlier, 0.weight[0, 2], goes)
    assert masks["0.weight"].tolist() == [[False, True, False], [False, True, False]]
    assert masks["1.weight"].tolist() == [[True, False], [False, True]]
    assert sparsity_report(model)["pruned_sparsity"] == 0.6


def test_weights_already_zero_go_first_so_masks_only_grow():
    model = two_layers()
    assert torch.equal(weight_scores(model, ["1.weight"])["1.weight"], model[1].weight.detach().abs().double())
    with torch.no_grad():
        model[1].weight[0, 0] = 0.0
    assert weight_scores(model, ["1.weight"])["1.weight"][0, 0] == -1.0
    assert compute_masks(weight_scores(model, ["1.weight"]), 0.25)["1.weight"].tolist() == [[False, True], [True, True]]


def test_gradient_saliency_is_weight_times_gradient_summed_over_batches():
    model = crnn()
    name = "rnns.0.fwd.weight_ih_l0"
    batches = [batch(1), batch(2)]
    expected = torch.zeros_like(tensor_of(model, name), dtype=torch.float64)
    for b in batches:
        model.zero_grad()
        with torch.backends.cudnn.flags(enabled=False):
            compute_loss(model, b, torch.device("cpu"), "mean", contextlib.nullcontext()).backward()
        w = model.get_parameter(name)
        expected += (w.detach() * w.grad).abs().double()
    model.zero_grad(set_to_none=True)
    scores = weight_scores(model, [name], "gradient", batches)[name]
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=0)
    assert all(p.grad is None for p in model.parameters())
    masks = sparsify_(model, UnstructuredConfig(criterion="gradient", sparsity=0.75, include=[name]), batches)
    assert masks[name].sum() == round(0.25 * scores.numel())
    assert bool((scores[masks[name]].min() >= scores[~masks[name]].max()))


def test_selection_takes_conv_linear_and_rnn_weights_by_name_never_biases_or_norms():
    model = crnn()
    assert select_tensors(model) == [
        "subsample.convs.0.weight", "subsample.convs.1.weight",
        "rnns.0.fwd.weight_ih_l0", "rnns.0.fwd.weight_hh_l0", "rnns.0.bwd.weight_ih_l0", "rnns.0.bwd.weight_hh_l0",
        "rnns.1.fwd.weight_ih_l0", "rnns.1.fwd.weight_hh_l0", "rnns.1.bwd.weight_ih_l0", "rnns.1.bwd.weight_hh_l0",
        "head.weight"]
    assert select_tensors(model, ["rnns.*"], ["*weight_hh*", "rnns.1.*"]) == [
        "rnns.0.fwd.weight_ih_l0", "rnns.0.bwd.weight_ih_l0"]
    assert select_tensors(model, ["head.*"], biases=True) == ["head.weight", "head.bias"]
    conformer = random_model("conformer", dict(num_features=FEATS, d_model=8, num_blocks=1, num_heads=2,
                                               ffn_dim=6, conv_channels=4, subsampling_channels=[2, 2]), VOCAB)
    assert select_tensors(conformer, ["blocks.0.attn.*"]) == [
        f"blocks.0.attn.{p}_proj.weight" for p in ("q", "k", "v", "out")]  # not its norm nor rel_bias


# ---- training with masks ------------------------------------------------------------------------

def _adamw_steps(model, optimizer, steps: int) -> None:
    model.train()
    for i in range(steps):
        loss = compute_loss(model, batch(i), torch.device("cpu"), "mean", contextlib.nullcontext())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _underlying(model, name: str) -> torch.Tensor:
    module, attr = name.rsplit(".", 1)
    return model.get_submodule(module).parametrizations[attr].original


def test_masked_weights_stay_exactly_zero_under_adamw_with_weight_decay():
    model = crnn()
    masks = sparsify_(model, UnstructuredConfig(sparsity=0.7))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    before = {n: _underlying(model, n).detach().clone() for n in masks}
    _adamw_steps(model, optimizer, 4)
    for name, mask in masks.items():
        under = _underlying(model, name)
        assert not under[~mask].any() and not tensor_of(model, name)[~mask].any(), name
        assert not torch.equal(under[mask], before[name][mask]), f"{name}: kept weights did not train"


def test_masking_mid_training_clears_the_adam_moments_that_would_move_masked_weights():
    runs = {}
    for clear in (True, False):
        model = crnn()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        _adamw_steps(model, optimizer, 3)  # Adam moments everywhere
        masks = sparsify_(model, UnstructuredConfig(sparsity=0.5), optimizer=optimizer if clear else None)
        _adamw_steps(model, optimizer, 2)
        runs[clear] = [bool(_underlying(model, n)[~m].any()) for n, m in masks.items()]
        assert not any(tensor_of(model, n)[~m].any() for n, m in masks.items())  # the forward's view
    assert not any(runs[True])
    assert all(runs[False])  # what the cleared moments prevent: stale momentum moves them


def test_masked_rnn_weights_reach_the_fused_kernel_and_their_gradient_is_zero():
    model = crnn("lstm")
    reference = copy.deepcopy(model)
    masks = sparsify_(model, UnstructuredConfig(sparsity=0.6, include=["rnns.*"]))
    with torch.no_grad():
        for name, mask in masks.items():
            reference.get_parameter(name).mul_(mask)
    assert torch.equal(forward(model), forward(reference))
    model.train()
    compute_loss(model, batch(3), torch.device("cpu"), "mean", contextlib.nullcontext()).backward()
    for name, mask in masks.items():
        grad = _underlying(model, name).grad
        assert not grad[~mask].any() and grad[mask].any()


# ---- squash -------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["lstm", "gru", "lstm_unidirectional", "dnn", "conformer"])
def test_squash_leaves_outputs_identical_and_plain_layers(family):
    if family == "dnn":
        model = random_model("dnn", dict(num_features=FEATS, context_left=1, context_right=1,
                                         hidden_sizes=[9, 7]), VOCAB)
    elif family == "conformer":
        model = random_model("conformer", dict(num_features=FEATS, d_model=8, num_blocks=2, num_heads=2,
                                               ffn_dim=6, conv_channels=4, subsampling_channels=[2, 2]), VOCAB)
    else:
        model = crnn(family.split("_")[0], bidirectional=family != "lstm_unidirectional")
    fresh = copy.deepcopy(model)
    masks = sparsify_(model, UnstructuredConfig(sparsity=0.8, scope="global"))
    masked = forward(model)
    effective = {n: tensor_of(model, n).detach().clone() for n in masks}  # what the forward reads
    squash_(model)
    assert all(torch.equal(model.get_parameter(n), w) for n, w in effective.items())  # bitwise
    # the same weights, so the same function; the outputs only to float32 rounding: BLAS may sum
    # in another order for another allocation (seen on an AVX-512 CPU: 2.4e-7 on the Conformer)
    torch.testing.assert_close(forward(model), masked, rtol=0.0, atol=1e-6)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not masks_of(model)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in fresh.named_parameters()]
    assert list(model.state_dict()) == list(fresh.state_dict())
    for plain, original in zip(model.modules(), fresh.modules()):
        assert type(plain) is type(original)
        if isinstance(plain, nn.RNNBase):  # the kernel reads the parameters themselves again
            assert all(w is getattr(plain, n) for w, n in zip(plain._flat_weights, plain._flat_weights_names))
    report = sparsity_report(model)
    assert report["pruned_params"] - report["pruned_nonzero"] == round(0.8 * report["pruned_params"])


def test_sparsity_report_counts_every_selected_tensor_and_the_whole_model():
    model = two_layers()
    apply_masks_(model, {"1.weight": torch.tensor([[True, False], [False, False]])})
    report = sparsity_report(model)
    assert report["layers"] == {"0.weight": {"params": 6, "nonzero": 6, "sparsity": 0.0},
                                "1.weight": {"params": 4, "nonzero": 1, "sparsity": 0.75}}
    assert (report["pruned_params"], report["pruned_nonzero"]) == (10, 7)
    assert (report["params"], report["nonzero_params"]) == (14, 7)  # the biases are zero


def test_a_pruned_model_keeps_its_zeros_as_masks():
    model = two_layers()
    masks = mask_zeros_(model)  # 0.weight and 1.weight hold no zero: no mask
    assert masks == {}
    with torch.no_grad():
        model[1].weight[1, 0] = 0.0
    masks = mask_zeros_(model)
    assert list(masks) == ["1.weight"] and masks["1.weight"].tolist() == [[True, True], [False, True]]


def test_squashing_a_copy_leaves_the_masked_original_working():
    """torch's parametrized class is shared by deep copies; squash must not break the original."""
    model = crnn()
    sparsify_(model, UnstructuredConfig(sparsity=0.5))
    masked = forward(model)
    copy_ = squash_(copy.deepcopy(model))
    assert torch.equal(forward(copy_), masked) and torch.equal(forward(model), masked)
    assert masks_of(model) and not masks_of(copy_)
    squash_(model)
    assert torch.equal(forward(model), masked)
