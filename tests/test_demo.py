"""`slimasr demo --quick`: every stage of the pipeline on a tiny corpus, end to end (smoke test)."""

from __future__ import annotations

import json
from pathlib import Path

from slimasr.cli import main
from slimasr.pipeline import run_pipeline

DESIGN_KEYS = {"wer", "cer", "sentence_accuracy", "num_utterances", "params", "nonzero_params",
               "macs_per_second_audio", "latency_ms_p50", "latency_ms_p90", "rtf", "model_bytes"}


def test_quick_demo_runs_every_stage_and_resumes(tmp_path):
    exp = tmp_path / "exp"
    # Its models train for two steps and learn nothing: it says so and exits 3 (it used to exit
    # 0 as if they had learned), after every stage, report included, has run.
    assert main(["demo", "--quick", "--experiment", str(exp)]) == 3
    metrics = json.loads((exp / "teacher" / "metrics.json").read_text())
    assert DESIGN_KEYS <= set(metrics)
    assert metrics["num_utterances"] == 8 and metrics["params"] > 0 and metrics["rtf"] > 0
    report = (exp / "report.md").read_text()
    assert report.startswith("| model | WER %")
    assert all(f"| {name} |" in report for name in ("teacher", "student", "pruned"))
    assert (exp / "report.png").stat().st_size > 0
    # The student and the pruned model are smaller than the teacher and measured the same way.
    for name in ("student", "pruned"):
        small = json.loads((exp / name / "metrics.json").read_text())
        assert DESIGN_KEYS <= set(small) and small["params"] < metrics["params"]
        assert small["macs_per_second_audio"] < metrics["macs_per_second_audio"]
    pruned = json.loads((exp / "pruned" / "prune.json").read_text())
    assert pruned["final"]["macs_ratio"] <= 0.5 and pruned["final"]["learned_nothing"] is True
    # A second run finds every stage complete (the report is always rewritten).
    result = run_pipeline("demo_quick", experiment=exp)
    assert result["learned_nothing"] == ["teacher", "student", "pruned"] and result["exit_code"] == 3
    again = result["stages"]
    stages = ["corpus:data", "train:teacher", "distill:student", "prune:pruned",
              "evaluate:teacher+student+pruned"]
    assert again == {**{k: "skipped" for k in stages}, "report:report": "ran"}
    state = json.loads((exp / "pipeline.json").read_text())
    assert set(state) == {*stages, "report:report"}


def test_evaluate_accepts_a_nemo_jsonl_manifest(tmp_path):
    """`slimasr evaluate` on a NeMo-style manifest with relative paths (DESIGN.md contract)."""
    from lhotse import CutSet

    exp = tmp_path / "exp"
    assert run_pipeline("demo_quick", experiment=exp)["stages"]["train:teacher"] == "ran"
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
    assert result["manifest"] == str(manifest)
