from __future__ import annotations

import subprocess
import sys

import pytest

from slimasr.cli import PLANNED_VERBS, build_parser, main


def test_version_and_help_run_as_a_module():
    out = subprocess.run([sys.executable, "-m", "slimasr", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for verb in ["corpus", *PLANNED_VERBS]:
        assert verb in out.stdout


def test_what_is_not_built_yet_answers_not_yet_available(tmp_path, capsys):
    assert not PLANNED_VERBS  # every verb of the design is built; streaming is not yet
    wav = tmp_path / "a.wav"
    assert main(["transcribe", "--model", str(tmp_path), "--stream", str(wav)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "slimasr transcribe --stream: not yet available in this version"


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


# Options and positional arguments in any order: each verb with positionals, options between them.
MIXED_ORDER = [
    (["run", "R.yaml", "--experiment", "D", "experiment=E"],
     {"recipe": "R.yaml", "experiment": "D", "overrides": ["experiment=E"]}),
    (["demo", "experiment=E", "--quick", "experiment=F", "--experiment", "D"],
     {"quick": True, "experiment": "D", "overrides": ["experiment=E", "experiment=F"]}),
    (["transcribe", "--model", "M", "a.wav", "--lm", "X", "b.wav"],
     {"model": "M", "audio": ["a.wav", "b.wav"], "lm": "X"}),
    (["report", "A", "--out", "R", "B"], {"models": ["A", "B"], "out": "R"}),
    (["train", "train.epochs=5", "--config", "C", "--data", "D", "train.lr=0.1", "--out", "O"],
     {"config": "C", "data": "D", "out": "O", "overrides": ["train.epochs=5", "train.lr=0.1"]}),
    (["distill", "loss.kd_weight=0.5", "--teacher", "T", "--data", "D", "--out", "O", "seed=1",
      "--student", "S"],
     {"teacher": "T", "student": "S", "overrides": ["loss.kd_weight=0.5", "seed=1"]}),
    (["prune", "--model", "M", "steps=2", "--data", "D", "seed=3", "--out", "O", "--target-macs", "0.5"],
     {"model": "M", "target_macs": 0.5, "overrides": ["steps=2", "seed=3"]}),
    (["evaluate", "worst=3", "--model", "M", "max_duration=20", "--data", "D", "--beam"],
     {"model": "M", "beam": True, "overrides": ["worst=3", "max_duration=20"]}),
    (["corpus", "synth", "seed=2", "--out", "O", "clean_share=0.5", "--quiet"],
     {"out": "O", "quiet": True, "overrides": ["seed=2", "clean_share=0.5"]}),
    (["corpus", "import", "--out", "O", "jsonl", "--split", "dev", "m.jsonl"],
     {"format": "jsonl", "src": "m.jsonl", "out": "O", "split": "dev"}),
]


@pytest.mark.parametrize("argv, expected", MIXED_ORDER, ids=[" ".join(a[:2]) for a, _ in MIXED_ORDER])
def test_options_and_positionals_in_any_order(argv, expected):
    args = build_parser().parse_args(argv)
    assert {key: getattr(args, key) for key in expected} == expected


def test_unknown_option_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", "R.yaml", "--no-such-option", "x"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
