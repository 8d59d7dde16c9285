from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from slimasr import pipeline
from slimasr.errors import ConfigError


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
