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


DEMO_KINDS = ["corpus", "model", "distill", "prune", "model", "export", "export", "export", "lm",
              *["evaluate"] * 7, "latency", "sherpa", "sherpa", "stream", "stream",
              "report"]  # evaluate: its LM, one scoring stage per model, their latency


def test_bundled_recipes_parse():
    for name in ("demo", "demo_quick"):
        exp, stages, *_ = pipeline.load_pipeline(name)
        assert [s.kind for s in stages] == DEMO_KINDS
        assert {s.threads for s in stages} == {1}
        assert stages[1].spec.shipped == "smarthome-crnn"
        assert stages[4].spec.shipped == "smarthome-crnn-causal"  # the student at 250 epochs
        distill = stages[2].spec.overrides
        # the demo cuts its causal student out of the shipped teacher and trains it with KD delayed
        # by 6 frames, its first 10 frames blank, the first word left to CTC; the quick demo keeps
        # a tiny scratch student on CTC (its test checks the learned-nothing stop)
        causal = ({"student.init=teacher", "student.causal=true", "loss.kd_weight=0.5", "loss.kd_delay=6",
                   "loss.blank_start=10", "loss.kd_skip_first_word=true"}
                  if name == "demo" else {"student.init=scratch", "model.config.bidirectional=false",
                                          "model.config.causal=true", "loss.kd_weight=0.0"})
        assert causal <= set(distill)


def test_demo_student_fits_a_quarter_of_the_teachers_macs():
    """Issue 18's budget for the streaming student: <= 0.25x the teacher's MACs, causal."""
    from slimasr.distill.student import student_from_teacher
    from slimasr.evaluate.cost import macs_per_second_audio
    from slimasr.models.io import load_model
    from slimasr.shipped import pretrained

    _, stages, *_ = pipeline.load_pipeline("demo")
    cut = dict(o.split("=", 1) for o in stages[2].spec.overrides if o.startswith("student."))
    teacher = load_model(pretrained("smarthome-crnn"))
    student = student_from_teacher(teacher, int(cut["student.layers"]), float(cut["student.width"]), 8,
                                   cut["student.causal"] == "true")
    assert student.config.bidirectional is False and student.config.causal is True
    assert macs_per_second_audio(student) <= 0.25 * macs_per_second_audio(teacher)


def test_demo_recipes_budget_epochs_never_minutes():
    for name in ("demo", "demo_quick"):
        text = pipeline.find_recipe(name).read_text()
        assert "max_minutes" not in text
    _, stages, *_ = pipeline.load_pipeline("demo")
    assert "train.epochs=10" in stages[2].spec.overrides and stages[3].spec.config["finetune_epochs"] == 3


def test_train_models_turns_a_model_stage_into_its_train_stage():
    _, stages, *_ = pipeline.load_pipeline("demo", train_models=True)
    teacher = stages[1]
    assert teacher.kind == "train" and teacher.key == "train:teacher" and teacher.threads == 1
    assert teacher.spec == pipeline.TrainStage(
        name="teacher", recipe="train_crnn_teacher.yaml", data="data",
        overrides=["model.config.subsampling_strides=[[2,2],[2,2]]", "train.epochs=36"])
    assert [s.kind for s in stages][2:] == DEMO_KINDS[2:]  # the shipped student stays a copy
    assert stages[4].spec.shipped == "smarthome-crnn-causal"


# ---------------------------------------------------------------------------------------------
# Threads: one recipe key, applied to every stage


