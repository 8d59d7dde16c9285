"""Learned structured masks: the expected cost is the counted MACs of the binarized model (every
family), a closed gate removes exactly its unit, the Lagrangian meets the target on a tiny run,
the result saves and reloads, mask training resumes from its checkpoint."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

from slimasr.cli import main
from slimasr.models import load_model
from slimasr.prune.gates import ModelGates
from slimasr.prune.groups import group_by_name
from slimasr.prune.learned import (
    CostModel,
    LearnedConfig,
    binarize,
    gateable_groups,
    target_ratio,
    train_masks,
)
from slimasr.prune.plan import model_cost
from slimasr.prune.surgery import prune_model
from tests.prune.helpers import random_model
from tests.train.helpers import kill_when_paused, make_corpus, tiny_recipe

FEATS, VOCAB = 8, 7
FAMILIES = {
    "dnn": ("dnn", dict(num_features=FEATS, context_left=1, context_right=1, hidden_sizes=[9, 7, 5])),
    "crnn-lstm-bi": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4], rnn_type="lstm",
                                  rnn_hidden_sizes=[6, 5], bidirectional=True)),
    "crnn-lstm-uni": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4], rnn_type="lstm",
                                   rnn_hidden_sizes=[6, 5], bidirectional=False)),
    "crnn-gru-bi": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4], rnn_type="gru",
                                 rnn_hidden_sizes=[6, 5], bidirectional=True)),
    "crnn-gru-uni": ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 4], rnn_type="gru",
                                  rnn_hidden_sizes=[6, 5], bidirectional=False)),
    "conformer": ("conformer", dict(num_features=FEATS, subsampling_channels=[3, 4], d_model=8, num_blocks=2,
                                    num_heads=[2, 3], head_dim=4, ffn_dim=[12, 6, 5, 9],
                                    conv_channels=[8, 6], conv_kernel=3, max_relative_position=3)),
}


def family(name: str, seed: int = 0):
    arch, cfg = FAMILIES[name]
    return random_model(arch, cfg, VOCAB, seed)


def random_keep(model, gen: torch.Generator) -> dict[str, list[int]]:
    """Random 0/1 gate states, each group keeping at least its min_size units."""
    keep = {}
    for g in gateable_groups(model):
        on = torch.rand(g.size, generator=gen) < 0.5
        idx = on.nonzero().flatten().tolist()
        while len(idx) < g.min_size:
            idx = sorted(set(idx) | {int(torch.randint(g.size, (1,), generator=gen))})
        keep[g.name] = idx
    return keep


@pytest.mark.parametrize("name", list(FAMILIES))
def test_expected_cost_of_deterministic_gates_is_the_counted_macs(name):
    model = family(name)
    cost = CostModel.fit(model)
    assert cost.full == model_cost(model, "macs")
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        keep = random_keep(model, gen)
        probs = {g: torch.zeros(cost.sizes[g]).index_fill(0, torch.tensor(idx, dtype=torch.long), 1.0)
                 for g, idx in keep.items()}
        counted = model_cost(prune_model(model, keep), "macs")
        assert abs(float(cost.expected(probs)) - counted) < 0.5, keep
        assert abs(cost.at({g: len(v) for g, v in keep.items()}) - counted) < 0.5


def test_expected_cost_is_differentiable_in_the_keep_probabilities():
    model = family("crnn-lstm-bi")
    cost = CostModel.fit(model)
    gates = ModelGates(gateable_groups(model))
    e = cost.expected(gates.keep_probs())
    e.backward()
    assert all(g.log_alpha.grad is not None and (g.log_alpha.grad > 0).all() for g in gates.gates.values())
    assert float(e.detach()) < cost.full  # keep-probabilities below 1: fewer expected MACs


@pytest.mark.parametrize("name", ["dnn", "crnn-lstm-bi", "crnn-gru-uni", "conformer"])
def test_a_closed_gate_removes_exactly_its_unit(name):
    """Gate j of a group at 0 and the others at 1 gives the outputs of the model with that unit
    removed by surgery (RNN units: gated at the output and where h re-enters the recurrence),
    and removing the gates leaves the model's weights and outputs as they were."""
    model = family(name)
    x, lens = torch.randn(2, 40, FEATS), torch.tensor([40, 31])
    for g in gateable_groups(model):
        m = family(name)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        with torch.no_grad():
            ungated = m(x, lens)[0]
        gates = ModelGates(gateable_groups(m))
        gates.mode = "fixed"
        gates.fixed = {k: torch.ones(v.size) for k, v in gates.groups.items()}
        gates.fixed[g.name] = torch.ones(g.size).index_fill(0, torch.tensor([1]), 0.0)
        handles = gates.attach(m)
        with torch.no_grad():
            gated = m(x, lens)[0]
        for h in handles:
            h.remove()
        assert m.state_dict().keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
        with torch.no_grad():
            assert torch.equal(m(x, lens)[0], ungated), g.name  # the fused kernel reads the plain weights again
        small = prune_model(m, {g.name: [j for j in range(g.size) if j != 1]})
        with torch.no_grad():
            torch.testing.assert_close(small(x, lens)[0], gated, atol=1e-5, rtol=1e-5, msg=g.name)
        assert group_by_name(small)[g.name].size == g.size - 1


