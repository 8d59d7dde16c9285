"""Resume: a run SIGKILLed mid-training and resumed ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slimasr.errors import ConfigError
from slimasr.data import cache
from slimasr.train import train_model
from tests.train.helpers import kill_when_paused, make_corpus, tiny_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = tiny_recipe(epochs=25, lr=1e-2, decay_steps=400, checkpoint_every_steps=5, log_every_steps=1)
# Checkpoints go out every 5 steps and at epoch ends (~7 steps): the 5th is at step 15 in epoch 2;
# the run is killed as the 6th is about to be written, with steps past 15 done and logged.
KILL_AT_CHECKPOINT = 6
WAIT_S = 120  # generous bound on the subprocess reaching that point


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("resume")
    data = make_corpus(root / "data")
    metrics = train_model(RECIPE, data, root / "reference", show_progress=False)
    return data, root / "reference", metrics


def _log_rows(model_dir: Path) -> list[dict]:
    with (model_dir / "train_log.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


def _without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _kill_at_checkpoint(recipe: Path, data: Path, out: Path, n: int) -> None:
    marker = out.parent / "paused"
    cmd = [sys.executable, "-m", "tests.train.helpers", str(recipe), str(data), str(out),
           str(out.parent / "result.json"), "--pause-at-checkpoint", str(n), str(marker)]
    kill_when_paused(cmd, marker, WAIT_S, REPO)


def test_sigkilled_run_resumes_to_bitwise_the_same_model(reference, tmp_path, monkeypatch) -> None:
    data, ref_dir, ref = reference
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(RECIPE))
    out = tmp_path / "run"
    _kill_at_checkpoint(recipe, data, out, KILL_AT_CHECKPOINT)
    assert not (out / "training.json").exists() and not (out / "model.safetensors").exists()
    state = json.loads((out / "checkpoints/last/state.json").read_text())["loop"]
    assert (state["step"], state["epoch"]) == (15, 2) and state["sampler"] is not None
    assert int(_log_rows(out)[-1]["step"]) > 15  # killed with logged steps not checkpointed

    def no_precompute(*args, **kwargs):
        raise AssertionError("features were cached by the first run: nothing to compute")

    monkeypatch.setattr(cache, "precompute_features", no_precompute)
    resumed = train_model(recipe, data, out, resume=True, show_progress=False)
    assert resumed["weights_sha256"] == ref["weights_sha256"]
    saved, expected = (load_file(d / "model.safetensors") for d in (out, ref_dir))
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)  # the best weights, bitwise
    for key in ("dev_wer", "dev_cer", "dev_loss", "last_dev_loss", "steps", "best_step"):
        assert resumed[key] == ref[key], key
    assert _without_time(resumed["history"]) == _without_time(ref["history"])
    assert _log_rows(out) == _log_rows(ref_dir)  # same steps, losses, lr (schedule), grad norms
    assert ref["dev_wer"] < 5.0  # and the comparison is of a model that learned something


def test_resuming_a_finished_run_only_rewrites_its_results(reference) -> None:
    data, ref_dir, ref = reference
    again = train_model(RECIPE, data, ref_dir, resume=True, show_progress=False)
    assert again["steps"] == ref["steps"] and again["weights_sha256"] == ref["weights_sha256"]
    assert again["history"] == ref["history"]


def test_resume_refuses_a_different_model(reference) -> None:
    data, ref_dir, _ = reference
    with pytest.raises(ConfigError, match="model"):
        train_model(RECIPE, data, ref_dir, resume=True,
                    overrides=["model.config.rnn_hidden_sizes=[16]"], show_progress=False)


def test_resume_without_a_checkpoint_starts_afresh(reference, tmp_path) -> None:
    data, _, _ = reference
    metrics = train_model(RECIPE, data, tmp_path / "new", resume=True, show_progress=False,
                          overrides=["train.max_steps=2"])
    assert metrics["steps"] == 2 and metrics["stop_reason"] == "max_steps"
    assert metrics["history"][-1]["partial_epoch"] is True
