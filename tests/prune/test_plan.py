"""Planning: the planned model just meets the MACs/params target (one rounding step less would not),
keeps the highest-scored units, respects round_to, protect and max_group_fraction."""

from __future__ import annotations

import math

import pytest
import torch

from slimasr.evaluate.cost import count_macs, count_params, example_input
from slimasr.prune import (
    PruneTarget,
    magnitude_scores,
    model_cost,
    plan,
    plan_from_ratios,
    prunable_groups,
    prune_model,
    random_scores,
)
from slimasr.prune.plan import legal_widths, unit_step
from tests.prune.test_importance import FAMILIES, FEATS, build

SECONDS = 0.2  # audio MACs are counted on in these tests (20 frames): cost is measured often


def widths(model, keep) -> dict[str, int]:
    return {g.name: len(keep.get(g.name, range(g.size))) for g in prunable_groups(model)}


def cost_with(model, target, sizes: dict[str, int]) -> int:
    """Cost of ``model`` with the given widths (first units kept: the count is what matters)."""
    by = {g.name: g for g in prunable_groups(model)}
    keep = {n: list(range(w)) for n, w in sizes.items() if w < by[n].size}
    return model_cost(prune_model(model, keep), target.kind, target.seconds)


def one_step_wider(group, width: int, target) -> int | None:
    allowed = legal_widths(group, target.round_to, target.max_group_fraction)
    wider = [w for w in allowed if w > width]
    return wider[0] if wider else None


def assert_keeps_highest_scores(keep, scores) -> None:
    for name, kept in keep.items():
        s = scores[name]
        removed = [j for j in range(len(s)) if j not in kept]
        assert kept == sorted(kept) and len(set(kept)) == len(kept)
        assert float(s[kept].min()) >= float(s[removed].max()), name


@pytest.mark.parametrize("kind", ["macs", "params"])
@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_global_plan_just_meets_the_target(key, kind):
    model = build(key)
    scores = random_scores(model, seed=1)
    target = PruneTarget(kind=kind, fraction=0.4, scope="global", round_to=1, seconds=SECONDS)
    keep = plan(model, scores, target)
    budget = 0.6 * model_cost(model, kind, SECONDS)
    assert model_cost(prune_model(model, keep), kind, SECONDS) <= budget
    assert_keeps_highest_scores(keep, scores)
    # one rounding step less in some group is above the target
    now = widths(model, keep)
    above = []
    for g in prunable_groups(model):
        wider = one_step_wider(g, now[g.name], target)
        if wider is not None:
            above.append(cost_with(model, target, {**now, g.name: wider}) > budget)
    assert any(above)


@pytest.mark.parametrize("kind", ["macs", "params"])
@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_layer_plan_removes_one_fraction_everywhere_and_just_meets_the_target(key, kind):
    model = build(key)
    scores = magnitude_scores(model)
    target = PruneTarget(kind=kind, fraction=0.4, scope="layer", round_to=1, seconds=SECONDS)
    keep = plan(model, scores, target)
    budget = 0.6 * model_cost(model, kind, SECONDS)
    assert model_cost(prune_model(model, keep), kind, SECONDS) <= budget
    assert_keeps_highest_scores(keep, scores)
    groups = prunable_groups(model)
    now = widths(model, keep)
    shares = {g.name: (g.size - now[g.name]) / g.size for g in groups}
    f = max(shares.values())
    for g in groups:  # every group removes f of its units, rounded down to whole units
        assert now[g.name] == max(math.ceil(g.size * (1 - f) - 1e-9),
                                  g.size - math.floor(target.max_group_fraction * g.size + 1e-9)), g.name
    # the next-smaller fraction (the groups that changed at f one step wider) is above the target
    previous = {n: (one_step_wider(g, now[n], target) if shares[n] == f else now[n])
                for g in groups for n in [g.name]}
    assert cost_with(model, target, previous) > budget


def test_global_ranking_uses_scores_normalised_by_their_group_mean():
    """Group a's scores are 1000x group b's: raw ranking would strip b; normalised, every removed
    unit is below every kept one (as a share of its group's mean)."""
    model = build("dnn", hidden_sizes=[12, 12, 12])
    gen = torch.Generator().manual_seed(0)
    scores = {f"layers.{i}": torch.rand(12, generator=gen) * 10.0 ** (3 * (i == 0)) for i in range(3)}
    target = PruneTarget(kind="params", fraction=0.3, round_to=1, max_group_fraction=1.0)
    keep = plan(model, scores, target)
    removed, kept = [], []
    for name, s in scores.items():
        norm = s / s.mean()
        kept_here = keep.get(name, list(range(12)))
        kept += norm[kept_here].tolist()
        removed += [float(norm[j]) for j in range(12) if j not in kept_here]
    assert removed and max(removed) <= min(kept)
    assert all(len(keep.get(n, range(12))) < 12 for n in scores)  # every group lost units


