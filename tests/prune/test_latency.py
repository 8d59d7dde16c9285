"""Latency-aware pruning: the measured table (structure, classes, exact MAC savings, monotone
savings, JSON round trip and refusals), its predictions, and planning to a latency target (the
budget is met, a MAC + latency target meets both, time per MAC moves units between groups, the
sensitivity plan prices by time). No assertion depends on how fast anything runs."""

from __future__ import annotations

import json
import math

import pytest

from slimasr.errors import DataError
from slimasr.evaluate.cost import count_macs, example_input
from slimasr.prune import (
    PruneTarget,
    model_cost,
    plan,
    plan_from_ratios,
    prunable_groups,
    prune_model,
    random_scores,
    ratios_from_scan,
    sensitivity_scan,
)
from slimasr.prune.latency import LatencyTable, measure_latency_table, plot_latency_table, relative_latency
from slimasr.prune.plan import legal_widths
from tests.prune.test_importance import build

SECONDS = 0.2  # audio the tests time and count on
SIZES = [16, 16, 16]


def uniform_conformer():
    """Two identical blocks: their FFNs, heads and conv channels each form one class."""
    return build("conformer", num_heads=[2, 2], ffn_dim=[8, 8, 8, 8], conv_channels=[8, 8])


@pytest.fixture(scope="module")
def conformer_table():
    model = uniform_conformer()
    return model, measure_latency_table(model, round_to=1, seconds=SECONDS, runs=2, show_progress=False)


