"""``slimasr prune --resume``: a run killed during learned-mask training continues to the same
result; completed steps are skipped; a different config, a finished run and a plain rerun of an
unfinished one are refused on one line."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from slimasr.cli import main
from slimasr.models import load_model
from tests.train.helpers import kill_when_paused, make_corpus, tiny_recipe

REPO = Path(__file__).resolve().parents[2]
LEARNED = ["--criterion", "learned", "--target-macs", "0.5", "--finetune-epochs", "0", "--round-to", "1",
           "calibration_cuts=8", "num_threads=1", "learned.steps=20", "learned.warmup_steps=10",
           "learned.checkpoint_every=5"]
MAGNITUDE = ["--criterion", "magnitude", "--target-macs", "0.5", "--round-to", "2", "--finetune-epochs", "0",
             "calibration_cuts=8", "sensitivity_cuts=8", "num_threads=1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tone corpus and a briefly trained tiny CRNN."""
    from slimasr.train import train_model

    root = tmp_path_factory.mktemp("resume")
    data = make_corpus(root / "data", n_train=12)
    train_model(tiny_recipe(epochs=1), data, root / "teacher", show_progress=False)
    return data, root / "teacher"


def prune_args(teacher: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    data, model = teacher
    return ["prune", "--model", str(model), "--data", str(data), "--out", str(out), "--quiet", *extra]


def _killed_prune(argv: list[str], marker: str, pause_at: int) -> None:
    """The child process of the kill test: ``slimasr prune`` pausing (to be killed) right after
    its ``pause_at``-th mask-training checkpoint is written."""
    from slimasr.prune import learned

    original, calls = learned.MaskState.save, [0]

    def save(self, folder):
        original(self, folder)
        calls[0] += 1
        if calls[0] == pause_at:
            Path(marker).write_text("paused")
            time.sleep(600)

    learned.MaskState.save = save
    main(argv)


def test_learned_prune_sigkilled_in_mask_training_resumes_to_the_same_result(teacher, tmp_path):
    out, marker = tmp_path / "pruned", tmp_path / "paused"
    argv = prune_args(teacher, out, *LEARNED)
    code = f"from tests.prune.test_resume import _killed_prune; _killed_prune({argv!r}, {str(marker)!r}, 2)"
    kill_when_paused([sys.executable, "-c", code], marker, 120, REPO)
    state = json.loads((out / "steps" / "1" / "masks" / "state.json").read_text())
    assert state["step"] == 10 and (out / "steps" / "run.json").is_file()
    assert not (out / "prune.json").exists()
    assert main(argv + ["--resume"]) == 0
    reference = tmp_path / "reference"
    assert main(prune_args(teacher, reference, *LEARNED)) == 0
    resumed, uninterrupted = (json.loads((d / "prune.json").read_text()) for d in (out, reference))
    assert resumed["final"]["widths"] == uninterrupted["final"]["widths"]
    assert resumed["steps"][0]["learned"]["curves"] == uninterrupted["steps"][0]["learned"]["curves"]
    a, b = load_model(out).state_dict(), load_model(reference).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _killed_finetune(argv: list[str], marker: str) -> None:
    """The child process of the fine-tuning kill test: ``slimasr prune`` pausing (to be killed)
    right after its fine-tuning wrote its first checkpoint."""
    from slimasr.train import loop

    original = loop.save_checkpoint

    def save(*args, **kwargs):
        original(*args, **kwargs)
        Path(marker).write_text("paused")
        time.sleep(600)

    loop.save_checkpoint = save
    main(argv)


def test_prune_sigkilled_in_fine_tuning_resumes_it_without_pruning_again(teacher, tmp_path, monkeypatch):
    from slimasr.distill import distill_model
    from slimasr.prune import run

    out, marker = tmp_path / "pruned", tmp_path / "paused"
    extra = [*MAGNITUDE[:-5], "--finetune-epochs", "2", *MAGNITUDE[-3:]]
    argv = prune_args(teacher, out, *extra)
    code = ("from tests.prune.test_resume import _killed_finetune; "
            f"_killed_finetune({argv!r}, {str(marker)!r})")
    kill_when_paused([sys.executable, "-c", code], marker, 120, REPO)
    step = out / "steps" / "1"
    assert (step / "finetuned" / "checkpoints" / "last").is_dir() and not (step / "row.json").exists()
    pruned_at = (step / "pruned" / "model.safetensors").stat().st_mtime_ns
    resumes = []
    monkeypatch.setattr(run, "distill_model",
                        lambda *a, **kw: resumes.append(kw["resume"]) or distill_model(*a, **kw))
    assert main(argv + ["--resume"]) == 0
    assert resumes == [True]  # from the checkpoint
    assert (step / "pruned" / "model.safetensors").stat().st_mtime_ns == pruned_at  # not pruned again
    reference = tmp_path / "reference"
    assert main(prune_args(teacher, reference, *extra)) == 0
    resumed, uninterrupted = (json.loads((d / "prune.json").read_text()) for d in (out, reference))
    assert resumed["final"]["widths"] == uninterrupted["final"]["widths"]
    assert resumed["steps"][0]["dev_loss_finetuned"] == uninterrupted["steps"][0]["dev_loss_finetuned"]
    a, b = load_model(out).state_dict(), load_model(reference).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_completed_step_is_skipped_and_an_interrupted_one_reruns(teacher, tmp_path):
    out = tmp_path / "pruned"
    argv = prune_args(teacher, out, *MAGNITUDE[:-5], "--finetune-epochs", "1", "--steps", "2",
                      *MAGNITUDE[-3:])
    assert main(argv) == 0
    reference = json.loads((out / "prune.json").read_text())
    first = out / "steps" / "1"
    assert json.loads((first / "row.json").read_text())["row"] == reference["steps"][0]
    stamps = {p: p.stat().st_mtime_ns for p in (first / "pruned" / "model.safetensors",
                                                first / "finetuned" / "model.safetensors", first / "row.json")}
    # As if killed during step 2's pruning: nothing of step 2 and nothing published.
    shutil.rmtree(out / "steps" / "2")
    for name in ("prune.json", "model.safetensors", "config.json"):
        (out / name).unlink()
    assert main(argv + ["--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # step 1 was not redone
    resumed = json.loads((out / "prune.json").read_text())
    assert resumed["steps"][0] == reference["steps"][0]
    assert resumed["steps"][1]["widths"] == reference["steps"][1]["widths"]
    assert resumed["final"]["widths"] == reference["final"]["widths"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_resume_refuses_another_config_a_finished_run_and_a_plain_rerun(teacher, tmp_path, capsys):
    out = tmp_path / "pruned"
    argv = prune_args(teacher, out, *MAGNITUDE)
    assert main(argv + ["--resume"]) == 0  # nothing to resume: starts afresh, as train --resume does
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 1  # finished
    err = _one_line_error(capsys)
    assert str(out) in err and "finished" in err and "--overwrite" in err
    (out / "prune.json").unlink()  # unfinished now (prune.json is written last)
    assert main(argv) == 1
    err = _one_line_error(capsys)
    assert str(out) in err and "pass --resume to continue it" in err
    other = prune_args(teacher, out, *MAGNITUDE[:3], "0.6", *MAGNITUDE[4:])
    assert main(other + ["--resume"]) == 1
    err = _one_line_error(capsys)
    assert str(out) in err and "config.target" in err and "config.criterion" not in err
    assert main(prune_args(teacher, out, "--method", "unstructured", "--sparsity", "0.5", "--resume")) == 1
    assert "unstructured prune cannot be resumed" in _one_line_error(capsys)
    assert main(argv + ["--resume"]) == 0  # the same settings: continues and publishes
    assert (out / "prune.json").is_file()
