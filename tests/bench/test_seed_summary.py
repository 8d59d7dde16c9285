"""bench/seed_summary.py: the means, spreads and paired differences of hand-set runs, read from row
files and from a table's points."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).parents[2] / "bench" / "seed_summary.py"
_spec = importlib.util.spec_from_file_location("bench_seed_summary", _SCRIPT)
seed_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed_summary)


def _row(greedy: float, lm: float, criterion: str = "learned", target: float = 0.78) -> dict:
    return {"criterion": criterion, "target": target, "macs_ratio": 0.22, "finetune_epochs": 22,
            "wer_greedy": greedy, "wer_lm": lm}


def test_means_and_paired_differences(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a.row.json").write_text(json.dumps(_row(50.0, 30.0)))
    (tmp_path / "b.row.json").write_text(json.dumps(_row(48.0, 29.0)))
    (tmp_path / "s1.row.json").write_text(json.dumps(_row(49.0, 28.5, "sensitivity")))
    table = {"points": [_row(40.0, 20.0, "sensitivity", 0.5), _row(47.0, 29.5, "sensitivity")]}
    (tmp_path / "learned.json").write_text(json.dumps(table))
    out = tmp_path / "summary.json"
    seed_summary.main(["--root", str(tmp_path), "--ref", "sens", "--out", str(out),
                       "--group", "sens=learned.json#sensitivity_0.78,s1.row.json",
                       "--group", "learned=a.row.json,b.row.json"])
    written = json.loads(out.read_text())
    assert written["runs"] == {"sens": ["learned.json#sensitivity_0.78", "s1.row.json"],
                               "learned": ["a.row.json", "b.row.json"]}
    groups = written["groups"]
    assert groups["sens"]["wer_greedy"]["values"] == [47.0, 49.0]  # the 0.78 point, not the 0.5 one
    assert groups["learned"]["wer_greedy"]["mean"] == pytest.approx(49.0)
    assert groups["learned"]["wer_lm"]["mean"] == pytest.approx(29.5)
    assert groups["learned"]["wer_lm"]["minus_ref"] == pytest.approx(29.5 - 29.0)
    assert groups["learned"]["wer_greedy"]["paired_minus_ref"] == pytest.approx([3.0, -1.0])
    assert (groups["learned"]["wer_greedy"]["min"], groups["learned"]["wer_greedy"]["max"]) == (48.0, 50.0)
    assert groups["learned"]["wer_greedy"]["sd"] == pytest.approx(2 ** 0.5)
    assert groups["learned"]["wer_greedy"]["paired_se"] == pytest.approx(2.0)  # sd of (3, -1) / sqrt(2)
    printed = capsys.readouterr().out
    assert "| learned | 2 | 0.220 | 50.00 / 48.00 | 49.00 | 30.00 / 29.00 | 29.50 | +1.00 ± 2.00 (+3.00 / -1.00) |" in printed
    assert out.with_suffix(".md").read_text() == printed
    assert out.with_suffix(".png").stat().st_size > 0


def test_unequal_runs_give_no_pairs(tmp_path: Path) -> None:
    summary = seed_summary.summarize({"ref": [_row(49.0, 29.0)], "x": [_row(50.0, 30.0), _row(48.0, 28.0)]}, "ref")
    assert summary["x"]["wer_lm"]["minus_ref"] == pytest.approx(0.0)
    assert "paired_minus_ref" not in summary["x"]["wer_lm"]


def test_bad_specs_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "learned.json").write_text(json.dumps({"points": [_row(47.0, 29.5)]}))
    with pytest.raises(SystemExit, match="no point 'taylor_0.78'"):
        seed_summary.main(["--root", str(tmp_path), "--group", "t=learned.json#taylor_0.78"])
    with pytest.raises(SystemExit, match="missing.row.json: no such file"):
        seed_summary.main(["--root", str(tmp_path), "--group", "m=missing.row.json"])
    with pytest.raises(SystemExit, match="no point 'learned_x'"):
        seed_summary.main(["--root", str(tmp_path), "--group", "t=learned.json#learned_x"])
    with pytest.raises(SystemExit, match="given twice"):
        seed_summary.main(["--root", str(tmp_path), "--group", "a=learned.json#learned_0.78",
                           "--group", "a=learned.json#learned_0.78"])
    with pytest.raises(SystemExit, match="expected NAME=RUN"):
        seed_summary.main(["--group", "nameonly"])
    with pytest.raises(SystemExit, match="no such group"):
        seed_summary.main(["--root", str(tmp_path), "--ref", "zz", "--group", "a=learned.json#learned_0.78"])
