from __future__ import annotations

import subprocess
import sys

import pytest

from slimasr.cli import PLANNED_VERBS, main


def test_version_and_help_run_as_a_module():
    out = subprocess.run([sys.executable, "-m", "slimasr", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for verb in ["corpus", *PLANNED_VERBS]:
        assert verb in out.stdout


@pytest.mark.parametrize("verb", sorted(PLANNED_VERBS))
def test_planned_verbs_answer_not_yet_available(verb, capsys):
    assert main([verb]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"slimasr {verb}: not yet available in this version"


def test_bad_input_is_one_line_error_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert main(["corpus", "import", "jsonl", str(missing), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(missing) in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_unknown_synth_override_is_rejected_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["corpus", "synth", "--out", str(out), "--quiet", "no_such_key=1"]) == 1
    assert "no_such_key" in capsys.readouterr().err
    assert not out.exists()
