from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from slimasr import pipeline
from slimasr.errors import ConfigError, DataError
from slimasr.io import LOCK_NAME, output_lock


@dataclass
class EchoStage:
    name: str = "echo"  # output folder
    value: int = 1  # written into the folder


@pytest.fixture()
def echo_stage(monkeypatch):
    calls = []

    def run(stage, exp):
        calls.append(stage.spec.value)
        (exp / stage.spec.name).mkdir(exist_ok=True)
        (exp / stage.spec.name / "done").write_text(str(stage.spec.value))

    def done(stage, exp):
        return (exp / stage.spec.name / "done").is_file()

    monkeypatch.setitem(pipeline.STAGES, "echo", (EchoStage, run, done))
    return calls


def test_finished_stages_are_skipped_and_changed_ones_rerun(tmp_path, echo_stage):
    recipe = {"experiment": str(tmp_path / "exp"), "stages": [{"stage": "echo", "value": 1}]}
    assert pipeline.run_pipeline(recipe)["stages"] == {"echo:echo": "ran"}
    assert pipeline.run_pipeline(recipe)["stages"] == {"echo:echo": "skipped"}
    assert pipeline.run_pipeline(recipe, ["stages=[{stage: echo, value: 2}]"])["stages"] == {"echo:echo": "ran"}
    assert echo_stage == [1, 2]
    (tmp_path / "exp" / "echo" / "done").unlink()  # output lost: the stage runs again
    assert pipeline.run_pipeline(recipe)["stages"] == {"echo:echo": "ran"}
    state = json.loads((tmp_path / "exp" / "pipeline.json").read_text())
    assert state == {"echo:echo": {"name": "echo", "value": 1}}


def test_a_failed_stage_is_not_marked_done(tmp_path, monkeypatch):
    def boom(stage, exp):
        raise RuntimeError("stage failed")

    monkeypatch.setitem(pipeline.STAGES, "boom", (EchoStage, boom, lambda s, e: False))
    recipe = {"experiment": str(tmp_path / "exp"), "stages": [{"stage": "boom"}]}
    with pytest.raises(RuntimeError):
        pipeline.run_pipeline(recipe)
    assert json.loads((tmp_path / "exp" / "pipeline.json").read_text()) == {}


@pytest.mark.parametrize("recipe, message", [
    ({"stages": []}, "needs `experiment`"),
    ({"experiment": "x", "stages": [{"stage": "nope"}]}, r"stages\[0\]: `stage` must be one of"),
    ({"experiment": "x", "stages": [{"stage": "train", "epochs": 3}]}, r"stages\[0\]: unknown key\(s\) epochs"),
    ({"experiment": "x", "stages": [], "extra": 1}, r"unknown key\(s\) extra"),
])
def test_bad_recipes_are_rejected(recipe, message):
    with pytest.raises(ConfigError, match=message):
        pipeline.load_pipeline(recipe)


def test_bundled_recipes_parse():
    for name in ("demo", "demo_quick"):
        exp, stages = pipeline.load_pipeline(name)
        assert [s.kind for s in stages] == ["corpus", "train", "distill", "prune", "evaluate", "report"]


# ---------------------------------------------------------------------------------------------
# Stage names and folders: a stage replaces only what it created


@pytest.mark.parametrize("stage, message", [
    ({"stage": "prune", "name": ".", "model": "teacher"}, "must be a plain folder name"),
    ({"stage": "prune", "name": "..", "model": "teacher"}, "must be a plain folder name"),
    ({"stage": "prune", "name": "../victim", "model": "teacher"}, "must be a plain folder name"),
    ({"stage": "train", "name": "a/b"}, "must be a plain folder name"),
    ({"stage": "train", "name": "/abs"}, "must be a plain folder name"),
    ({"stage": "corpus", "name": ""}, "must be a plain folder name"),
    ({"stage": "train", "name": ".hidden"}, "must be a plain folder name"),
    ({"stage": "report", "name": "pipeline"}, "must be a plain folder name"),
    ({"stage": "train", "name": "pipeline.json"}, "must be a plain folder name"),
    ({"stage": "prune", "name": "teacher", "model": "teacher"}, "is also a model or corpus this stage reads"),
    ({"stage": "distill", "name": "t", "teacher": "t"}, "is also a model or corpus this stage reads"),
    ({"stage": "train", "name": "data"}, "is also a model or corpus this stage reads"),
])
def test_stage_names_are_plain_folders_that_the_stage_does_not_read(stage, message):
    with pytest.raises(ConfigError, match=rf"stages\[0\] \({stage['stage']}\): name .* {message}"):
        pipeline.load_pipeline({"experiment": "x", "stages": [stage]})


def test_a_stage_name_is_used_once():
    recipe = {"experiment": "x", "stages": [{"stage": "train", "name": "m"},
                                            {"stage": "prune", "name": "m", "model": "teacher"}]}
    with pytest.raises(ConfigError, match=r"stages\[1\] \(prune\): name 'm' is already used by stages\[0\]"):
        pipeline.load_pipeline(recipe)


def test_a_prune_stage_never_deletes_a_folder_it_did_not_create(tmp_path):
    exp = tmp_path / "exp"
    victim = exp / "mine"
    victim.mkdir(parents=True)
    (victim / "config.json").write_text("{}")
    (victim / "notes.txt").write_text("keep me")
    recipe = {"experiment": str(exp), "stages": [{"stage": "prune", "name": "mine", "model": "teacher"}]}
    with pytest.raises(DataError, match=rf"^{victim}: holds files made by something other than this "
                                        r"stage, which stage prune:mine will not replace"):
        pipeline.run_pipeline(recipe)
    assert sorted(p.name for p in victim.iterdir()) == ["config.json", "notes.txt"]
    assert (victim / "notes.txt").read_text() == "keep me"