def hand_table(model, slow: str = "layers.2", factor: float = 10.0) -> LatencyTable:
    """A table for a DNN of SIZES: every group saves time in proportion to its MACs, ``slow``
    ``factor`` times more per MAC; measured at half and at 1/16 of each layer."""
    x, lens = example_input(model, SECONDS, model.config.num_features)
    total = count_macs(model, x, lens)
    groups = {}
    for ci, g in enumerate(prunable_groups(model)):
        widths = [g.size, g.size // 2, 1]
        macs = [float(total - count_macs(prune_model(model, {g.name: list(range(w))}), x, lens)) if w < g.size
                else 0.0 for w in widths]
        per_mac = 1e-4 * (factor if g.name == slow else 1.0)
        groups[g.name] = {"size": g.size, "class": ci, "widths": widths, "saved_ms": [m * per_mac for m in macs],
                          "macs_saved": macs}
    return LatencyTable(base_ms=1e-4 * total * 2.0, seconds=SECONDS, threads=1, machine="test",
                        total_macs=float(total), groups=groups)


def test_table_has_every_group_at_legal_widths_with_monotone_savings(conformer_table):
    model, table = conformer_table
    assert list(table.groups) == [g.name for g in prunable_groups(model)]
    assert table.base_ms > 0 and table.seconds == SECONDS and table.threads == 1
    for g in prunable_groups(model):
        e = table.groups[g.name]
        legal = legal_widths(g, 1, 0.9)
        assert e["size"] == g.size and e["widths"][0] == g.size
        assert all(w in legal for w in e["widths"]) and e["widths"] == sorted(e["widths"], reverse=True)
        assert len(e["widths"]) == len(e["saved_ms"]) == len(e["macs_saved"]) >= 2
        assert e["saved_ms"][0] == 0.0 and all(b >= a >= 0 for a, b in zip(e["saved_ms"], e["saved_ms"][1:]))


def test_identical_blocks_share_a_class_and_the_mac_savings_are_exact(conformer_table):
    model, table = conformer_table
    x, lens = example_input(model, SECONDS, model.config.num_features)
    total = count_macs(model, x, lens)
    classes: dict[int, list[str]] = {}
    for name, e in table.groups.items():
        classes.setdefault(e["class"], []).append(name)
    assert sorted(classes.values()) == sorted([
        ["subsample.convs.0"], ["subsample.convs.1"], ["blocks.0.ffn1", "blocks.0.ffn2", "blocks.1.ffn1",
                                                       "blocks.1.ffn2"],
        ["blocks.0.attn", "blocks.1.attn"], ["blocks.0.conv", "blocks.1.conv"]])
    for members in classes.values():
        e = table.groups[members[0]]
        assert all(table.groups[m]["saved_ms"] == e["saved_ms"] for m in members)
        for width, per_group in zip(e["widths"][1:], e["macs_saved"][1:]):
            narrowed = prune_model(model, {m: list(range(width)) for m in members})
            assert per_group * len(members) == pytest.approx(total - count_macs(narrowed, x, lens))
            assert per_group > 0


def test_whole_blocks_are_timed_with_exact_mac_savings_and_predicted_with_their_groups(tmp_path):
    from slimasr.prune.surgery import select_layers

    model = uniform_conformer()
    table = measure_latency_table(model, round_to=1, seconds=SECONDS, runs=2, show_progress=False,
                                  depth=("blocks", 2))
    x, lens = example_input(model, SECONDS, model.config.num_features)
    total = count_macs(model, x, lens)
    blocks = table.blocks
    assert blocks["prefix"] == "blocks" and len(blocks["saved_ms"]) == 2 and min(blocks["saved_ms"]) >= 0
    for i in range(2):  # identical blocks: one class, one of the two removed, each credited the same
        assert blocks["macs_saved"][i] == pytest.approx(total - count_macs(select_layers(model, [1 - i]), x, lens))
    assert blocks["saved_ms"][0] == blocks["saved_ms"][1]
    assert table.block_of("blocks.1.attn") == 1 and table.block_of("subsample.convs.0") is None
    narrow = {"blocks.0.ffn1": 4, "blocks.1.conv": 4, "subsample.convs.0": 2}
    assert table.predict(narrow, [0, 1]) == table.predict(narrow)  # every block kept: the width prediction
    # block 0 removed: its saving replaces its groups' (they go with it); the others still count
    assert table.predict(narrow, [1]) == pytest.approx(
        table.base_ms - blocks["saved_ms"][0] - table.saved_ms("blocks.1.conv", 4)
        - table.saved_ms("subsample.convs.0", 2))
    again = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert again == table
    broken = json.loads((tmp_path / "t.json").read_text())
    broken["blocks"]["saved_ms"] = [1.0]
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(DataError, match="bad.json.*'blocks'"):
        LatencyTable.load(tmp_path / "bad.json")
    plot_latency_table(table, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # blocks of different widths are classes of their own: each removed alone, its own MACs
    mixed = build("conformer", num_heads=[1, 2], ffn_dim=[8, 8, 8, 8], conv_channels=[8, 8])
    mixed_table = measure_latency_table(mixed, round_to=1, seconds=SECONDS, runs=2, show_progress=False,
                                        groups=["blocks.0.attn"], depth=("blocks", 2))
    total = count_macs(mixed, x, lens)
    saved = mixed_table.blocks["macs_saved"]
    assert saved[0] != saved[1]
    for i in range(2):
        assert saved[i] == pytest.approx(total - count_macs(select_layers(mixed, [1 - i]), x, lens))


def test_prediction_interpolates_and_sums_single_group_savings():
    model = build("dnn", hidden_sizes=SIZES)
    table = hand_table(model, factor=1.0)
    e = table.groups["layers.0"]
    assert table.saved_ms("layers.0", 16) == 0.0
    assert table.saved_ms("layers.0", 8) == pytest.approx(e["saved_ms"][1])
    assert table.saved_ms("layers.0", 12) == pytest.approx(e["saved_ms"][1] / 2)  # halfway to 8
    both = table.predict({"layers.0": 8, "layers.2": 1, "not.a.group": 3})
    assert both == pytest.approx(table.base_ms - e["saved_ms"][1] - table.groups["layers.2"]["saved_ms"][2])
    # time per MAC: the whole model's rate in this table is 1e-4 * 2 per MAC, every group 1e-4
    assert table.time_per_mac("layers.1") == pytest.approx(0.5)
    assert hand_table(model).time_per_mac("layers.2") == pytest.approx(5.0)


def test_round_trip_and_refusals(tmp_path, conformer_table):
    model, table = conformer_table
    path = table.save(tmp_path / "t.json")
    again = LatencyTable.load(path)
    assert again == table
    again.check(model)
    with pytest.raises(DataError, match="t.json.*blocks.0.attn"):
        again.check(build("conformer", num_heads=[1, 2], ffn_dim=[8, 8, 8, 8], conv_channels=[8, 8]), path)
    broken = json.loads(path.read_text())
    broken["groups"]["blocks.0.attn"]["widths"] = [2, 2]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    with pytest.raises(DataError, match="bad.json.*descending"):
        LatencyTable.load(bad)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="junk.json.*not a latency table"):
        LatencyTable.load(tmp_path / "junk.json")


def test_a_latency_target_meets_the_predicted_budget_and_no_more():
    model = build("dnn", hidden_sizes=SIZES)
    table = hand_table(model)
    scores = random_scores(model, seed=1)
    target = PruneTarget("latency", 0.3, round_to=1, seconds=SECONDS)
    keep = plan(model, scores, target, table)
    predicted = table.predict({n: len(v) for n, v in keep.items()})
    assert predicted <= 0.7 * table.base_ms
    # the plan stops as soon as it is within budget: giving back one unit of any narrowed group
    # that the ranking removed last would be over it
    over = [table.predict({**{n: len(v) for n, v in keep.items()}, name: len(keep[name]) + 1}) for name in keep]
    assert max(over) > 0.7 * table.base_ms


def test_macs_and_latency_together_meet_both():
    model = build("dnn", hidden_sizes=SIZES)
    table = hand_table(model, factor=1.0)  # time = MACs / 2 (half the time is not prunable)
    scores = random_scores(model, seed=2)
    macs_only = plan(model, scores, PruneTarget("macs", 0.3, round_to=1, seconds=SECONDS))
    both = plan(model, scores, PruneTarget("macs", 0.3, round_to=1, seconds=SECONDS, latency_fraction=0.25), table)
    assert table.predict({n: len(v) for n, v in macs_only.items()}) > 0.75 * table.base_ms  # latency binds
    assert table.predict({n: len(v) for n, v in both.items()}) <= 0.75 * table.base_ms
    assert model_cost(prune_model(model, both), "macs", SECONDS) <= 0.7 * model_cost(model, "macs", SECONDS)


def test_slow_groups_lose_more_units_when_time_per_mac_is_weighed():
    model = build("dnn", hidden_sizes=SIZES)
    table = hand_table(model, slow="layers.2", factor=10.0)
    scores = random_scores(model, seed=3)
    removed = {}
    for weight in (0.0, 1.0):
        target = PruneTarget("latency", 0.3, round_to=1, seconds=SECONDS, time_per_mac_weight=weight)
        keep = plan(model, scores, target, table)
        removed[weight] = 16 - len(keep.get("layers.2", range(16)))
    assert removed[1.0] > removed[0.0]


def test_latency_targets_need_a_table_and_valid_settings():
    model = build("dnn", hidden_sizes=SIZES)
    with pytest.raises(ValueError, match="latency table"):
        plan(model, random_scores(model), PruneTarget("latency", 0.3))
    for bad in (dict(kind="latency", latency_fraction=0.2), dict(latency_fraction=1.0),
                dict(time_per_mac_weight=-1.0), dict(kind="time")):
        with pytest.raises(ValueError):
            PruneTarget(**bad)
    with pytest.raises(ValueError, match="latency table"):
        ratios_from_scan(model, {"groups": {}}, PruneTarget("latency", 0.3))


def test_sensitivity_plan_prices_by_time_under_a_latency_target():
    """MAC pricing takes the cheap-MAC first layer (24 inputs per unit) first; when the last
    layer is 10x slower per MAC, latency pricing takes it first."""
    model = build("dnn", hidden_sizes=SIZES)
    scan = sensitivity_scan(model, lambda m: 1.0 + sum(0.1 * (16 - h) / 16 for h in m.config.hidden_sizes),
                            show_progress=False, seconds=SECONDS)
    macs = ratios_from_scan(model, scan, PruneTarget("macs", 0.2, round_to=1, seconds=SECONDS))
    table = hand_table(model, slow="layers.2", factor=10.0)
    lat = ratios_from_scan(model, scan, PruneTarget("latency", 0.2, round_to=1, seconds=SECONDS), table)
    assert macs["layers.0"] > macs["layers.2"]
    assert lat["layers.2"] > lat["layers.0"]
    keep = plan_from_ratios(model, random_scores(model), lat, 1)
    assert table.predict({n: len(v) for n, v in keep.items()}) <= 0.8 * table.base_ms + 1e-9


def test_relative_latency_is_a_positive_ratio():
    model = build("dnn", hidden_sizes=SIZES)
    small = prune_model(model, {"layers.0": list(range(4))})
    ratio = relative_latency(model, small, SECONDS, threads=1, runs=3)
    assert math.isfinite(ratio) and ratio > 0


def test_the_table_plot_is_a_png(tmp_path, conformer_table):
    _, table = conformer_table
    path = plot_latency_table(table, tmp_path / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))
