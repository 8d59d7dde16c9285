"""``slimasr prune`` end to end on the tiny tone corpus: every criterion gives a smaller dense
model directory that meets its target and loads; iterative steps with (KD) fine-tuning recover the
loss; explicit ratios, whole-layer removal, the CLI and its errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from slimasr.cli import main
from slimasr.config import from_dict
from slimasr.models import load_model, save_model
from slimasr.frontend import Frontend
from slimasr.prune import group_by_name, model_cost, prunable_groups, select_layers
from slimasr.prune.latency import LatencyTable, measure_latency_table
from slimasr.prune.run import PRUNE_JSON, PruneConfig, _batches, _mean_loss, prune_model_dir
from slimasr.train import train_model
from slimasr.data.cache import feature_cache_dir, feature_cuts
from tests.train.helpers import make_corpus, tiny_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny BiLSTM CRNN that has learned the tone corpus."""
    root = tmp_path_factory.mktemp("prune")
    data = make_corpus(root / "data", n_train=20)
    result = train_model(tiny_recipe(), data, root / "model", show_progress=False)
    assert result["dev_wer"] < 20.0  # a model worth pruning
    return data, root / "model"


@pytest.fixture(scope="module")
def deep(trained: tuple[Path, Path]) -> Path:
    """A 3-layer BiLSTM CRNN (briefly trained) whose layers all write the same width."""
    data, model_dir = trained
    recipe = tiny_recipe(epochs=2)
    recipe["model"]["config"]["rnn_hidden_sizes"] = [16, 16, 16]
    train_model(recipe, data, model_dir.parent / "deep", show_progress=False)
    return model_dir.parent / "deep"


def config(**fields: object) -> PruneConfig:
    base = {"finetune_epochs": 0, "calibration_cuts": 8, "sensitivity_cuts": 8,
            "target": {"round_to": 2}, "num_threads": 1}
    target = {**base["target"], **fields.pop("target", {})}
    return from_dict(PruneConfig, {**base, **fields, "target": target})


