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
    assert main(["demo", "--quick", "--experiment", str(exp)]) == 0
    metrics = json.loads((exp / "teacher" / "metrics.json").read_text())
    assert DESIGN_KEYS <= set(metrics)
    assert metrics["num_utterances"] == 8 and metrics["params"] > 0 and metrics["rtf"] > 0
    report = (exp / "report.md").read_text()
    assert report.startswith("| model | WER %") and "| teacher |" in report
    assert (exp / "report.png").stat().st_size > 0
    # A second run finds every stage complete (the report is always rewritten).
    again = run_pipeline("demo_quick", experiment=exp)["stages"]
    assert again == {"corpus:data": "skipped", "train:teacher": "skipped",
                     "evaluate:teacher": "skipped", "report:report": "ran"}
    state = json.loads((exp / "pipeline.json").read_text())
    assert set(state) == {"corpus:data", "train:teacher", "evaluate:teacher", "report:report"}


def test_evaluate_accepts_a_nemo_jsonl_manifest(tmp_path):
    """`slimasr evaluate` on a NeMo-style manifest with relative paths (DESIGN.md contract)."""
    from lhotse import CutSet

    exp = tmp_path / "exp"
    assert run_pipeline("demo_quick", experiment=exp)["stages"]["train:teacher"] == "ran"
    cuts = CutSet.from_jsonl_lazy(exp / "data" / "test_cuts.jsonl.gz")
    lines = []
    for cut in cuts:
        source = cut.recording.sources[0].source
        rel = str(Path(source).relative_to(exp)) if Path(source).is_absolute() else source
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
