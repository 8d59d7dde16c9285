from __future__ import annotations

import subprocess
import sys

import pytest

from slimasr.cli import build_parser, main


def test_version_and_help_run_as_a_module():
    out = subprocess.run([sys.executable, "-m", "slimasr", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for verb in ["corpus", "transcribe", "export"]:
        assert verb in out.stdout


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
    (["transcribe", "a.wav", "--stream", "--model", "M", "--chunk-ms", "80", "b.wav"],
     {"model": "M", "audio": ["a.wav", "b.wav"], "stream": True, "chunk_ms": 80.0, "mic": False}),
    (["report", "A", "--out", "R", "B"], {"models": ["A", "B"], "out": "R"}),
    (["train", "train.epochs=5", "--config", "C", "--data", "D", "train.lr=0.1", "--out", "O"],
     {"config": "C", "data": "D", "out": "O", "overrides": ["train.epochs=5", "train.lr=0.1"]}),
    (["distill", "loss.kd_weight=0.5", "--teacher", "T", "--data", "D", "--out", "O", "seed=1",
      "--student", "S"],
     {"teacher": ["T"], "student": "S", "overrides": ["loss.kd_weight=0.5", "seed=1"]}),
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


def test_lm_without_words_names_the_data_file(tmp_path, capsys):
    """``slimasr lm`` on transcripts with no words said so without naming any file."""
    from lhotse import Recording, SupervisionSegment

    from slimasr.data.manifests import finish_corpus, write_split
    from tests.data.fixtures import write_audio

    data = tmp_path / "data"
    rec = Recording.from_file(write_audio(data / "a.wav"), recording_id="a")
    write_split(data, "train", [rec], [SupervisionSegment("a", "a", 0.0, rec.duration, text="?!")])
    finish_corpus(data, {"name": "blank", "splits": {"train": {}}})
    assert main(["lm", "--data", str(data), "--out", str(tmp_path / "lm.arpa")]) == 1
    assert capsys.readouterr().err == (f"error: {data / 'train_cuts.jsonl.gz'}: no words to build a "
                                       "language model from (empty transcripts)\n")
    assert not (tmp_path / "lm.arpa").exists()
