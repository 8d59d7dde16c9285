"""Shared by the benchmark scripts: a model directory's test WER, greedy and beam + LM, and a
markdown table of models' WER / CER on named sets."""

from __future__ import annotations

from pathlib import Path

from slimasr.config import from_dict
from slimasr.evaluate.run import EvalConfig, evaluate_model


def test_wer(model_dir: Path, data: Path, lm: Path | None) -> dict:
    """WER on ``data``'s test split (dev when it has none): greedy, and beam + the ARPA ``lm``;
    with the model's MACs per second of audio and params."""
    test = data / "test_cuts.jsonl.gz"
    if not test.is_file():
        test = data / "dev_cuts.jsonl.gz"
    greedy = evaluate_model(model_dir, test, from_dict(EvalConfig, {}), show_progress=False)
    out = {"wer_greedy": greedy["wer"], "macs": greedy["macs_per_second_audio"], "params": greedy["params"]}
    if lm is not None:
        beam = evaluate_model(model_dir, test, from_dict(EvalConfig, {"decode": {"method": "beam",
                                                                                 "lm_path": str(lm)}}),
                              show_progress=False)
        out["wer_lm"] = beam["wer"]
    return out


def name_pairs(specs: list[str]) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` (repeated ``--model`` / ``--set`` options) as a dict."""
    return dict(spec.split("=", 1) for spec in specs)


def rates_table(rows: list[dict]) -> list[str]:
    """Markdown lines: one row per ``{"model": name, "sets": {set: {"wer", "cer"}}}`` record, one
    column per set any record has ("–" where a model was not scored on it)."""
    sets = list(dict.fromkeys(s for r in rows for s in r["sets"]))
    lines = ["| model | " + " | ".join(f"{s} WER / CER" for s in sets) + " |",
             "|---" * (len(sets) + 1) + "|"]
    for r in rows:
        cells = [f"{r['sets'][s]['wer']:.2f}% / {r['sets'][s]['cer']:.2f}%" if s in r["sets"] else "–"
                 for s in sets]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return lines