def test_every_stage_runs_with_the_recipe_threads(tmp_path, monkeypatch):
    import torch

    seen = []
    monkeypatch.setitem(pipeline.STAGES, "echo", (EchoStage, lambda stage, exp: seen.append(
        torch.get_num_threads()), lambda s, e: False))
    before = torch.get_num_threads()
    stages = [{"stage": "echo", "name": "a"}, {"stage": "echo", "name": "b"}]
    pipeline.run_pipeline({"experiment": str(tmp_path / "exp"), "stages": stages})
    pipeline.run_pipeline({"experiment": str(tmp_path / "exp2"), "threads": 2, "stages": stages})
    pipeline.run_pipeline({"experiment": str(tmp_path / "exp3"), "threads": None, "stages": stages})
    assert seen == [1, 1, 2, 2, before, before]
    assert torch.get_num_threads() == before  # restored after each stage


@pytest.mark.parametrize("threads", [0, -1, 1.5, "two", True])
def test_bad_threads_are_rejected(threads):
    with pytest.raises(ConfigError, match=rf"threads must be a whole number >= 1 or null, got {threads!r}"):
        pipeline.load_pipeline({"experiment": "x", "threads": threads, "stages": []})


@pytest.mark.parametrize("jobs", [0, -1, 1.5, "two", True])
def test_bad_jobs_are_rejected(jobs):
    with pytest.raises(ConfigError, match=rf"jobs must be a whole number >= 1, got {jobs!r}"):
        pipeline.load_pipeline({"experiment": "x", "jobs": jobs, "stages": []})


# ---------------------------------------------------------------------------------------------
# Jobs: stages that share no folder run side by side, each in a process of its own

# Stages a spawned process can import (test modules are not importable there): each
# writes its pid into its folder; "meet" waits until its partner has started (so it passes only
# when both run at once); "fail" raises a user's error; "sleep" runs until it is stopped.
SIDE_STAGES = """
import os, time
from dataclasses import dataclass
from slimasr.errors import DataError

@dataclass
class SideStage:
    name: str = "a"  # output folder
    partner: str = ""  # meet: the stage it waits for (not a folder it reads)
    model: str = ""  # folders it reads
    data: str = ""

def _start(stage, exp):
    out = exp / stage.spec.name
    out.mkdir(exist_ok=True)
    (out / "pid").write_text(str(os.getpid()))
    return out

def _wait_for_partner(stage, exp):
    partner = exp / stage.spec.partner / "pid"
    for _ in range(1200):
        if partner.is_file():
            break
        time.sleep(0.05)
    return partner.is_file()

def meet(stage, exp):
    out = _start(stage, exp)
    (out / "met").write_text(str(_wait_for_partner(stage, exp)))

def fail(stage, exp):
    _start(stage, exp)
    _wait_for_partner(stage, exp)  # fails once its partner runs
    raise DataError(exp / "input.txt", "line 3 is not a number")

def crash(stage, exp):
    _start(stage, exp)
    _wait_for_partner(stage, exp)
    raise ValueError("not a user's mistake")

def sleep(stage, exp):
    _start(stage, exp)
    time.sleep(600)
"""


@pytest.fixture()
def side_stages(tmp_path, monkeypatch):
    import importlib

    (tmp_path / "side_stages_helper.py").write_text(SIDE_STAGES)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned processes get this sys.path too
    module = importlib.import_module("side_stages_helper")
    kinds = ("meet", "fail", "crash", "sleep")
    monkeypatch.setattr(pipeline, "FOLDER_STAGES", (*pipeline.FOLDER_STAGES, *kinds))
    for kind in kinds:
        monkeypatch.setitem(pipeline.STAGES, kind, (module.SideStage, getattr(module, kind),
                                                    lambda s, e: (e / s.spec.name / "pid").is_file()))
    return tmp_path / "exp"


