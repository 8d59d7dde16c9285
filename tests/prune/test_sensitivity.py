"""Sensitivity scan: its structure and values, ratios chosen from it (the insensitive group goes
first, the target is met), the plot, and the JSON round trip."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from slimasr.errors import DataError
from slimasr.prune import (
    PruneTarget,
    load_scan,
    magnitude_scores,
    model_cost,
    plan_from_ratios,
    plot_sensitivity,
    prune_model,
    ratios_from_scan,
    save_scan,
    sensitivity_scan,
)
from slimasr.train.loop import compute_loss
from tests.prune.test_importance import build, make_batches

SECONDS = 0.2  # audio MACs are counted on in these tests
SIZES = [16, 16, 16]
PENALTY = {0: 0.1, 1: 10.0, 2: 0.1}  # metric increase per share of each layer's units removed


def stub_metric(model) -> float:
    """1 + sum of PENALTY[i] x share of layer i's units removed: layers.1 is the sensitive one."""
    return 1.0 + sum(PENALTY[i] * (SIZES[i] - h) / SIZES[i] for i, h in enumerate(model.config.hidden_sizes))


@pytest.fixture(scope="module")
def dnn_scan():
    model = build("dnn", hidden_sizes=SIZES)
    return model, sensitivity_scan(model, stub_metric, show_progress=False, seconds=SECONDS)


def test_scan_structure_and_values(dnn_scan):
    model, scan = dnn_scan
    assert scan["baseline"] == 1.0
    assert scan["macs"] == model_cost(model, "macs", SECONDS)
    assert scan["params"] == model_cost(model, "params")
    assert list(scan["groups"]) == ["layers.0", "layers.1", "layers.2"]
    for i, (name, entry) in enumerate(scan["groups"].items()):
        assert entry["kind"] == "neuron" and entry["size"] == 16
        assert entry["ratios"] == [0.25, 0.5, 0.75]
        assert entry["values"] == pytest.approx([1.0 + PENALTY[i] * r for r in entry["ratios"]])
        keep = plan_from_ratios(model, magnitude_scores(model), {name: 0.5})
        saved = scan["macs"] - model_cost(prune_model(model, keep), "macs", SECONDS)
        assert entry["macs_saved"][1] == saved > 0
        assert entry["macs_saved"] == sorted(entry["macs_saved"])
        assert entry["params_saved"] == sorted(entry["params_saved"]) and entry["params_saved"][0] > 0


def test_ratios_from_scan_spare_the_sensitive_group_and_meet_the_target(dnn_scan):
    model, scan = dnn_scan
    for kind in ("macs", "params"):
        target = PruneTarget(kind=kind, fraction=0.55, round_to=1, seconds=SECONDS)
        ratios = ratios_from_scan(model, scan, target)
        # layers.0 saves the most per unit (24 inputs) at the same small penalty: it goes first,
        # to the largest measured ratio; then layers.2; the sensitive layers.1 is never touched
        assert ratios["layers.0"] == 0.75 and 0 < ratios["layers.2"] < 0.75 and ratios["layers.1"] == 0
        keep = plan_from_ratios(model, magnitude_scores(model), ratios, target.round_to)
        assert model_cost(prune_model(model, keep), kind, SECONDS) <= 0.45 * model_cost(model, kind, SECONDS)
        # one unit fewer from layers.2 would miss the target
        fewer = {**ratios, "layers.2": ratios["layers.2"] - 1 / 16}
        keep = plan_from_ratios(model, magnitude_scores(model), fewer, target.round_to)
        assert model_cost(prune_model(model, keep), kind, SECONDS) > 0.45 * model_cost(model, kind, SECONDS)


def test_ratios_from_scan_respects_protect_and_rounding(dnn_scan):
    model, scan = dnn_scan
    target = PruneTarget(kind="macs", fraction=0.2, round_to=4, protect=["layers.0"], seconds=SECONDS)
    ratios = ratios_from_scan(model, scan, target)
    assert "layers.0" not in ratios
    assert all((16 * r) % 4 == 0 for r in ratios.values())
    with pytest.raises(ValueError, match="cannot remove 90.0%"):
        ratios_from_scan(model, scan, PruneTarget(fraction=0.9, round_to=1, seconds=SECONDS))


def test_scan_with_a_real_dev_loss_on_a_crnn():
    model = build("crnn_bilstm")
    batch = make_batches(1)[0]

    def dev_loss(m) -> float:
        with torch.no_grad():
            return float(compute_loss(m.eval(), batch, torch.device("cpu"), "mean", contextlib.nullcontext()))
    scan = sensitivity_scan(model, dev_loss, ratios=(0.5,), groups=["rnns.0", "rnns.2"],
                            show_progress=False, seconds=SECONDS)
    assert scan["baseline"] == pytest.approx(dev_loss(model))
    assert list(scan["groups"]) == ["rnns.0", "rnns.2"]
    entry = scan["groups"]["rnns.2"]
    assert entry["ratios"] == [0.5] and entry["values"][0] != scan["baseline"]
    with pytest.raises(ValueError, match="unknown group 'rnns.7'"):
        sensitivity_scan(model, dev_loss, groups=["rnns.7"], show_progress=False)


def test_plot_is_a_png_with_one_panel_per_kind_when_crowded(tmp_path, dnn_scan):
    _, scan = dnn_scan
    path = plot_sensitivity(scan, tmp_path / "plots" / "sensitivity.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    crowded = {**scan, "groups": {f"g{i}": {**scan["groups"]["layers.0"], "kind": "ab"[i % 2]}
                                  for i in range(10)}}
    wide = plot_sensitivity(crowded, tmp_path / "crowded.png")
    assert wide.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crowded.png", "plots"]  # no temp files left


def test_save_and_load_round_trip(tmp_path, dnn_scan):
    _, scan = dnn_scan
    path = save_scan(scan, tmp_path / "scan.json")
    assert load_scan(path) == json.loads(json.dumps(scan))
    (tmp_path / "bad.json").write_text(json.dumps({"baseline": 1.0, "groups": []}))
    with pytest.raises(DataError, match="bad.json: not a sensitivity scan"):
        load_scan(tmp_path / "bad.json")


def test_scan_of_another_model_is_refused(dnn_scan):
    _, scan = dnn_scan
    other = build("dnn", hidden_sizes=[12, 16, 16])
    with pytest.raises(ValueError, match="layers.0: the scan saw 16 units"):
        ratios_from_scan(other, scan, PruneTarget(round_to=1, seconds=SECONDS))