@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "activation", "apoz", "sensitivity", "random"])
def test_every_criterion_meets_the_mac_target_with_a_dense_loadable_model(trained, tmp_path, criterion):
    data, model_dir = trained
    out = tmp_path / "pruned"
    record = prune_model_dir(model_dir, data, out, config(criterion=criterion,
                                                          target={"kind": "macs", "fraction": 0.5}),
                             show_progress=False)
    original, pruned = load_model(model_dir), load_model(out)
    assert model_cost(pruned, "macs") <= 0.5 * model_cost(original, "macs")
    assert record["final"]["macs_ratio"] == pytest.approx(model_cost(pruned, "macs") / model_cost(original, "macs"))
    # Dense and smaller: no masks, fewer parameters, config widths = tensor shapes.
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in original.parameters())
    assert not any(k.endswith(("_mask", "_orig")) for k in pruned.state_dict())
    for g in prunable_groups(pruned):
        assert record["final"]["widths"][g.name] == g.size
    assert pruned.config.rnn_hidden_sizes == [record["final"]["widths"]["rnns.0"]]
    x = torch.randn(2, 120, 40)
    log_probs, lens = pruned(x, torch.tensor([120, 90]))
    assert log_probs.shape[-1] == original.vocab_size and torch.isfinite(log_probs).all()
    saved = json.loads((out / PRUNE_JSON).read_text())
    assert saved["criterion"] == criterion and len(saved["steps"]) == 1
    assert json.loads((out / "config.json").read_text())["provenance"]["pruned_from"] == str(model_dir)
    for name in ("tokenizer.json", "cmvn.json"):
        assert (out / name).read_text() == (model_dir / name).read_text()
    if criterion == "sensitivity":
        assert (out / "steps" / "1" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
        scan = json.loads((out / "steps" / "1" / "sensitivity.json").read_text())
        assert set(scan["groups"]) == {g.name for g in prunable_groups(original)}


def test_iterative_pruning_with_kd_fine_tuning_recovers_the_loss(trained, tmp_path):
    data, model_dir = trained
    out = tmp_path / "pruned"
    cfg = config(criterion="taylor", target={"kind": "params", "fraction": 0.6}, steps=2,
                 finetune_epochs=3, distill=True, finetune_overrides=["train.lr=3e-3", "train.warmup_steps=5"])
    record = prune_model_dir(model_dir, data, out, cfg, show_progress=False)
    first, second = record["steps"]
    original = load_model(model_dir)
    # Step k meets (1 - f) ** (k / K) of the original parameters.
    assert first["params"] <= 0.4 ** 0.5 * model_cost(original, "params") < model_cost(original, "params")
    assert second["params"] <= 0.4 * model_cost(original, "params") < first["params"]
    for row in (first, second):
        assert row["dev_loss_finetuned"] < row["dev_loss_pruned"]
        assert "dev_wer_finetuned" in row and row["finetune_seconds"] > 0
    # The published model is the last fine-tuned one, with its training record.
    assert (out / "training.json").is_file()
    final = load_model(out)
    assert model_cost(final, "params") == second["params"] == record["final"]["params"]
    tuned = load_model(out / "steps" / "2" / "finetuned")
    for a, b in zip(final.state_dict().values(), tuned.state_dict().values()):
        assert torch.equal(a, b)


def test_explicit_ratios_prune_only_the_named_groups(trained, tmp_path):
    data, model_dir = trained
    record = prune_model_dir(model_dir, data, tmp_path / "p", config(criterion="magnitude",
                             ratios={"rnns.0": 0.5}), show_progress=False)
    widths = record["final"]["widths"]
    assert widths["rnns.0"] == 16
    assert {k: v for k, v in widths.items() if k != "rnns.0"} == {
        k: v for k, v in record["original"]["widths"].items() if k != "rnns.0"}


def test_whole_layers_go_first_by_measured_loss(trained, deep, tmp_path):
    """Layers 1 and 2 of the 3-layer BiLSTM can go (layer 0 reads the front end): the one whose
    removal gives the lower dev loss goes."""
    data, _ = trained
    cfg = config(criterion="magnitude", remove_layers=1, target={"fraction": 0.5})
    record = prune_model_dir(deep, data, tmp_path / "p", cfg, show_progress=False)
    (removed,) = record["steps"][0]["removed_layers"]
    model = load_model(deep).eval()
    fe = Frontend.load(deep)
    dev = feature_cuts(data, "dev", fe.features, feature_cache_dir(data, fe.features), show_progress=False)
    batches = list(_batches(fe, dev, cfg.sensitivity_cuts, cfg.calibration_seconds))
    losses = {i: _mean_loss(select_layers(model, [j for j in range(3) if j != i]), batches) for i in (1, 2)}
    assert removed["layer"] == min(losses, key=losses.get)
    assert removed["dev_loss"] == pytest.approx(losses[removed["layer"]])
    pruned = load_model(tmp_path / "p")
    assert len(pruned.config.rnn_hidden_sizes) == 2
    assert record["final"]["macs_ratio"] <= 0.5


def test_cli_prunes_and_refuses_to_overwrite(trained, tmp_path, capsys):
    data, model_dir = trained
    out = tmp_path / "cli"
    args = ["prune", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--criterion",
            "magnitude", "--target-params", "0.3", "--finetune-epochs", "0", "--round-to", "4", "--quiet",
            "calibration_cuts=4", "sensitivity_cuts=4"]
    assert main(args) == 0
    record = json.loads((out / PRUNE_JSON).read_text())
    assert record["final"]["params_ratio"] <= 0.7
    assert record["config"]["target"]["round_to"] == 4
    assert all(w % 4 == 0 for w in record["final"]["widths"].values())
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "already" in err[0]


@pytest.mark.parametrize("extra, message", [
    (["--target-macs", "1.5"], "fraction"),
    (["--criterion", "magnitude", "no_such_key=1"], "no_such_key"),
    (["steps=0"], "steps"),
])
def test_cli_bad_settings_are_one_line_errors(trained, tmp_path, capsys, extra, message):
    data, model_dir = trained
    code = main(["prune", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "o"),
                 "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_names_a_missing_model(tmp_path, capsys):
    code = main(["prune", "--model", str(tmp_path / "nope"), "--data", str(tmp_path), "--out",
                 str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "nope" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_latency_target_measures_a_table_times_the_plan_and_records_both(trained, tmp_path, mac_clock):
    data, model_dir = trained
    out = tmp_path / "lat"
    record = prune_model_dir(model_dir, data, out, config(criterion="taylor", latency_runs=2,
                                                          target={"kind": "latency", "fraction": 0.3}),
                             show_progress=False)
    step = record["steps"][0]
    table = LatencyTable.load(out / "steps" / "1" / "latency_table.json")
    table.check(load_model(model_dir))
    assert (out / "steps" / "1" / "latency_table.png").is_file()
    assert step["latency_ms_table"] == table.base_ms == record["original"]["latency_ms"]
    attempts = step["latency_attempts"]
    assert 1 <= len(attempts) <= 3 and attempts[0]["asked"] == pytest.approx(0.3)
    assert all(a["measured_ratio"] > 0 for a in attempts if "unreachable" not in a)
    assert attempts[0]["predicted_ratio"] <= 0.7 + 1e-9
    assert step["latency_ms_measured"] > 0 and record["final"]["latency_ms"] == step["latency_ms_measured"]
    assert record["final"]["speedup"] == pytest.approx(table.base_ms / step["latency_ms_measured"])
    # the table can be handed to another run (measured on the device), and must fit the model
    again = prune_model_dir(model_dir, data, tmp_path / "again", config(
        criterion="magnitude", latency_table=str(out / "steps" / "1" / "latency_table.json"),
        target={"kind": "macs", "fraction": 0.3, "latency_fraction": 0.2}), show_progress=False)
    assert LatencyTable.load(tmp_path / "again" / "steps" / "1" / "latency_table.json") == table
    assert again["final"]["macs_ratio"] <= 0.7


def test_cli_latency_target_and_a_table_of_another_model(trained, deep, tmp_path, capsys, mac_clock):
    data, model_dir = trained
    table = measure_latency_table(load_model(deep), round_to=2, seconds=0.5, runs=1, show_progress=False)
    table.save(tmp_path / "deep.json")
    base = ["prune", "--model", str(model_dir), "--data", str(data), "--finetune-epochs", "0",
            "--round-to", "2", "--quiet", "calibration_cuts=4", "sensitivity_cuts=4", "latency_runs=1"]
    assert main([*base, "--out", str(tmp_path / "ok"), "--target-macs", "0.3", "--target-latency", "0.2"]) == 0
    target = json.loads((tmp_path / "ok" / PRUNE_JSON).read_text())["config"]["target"]
    assert target["kind"] == "macs" and target["latency_fraction"] == 0.2
    capsys.readouterr()
    code = main([*base, "--out", str(tmp_path / "bad"), "--target-latency", "0.2",
                 "--latency-table", str(tmp_path / "deep.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "deep.json" in err[0] and "another model" in err[0]
    assert not (tmp_path / "bad").exists()


# ---- unstructured, regularized ------------------------------------------------------------------

def _zeros(model, name: str) -> torch.Tensor:
    return model.get_parameter(name).detach() == 0


def test_cli_unstructured_prunes_fine_tunes_with_the_mask_kept_and_saves_compactly(trained, tmp_path):
    data, model_dir = trained
    out = tmp_path / "sparse"
    assert main(["prune", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--method",
                 "unstructured", "--criterion", "magnitude", "--sparsity", "0.8", "--finetune-epochs", "1",
                 "--quiet", "calibration_cuts=4", "sensitivity_cuts=4"]) == 0
    record = json.loads((out / PRUNE_JSON).read_text())
    pruned, final = load_model(out / "steps" / "1" / "pruned"), load_model(out)
    assert record["method"] == "unstructured" and record["criterion"] == "magnitude"
    assert json.loads((out / "config.json").read_text())["sparse"] is True
    for name, share in record["final"]["layers"].items():
        n = final.get_parameter(name).numel()
        assert int(_zeros(final, name).sum()) == round(0.8 * n) and share == pytest.approx(0.8, abs=1 / n), name
        assert torch.equal(_zeros(final, name), _zeros(pruned, name)), f"{name}: the mask was not kept"
    assert not all(torch.equal(a, b) for a, b in zip(final.parameters(), pruned.parameters()))  # it trained
    assert json.loads((out / "training.json").read_text())["kept_masks"] == len(record["final"]["layers"])
    original_bytes = (model_dir / "model.safetensors").stat().st_size
    assert record["original"]["bytes"] == original_bytes
    assert record["final"]["bytes"] == (out / "model.safetensors").stat().st_size < original_bytes / 3
    assert record["final"]["nonzero_params"] < 0.3 * record["original"]["nonzero_params"]


def test_cli_unstructured_storage_int8_saves_and_scores_the_model_as_stored(trained, tmp_path):
    data, model_dir = trained
    for storage in ("fp32", "int8"):
        assert main(["prune", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / storage),
                     "--method", "unstructured", "--sparsity", "0.8", "--finetune-epochs", "0", "--quiet",
                     "calibration_cuts=4", "sensitivity_cuts=4", f"unstructured.storage={storage}"]) == 0
    exact, stored = load_model(tmp_path / "fp32"), load_model(tmp_path / "int8")
    record = json.loads((tmp_path / "int8" / PRUNE_JSON).read_text())
    assert record["storage"]["precision"] == "int8" and "storage" not in json.loads(
        (tmp_path / "fp32" / PRUNE_JSON).read_text())
    assert math.isfinite(record["storage"]["dev_loss"]) and record["storage"]["dev_loss"] != record["storage"][
        "dev_loss_before"]  # scored as stored
    for (name, a), b in zip(exact.state_dict().items(), stored.state_dict().values()):
        if a.dim() < 2:
            assert torch.equal(a, b), name
            continue
        rows = a.reshape(a.shape[0], -1)
        assert ((b.reshape_as(rows) - rows).abs() <= rows.abs().amax(1, keepdim=True) / 254 + 1e-7).all(), name
        assert (b[a == 0] == 0).all(), name
    fp32_bytes = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert record["final"]["bytes"] == (tmp_path / "int8" / "model.safetensors").stat().st_size < 0.6 * fp32_bytes


def test_gradient_saliency_global_and_gradual_unstructured_pruning(trained, tmp_path):
    data, model_dir = trained
    record = prune_model_dir(model_dir, data, tmp_path / "g", config(
        method="unstructured", unstructured={"criterion": "gradient", "sparsity": 0.5, "scope": "global"}),
        show_progress=False)
    model = load_model(tmp_path / "g")
    sizes = [model.get_parameter(n).numel() for n in record["final"]["layers"]]
    zeros = sum(int(_zeros(model, n).sum()) for n in record["final"]["layers"])
    assert zeros == round(0.5 * sum(sizes)) and record["final"]["sparsity"] == zeros / sum(sizes)
    record = prune_model_dir(model_dir, data, tmp_path / "gradual", config(
        method="unstructured", gradual=True, finetune_epochs=2, unstructured={"sparsity": 0.6},
        finetune_overrides=[*PruneConfig().finetune_overrides, "train.warmup_steps=2",
                            "sparsity.gradual.every_steps=2", "sparsity.gradual.span_steps=6"]), show_progress=False)
    tuned = json.loads((tmp_path / "gradual" / "training.json").read_text())
    assert tuned["gradual"]["last_target"] == 0.6
    model = load_model(tmp_path / "gradual")
    for name in record["final"]["layers"]:
        assert int(_zeros(model, name).sum()) == round(0.6 * model.get_parameter(name).numel()), name


def test_gradual_sparsity_with_hidden_matching_to_the_dense_model(trained, tmp_path):
    """The sparse fine-tune can match the dense model's hidden states (identity projections, the
    dense model run online) and still ends at its sparsity with the masks kept."""
    data, model_dir = trained
    record = prune_model_dir(model_dir, data, tmp_path / "h", config(
        method="unstructured", gradual=True, finetune_epochs=1, distill=True, unstructured={"sparsity": 0.6},
        distill_overrides=["loss.hidden_weight=1.0", "loss.hidden_init=identity"],
        finetune_overrides=[*PruneConfig().finetune_overrides, "train.warmup_steps=2",
                            "sparsity.gradual.every_steps=2", "sparsity.gradual.span_steps=4"]), show_progress=False)
    tuned = json.loads((tmp_path / "h" / "training.json").read_text())
    assert tuned["loss"]["hidden_weight"] == 1.0 and tuned["loss"]["hidden_init"] == "identity"
    assert tuned["gradual"]["last_target"] == 0.6
    model = load_model(tmp_path / "h")
    for name in record["final"]["layers"]:
        assert int(_zeros(model, name).sum()) == round(0.6 * model.get_parameter(name).numel()), name


def test_units_a_penalty_emptied_are_removed_exactly_by_threshold(trained, tmp_path):
    data, model_dir = trained
    emptied = tmp_path / "emptied"
    shutil.copytree(model_dir, emptied)
    model = load_model(model_dir)
    group = group_by_name(model)["rnns.0"]
    with torch.no_grad():  # what group lasso leaves: every weight of unit 3 exactly zero
        for s in group.slices:
            if s.tensor in dict(model.named_parameters()):
                model.get_parameter(s.tensor).index_fill_(s.dim, s.positions[3], 0.0)
    save_model(model, tmp_path / "weights")
    shutil.copyfile(tmp_path / "weights" / "model.safetensors", emptied / "model.safetensors")
    record = prune_model_dir(emptied, data, tmp_path / "p", config(remove_below=0.0), show_progress=False)
    widths = record["final"]["widths"]
    assert widths == {**record["original"]["widths"], "rnns.0": group.size - 1}
    x = torch.randn(2, 120, 40)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "p")(x, torch.tensor([120, 90]))[0],
                                   model.eval()(x, torch.tensor([120, 90]))[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra, message", [
    (["--sparsity", "0.8"], "--sparsity and --gradual need --method unstructured"),
    (["--method", "unstructured", "--gradual", "--finetune-epochs", "0"], "gradual"),
    (["--method", "unstructured", "--gradual", "--criterion", "gradient"], "criterion gradient is one-shot only"),
    (["--regularize", "l1"], "regularize.strength"),
    (["--reg-strength", "0.1"], "--reg-strength needs --regularize"),
    (["--method", "unstructured", "--criterion", "taylor"], "unstructured.criterion"),
    (["--method", "unstructured", "--target-macs", "0.5"], "--target-macs has no effect with --method unstructured"),
    (["--method", "unstructured", "remove_layers=1"], "method unstructured: ratios, remove_layers"),
    (["--method", "unstructured", "unstructured.storage=int4"], "unstructured.storage"),
])
def test_cli_bad_unstructured_settings_are_one_line_errors(trained, tmp_path, capsys, extra, message):
    data, model_dir = trained
    code = main(["prune", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "o"),
                 "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()