def test_independent_stages_run_side_by_side_and_a_reader_waits_for_both(side_stages):
    import os

    exp = side_stages
    stages = [{"stage": "meet", "name": "a", "partner": "b"}, {"stage": "meet", "name": "b", "partner": "a"},
              {"stage": "meet", "name": "c", "partner": "a", "model": "a", "data": "b"}]  # after both
    result = pipeline.run_pipeline({"experiment": str(exp), "jobs": 2, "stages": stages})
    assert result["stages"] == {"meet:a": "ran", "meet:b": "ran", "meet:c": "ran"}
    assert [(exp / n / "met").read_text() for n in "abc"] == ["True"] * 3
    pids = {n: int((exp / n / "pid").read_text()) for n in "abc"}
    assert len({pids["a"], pids["b"], os.getpid()}) == 3  # a and b: processes of their own
    assert pids["c"] == os.getpid()  # ready alone: it runs here, as with jobs: 1
    assert sorted(p.name for p in (exp / "logs").iterdir()) == ["meet-a.log", "meet-b.log"]
    state = json.loads((exp / "pipeline.json").read_text())
    assert set(state) == {"meet:a", "meet:b", "meet:c"}
    times = json.loads((exp / "times.json").read_text())  # where the minutes went
    assert {k: v["own_process"] for k, v in times.items()} == {"meet:a": True, "meet:b": True, "meet:c": False}
    assert all(v["seconds"] >= 0 for v in times.values())
    again = pipeline.run_pipeline({"experiment": str(exp), "jobs": 2, "stages": stages})
    assert set(again["stages"].values()) == {"skipped"}


def test_a_failing_stage_stops_the_others_and_its_error_reaches_the_caller(side_stages):
    import os

    exp = side_stages
    stages = [{"stage": "sleep", "name": "a"}, {"stage": "fail", "name": "b", "partner": "a"}]
    with pytest.raises(DataError, match=r"input.txt: line 3 is not a number$"):
        pipeline.run_pipeline({"experiment": str(exp), "jobs": 2, "stages": stages})
    with pytest.raises(ProcessLookupError):  # the sleeper, running when b failed, was stopped
        os.kill(int((exp / "a" / "pid").read_text()), 0)
    assert json.loads((exp / "pipeline.json").read_text()) == {}  # neither is marked done
    assert "DataError" in (exp / "logs" / "fail-b.log").read_text()  # the traceback, for the curious


def test_a_crash_in_a_stage_names_the_stage_and_its_log(side_stages):
    exp = side_stages
    stages = [{"stage": "sleep", "name": "a"}, {"stage": "crash", "name": "b", "partner": "a"}]
    log = exp / "logs" / "crash-b.log"
    with pytest.raises(RuntimeError, match=rf"^stage crash:b \(its output: {log}\): "
                                           r"ValueError: not a user's mistake$"):
        pipeline.run_pipeline({"experiment": str(exp), "jobs": 2, "stages": stages})
    assert "Traceback" in log.read_text()


