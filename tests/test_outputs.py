"""Output folders at the command line: a writing verb never silently replaces a model, a run, an
input or another split, two writers never share a folder, and results say which data they describe."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from slimasr.cli import main
from slimasr.data.manifests import read_split
from slimasr.io import LOCK_NAME, output_lock
from slimasr.train import train_model
from tests.data.fixtures import write_audio
from tests.train.helpers import make_corpus, tiny_recipe

PRUNE_FAST = ["--criterion", "magnitude", "--target-params", "0.3", "--finetune-epochs", "0",
              "--round-to", "4", "--quiet", "calibration_cuts=4", "sensitivity_cuts=4"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny corpus, a training recipe file and a (briefly) trained model."""
    root = tmp_path_factory.mktemp("outputs")
    data = make_corpus(root / "data", n_train=8)
    recipe = root / "recipe.json"
    recipe.write_text(json.dumps(tiny_recipe(epochs=1)))
    train_model(recipe, data, root / "model", show_progress=False)
    return {"data": data, "recipe": recipe, "model": root / "model"}


def copy_model(made: dict[str, Path], to: Path) -> Path:
    """A copy of the model folder with an evaluation result and a file of the user's."""
    shutil.copytree(made["model"], to)
    (to / "metrics.json").write_text(json.dumps({"wer": 1.0}))
    (to / "notes.txt").write_text("mine")
    return to


def verb_args(verb: str, made: dict[str, Path], out: Path) -> list[str]:
    data, model = str(made["data"]), str(made["model"])
    return {
        "train": ["train", "--config", str(made["recipe"]), "--data", data, "--out", str(out)],
        "distill": ["distill", "--teacher", model, "--data", data, "--out", str(out),
                    "train.epochs=1", "train.num_threads=1"],
        "prune": ["prune", "--model", model, "--data", data, "--out", str(out), *PRUNE_FAST],
    }[verb]


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("verb", ["train", "distill", "prune"])
def test_a_folder_holding_a_model_is_refused_without_overwrite(made, tmp_path, capsys, verb):
    out = copy_model(made, tmp_path / "existing")
    weights = (out / "model.safetensors").read_bytes()
    assert main(verb_args(verb, made, out)) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: {out}: already holds a model or a training run (config.json, "
                           "model.safetensors, checkpoints")
    assert "pass --overwrite to replace it" in line
    assert (out / "model.safetensors").read_bytes() == weights
    assert json.loads((out / "metrics.json").read_text()) == {"wer": 1.0}


@pytest.mark.parametrize("verb", ["distill", "prune"])
def test_the_input_model_is_never_the_output_even_with_overwrite(made, tmp_path, capsys, verb):
    model = copy_model(made, tmp_path / "model")
    weights = (model / "model.safetensors").read_bytes()
    args = [a.replace(str(made["model"]), str(model)) for a in verb_args(verb, made, model)]
    assert main([*args, "--overwrite"]) == 1
    assert one_error_line(capsys).startswith(f"error: {model}: is the input {model}")
    assert (model / "model.safetensors").read_bytes() == weights
    expected = {p.name for p in made["model"].iterdir()} | {"metrics.json", "notes.txt"}
    assert {p.name for p in model.iterdir()} == expected