def test_open_gates_leave_the_model_unchanged():
    model = family("conformer")
    x, lens = torch.randn(1, 40, FEATS), torch.tensor([40])
    gates = ModelGates(gateable_groups(model))
    gates.mode = "fixed"
    gates.fixed = {k: torch.ones(v.size) for k, v in gates.groups.items()}
    with torch.no_grad():
        before = model(x, lens)[0]
        handles = gates.attach(model)
        after = model(x, lens)[0]
    for h in handles:
        h.remove()
    assert torch.equal(before, after)


def test_target_warms_up_linearly():
    assert [target_ratio(s, 0.5, 4) for s in (0, 2, 4, 8)] == [1.0, 0.75, 0.5, 0.5]
    assert target_ratio(0, 0.3, 0) == pytest.approx(0.7)


def batches(n: int = 4, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append({"features": torch.randn(3, 40, FEATS, generator=gen), "feature_lens": torch.tensor([40, 36, 30]),
                    "targets": torch.randint(1, VOCAB, (3, 4), generator=gen), "target_lens": torch.tensor([4, 3, 2])})
    return out


@pytest.mark.parametrize("hidden_weight", [0.0, 1.0])  # with hidden-layer matching in the objective too
def test_lagrangian_brings_expected_macs_within_2_percent_of_the_target(hidden_weight):
    model = family("crnn-lstm-bi")
    cfg = LearnedConfig(steps=300, warmup_steps=100, lr=1e-3, gate_lr=0.05, lambda_lr=0.05,
                        hidden_weight=hidden_weight)
    state, cost = train_masks(model, batches(), cfg, fraction=0.5)
    with torch.no_grad():
        ratio = float(cost.expected(state.gates.keep_probs())) / cost.full
    assert abs(ratio - 0.5) <= 0.02 * 0.5, ratio
    keep = binarize(state.gates, cost, 0.5)
    small = prune_model(model, keep)
    assert model_cost(small, "macs") <= 0.5 * cost.full
    assert abs(cost.at({g: len(v) for g, v in keep.items()}) - model_cost(small, "macs")) < 0.5


def test_an_upper_bound_target_is_tracked_from_the_warm_up_on_without_overshooting():
    """learned.constraint=at_most: below the target the term vanishes, so the multiplier grown
    while the gates lagged the warm-up cannot carry the cost far past it (the equality form
    dips to about half the target on this run before it unwinds)."""
    model = family("crnn-lstm-bi")
    cfg = LearnedConfig(steps=300, warmup_steps=100, lr=1e-3, constraint="at_most")
    state, cost = train_masks(model, batches(), cfg, fraction=0.5)
    after_warmup = state.curves["expected_ratio"][100:]
    assert min(after_warmup) >= 0.95 * 0.5, min(after_warmup)
    assert abs(after_warmup[-1] - 0.5) <= 0.02 * 0.5, after_warmup[-1]
    assert all(lam >= 0.0 for lam in state.curves["lambda1"])  # ascent on a gap clipped at 0
    keep = binarize(state.gates, cost, 0.5)
    assert model_cost(prune_model(model, keep), "macs") <= 0.5 * cost.full


def test_given_widths_pull_each_groups_expected_width_and_binarize_to_exactly_them():
    """learned.widths: the gates learn which units at widths chosen elsewhere (one constraint per
    named group; the others keep every unit); a bad group or width is a one-line ConfigError."""
    from slimasr.errors import ConfigError
    from slimasr.prune.learned import binarize_widths

    model = family("crnn-lstm-bi")
    widths = {"rnns.0": 2, "subsample.convs.1": 3}
    cfg = LearnedConfig(steps=300, warmup_steps=100, lr=1e-3, gate_lr=0.05, lambda_lr=0.05, widths=widths)
    state, cost = train_masks(model, batches(), cfg, fraction=0.5)  # the fraction is not the target here
    with torch.no_grad():
        probs = state.gates.keep_probs()
    for name, width in widths.items():
        assert abs(float(probs[name].sum()) - width) <= 0.05 * width, (name, probs[name])
    keep = binarize_widths(state.gates, widths)
    sizes = {g.name: g.size for g in gateable_groups(model)}
    assert {k: len(v) for k, v in keep.items()} == {**sizes, **widths}
    assert keep["rnns.0"] == sorted(torch.argsort(probs["rnns.0"], descending=True)[:2].tolist())
    assert len(state.lambdas) == 2 * len(widths) and len(state.curves["expected_ratio"]) == 300
    assert state.curves["target_ratio"][-1] == pytest.approx(cost.at(widths) / cost.full)
    small = prune_model(model, {k: v for k, v in keep.items() if len(v) < sizes[k]})
    assert model_cost(small, "macs") == pytest.approx(cost.at(widths), abs=0.5)
    for bad, message in (({"rnns.9": 2}, "unknown group 'rnns.9'"), ({"rnns.0": 7}, r"rnns.0 must keep 1..6 units")):
        with pytest.raises(ConfigError, match=message):
            train_masks(model, batches(1), LearnedConfig(steps=1, widths=bad), fraction=0.5)
    with pytest.raises(ConfigError, match="whole numbers"):
        LearnedConfig(widths={"rnns.0": 2.5})
    for cfg, latency in ((LearnedConfig(widths=widths), True), (LearnedConfig(widths=widths, depth=True), False)):
        with pytest.raises(ConfigError, match="learned.widths: not with a latency target or depth gates"):
            cfg.refuse_with(latency=latency)  # what train_masks and PruneConfig both ask


RESUME_CFG = dict(steps=20, warmup_steps=10, checkpoint_every=5)


def _masks_run(checkpoint: str, marker: str | None = None, pause_at: int = 10):
    """Mask training on the tiny BiLSTM (the child process of the resume test runs this)."""
    torch.set_num_threads(1)

    def log(state):
        if marker is not None and state.step == pause_at:
            open(marker, "w").close()
            time.sleep(600)  # killed here, with the checkpoint of step ``pause_at`` written
    return train_masks(family("crnn-lstm-bi"), batches(), LearnedConfig(**RESUME_CFG), 0.5,
                       checkpoint=None if checkpoint == "" else __import__("pathlib").Path(checkpoint), log=log)


def test_mask_training_sigkilled_resumes_to_bitwise_the_same_gates(tmp_path):
    ckpt, marker = tmp_path / "masks", tmp_path / "paused"
    code = ("from tests.prune.test_learned import _masks_run; "
            f"_masks_run({str(ckpt)!r}, {str(marker)!r})")
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    kill_when_paused([sys.executable, "-c", code], marker, 120, repo)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 10  # no pickle anywhere
    resumed, _ = _masks_run(str(ckpt))
    reference, _ = _masks_run("")
    assert resumed.step == reference.step == 20
    assert resumed.curves == reference.curves
    for a, b in ((resumed.gates, reference.gates), (resumed.student, reference.student)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    assert torch.equal(resumed.lambdas, reference.lambdas)


def _hidden_gap(state, model, batch) -> float:
    """Mean hidden-layer loss of the student under its deterministic gates against ``model``."""
    from slimasr.distill.losses import hidden_loss
    from slimasr.prune.learned import hidden_projector

    projector = state.projector or hidden_projector(model)
    state.gates.mode = "deterministic"
    handles = state.gates.attach(state.student)
    try:
        with torch.no_grad():
            _, lens, s_h = state.student.eval().forward_hidden(batch["features"], batch["feature_lens"])
            t_h = model.eval().forward_hidden(batch["features"], batch["feature_lens"])[2]
            return sum(float(hidden_loss(s, t, lens)) for s, t in zip(projector(s_h[1:]), t_h[1:])) / (len(t_h) - 1)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", ["crnn-lstm-bi", "conformer"])
def test_hidden_matching_starts_at_zero_and_keeps_the_gated_layers_nearer_the_teacher(name):
    from slimasr.prune.learned import hidden_projector

    model, data = family(name), batches()
    projector = hidden_projector(model)  # identity: the unpruned model matches itself exactly
    with torch.no_grad():
        _, lens, h = model.eval().forward_hidden(data[0]["features"], data[0]["feature_lens"])
        for a, b in zip(projector(h[1:]), h[1:]):
            assert torch.allclose(a, b, atol=1e-6)
    runs = {}
    for weight in (0.0, 1.0):
        cfg = LearnedConfig(steps=60, warmup_steps=20, lr=1e-3, hidden_weight=weight)
        state, _ = train_masks(model, data, cfg, fraction=0.4)
        runs[weight] = (state, _hidden_gap(state, model, data[0]))
    assert "hidden_loss" in runs[1.0][0].curves and "hidden_loss" not in runs[0.0][0].curves
    assert runs[1.0][1] < 0.8 * runs[0.0][1], (runs[1.0][1], runs[0.0][1])


def _stopped_and_resumed(tmp_path, **cfg):
    """Mask training stopped after 4 of 9 steps and resumed from its checkpoint, and the same 9
    steps uninterrupted; the two states must be bitwise equal (the caller checks what it adds)."""
    model, data = family("crnn-lstm-bi"), batches()
    train_masks(model, data, LearnedConfig(steps=4, checkpoint_every=4, **cfg), 0.5, checkpoint=tmp_path / "masks")
    resumed, _ = train_masks(model, data, LearnedConfig(steps=9, checkpoint_every=4, **cfg), 0.5,
                             checkpoint=tmp_path / "masks")
    reference, _ = train_masks(model, data, LearnedConfig(steps=9, checkpoint_every=4, **cfg), 0.5)
    assert resumed.curves == reference.curves and len(reference.curves["loss"]) == 9
    for a, b in ((resumed.gates, reference.gates), (resumed.student, reference.student)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    assert torch.equal(resumed.lambdas, reference.lambdas)
    return resumed, reference


def test_mask_training_with_hidden_matching_resumes_to_bitwise_the_same_state(tmp_path):
    resumed, reference = _stopped_and_resumed(tmp_path, warmup_steps=5, hidden_weight=0.5, hidden_kind="mse")
    assert len(reference.curves["hidden_loss"]) == 9
    sa, sb = resumed.projector.state_dict(), reference.projector.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_mask_training_at_given_widths_resumes_to_bitwise_the_same_state(tmp_path):
    resumed, _ = _stopped_and_resumed(tmp_path, warmup_steps=6, widths={"rnns.0": 3, "rnns.1": 2})
    assert len(resumed.lambdas) == 4 and bool((resumed.lambdas != 0).all())  # one pair per group, moved


def test_learned_config_refuses_a_bad_hidden_loss():
    from slimasr.errors import ConfigError

    with pytest.raises(ConfigError, match="hidden_kind"):
        LearnedConfig(hidden_kind="cosine")
    with pytest.raises(ConfigError, match="hidden_weight"):
        LearnedConfig(hidden_weight=-1.0)
    with pytest.raises(ConfigError, match="nothing to train on"):
        LearnedConfig(ctc_weight=0.0, kd_weight=0.0)
    with pytest.raises(ConfigError, match="constraint"):
        LearnedConfig(constraint="at_least")


def test_cli_prunes_with_learned_masks_into_a_model_directory_that_reloads(tmp_path):
    from slimasr.train import train_model

    data = make_corpus(tmp_path / "data", n_train=12)
    train_model(tiny_recipe(epochs=2), data, tmp_path / "teacher", show_progress=False)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tmp_path / "teacher"), "--data", str(data), "--out", str(out),
                 "--criterion", "learned", "--target-macs", "0.5", "--finetune-epochs", "1", "--distill",
                 "--round-to", "1", "--quiet", "calibration_cuts=8", "num_threads=1",
                 "learned.steps=60", "learned.warmup_steps=20", "learned.checkpoint_every=20",
                 "learned.hidden_weight=0.5"]) == 0
    record = json.loads((out / "prune.json").read_text())
    learned = record["steps"][0]["learned"]
    assert len(learned["curves"]["hidden_loss"]) == 60
    teacher, pruned = load_model(tmp_path / "teacher"), load_model(out)
    assert learned["actual"] == model_cost(prune_model(teacher, {
        k: list(range(w)) for k, w in learned["widths"].items()}), "macs")
    assert learned["actual"] <= 0.5 * learned["original"]
    assert abs(learned["binarized_predicted"] - learned["actual"]) < 0.5
    assert len(learned["curves"]["expected_ratio"]) == 60 and learned["steps"] == 60
    assert record["final"]["widths"] == {**record["original"]["widths"], **learned["widths"]}
    assert model_cost(pruned, "macs") == learned["actual"]
    assert (out / "steps" / "1" / "learned.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "steps" / "1" / "masks").exists()
    assert not any("log_alpha" in k for k in pruned.state_dict())  # the gates stay out of the model
    x = torch.randn(1, 100, 40)
    torch.testing.assert_close(pruned(x, torch.tensor([100]))[0], load_model(out)(x, torch.tensor([100]))[0])


def test_masks_train_on_batches_of_learned_batch_seconds(tmp_path, monkeypatch):
    """learned.batch_seconds sizes the mask-training batches (drawn from the calibration cuts)."""
    import slimasr.prune.run as prune_run
    from slimasr.config import from_dict
    from slimasr.train import train_model

    data = make_corpus(tmp_path / "data", n_train=12)
    train_model(tiny_recipe(epochs=1), data, tmp_path / "teacher", show_progress=False)
    seen: dict[float, list[float]] = {}

    class Stop(Exception):
        pass

    def capture(model, cfg, kind, fraction, batches, *args, **kwargs):
        seen[cfg.batch_seconds] = [float(b["feature_lens"].sum()) * 0.01 for b in batches]
        raise Stop

    monkeypatch.setattr(prune_run, "learned_prune", capture)
    for seconds in (2.0, 5.0):
        cfg = from_dict(prune_run.PruneConfig, {
            "criterion": "learned", "target": {"kind": "macs", "fraction": 0.5}, "calibration_cuts": 12,
            "calibration_seconds": 30.0, "learned": {"batch_seconds": seconds}})
        with pytest.raises(Stop):
            prune_run.prune_model_dir(tmp_path / "teacher", data, tmp_path / f"out{seconds}", cfg,
                                      show_progress=False)
    assert seen[2.0] and all(s <= 2.0 + 0.02 for s in seen[2.0])  # 10 ms frames: one frame of slack
    assert len(seen[2.0]) > len(seen[5.0]) and all(s <= 5.0 + 0.02 for s in seen[5.0])
    assert abs(sum(seen[2.0]) - sum(seen[5.0])) < 0.5  # the same 12 cuts either way


def test_learned_refuses_what_it_cannot_do(tmp_path, capsys):
    assert main(["prune", "--model", str(tmp_path / "m"), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--criterion", "learned", "--steps", "2"]) == 1
    assert "criterion learned" in capsys.readouterr().err
    assert main(["prune", "--model", str(tmp_path / "m"), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--criterion", "learned", "learned.init_keep=1.5"]) == 1
    assert "learned.init_keep must be in (0, 1)" in capsys.readouterr().err
    assert main(["prune", "--model", str(tmp_path / "m"), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--criterion", "learned", "--target-macs", "0.5", "--target-latency", "0.4",
                 'learned.widths={"rnns.0": 2}']) == 1
    assert "learned.widths: not with a latency target or depth gates" in capsys.readouterr().err


def test_latency_cost_is_the_tables_prediction_and_a_second_constraint_is_met():
    from slimasr.prune.latency import LatencyTable
    from slimasr.prune.learned import LatencyCost

    model = family("crnn-lstm-bi")
    groups = {g.name: g for g in gateable_groups(model)}
    table = LatencyTable(base_ms=10.0, seconds=1.0, threads=1, machine="test", total_macs=1.0, groups={
        "rnns.0": {"size": 6, "class": 0, "widths": [6, 4, 2], "saved_ms": [0.0, 1.0, 3.0], "macs_saved": [0, 1, 2]},
        "rnns.1": {"size": 5, "class": 1, "widths": [5, 1], "saved_ms": [0.0, 4.0], "macs_saved": [0, 1]}})
    lat = LatencyCost(table, {k: g.size for k, g in groups.items()})
    for w0, w1 in ((6, 5), (3, 2), (1, 1), (5, 4)):
        probs = {k: torch.ones(g.size) for k, g in groups.items()}
        probs["rnns.0"][w0:] = 0.0
        probs["rnns.1"][w1:] = 0.0
        expected = float(lat.expected(probs))
        assert expected == pytest.approx(table.predict({"rnns.0": w0, "rnns.1": w1}), abs=1e-9)
        assert lat.at({"rnns.0": w0, "rnns.1": w1}) == table.predict({"rnns.0": w0, "rnns.1": w1})
    cfg = LearnedConfig(steps=300, warmup_steps=100, lr=1e-3)
    cost = CostModel.fit(model)
    state, _ = train_masks(model, batches(), cfg, 0.2, cost, latency=(lat, 0.4))
    with torch.no_grad():
        ratio = float(lat.expected(state.gates.keep_probs())) / 10.0
    assert ratio <= 0.6 * 1.02, ratio
    assert len(state.curves["lambda3"]) == 300
    keep = binarize(state.gates, cost, 0.2, latency=(lat, 0.4))
    widths = {k: len(v) for k, v in keep.items()}
    assert lat.at(widths) <= 6.0 and cost.at(widths) <= 0.8 * cost.full


@pytest.mark.parametrize("name", ["dnn", "conformer", "crnn-gru-uni", "crnn-lstm-bi"])
def test_folded_and_pruned_student_computes_what_the_gated_one_did(name):
    """Deterministic gates folded into the readers' columns, closed units removed: the outputs
    of the gated student (eval mode; RNN units gated in the recurrence too). A group closed
    entirely is not exact: its sub-module goes with the output bias the gates cannot close, so
    every group keeps a unit here."""
    from slimasr.prune.learned import new_state, pruned_student

    model = family(name)
    state = new_state(model, LearnedConfig(), gateable_groups(model))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for k, group in state.gates.groups.items():
            la = state.gates.gate(k).log_alpha
            la.copy_(torch.randn(la.shape, generator=gen) * 3)
            la[: max(group.min_size, 1)] = 5.0  # width 0 drops a sub-module with its output bias
    keep = binarize(state.gates, CostModel.fit(model), 0.5, "threshold")
    assert any(len(v) < state.gates.groups[k].size for k, v in keep.items())
    assert all(len(v) == int((state.gates.gate(k).deterministic() > 0.5).sum()) or
               len(v) == state.gates.groups[k].min_size for k, v in keep.items())
    x, lens = torch.randn(2, 40, FEATS), torch.tensor([40, 33])
    state.student.eval()
    state.gates.mode = "fixed"
    # closed = exactly 0; kept units keep their (fractional) deterministic value
    state.gates.fixed = {k: torch.where(torch.isin(torch.arange(g.size), torch.tensor(keep[k], dtype=torch.long)),
                                        state.gates.gate(k).deterministic().detach(), torch.zeros(g.size))
                         for k, g in state.gates.groups.items()}
    handles = state.gates.attach(state.student)
    with torch.no_grad():
        gated = state.student(x, lens)[0]
    for h in handles:
        h.remove()
    small = pruned_student(state, keep)
    with torch.no_grad():
        torch.testing.assert_close(small(x, lens)[0], gated, atol=1e-5, rtol=1e-5)


# ---- depth gates (learned.depth: one gate per residual Conformer block) -------------------------

DEEP = ("conformer", dict(num_features=FEATS, subsampling_channels=[3, 4], d_model=8, num_blocks=3,
                          num_heads=[2, 3, 2], head_dim=4, ffn_dim=[12, 6, 5, 9, 7, 4],
                          conv_channels=[8, 6, 5], conv_kernel=3, max_relative_position=3))


def deep(seed: int = 0):
    return random_model(*DEEP, VOCAB, seed)


def test_depth_expected_cost_is_the_counted_macs_of_random_unit_and_block_states():
    from slimasr.prune.gates import DEPTH
    from slimasr.prune.learned import apply_keep, depth_layers

    model = deep()
    cost = CostModel.fit(model, depth=depth_layers(model))
    assert cost.full == model_cost(model, "macs") and len(cost.blocks) == 3
    gen = torch.Generator().manual_seed(2)
    for trial in range(8):
        keep = random_keep(model, gen)
        keep[DEPTH] = (torch.rand(3, generator=gen) < 0.5).nonzero().flatten().tolist() or [trial % 3]
        probs = {g: torch.zeros(n).index_fill(0, torch.tensor(keep[g], dtype=torch.long), 1.0)
                 for g, n in cost.sizes.items()}
        probs[DEPTH] = torch.zeros(3).index_fill(0, torch.tensor(keep[DEPTH]), 1.0)
        small = apply_keep(model, keep)
        assert small.config.num_blocks == len(keep[DEPTH])
        counted = model_cost(small, "macs")
        assert abs(float(cost.expected(probs)) - counted) < 0.5, keep
        assert abs(cost.at({g: len(keep[g]) for g in cost.sizes}, keep[DEPTH]) - counted) < 0.5
    # no depth probabilities: every block counts (the unit-only cost, unchanged)
    assert float(cost.expected({g: torch.ones(n) for g, n in cost.sizes.items()})) == cost.full
    gates = ModelGates(gateable_groups(model), depth=depth_layers(model))
    e = cost.expected(gates.keep_probs())
    e.backward()
    assert (gates.gate(DEPTH).log_alpha.grad > 0).all()  # differentiable in the block gates too
    assert float(e.detach()) < cost.full


def test_a_closed_block_gate_computes_the_model_without_that_block():
    from slimasr.prune.gates import DEPTH
    from slimasr.prune.learned import depth_layers, new_state, pruned_student
    from slimasr.prune.surgery import select_layers

    model = deep()
    x, lens = torch.randn(2, 40, FEATS), torch.tensor([40, 29])
    gates = ModelGates(gateable_groups(model), depth=depth_layers(model))
    gates.mode = "fixed"
    gates.fixed = {k: torch.ones(g.size) for k, g in gates.groups.items()}
    with torch.no_grad():
        before = model(x, lens)[0]
        handles = gates.attach(model)
        gates.fixed[DEPTH] = torch.ones(3)
        assert torch.equal(model(x, lens)[0], before)  # open: bitwise the ungated model
        for closed in range(3):
            gates.fixed[DEPTH] = torch.ones(3).index_fill(0, torch.tensor([closed]), 0.0)
            kept = [i for i in range(3) if i != closed]
            torch.testing.assert_close(model(x, lens)[0], select_layers(model, kept)(x, lens)[0],
                                       atol=1e-6, rtol=1e-6, msg=f"block {closed}")
    for h in handles:
        h.remove()
    # binarized: the block ranked last goes first, and the folded, pruned student (units and
    # block removed) computes what the gated student did with that block closed, the rest at 1
    state = new_state(model, LearnedConfig(depth=True), gateable_groups(model))
    with torch.no_grad():
        state.gates.gate(DEPTH).log_alpha[1] = -5.0
    keep = binarize(state.gates, CostModel.fit(model, depth=depth_layers(model)), 0.2)
    assert keep[DEPTH] == [0, 2] and all(len(keep[g]) == n.size for g, n in state.gates.groups.items())
    small = pruned_student(state, keep)
    assert small.config.num_blocks == 2
    state.student.eval()
    state.gates.mode = "fixed"
    state.gates.fixed = {k: state.gates.gate(k).deterministic().detach() for k in state.gates.groups}
    state.gates.fixed[DEPTH] = torch.tensor([1.0, 0.0, 1.0])
    handles = state.gates.attach(state.student)
    with torch.no_grad():
        gated = state.student(x, lens)[0]
    for h in handles:
        h.remove()
    with torch.no_grad():
        torch.testing.assert_close(small(x, lens)[0], gated, atol=1e-5, rtol=1e-5)
    assert torch.equal(small.state_dict()["blocks.1.ffn1.up.weight"],  # block 2 renumbered, untouched
                       state.student.state_dict()["blocks.2.ffn1.up.weight"])  # (no gate folds into up)


def test_lagrangian_with_depth_gates_brings_expected_macs_within_2_percent_of_the_target():
    from slimasr.prune.gates import DEPTH
    from slimasr.prune.learned import apply_keep

    model = deep()
    cfg = LearnedConfig(steps=200, warmup_steps=60, lr=1e-3, gate_lr=0.05, lambda_lr=0.05, depth=True)
    state, cost = train_masks(model, batches(), cfg, fraction=0.5)
    assert len(cost.blocks) == 3
    with torch.no_grad():
        probs = state.gates.keep_probs()
        ratio = float(cost.expected(probs)) / cost.full
    assert DEPTH in probs and probs[DEPTH].shape == (3,)
    assert abs(ratio - 0.5) <= 0.02 * 0.5, ratio
    keep = binarize(state.gates, cost, 0.5)
    small = apply_keep(model, keep)
    assert model_cost(small, "macs") <= 0.5 * cost.full
    assert abs(cost.at({g: len(keep[g]) for g in cost.sizes}, keep[DEPTH]) - model_cost(small, "macs")) < 0.5


def deep_table(with_blocks: bool = True):
    """A hand-made latency table for ``deep()``: each group saves 0.1 ms per unit removed, each
    block 2 ms more than its groups at full width."""
    from slimasr.prune.latency import LatencyTable

    groups = {g.name: {"size": g.size, "class": i, "widths": [g.size, 1], "saved_ms": [0.0, 0.1 * (g.size - 1)],
                       "macs_saved": [0.0, 1.0]} for i, g in enumerate(gateable_groups(deep()))}
    own = {i: sum(0.1 * e["size"] for k, e in groups.items() if k.startswith(f"blocks.{i}.")) for i in range(3)}
    blocks = {"prefix": "blocks", "saved_ms": [own[i] + 2.0 for i in range(3)], "macs_saved": [1.0] * 3}
    return LatencyTable(base_ms=20.0, seconds=1.0, threads=1, machine="test", total_macs=1.0, groups=groups,
                        blocks=blocks if with_blocks else None)


def test_depth_latency_cost_is_the_tables_prediction_and_training_meets_both_targets():
    from slimasr.errors import ConfigError
    from slimasr.prune.gates import DEPTH
    from slimasr.prune.learned import LatencyCost, apply_keep, depth_layers

    model, table = deep(), deep_table()
    cost = CostModel.fit(model, depth=depth_layers(model))
    lat = LatencyCost(table, cost.sizes)
    gen = torch.Generator().manual_seed(3)
    for trial in range(8):  # random 0/1 states of units and blocks: expectation = the prediction
        keep = random_keep(model, gen)
        keep[DEPTH] = (torch.rand(3, generator=gen) < 0.5).nonzero().flatten().tolist() or [trial % 3]
        probs = {g: torch.zeros(n).index_fill(0, torch.tensor(keep[g], dtype=torch.long), 1.0)
                 for g, n in cost.sizes.items()}
        probs[DEPTH] = torch.zeros(3).index_fill(0, torch.tensor(keep[DEPTH]), 1.0)
        widths = {g: len(keep[g]) for g in cost.sizes}
        predicted = table.predict(widths, keep[DEPTH])
        assert float(lat.expected(probs)) == pytest.approx(predicted, abs=1e-9)
        assert lat.at(widths, keep[DEPTH]) == pytest.approx(predicted, abs=1e-12)
        if len(keep[DEPTH]) < 3:  # a closed block saves its own time, more than its groups' alone
            assert predicted < table.predict(widths)
    cfg = LearnedConfig(steps=200, warmup_steps=60, lr=1e-3, gate_lr=0.05, lambda_lr=0.05, depth=True)
    state, cost = train_masks(model, batches(), cfg, 0.2, cost, latency=(lat, 0.5))
    with torch.no_grad():
        probs = state.gates.keep_probs()
        ratio = float(lat.expected(probs)) / table.base_ms
    assert ratio <= 0.5 * 1.02, ratio
    keep = binarize(state.gates, cost, 0.2, latency=(lat, 0.5))
    widths = {g: len(keep[g]) for g in cost.sizes}
    assert lat.at(widths, keep[DEPTH]) <= 0.5 * table.base_ms
    assert model_cost(apply_keep(model, keep), "macs") <= 0.8 * cost.full
    with pytest.raises(ConfigError, match="no whole-block timings"):  # a table without blocks
        train_masks(model, batches(), LearnedConfig(steps=1, depth=True), 0.2, cost,
                    latency=(LatencyCost(deep_table(with_blocks=False), cost.sizes), 0.5))


def test_depth_gates_refuse_families_without_residual_blocks():
    from slimasr.errors import ConfigError

    with pytest.raises(ConfigError, match="no residual blocks"):
        train_masks(family("crnn-lstm-bi"), batches(), LearnedConfig(steps=1, depth=True), 0.5)


@pytest.mark.parametrize("latency", [None, "0.3"])
def test_cli_prunes_a_conformer_with_depth_gates_into_a_model_directory_that_reloads(tmp_path, latency, mac_clock):
    # mac_clock: the latency table and the plans' checks read MACs, not the clock. Timed for real, a
    # tiny Conformer's blocks once measured 0.0 ms of saving in CI, and no plan met 30%.
    from slimasr.prune.latency import LatencyTable
    from slimasr.prune.learned import DEPTH, apply_keep
    from slimasr.train import train_model

    data = make_corpus(tmp_path / "data", n_train=8)
    recipe = tiny_recipe(epochs=1)
    recipe["model"] = {"preset": None, "architecture": "conformer", "config": {
        "num_features": 40, "subsampling_channels": [4, 4], "d_model": 16, "num_blocks": 3, "num_heads": 2,
        "head_dim": 8, "ffn_dim": 16, "conv_channels": 16, "conv_kernel": 3, "max_relative_position": 4,
        "dropout": 0.0}}
    train_model(recipe, data, tmp_path / "teacher", show_progress=False)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tmp_path / "teacher"), "--data", str(data), "--out", str(out),
                 "--criterion", "learned", "--target-macs", "0.8", "--finetune-epochs", "0",
                 "--round-to", "1", "--quiet", "calibration_cuts=4", "num_threads=1",
                 "learned.steps=40", "learned.warmup_steps=10", "learned.depth=true",
                 *(["--target-latency", latency] if latency else [])]) == 0
    step = json.loads((out / "prune.json").read_text())["steps"][0]
    learned = step["learned"]
    if latency:  # the table timed whole blocks; the binarized plan meets its prediction
        table = LatencyTable.load(next(out.rglob("latency_table.json")))
        assert table.blocks is not None and len(table.blocks["saved_ms"]) == 3
        assert step["latency_ms_predicted"] == learned["latency_ms_predicted"] <= 0.7 * table.base_ms
        attempts = step["latency_attempts"]  # the binarized plans were timed, as every latency plan
        assert 1 <= len(attempts) <= 3 and attempts[0]["asked"] == pytest.approx(0.3)
        assert all(a["asked"] >= attempts[0]["asked"] and a["measured_ratio"] > 0 for a in attempts)
        assert learned["latency_ms_predicted"] == pytest.approx(table.predict(
            learned["widths"], learned["blocks"]))
    teacher, pruned = load_model(tmp_path / "teacher"), load_model(out)
    assert DEPTH == "depth" and learned["blocks"] and len(learned["block_keep_probs"]) == 3
    assert pruned.config.num_blocks == len(learned["blocks"]) < 3  # a block went at this target
    keep = {**{k: list(range(w)) for k, w in learned["widths"].items()}, DEPTH: learned["blocks"]}
    assert learned["actual"] == model_cost(apply_keep(teacher, keep), "macs") == model_cost(pruned, "macs")
    assert learned["actual"] <= 0.2 * learned["original"]
    assert abs(learned["binarized_predicted"] - learned["actual"]) < 0.5
    x = torch.randn(1, 100, 40)
    torch.testing.assert_close(pruned(x, torch.tensor([100]))[0], load_model(out)(x, torch.tensor([100]))[0])