def test_the_demo_trains_its_student_and_pruned_model_side_by_side():
    from slimasr.pipeline.jobs import depends, ready, runs_alone

    for name in ("demo", "demo_quick"):
        _, stages, jobs, _ = pipeline.load_pipeline(name)
        assert jobs == 2
        names = [s.key for s in stages]
        beside = {(names[i], names[j]) for j in range(len(stages)) for i in range(j)
                  if not (depends(stages[j], stages[i]) or runs_alone(stages[i]) or runs_alone(stages[j]))}
        assert ("distill:student", "prune:pruned") in beside
        assert ("distill:student", "export:student_onnx") not in beside  # the bundle of the student
        assert ("prune:pruned", "export:pruned_onnx") not in beside
        # the teacher and the pruned model are scored while the student trains; not the student
        assert {("distill:student", "evaluate:teacher"), ("distill:student", "evaluate:pruned"),
                ("distill:student", "evaluate:pruned_onnx/model.int8.onnx")} <= beside
        # so is the shipped 250-epoch student, copied, exported and scored on the other core
        assert {("distill:student", "model:student_250ep"), ("distill:student", "export:student_250ep_onnx"),
                ("distill:student", "evaluate:student_250ep")} <= beside
        assert ("distill:student", "evaluate:student") not in beside
        assert ("export:student_onnx", "evaluate:student_onnx/model.int8.onnx") not in beside
        # what times something or prints live runs alone: latency, stream (RTF), report
        assert not any(a.split(":")[0] in ("latency", "stream", "report") for pair in beside for a in pair)
        models = ["teacher", "student", "student_250ep", "pruned", "student_onnx/model.int8.onnx",
                  "student_250ep_onnx/model.int8.onnx", "pruned_onnx/model.int8.onnx"]
        assert names[names.index("evaluate:teacher"):][:8] == [f"evaluate:{m}" for m in models] + [
            "latency:" + "+".join(models)]
        # while the student trains, with the pruned model exported and the LM built: the teacher
        # and the pruned model (both graphs) may be scored, nothing of the student's
        done = {names.index(k) for k in ("corpus:data", "model:teacher", "prune:pruned", "export:pruned_onnx",
                                         "lm:lm_3gram.arpa", "model:student_250ep",
                                         "export:student_250ep_onnx")}
        running = {names.index("distill:student")}
        open_ = set(range(len(stages))) - done - running
        alone = [runs_alone(s) for s in stages]
        startable = [names[i] for i in sorted(open_) if ready(stages, alone, i, open_, running)]
        assert startable == ["evaluate:teacher", "evaluate:student_250ep", "evaluate:pruned",
                             "evaluate:student_250ep_onnx/model.int8.onnx",
                             "evaluate:pruned_onnx/model.int8.onnx"]
        assert depends(stages[names.index("evaluate:teacher")], stages[names.index("lm:lm_3gram.arpa")])


# ---------------------------------------------------------------------------------------------
# The model stage: a shipped model, copied into the experiment, its corpus compared


def test_the_model_stage_copies_the_shipped_model_and_warns_on_another_corpus(tmp_path, caplog):
    import logging

    from slimasr.shipped import pretrained
    from tests.train.helpers import make_corpus

    exp = tmp_path / "exp"
    data = make_corpus(exp / "data", n_train=2)
    recipe = {"experiment": str(exp), "stages": [{"stage": "model", "name": "teacher"}]}
    with caplog.at_level(logging.WARNING):
        assert pipeline.run_pipeline(recipe)["stages"] == {"model:teacher": "ran"}
    shipped = pretrained("smarthome-crnn")
    assert sorted(p.name for p in (exp / "teacher").iterdir()) == sorted(p.name for p in shipped.iterdir())
    assert (exp / "teacher" / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"warning: {data}: split(s) dev, test, test_unseen_synth, train differ from the "
                        "corpus the shipped model was trained and tested on (other package versions "
                        "or settings?); its test WER there may not be comparable, and its test "
                        "utterances may have been heard in training"]
    assert pipeline.run_pipeline(recipe)["stages"] == {"model:teacher": "skipped"}


def test_the_corpus_check_is_quiet_when_the_fingerprint_matches(tmp_path, monkeypatch, caplog):
    import logging

    from slimasr import shipped
    from slimasr.data.fingerprint import corpus_fingerprint
    from tests.train.helpers import make_corpus

    data = make_corpus(tmp_path / "data", n_train=2)
    recorded = corpus_fingerprint(data)
    monkeypatch.setattr(shipped, "provenance", lambda name: {"corpus": {"fingerprint": recorded}})
    with caplog.at_level(logging.WARNING):
        assert pipeline.warn_corpus_mismatch(data, "smarthome-crnn") is None
    assert caplog.records == []


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