def test_a_stage_reclaims_its_own_folder_and_no_other_stages(tmp_path):
    exp = tmp_path / "exp"
    prune = pipeline.Stage("prune", pipeline.PruneStage(name="p"), None)
    pipeline.claim_folder(prune, exp, finished=False)  # absent: claimed
    (exp / "p").mkdir()
    (exp / "p" / "steps").mkdir()  # then interrupted
    pipeline.claim_folder(prune, exp, finished=False)  # its own: may start over
    train = pipeline.Stage("train", pipeline.TrainStage(name="p"), None)
    with pytest.raises(DataError, match="holds files made by stage prune:p, which stage train:p will not"):
        pipeline.claim_folder(train, exp, finished=False)
    old = pipeline.Stage("train", pipeline.TrainStage(name="t"), None)
    (exp / "t").mkdir()
    (exp / "t" / "config.json").write_text("{}")
    pipeline.claim_folder(old, exp, finished=True)  # done here before the record existed: adopted
    assert json.loads((exp / pipeline.FOLDERS_FILE).read_text()) == {"p": "prune:p", "t": "train:t"}


def test_a_pipeline_locks_its_experiment(tmp_path, echo_stage):
    exp = tmp_path / "exp"
    recipe = {"experiment": str(exp), "stages": [{"stage": "echo"}]}
    with output_lock(exp, "run"):
        with pytest.raises(DataError, match=rf"^{exp}: is being written by another process \(slimasr run, "):
            pipeline.run_pipeline(recipe)
    assert echo_stage == []
    assert pipeline.run_pipeline(recipe)["stages"] == {"echo:echo": "ran"}
    assert not (exp / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------------
# The evaluate stage reuses only results of its own manifest and settings


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """An experiment with a corpus and a (briefly) trained model, as earlier stages leave them."""
    from slimasr.train import train_model
    from tests.train.helpers import make_corpus, tiny_recipe

    exp = tmp_path_factory.mktemp("eval") / "exp"
    make_corpus(exp / "data", n_train=8)
    train_model(tiny_recipe(epochs=1), exp / "data", exp / "teacher", show_progress=False)
    return exp


def test_the_evaluate_stage_never_reuses_results_of_other_data(evaluated):
    from slimasr.evaluate.run import evaluate_model

    exp = evaluated
    dev, train = exp / "data" / "dev_cuts.jsonl.gz", exp / "data" / "train_cuts.jsonl.gz"
    recipe = {"experiment": str(exp), "stages": [
        {"stage": "evaluate", "models": ["teacher"], "split": "dev", "intents": False},
        {"stage": "report", "models": ["teacher"]}]}
    key = "evaluate:teacher"

    def measured_on() -> str:
        return json.loads((exp / "teacher" / "metrics.json").read_text())["data_path"]

    assert pipeline.run_pipeline(recipe)["stages"][key] == "ran"
    assert pipeline.run_pipeline(recipe)["stages"][key] == "skipped"
    evaluate_model(exp / "teacher", train, show_progress=False)  # by hand, on other data
    assert pipeline.run_pipeline(recipe)["stages"][key] == "ran"  # not taken for the dev results
    assert measured_on() == str(dev.resolve())
    row = json.loads((exp / "report.json").read_text())[0]
    assert row["data_path"] == str(dev.resolve()) and row["data"].startswith("data/dev_cuts.jsonl.gz@")
    table = (exp / "report.md").read_text().splitlines()
    assert table[0].endswith("| data |") and table[2].endswith(f"| {row['data']} |")
    pipeline.run_pipeline(recipe, ["stages=[{stage: evaluate, models: [teacher], split: dev, "
                                   "intents: false, max_utterances: 2}]"])
    assert json.loads((exp / "teacher" / "metrics.json").read_text())["num_utterances"] == 2


def test_a_model_that_learned_nothing_is_marked_and_the_run_exits_3(tmp_path, capsys, caplog):
    """A pipeline whose teacher learned nothing used to print its table and exit 0."""
    import logging

    from slimasr.cli import main
    from tests.train.helpers import make_corpus, tiny_recipe

    data = make_corpus(tmp_path / "data", n_train=6)
    (tmp_path / "tiny.yaml").write_text(json.dumps(tiny_recipe(epochs=1, max_steps=2)))
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text(json.dumps({"experiment": str(tmp_path / "exp"), "stages": [
        {"stage": "corpus", "name": "data", "path": str(data)},
        {"stage": "train", "name": "teacher", "recipe": "tiny.yaml"},
        {"stage": "evaluate", "models": ["teacher"], "split": "dev", "intents": False},
        {"stage": "report", "models": ["teacher"]},
    ]}))
    for _ in range(2):  # ran now, then skipped: the mark comes from the model's training.json
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert main(["run", str(recipe)]) == pipeline.LEARNED_NOTHING_EXIT == 3
        warnings = [r.getMessage() for r in caplog.records if "learned nothing" in r.getMessage()]
        assert warnings == ["warning: teacher learned nothing (at its best, every dev hypothesis "
                            "was empty or dev WER >= 100%): its results measure an untrained model; "
                            "train longer (train.epochs)"]
        assert (tmp_path / "exp" / "report.md").is_file()  # the report is written first
    assert "exit_code: 3" in capsys.readouterr().out
    result = pipeline.run_pipeline(recipe)
    assert result["learned_nothing"] == ["teacher"] and result["exit_code"] == 3
