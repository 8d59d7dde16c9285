"""`slimasr demo --quick`: every stage of the pipeline on a tiny corpus, end to end (smoke test)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from slimasr.cli import main
from slimasr.pipeline import run_pipeline
from slimasr.pipeline.deploy import SHERPA_MISSING
from slimasr.runtime.timing import cpu_name

DESIGN_KEYS = {"wer", "cer", "sentence_accuracy", "num_utterances", "params", "nonzero_params",
               "macs_per_second_audio", "latency_ms_p50", "latency_ms_p90", "rtf", "model_bytes"}
EVALUATED = ["teacher", "student", "student_250ep", "pruned", "student_onnx/model.int8.onnx",
             "student_250ep_onnx/model.int8.onnx", "pruned_onnx/model.int8.onnx"]
STAGES = ["corpus:data", "model:teacher", "distill:student", "prune:pruned", "model:student_250ep",
          "export:student_onnx", "export:pruned_onnx", "export:student_250ep_onnx", "lm:lm_3gram.arpa",
          *(f"evaluate:{m}" for m in EVALUATED), f"latency:{'+'.join(EVALUATED)}",
          "sherpa:student_sherpa", "sherpa:student_250ep_sherpa", "stream:student_stream",
          "stream:student_250ep_stream"]
ROWS = ["teacher", "student", "student_250ep", "pruned", "student_onnx (int8)", "student_250ep_onnx (int8)",
        "pruned_onnx (int8)", "student_sherpa", "student_250ep_sherpa", "student_stream",
        "student_250ep_stream"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """The quick demo's experiment. Its student trains one epoch and learns nothing: the demo says
    so and exits 3, after every stage, report included, has run."""
    exp = tmp_path_factory.mktemp("demo") / "exp"
    assert main(["demo", "--quick", "--experiment", str(exp)]) == 3
    return exp


def test_quick_demo_runs_every_stage_from_the_shipped_teacher(quick):
    exp = quick
    metrics = json.loads((exp / "teacher" / "metrics.json").read_text())
    assert DESIGN_KEYS <= set(metrics)
    assert metrics["num_utterances"] == 8 and metrics["params"] == 7_416_445 and metrics["decode"] == "beam"
    greedy = json.loads((exp / "teacher" / "greedy.json").read_text())
    assert greedy["decode"] == "greedy" and greedy["num_utterances"] == 8
    # The student and the pruned model are smaller than the teacher and measured the same way.
    for name in ("student", "pruned"):
        small = json.loads((exp / name / "metrics.json").read_text())
        assert DESIGN_KEYS <= set(small) and small["params"] < metrics["params"]
        assert small["macs_per_second_audio"] < metrics["macs_per_second_audio"]
    for name in ("student", "student_250ep"):
        student = json.loads((exp / name / "config.json").read_text())["model"]
        assert student["bidirectional"] is False and student["causal"] is True
    assert json.loads((exp / "student_250ep" / "metrics.json").read_text())["params"] == 1_631_093
    pruned = json.loads((exp / "pruned" / "prune.json").read_text())
    assert pruned["final"]["macs_ratio"] <= 0.5
    for bundle in ("student_onnx", "student_250ep_onnx", "pruned_onnx"):
        info = json.loads((exp / bundle / "bundle.json").read_text())
        assert info["files"]["model_int8"] == "model.int8.onnx"
    assert json.loads((exp / "student_onnx" / "bundle.json").read_text())["streaming"]["int8_file"] == \
        "model.streaming.int8.onnx"


def test_quick_demo_report_has_bundles_sherpa_and_streaming(quick):
    exp = quick
    rows = {row["model"]: row for row in json.loads((exp / "report.json").read_text())}
    assert list(rows) == ROWS
    report = (exp / "report.md").read_text()
    assert report.startswith("| model | WER % | greedy WER % |")
    assert all(f"| {name} |" in report for name in ROWS)
    for name in ("student_onnx (int8)", "student_250ep_onnx (int8)", "pruned_onnx (int8)"):
        assert DESIGN_KEYS <= set(rows[name]) and rows[name]["wer_greedy"] is not None
    # the copies of shipped models say which they are
    assert rows["teacher"]["note"] == "shipped model smarthome-crnn"
    assert rows["student_250ep"]["note"].startswith("shipped model smarthome-crnn-causal: the demo's student")
    assert "- student_250ep: shipped model smarthome-crnn-causal: " in report
    # scored beside training, then timed alone by the latency stage: every model has its latency
    for name in ROWS[:7]:
        assert 0 < rows[name]["latency_ms_p50"] <= rows[name]["latency_ms_p90"] and rows[name]["rtf"] > 0
        assert rows[name]["latency_cpu"] == cpu_name()
    assert f"- latency timed on {cpu_name()}" in report
    for name in ("student_sherpa", "student_250ep_sherpa"):
        sherpa = rows[name]
        if importlib.util.find_spec("sherpa_onnx") is None:
            assert sherpa["note"] == SHERPA_MISSING and "wer" not in sherpa
        else:
            assert sherpa["num_utterances"] == 8 and 0 <= sherpa["wer"] == sherpa["wer_greedy"]
            assert sherpa["note"] == "sherpa-onnx offline CTC, greedy, model.int8.onnx"
    for name in ("student_stream", "student_250ep_stream"):
        stream = rows[name]
        assert stream["num_utterances"] == 3 and stream["chunk_ms"] == 160.0
        assert stream["rtf"] > 0 and 0 < stream["final_ms_p50"] <= stream["final_ms_max"]
        assert [t["id"] for t in stream["transcripts"]] == ["test_000000", "test_000001", "test_000002"]
        assert f"- {name}: {stream['note']}" in report
    assert (exp / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_demo_resumes_with_every_stage_complete(quick):
    result = run_pipeline("demo_quick", experiment=quick)
    assert result["learned_nothing"] == ["student"] and result["exit_code"] == 3
    assert result["stages"] == {**{k: "skipped" for k in STAGES}, "report:report": "ran"}
    state = json.loads((quick / "pipeline.json").read_text())
    assert set(state) == {*STAGES, "report:report"}


def test_evaluate_accepts_a_nemo_jsonl_manifest(quick, tmp_path):
    """`slimasr evaluate` on a NeMo-style manifest with relative paths (DESIGN.md contract)."""
    from lhotse import CutSet

    exp = quick
    cuts = CutSet.from_jsonl_lazy(exp / "data" / "test_cuts.jsonl.gz")
    lines = []
    for cut in cuts:
        source = cut.recording.sources[0].source
        audio = Path(source) if Path(source).is_absolute() else exp / "data" / source  # synth: relative
        rel = str(audio.relative_to(exp))
        lines.append(json.dumps({"audio_filepath": rel, "duration": cut.duration,
                                 "text": cut.supervisions[0].text}))
    manifest = exp / "test_nemo.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(exp / "teacher"), "--data", str(manifest), "--json", str(out),
                 "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert DESIGN_KEYS <= set(result) and result["num_utterances"] == len(lines)
    # the pipeline decoded its greedy results from the network outputs of its beam search
    assert result["wer"] == json.loads((exp / "teacher" / "greedy.json").read_text())["wer"]
    assert result["manifest"] == str(manifest)


def test_train_teacher_trains_it_in_an_experiment_of_its_own(monkeypatch):
    from slimasr import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *a, **k: calls.append((a, k)) or {"stages": {}})
    assert main(["demo", "--train-teacher"]) == 0
    assert main(["demo", "--train-teacher", "--quick", "--experiment", "E"]) == 0
    assert calls == [(("demo", []), {"experiment": "exp/demo_trained_teacher", "train_models": True}),
                     (("demo_quick", []), {"experiment": "E", "train_models": True})]