def test_a_model_that_learned_nothing_stops_the_run_with_one_line_and_exit_3(tmp_path, capsys, caplog):
    """A pipeline whose teacher learned nothing used to print its table of 100% rows and exit 0:
    it stops after that stage (ran now, or found complete on the next run), saying what to change;
    ``on_learned_nothing=warn`` runs every stage and warns at the end."""
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
    for _ in range(2):  # ran now, then found complete: the mark comes from the model's training.json
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert main(["run", str(recipe)]) == pipeline.LEARNED_NOTHING_EXIT == 3
        lines = [r.getMessage() for r in caplog.records if "learned nothing" in r.getMessage()]
        assert lines == ["stopped: teacher learned nothing (at its best, every dev hypothesis was empty "
                         "or dev WER >= 100%), so the stages after it did not run and no report was "
                         "written; give it more epochs: train.epochs and run again"]
        assert not (tmp_path / "exp" / "report.md").exists()
        assert not (tmp_path / "exp" / "teacher" / "metrics.json").exists()  # not evaluated
    out = capsys.readouterr().out
    assert "exit_code: 3" in out and "stopped_after: train:teacher" in out
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["run", str(recipe), "on_learned_nothing=warn"]) == 3
    warnings = [r.getMessage() for r in caplog.records if "learned nothing" in r.getMessage()]
    assert warnings == ["warning: teacher learned nothing (at its best, every dev hypothesis "
                        "was empty or dev WER >= 100%): its results measure an untrained model; "
                        "train longer (train.epochs)"]
    assert (tmp_path / "exp" / "report.md").is_file()  # every stage ran, the report included
    result = pipeline.run_pipeline(recipe, ["on_learned_nothing=warn"])
    assert result["learned_nothing"] == ["teacher"] and result["exit_code"] == 3
    with pytest.raises(ConfigError, match="on_learned_nothing must be one of stop, warn"):
        pipeline.load_pipeline(recipe, ["on_learned_nothing=ignore"])


def test_the_evaluate_stage_with_an_lm_keeps_greedy_results_beside_beam_search(evaluated):
    exp = evaluated
    recipe = {"experiment": str(exp), "stages": [
        {"stage": "evaluate", "models": ["teacher"], "split": "dev", "intents": False, "lm_order": 2},
        {"stage": "report", "models": ["teacher"]}]}
    assert pipeline.run_pipeline(recipe)["stages"]["evaluate:teacher"] == "ran"
    beam = json.loads((exp / "teacher" / "metrics.json").read_text())
    greedy = json.loads((exp / "teacher" / "greedy.json").read_text())
    assert (beam["decode"], greedy["decode"]) == ("beam", "greedy")
    assert greedy["data_sha256"] == beam["data_sha256"] and greedy["model_sha256"] == beam["model_sha256"]
    row = json.loads((exp / "report.json").read_text())[0]
    assert (row["wer"], row["wer_greedy"], row["cer_greedy"]) == (beam["wer"], greedy["wer"], greedy["cer"])
    assert pipeline.run_pipeline(recipe)["stages"]["evaluate:teacher"] == "skipped"
    (exp / "teacher" / "greedy.json").unlink()  # greedy results lost: the stage runs again
    assert pipeline.run_pipeline(recipe)["stages"]["evaluate:teacher"] == "ran"
    assert json.loads((exp / "teacher" / "metrics.json").read_text())["decode"] == "beam"


