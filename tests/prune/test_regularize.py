"""Regularization-driven pruning: the proximal steps on hand-set weights, group lasso driving a
planted useless unit to exactly zero while training keeps the others, surgery removing exactly
that unit without changing the outputs, and L1 raising sparsity on a tiny training run."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

from slimasr import cli
from slimasr.cli import main
from slimasr.errors import ConfigError
from slimasr.prune.groups import group_by_name
from slimasr.prune.importance import magnitude_scores
from slimasr.prune.plan import PruneTarget, plan
from slimasr.prune.regularize import (
    RegularizeConfig,
    Regularizer,
    adam_scale,
    norm_scale_scores,
    norm_scale_slices,
    parameters_by_name,
    remove_weak_units,
    shrink_group_,
    soft_threshold_,
    unit_norms,
    unit_size,
    units_to_remove,
)
from slimasr.train import train_model
from slimasr.train.loop import TrainState
from tests.prune.helpers import random_model
from tests.train.helpers import make_corpus, tiny_recipe

FEATS, VOCAB = 8, 7
ADAM_STRENGTH = 1e-5  # metric adam: lambda in units of the loss gradient per weight


def dnn(hidden=(9, 7)):
    return random_model("dnn", dict(num_features=FEATS, context_left=1, context_right=1,
                                    hidden_sizes=list(hidden), dropout=0.0), VOCAB)


def test_l1_step_soft_thresholds_every_weight():
    w = torch.tensor([0.5, -0.05, -2.0, 0.1, 0.0])
    soft_threshold_(w, 0.1)
    assert w[[1, 3, 4]].tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(w[[0, 2]], torch.tensor([0.5 - 0.1, -2.0 + 0.1]))


def test_group_step_shrinks_each_unit_by_its_norm():
    """A DNN with one hidden layer of 2 units: unit j owns row j and bias j of layers.0, and column
    j of the head."""
    model = dnn(hidden=(2,))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.layers[0].weight[0, :2] = torch.tensor([3.0, 0.0])
        model.head.weight[:2, 0] = torch.tensor([0.0, 4.0])  # unit 0: norm 5
        model.layers[0].bias[1] = 0.5  # unit 1: norm 0.5
        model.head.bias.fill_(1.0)  # not in a group: untouched
    group = group_by_name(model)["layers.0"]
    params = parameters_by_name(model)
    assert unit_norms(group, params).tolist() == [5.0, 0.5]
    assert unit_size(group, params) == 3 * FEATS + 1 + VOCAB
    with torch.no_grad():
        shrink_group_(group, params, 1.0)
    assert model.layers[0].weight[0, :2].tolist() == pytest.approx([2.4, 0.0])
    assert model.head.weight[:2, 0].tolist() == pytest.approx([0.0, 3.2])
    assert model.layers[0].bias.tolist() == [0.0, 0.0]  # unit 1 is gone: exactly zero
    assert model.head.bias.tolist() == [1.0] * VOCAB


def test_adam_metric_divides_each_units_shrink_by_its_mean_adam_denominator():
    """metric adam: unit j's threshold is tau sqrt(p_g) / c_j, c_j the mean of sqrt(v_hat) + eps
    over its weights (v_hat bias-corrected: exp_avg_sq / (1 - beta2^t))."""
    model = dnn(hidden=(2,))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.layers[0].weight[0, 0] = 3.0
        model.head.weight[1, 0] = 4.0  # unit 0: norm 5
        model.layers[0].weight[1, 0] = 6.0  # unit 1: norm 6
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.99), eps=0.0)
    t, beta2 = 3, 0.99
    for p in model.parameters():  # v_hat = 4 (sqrt 2) for unit 0's weights, 16 (sqrt 4) elsewhere
        v = torch.full_like(p, 16.0)
        opt.state[p] = {"step": torch.tensor(float(t)), "exp_avg": torch.zeros_like(p), "exp_avg_sq": v * (1 - beta2 ** t)}
    opt.state[model.layers[0].weight]["exp_avg_sq"][0] = 4.0 * (1 - beta2 ** t)
    opt.state[model.layers[0].bias]["exp_avg_sq"][0] = 4.0 * (1 - beta2 ** t)
    opt.state[model.head.weight]["exp_avg_sq"][:, 0] = 4.0 * (1 - beta2 ** t)
    scale = adam_scale(opt, model)
    assert float(scale["layers.0.weight"][0, 0]) == pytest.approx(2.0)
    assert float(scale["layers.0.weight"][1, 0]) == pytest.approx(4.0)
    reg = Regularizer(RegularizeConfig(kind="group-lasso", strength=1.0, metric="adam"), model)
    root_p = math.sqrt(unit_size(group_by_name(model)["layers.0"], parameters_by_name(model)))
    lr = 2.0 / root_p  # tau sqrt(p_g) = 2: unit 0 shrinks by 2 / 2 = 1, unit 1 by 2 / 4 = 0.5
    reg.step(lr=lr, step=t, optimizer=opt)
    assert model.layers[0].weight[0, 0].item() == pytest.approx(3.0 * (1 - 1 / 5))
    assert model.head.weight[1, 0].item() == pytest.approx(4.0 * (1 - 1 / 5))
    assert model.layers[0].weight[1, 0].item() == pytest.approx(6.0 - 0.5)
    euclidean = dnn(hidden=(2,))
    euclidean.load_state_dict(model.state_dict())
    Regularizer(RegularizeConfig(kind="group-lasso", strength=1.0), euclidean).step(lr=lr, step=t)
    assert euclidean.layers[0].weight[1, 0].item() == pytest.approx(5.5 - 2.0)  # unscaled: shrunk by 2


def _train(model, teacher, regularizer, steps: int, lr: float = 2e-3) -> None:
    """AdamW on the KL to ``teacher``'s outputs, the regularizer's step after each update."""
    trainer = SimpleNamespace(optimizer=torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0),
                              state=TrainState())
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(1, steps + 1):
        x, lens = torch.randn(8, 20, FEATS, generator=gen), torch.full((8,), 20)
        with torch.no_grad():
            target = teacher(x, lens)[0]
        log_probs = model(x, lens)[0]
        loss = torch.nn.functional.kl_div(log_probs, target, log_target=True, reduction="batchmean")
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        trainer.state.step = step
        regularizer.after_step(trainer)
    model.eval()


@pytest.mark.parametrize("metric, strength", [("euclidean", 0.5), ("adam", ADAM_STRENGTH)])
def test_group_lasso_drives_a_planted_useless_unit_to_zero_and_surgery_removes_exactly_it(metric, strength):
    teacher = dnn()
    weak = 4  # unit 4 of layers.0: absent from the teacher, small and useless in the student
    with torch.no_grad():
        teacher.layers[0].weight[weak] = 0.0
        teacher.layers[0].bias[weak] = 0.0
        teacher.layers[1].weight[:, weak] = 0.0
    student = copy.deepcopy(teacher)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        student.layers[0].weight[weak] = 0.02 * torch.randn(3 * FEATS, generator=gen)
        student.layers[0].bias[weak] = 0.02
        student.layers[1].weight[:, weak] = 0.02 * torch.randn(7, generator=gen)
    reg = Regularizer(RegularizeConfig(kind="group-lasso", strength=strength, metric=metric), student)
    before = reg.penalty()
    _train(student, teacher, reg, steps=60)
    norms = {g.name: unit_norms(g, parameters_by_name(student)) for g in reg.groups}
    assert norms["layers.0"][weak] == 0.0
    assert all(float(n) > 0 for j, n in enumerate(norms["layers.0"]) if j != weak)
    assert all(float(n) > 0 for n in norms["layers.1"])
    assert reg.penalty() < before
    small, removed = remove_weak_units(student, threshold=0.0)
    assert removed == {"layers.0": [weak]}
    assert small.config.hidden_sizes == [8, 7]
    x, lens = torch.randn(2, 20, FEATS), torch.tensor([20, 13])
    with torch.no_grad():
        torch.testing.assert_close(small(x, lens)[0], student(x, lens)[0], atol=1e-6, rtol=0)


def test_targeted_group_lasso_shrinks_only_the_units_the_macs_target_would_remove():
    torch.manual_seed(0)
    model = dnn(hidden=(16, 12))
    with torch.no_grad():  # unit 3 of layers.0: the weakest by far
        model.layers[0].weight[3] *= 0.01
        model.layers[1].weight[:, 3] *= 0.01
    selected = units_to_remove(model, 0.3)
    keep = plan(model, magnitude_scores(model), PruneTarget(kind="macs", fraction=0.3))
    for name, mask in selected.items():
        assert sorted(mask.nonzero().flatten().tolist()) == sorted(set(range(len(mask))) - set(keep.get(name, range(len(mask)))))
    assert selected["layers.0"][3] == 1.0 and selected["layers.0"].sum() == 8
    norms0 = unit_norms(group_by_name(model)["layers.0"], parameters_by_name(model))
    by_width = units_to_remove(model, None, {"layers.0": 12})  # the 4 lowest norms of layers.0
    assert by_width["layers.0"].nonzero().flatten().tolist() == sorted(torch.argsort(norms0)[:4].tolist())
    assert not by_width["layers.1"].any()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reg = Regularizer(RegularizeConfig(kind="group-lasso", strength=1e6, target_macs=0.3), model)
    reg.step(lr=1.0, step=1)  # a huge step: every selected unit emptied, nothing else touched
    norms = {g.name: unit_norms(g, parameters_by_name(model)) for g in reg.groups}
    for name, mask in selected.items():
        assert (norms[name][mask == 1] == 0).all() and (norms[name][mask == 0] > 0).all()
    assert torch.equal(model.layers[0].weight[keep["layers.0"]], before["layers.0.weight"][keep["layers.0"]])
    assert reg.summary()["regularize"]["targeted_units"] == {n: int(m.sum()) for n, m in selected.items() if m.any()}
    small, removed = remove_weak_units(model, threshold=0.0)
    assert {n: r for n, r in removed.items()} == {n: m.nonzero().flatten().tolist() for n, m in selected.items() if m.any()}
    with pytest.raises(ConfigError, match="targets group-lasso"):
        RegularizeConfig(kind="l1", strength=1.0, target_macs=0.5)
    with pytest.raises(ConfigError, match="not both"):
        RegularizeConfig(kind="group-lasso", strength=1.0, target_macs=0.5, target_widths={"layers.0": 8})
    with pytest.raises(ConfigError, match="layers.9: 8 is not a width"):
        Regularizer(RegularizeConfig(kind="group-lasso", strength=1.0, target_widths={"layers.9": 8}), model)
    with pytest.raises(ConfigError, match="in \\(0, 1\\)"):
        RegularizeConfig(kind="group-lasso", strength=1.0, target_macs=1.5)


def test_slimming_shrinks_only_the_norm_scales_of_the_groups():
    model = random_model("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4], rnn_hidden_sizes=[6]), VOCAB)
    assert [name for name, _ in norm_scale_slices(model)] == ["subsample.norms.0.weight", "subsample.norms.1.weight"]
    gammas = {n: model.get_parameter(n).detach().clone() for n in ("subsample.norms.0.weight", "subsample.norms.1.weight")}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n not in gammas}
    Regularizer(RegularizeConfig(kind="slimming", strength=1.0), model).step(lr=0.7, step=1)
    for name, gamma in gammas.items():
        torch.testing.assert_close(model.get_parameter(name), (gamma.abs() - 0.7).clamp(min=0) * gamma.sign())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    scores = norm_scale_scores(model)
    assert set(scores) == {"subsample.convs.0", "subsample.convs.1"}  # RNN units have no norm
    assert torch.equal(scores["subsample.convs.0"], model.subsample.norms[0].weight.detach().abs())


def test_warm_up_ramps_the_strength_and_bad_settings_are_errors():
    model = dnn()
    reg = Regularizer(RegularizeConfig(kind="l1", strength=2.0, warmup_steps=4), model)
    reg.step(lr=0.01, step=1)
    assert reg.last_tau == pytest.approx(0.01 * 2.0 / 4)
    reg.step(lr=0.01, step=9)
    assert reg.last_tau == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="strength > 0"):
        RegularizeConfig(kind="group-lasso")
    with pytest.raises(ConfigError, match="adam is built for group-lasso"):
        RegularizeConfig(kind="l1", strength=1.0, metric="adam")
    with pytest.raises(ConfigError, match="no group with a norm|has none"):
        Regularizer(RegularizeConfig(kind="slimming", strength=1.0), model)


def test_l1_raises_sparsity_on_a_tiny_run(tmp_path):
    data = make_corpus(tmp_path / "data", n_train=12)
    recipe = tiny_recipe(epochs=4, warmup_steps=2)
    plain = train_model(recipe, data, tmp_path / "plain", show_progress=False)
    l1 = train_model(recipe, data, tmp_path / "l1", show_progress=False,
                     overrides=["sparsity.regularize.kind=l1", "sparsity.regularize.strength=1"])
    assert "sparsity" not in plain  # no sparsity section, no report
    assert l1["sparsity"]["pruned_sparsity"] > 0.2  # measured 0.35 (Adam never makes an exact zero)
    assert l1["regularize"]["penalty"] > 0 and math.isfinite(l1["regularize"]["penalty"])
    dense = (tmp_path / "plain" / "model.safetensors").stat().st_size
    compact = (tmp_path / "l1" / "model.safetensors").stat().st_size
    assert compact < dense


def test_train_and_distill_take_regularize_on_the_command_line(tmp_path, capsys):
    data = make_corpus(tmp_path / "data", n_train=8)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps(tiny_recipe(epochs=1)))
    assert main(["train", "--config", str(recipe), "--data", str(data), "--out", str(tmp_path / "m"),
                 "--regularize", "group-lasso", "--reg-strength", "0.2"]) == 0
    record = json.loads((tmp_path / "m" / "training.json").read_text())
    assert record["regularize"]["kind"] == "group-lasso" and record["regularize"]["strength"] == 0.2
    args = cli.build_parser().parse_args(["distill", "--teacher", str(tmp_path / "m"), "--data", str(data),
                                          "--out", str(tmp_path / "s"), "--regularize", "l1", "--reg-strength", "0.5"])
    assert args.resolve(args).sparsity.regularize == RegularizeConfig(kind="l1", strength=0.5)
    capsys.readouterr()
    assert main(["train", "--config", str(recipe), "--data", str(data), "--out", str(tmp_path / "x"),
                 "--reg-strength", "0.2"]) == 1
    assert capsys.readouterr().err.strip() == "error: --reg-strength needs --regularize (l1, group-lasso or slimming)"