def test_round_to_protect_and_max_group_fraction():
    model = build("dnn", hidden_sizes=[40, 32, 24])
    scores = magnitude_scores(model)
    target = PruneTarget(kind="macs", fraction=0.25, round_to=8, protect=["layers.0"],
                         max_group_fraction=0.5, seconds=SECONDS)
    keep = plan(model, scores, target)
    assert "layers.0" not in keep
    sizes = {"layers.1": 32, "layers.2": 24}
    for name, kept in keep.items():
        assert len(kept) % 8 == 0 and len(kept) >= sizes[name] / 2
    budget = 0.75 * model_cost(model, "macs", SECONDS)
    assert model_cost(prune_model(model, keep), "macs", SECONDS) <= budget
    assert_keeps_highest_scores(keep, scores)


def test_round_to_counts_features_for_attention_heads():
    """Heads are blocks of head_dim features: with head_dim 4, round_to 8 means an even head count
    (counted in heads, a 3-head layer could never lose one)."""
    model = build("conformer", num_heads=[4, 3])
    groups = {g.name: g for g in prunable_groups(model)}
    assert unit_step(groups["blocks.1.attn"], 8) == 2 and unit_step(groups["blocks.0.ffn1"], 8) == 8
    assert legal_widths(groups["blocks.0.attn"], 8, 0.9) == [2, 4]
    assert legal_widths(groups["blocks.1.attn"], 8, 0.9) == [2, 3]
    assert legal_widths(groups["blocks.0.ffn1"], 8, 0.9) == [8, 12]
    assert legal_widths(groups["blocks.0.ffn1"], 8, 1.0) == [0, 8, 12]
    scores = {"blocks.0.attn": torch.tensor([4.0, 1.0, 3.0, 2.0])}
    keep = plan(model, scores, PruneTarget(kind="params", fraction=0.05, seconds=SECONDS))
    assert keep == {"blocks.0.attn": [0, 2]}
    assert plan_from_ratios(model, scores, {"blocks.0.attn": 0.25}, round_to=8) == {}  # 3 heads: tie, keep 4
    assert plan_from_ratios(model, scores, {"blocks.0.attn": 0.5}, round_to=8) == {"blocks.0.attn": [0, 2]}


def test_unreachable_target_is_an_error_in_words():
    model = build("dnn")
    target = PruneTarget(fraction=0.9, protect=["layers.0", "layers.1"], round_to=1, seconds=SECONDS)
    with pytest.raises(ValueError, match="cannot remove 90.0% of the macs"):
        plan(model, magnitude_scores(model), target)


def test_bad_scores_and_targets_are_rejected():
    model = build("dnn")
    scores = magnitude_scores(model)
    with pytest.raises(ValueError, match="group layers.1: needs 7 finite scores"):
        plan(model, {**scores, "layers.1": torch.ones(3)}, PruneTarget())
    with pytest.raises(ValueError, match="unknown group 'layers.9'"):
        plan(model, scores, PruneTarget(protect=["layers.9"]))
    with pytest.raises(ValueError, match="fraction"):
        PruneTarget(fraction=1.0)
    with pytest.raises(ValueError, match="scope"):
        PruneTarget(scope="everywhere")


def test_unscored_groups_are_left_alone():
    model = build("crnn_bilstm")
    scores = {"rnns.1": magnitude_scores(model)["rnns.1"]}
    keep = plan(model, scores, PruneTarget(kind="params", fraction=0.1, round_to=1))
    assert list(keep) == ["rnns.1"]


def test_model_cost_counts_macs_on_seconds_of_audio_and_params():
    model = build("crnn_gru").train()
    assert model_cost(model, "params") == count_params(model)
    model.eval()
    expected = count_macs(model, *example_input(model, SECONDS, FEATS))
    model.train()
    assert model_cost(model, "macs", SECONDS) == expected > 0
    assert model.training
    with pytest.raises(ValueError, match="cost kind"):
        model_cost(model, "flops")


def test_plan_from_ratios_removes_the_lowest_scores_with_rounding():
    model = build("dnn")  # hidden 9, 7, 5
    scores = {"layers.0": torch.tensor([9.0, 1, 8, 2, 7, 3, 6, 4, 5]), "layers.2": torch.arange(5.0)}
    keep = plan_from_ratios(model, scores, {"layers.0": 0.5, "layers.2": 0.0})
    assert keep == {"layers.0": [0, 2, 4, 6]}  # 4.5 rounds up to 5 removed: scores 1, 2, 3, 4, 5
    keep = plan_from_ratios(model, scores, {"layers.0": 0.3}, round_to=4)
    assert keep == {"layers.0": [0, 2, 3, 4, 5, 6, 7, 8]}  # 3 removed -> width 6 -> nearest x4 (up): 8
    assert plan_from_ratios(model, scores, {"layers.0": 1.0}) == {"layers.0": [0]}  # min_size 1
    conf = build("conformer")
    s = magnitude_scores(conf)
    assert plan_from_ratios(conf, s, {"blocks.0.attn": 1.0}) == {"blocks.0.attn": []}  # module goes
    with pytest.raises(ValueError, match="ratio must be in"):
        plan_from_ratios(model, scores, {"layers.0": 1.5})