# ---------------------------------------------------------------------------------------------
# The deployment stages: export, sherpa-onnx, streaming


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A tiny trained causal CRNN (``EXP/model``, dev WER 0) exported by the export stage, then
    decoded by the sherpa stage and streamed by the stream stage."""
    from tests.streaming.helpers import train_causal

    exp = tmp_path_factory.mktemp("deploy")
    train_causal(exp)
    recipe = {"experiment": str(exp), "stages": [
        {"stage": "export", "name": "bundle", "model": "model", "config": {"max_wer_utterances": 3}},
        {"stage": "sherpa", "name": "sherpa", "bundle": "bundle", "split": "dev", "max_utterances": 4},
        {"stage": "stream", "name": "stream", "bundle": "bundle", "split": "dev", "utterances": 2},
        {"stage": "report", "models": ["sherpa", "stream"]}]}
    return exp, recipe, pipeline.run_pipeline(recipe)


def test_the_export_stage_writes_an_int8_bundle_gated_on_the_corpus_dev_split(deployed):
    exp, _, result = deployed
    assert result["stages"]["export:bundle"] == "ran"
    info = json.loads((exp / "bundle" / "bundle.json").read_text())
    assert info["files"]["model_int8"] == "model.int8.onnx"
    assert info["streaming"]["int8_file"] == "model.streaming.int8.onnx"
    assert json.loads((exp / pipeline.FOLDERS_FILE).read_text()) == {
        "bundle": "export:bundle", "sherpa": "sherpa:sherpa", "stream": "stream:stream"}


def test_the_stream_stage_streams_the_first_utterances_and_times_them(deployed):
    from slimasr.data.manifests import read_split
    from slimasr.data.manifests import transcript

    exp, _, _ = deployed
    metrics = json.loads((exp / "stream" / "metrics.json").read_text())
    cuts = list(read_split(exp / "data", "dev"))[:2]
    assert metrics["transcripts"] == [{"id": c.id, "reference": transcript(c), "text": transcript(c)}
                                      for c in cuts]  # the model transcribes its dev split exactly
    assert metrics["wer"] == 0.0 and metrics["num_utterances"] == 2 and metrics["chunk_ms"] == 160.0
    assert metrics["rtf"] > 0 and 0 < metrics["final_ms_p50"] <= metrics["final_ms_max"]
    assert metrics["model_file"] == "model.streaming.int8.onnx"
    assert metrics["note"] == "streaming, 160 ms chunks, model.streaming.int8.onnx"


def test_the_sherpa_stage_decodes_the_bundle_or_says_why_not(deployed):
    exp, _, _ = deployed
    metrics = json.loads((exp / "sherpa" / "metrics.json").read_text())
    assert metrics["model_file"] == "model.int8.onnx"
    pytest.importorskip("sherpa_onnx")
    assert (metrics["wer"], metrics["num_utterances"], metrics["runtime"]) == (0.0, 4, "sherpa-onnx")


def test_without_sherpa_onnx_the_sherpa_stage_writes_a_note(deployed, monkeypatch, caplog):
    import logging
    import sys

    from slimasr.pipeline.deploy import SHERPA_MISSING

    exp, recipe, _ = deployed
    monkeypatch.setitem(sys.modules, "sherpa_onnx", None)  # import fails
    stage = {"stage": "sherpa", "name": "no_sherpa", "bundle": "bundle", "split": "dev"}
    recipe = {**recipe, "stages": [stage]}
    with caplog.at_level(logging.WARNING):
        pipeline.run_pipeline(recipe)
    metrics = json.loads((exp / "no_sherpa" / "metrics.json").read_text())
    assert metrics["note"] == SHERPA_MISSING and "wer" not in metrics
    assert [r.getMessage() for r in caplog.records] == [f"warning: no_sherpa: {SHERPA_MISSING}"]


def test_deployment_stages_rerun_when_the_bundle_changes(deployed):
    from slimasr.runtime.bundle import INT8_FILE

    exp, recipe, _ = deployed
    again = pipeline.run_pipeline(recipe)["stages"]
    assert again == {"export:bundle": "skipped", "sherpa:sherpa": "skipped", "stream:stream": "skipped",
                     "report:report": "ran"}
    rows = json.loads((exp / "report.json").read_text())
    assert [r["model"] for r in rows] == ["sherpa", "stream"]
    assert rows[1]["final_ms_p50"] > 0 and rows[1]["wer_greedy"] == 0.0
    stamp = json.loads((exp / "sherpa" / "metrics.json").read_text())
    stamp["model_sha256"] = "0" * 64  # as if measured on a graph exported before
    (exp / "sherpa" / "metrics.json").write_text(json.dumps(stamp))
    assert (exp / "bundle" / INT8_FILE).is_file()
    assert pipeline.run_pipeline(recipe)["stages"]["sherpa:sherpa"] == "ran"