@pytest.mark.parametrize("verb", ["train", "prune"])
def test_overwrite_replaces_the_model_and_leaves_no_stale_results(made, tmp_path, capsys, verb):
    out = copy_model(made, tmp_path / "existing")
    (out / "checkpoints" / "last" / "old.txt").write_text("the old run's")
    log_rows = len((out / "train_log.csv").read_text().splitlines())
    assert main([*verb_args(verb, made, out), "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "metrics.json" not in names and "notes.txt" in names and LOCK_NAME not in names
    assert not (out / "checkpoints" / "last" / "old.txt").exists()  # a fresh run, not resumed
    if verb == "prune":
        assert "checkpoints" not in names and (out / "prune.json").is_file()
    else:
        assert len((out / "train_log.csv").read_text().splitlines()) == log_rows  # not appended


def test_train_resume_continues_its_own_run(made, tmp_path):
    out = tmp_path / "run"
    assert main(verb_args("train", made, out)) == 0
    steps = json.loads((out / "training.json").read_text())["steps"]
    assert main([*verb_args("train", made, out), "--resume", "train.epochs=2"]) == 0
    assert json.loads((out / "training.json").read_text())["steps"] > steps


@pytest.mark.parametrize("verb", ["train", "distill", "prune", "evaluate", "corpus synth", "corpus import"])
def test_a_second_writer_of_a_folder_gets_one_line_naming_the_first(made, tmp_path, capsys, verb):
    out = copy_model(made, tmp_path / "busy") if verb == "evaluate" else tmp_path / "busy"
    args = {
        "evaluate": ["evaluate", "--model", str(out), "--data", str(made["data"] / "dev_cuts.jsonl.gz")],
        "corpus synth": ["corpus", "synth", "--out", str(out), "--hours", "0.01"],
        "corpus import": ["corpus", "import", "jsonl", str(tmp_path / "x.jsonl"), "--out", str(out)],
    }.get(verb) or verb_args(verb, made, out)
    with output_lock(out, "train"):  # another run holds it (flock: any other open file)
        before = sorted(p.name for p in out.iterdir())
        assert main(args) == 1
        line = one_error_line(capsys)
        assert line.startswith(f"error: {out}: is being written by another process (slimasr train, "
                               f"pid {os.getpid()} on ")
        assert sorted(p.name for p in out.iterdir()) == before


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_json_works_on_a_read_only_model_folder(made, tmp_path, capsys, monkeypatch):
    model = shutil.copytree(made["model"], tmp_path / "ro")
    before = {p.name: p.stat().st_mtime_ns for p in model.iterdir()}
    model.chmod(0o555)
    access = os.access  # root may write anywhere: read-only as a user sees it

    def user_access(path, mode, *args, **kwargs):
        return False if Path(path) == model and mode & os.W_OK else access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", user_access)
    manifest = made["data"] / "dev_cuts.jsonl.gz"
    try:
        out = tmp_path / "eval.json"
        assert main(["evaluate", "--model", str(model), "--data", str(manifest), "--json", str(out),
                     "--quiet"]) == 0
        result = json.loads(out.read_text())
        assert result["data_path"] == str(manifest.resolve()) and result["num_utterances"] == 8
        assert {p.name: p.stat().st_mtime_ns for p in model.iterdir()} == before  # untouched
        capsys.readouterr()
        assert main(["evaluate", "--model", str(model), "--data", str(manifest), "--quiet"]) == 1
        assert one_error_line(capsys) == (f"error: {model}: is not writable (or is a model shipped with "
                                          "slimasr), so the metrics cannot go beside the model; pass "
                                          "--json FILE to write them elsewhere")
    finally:
        model.chmod(0o755)


def test_results_name_their_data_and_report_shows_it(made, tmp_path, capsys):
    a, b = copy_model(made, tmp_path / "a"), copy_model(made, tmp_path / "b")
    dev, train = made["data"] / "dev_cuts.jsonl.gz", made["data"] / "train_cuts.jsonl.gz"
    assert main(["evaluate", "--model", str(a), "--data", str(dev), "--quiet"]) == 0
    assert main(["evaluate", "--model", str(b), "--data", str(train), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "report")]) == 0
    rows = (tmp_path / "report.md").read_text().splitlines()
    assert rows[0].endswith("| data |")
    assert "| data/dev_cuts.jsonl.gz@" in rows[2] and "| data/train_cuts.jsonl.gz@" in rows[3]


# ---------------------------------------------------------------------------------------------
# corpus import jsonl: splits are added one by one


def test_jsonl_splits_are_added_to_one_corpus_and_replaced_one_at_a_time(tmp_path, capsys):
    for split, seed in (("train", 0), ("dev", 1)):
        write_audio(tmp_path / f"{split}.wav", 0.5, seed=seed)
        line = {"audio_filepath": f"{split}.wav", "duration": 0.5, "text": f"{split} words"}
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(line) + "\n")
    out = tmp_path / "corpus"

    def imp(split: str, *extra: str) -> int:
        return main(["corpus", "import", "jsonl", str(tmp_path / f"{split}.jsonl"), "--out", str(out),
                     "--split", split, "--quiet", *extra])

    assert imp("train") == 0 and imp("dev") == 0
    assert [c.supervisions[0].text for c in read_split(out, "train")] == ["train words"]
    assert [c.supervisions[0].text for c in read_split(out, "dev")] == ["dev words"]
    meta = json.loads((out / "corpus.json").read_text())
    assert set(meta["splits"]) == {"train", "dev"}
    assert meta["source"] == {s: str(tmp_path / f"{s}.jsonl") for s in ("train", "dev")}
    train_bytes = (out / "train_cuts.jsonl.gz").read_bytes()
    capsys.readouterr()
    assert imp("dev") == 1
    assert one_error_line(capsys) == (f"error: {out}: already holds split 'dev'; pass overwrite=True "
                                      "(--overwrite) to replace it (the corpus's other splits are kept)")
    (tmp_path / "dev.jsonl").write_text(json.dumps(
        {"audio_filepath": "dev.wav", "duration": 0.5, "text": "new dev"}) + "\n")
    assert imp("dev", "--overwrite") == 0
    assert [c.supervisions[0].text for c in read_split(out, "dev")] == ["new dev"]
    assert (out / "train_cuts.jsonl.gz").read_bytes() == train_bytes
    assert set(json.loads((out / "corpus.json").read_text())["splits"]) == {"train", "dev"}
