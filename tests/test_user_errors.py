"""Bad user input through the command line: one ``error: FILE: problem`` line and exit 1, never a
traceback, and nothing written. One test per class of mistake (issue 14):

- a model whose config.json claims sizes its weights do not have (checked before any allocation);
- a config number out of range or not finite, and option values a verb cannot use;
- an OSError while writing: read-only or full disk, a name too long, an output that is a folder;
- a manifest whose audio files moved.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from slimasr.cli import main
from slimasr.errors import DataError, run_script
from slimasr.models import io as model_io
from tests.train.helpers import SR, make_corpus, synth, tiny_recipe


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tone corpus (6 train, 2 dev cuts), a model trained on it for one step, its recipe."""
    from slimasr.train import train_model

    root = tmp_path_factory.mktemp("user_errors")
    data = make_corpus(root / "data", n_train=6, n_dev=2)
    recipe = root / "recipe.json"
    recipe.write_text(json.dumps(tiny_recipe(epochs=1, max_steps=1)))
    train_model(recipe, data, root / "model", show_progress=False)
    wav = root / "a.wav"
    sf.write(wav, synth("on", np.random.default_rng(0)), SR)
    return {"root": root, "data": data, "recipe": recipe, "model": root / "model", "wav": wav}


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The one line a failed command printed on stderr (it must be exactly one, no traceback)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    return err


# ---- a model's config.json against its weights ----------------------------------------------
@pytest.mark.parametrize("change", [{"vocab_size": 10**9}, {"rnn_hidden_sizes": [10**9]},
                                    {"rnn_hidden_sizes": [20000]}])
def test_absurd_model_sizes_are_refused_before_anything_is_allocated(
        setup, change, tmp_path, monkeypatch, capsys) -> None:
    broken = shutil.copytree(setup["model"], tmp_path / "model")
    config = json.loads((broken / "config.json").read_text())
    if "vocab_size" in change:
        config.update(change)
    else:
        config["model"].update(change)
    (broken / "config.json").write_text(json.dumps(config))
    real_build = model_io.build_model

    def build_on_meta_only(*args, **kwargs):
        assert torch.empty(0).device.type == "meta", "a model was built for real before the check"
        return real_build(*args, **kwargs)

    monkeypatch.setattr(model_io, "build_model", build_on_meta_only)
    assert main(["transcribe", "--model", str(broken), str(setup["wav"])]) == 1
    err = error_line(capsys)
    assert err.startswith((f"error: {broken / 'model.safetensors'}: weights do not match config.json",
                           f"error: {broken / 'config.json'}: sizes that cannot be built"))


# ---- config numbers and option values -------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("features.sampling_rate=0", "features.sampling_rate must be a finite number > 0, got 0"),
    ("features.sampling_rate=100", "features.sampling_rate must be >= 1000 Hz, got 100"),
    ("train.lr=nan", "train.lr: expected a finite number, got nan"),
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("train.max_duration=-5", "train.max_duration must be a finite number > 0, got -5.0"),
])
def test_config_numbers_out_of_range_are_refused_before_training(setup, override, message, tmp_path,
                                                                 capsys) -> None:
    out = tmp_path / "out"
    argv = ["train", "--config", str(setup["recipe"]), "--data", str(setup["data"]),
            "--out", str(out), override]
    assert main(argv) == 1
    assert error_line(capsys) == f"error: {setup['recipe']}: {message}"
    assert not out.exists()


@pytest.mark.parametrize("verb, override, message", [
    ("evaluate", "max_duration=0", "evaluate.max_duration must be a finite number > 0, got 0.0"),
    ("evaluate", "latency_seconds=0", "evaluate.latency_seconds must be >= 0.1, got 0.0"),
    ("evaluate", "latency_threads=0", "evaluate.latency_threads must be a finite number > 0, got 0"),
    ("evaluate", "decode.beam.beam_width=0",
     "decode.beam.beam_width must be a finite number > 0, got 0"),
    ("prune", "calibration_cuts=0", "prune.calibration_cuts must be a finite number > 0, got 0"),
    ("prune", "sensitivity_ratios=[0.5, 1.5]", "prune.sensitivity_ratios must be in (0, 1), got [0.5, 1.5]"),
    ("prune", "target.fraction=.nan", "target.fraction: expected a finite number, got nan"),
])
def test_verb_settings_out_of_range_are_refused_before_any_work(setup, verb, override, message,
                                                                tmp_path, capsys) -> None:
    data = str(setup["data"] / "dev_cuts.jsonl.gz") if verb == "evaluate" else str(setup["data"])
    argv = [verb, "--model", str(setup["model"]), "--data", data, "--quiet", override]
    if verb == "prune":
        argv += ["--out", str(tmp_path / "pruned")]
    assert main(argv) == 1
    assert error_line(capsys) == f"error: {message}"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("order, message", [
    (0, "n-gram order must be >= 2 and <= 6 (KenLM's limit), got 0"),
    (-2, "n-gram order must be >= 2 and <= 6 (KenLM's limit), got -2"),
    (50, "n-gram order must be >= 2 and <= 6 (KenLM's limit), got 50"),
])
def test_lm_order_out_of_range_is_one_line(setup, order, message, tmp_path, capsys) -> None:
    out = tmp_path / "lm.arpa"
    assert main(["lm", "--data", str(setup["data"]), "--out", str(out), "--order", str(order)]) == 1
    assert error_line(capsys) == f"error: {message}"
    assert not out.exists()


def test_prune_target_the_planner_cannot_reach_is_one_line(setup, tmp_path, capsys) -> None:
    argv = ["prune", "--model", str(setup["model"]), "--data", str(setup["data"]),
            "--out", str(tmp_path / "pruned"), "--target-macs", "0.99", "--quiet",
            "finetune_epochs=0", "calibration_cuts=2"]
    assert main(argv) == 1
    err = error_line(capsys)
    assert err.startswith("error: prune target: cannot remove 99.0% of the macs within the constraints")
    assert "lower the target" in err


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object of metrics, got list"),
    ('{"wer": "low"}', "'wer' must be a number, got 'low'"),
    ('{"wer": 5.0, "params": 12.5}', "'params' must be a whole number, got 12.5"),
])
def test_malformed_metrics_json_given_to_report_is_one_line(content, problem, tmp_path, capsys) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "metrics.json").write_text(content)
    assert main(["report", str(tmp_path / "m"), "--out", str(tmp_path / "report")]) == 1
    assert error_line(capsys).startswith(f"error: {tmp_path / 'm' / 'metrics.json'}: {problem}")
    assert not list(tmp_path.glob("report*"))


@pytest.mark.parametrize("name, content", [("binary.jsonl", bytes(range(256)) * 4),
                                           ("broken.jsonl.gz", b"\x1f\x8b\x08 not gzip inside")])
def test_binary_file_given_to_corpus_import_jsonl_is_one_line(name, content, tmp_path, capsys) -> None:
    manifest = tmp_path / name
    manifest.write_bytes(content)
    out = tmp_path / "out"
    assert main(["corpus", "import", "jsonl", str(manifest), "--out", str(out), "--quiet"]) == 1
    assert error_line(capsys).startswith(f"error: {manifest}: cannot be read as a UTF-8 text manifest")
    assert not out.exists()


# ---- OSError while writing ------------------------------------------------------------------
def evaluated_model(root: Path, metrics: dict) -> Path:
    model = root / "m"
    model.mkdir(parents=True, exist_ok=True)
    (model / "metrics.json").write_text(json.dumps(metrics))
    return model


METRICS = {"wer": 10.0, "params": 1000, "macs_per_second_audio": 2e6, "latency_ms_p50": 1.0}


@pytest.mark.parametrize("code, replace_fails", [(errno.EROFS, True), (errno.ENOSPC, False)])
def test_read_only_or_full_disk_is_one_line_and_keeps_the_old_file(code, replace_fails, tmp_path,
                                                                   monkeypatch, capsys) -> None:
    """As root, chmod does not stop writes, so the failures are injected where the OS raises them:
    a read-only file system refuses the rename (naming both files), a full disk the write (naming
    none)."""
    model = evaluated_model(tmp_path, METRICS)
    (tmp_path / "report.md").write_text("the old report\n")
    before = sorted(os.listdir(tmp_path))
    if replace_fails:
        def fail(src, dst):
            raise OSError(code, os.strerror(code), str(src), None, str(dst))

        monkeypatch.setattr(os, "replace", fail)
    else:
        def fail(self, *args, **kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(Path, "write_text", fail)
    assert main(["report", str(model), "--out", str(tmp_path / "report")]) == 1
    monkeypatch.undo()
    assert error_line(capsys) == f"error: {tmp_path / 'report.md'}: {os.strerror(code)}"
    assert (tmp_path / "report.md").read_text() == "the old report\n"
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file left behind


def test_long_names_work_up_to_the_limit_and_fail_in_one_line_beyond(tmp_path, capsys) -> None:
    model = evaluated_model(tmp_path, METRICS)
    longest = "r" * 250  # + ".json": 255 bytes, the longest legal name
    assert main(["report", str(model), "--out", str(tmp_path / longest)]) == 0
    assert json.loads((tmp_path / f"{longest}.json").read_text())[0]["wer"] == 10.0
    capsys.readouterr()
    too_long = "r" * 256
    assert main(["report", str(model), "--out", str(tmp_path / too_long)]) == 1
    assert error_line(capsys) == f"error: {tmp_path / too_long}.md: File name too long"
    assert not list(tmp_path.glob(".tmp-*"))


def test_output_file_that_is_a_folder_is_refused_and_nothing_is_written_beside_it(
        setup, tmp_path, capsys) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    argv = ["evaluate", "--model", str(setup["model"]), "--data",
            str(setup["data"] / "dev_cuts.jsonl.gz"), "--json", str(folder), "--quiet",
            "latency_seconds=0.5"]
    assert main(argv) == 1
    assert error_line(capsys) == f"error: {folder}: is a folder; give a file name"
    assert main(["lm", "--data", str(setup["data"]), "--out", str(folder)]) == 1
    assert error_line(capsys) == f"error: {folder}: is a folder; give a file name"
    assert os.listdir(tmp_path) == ["results"] and os.listdir(folder) == []


# ---- audio that moved -----------------------------------------------------------------------
def test_evaluate_names_the_first_missing_audio_file_and_how_many_are_missing(setup, tmp_path,
                                                                              capsys) -> None:
    data = shutil.copytree(setup["data"], tmp_path / "data")
    (data / "audio").rename(tmp_path / "audio_elsewhere")
    manifest = data / "dev_cuts.jsonl.gz"
    assert main(["evaluate", "--model", str(setup["model"]), "--data", str(manifest), "--quiet"]) == 1
    assert error_line(capsys) == (
        f"error: {data / 'audio' / 'dev-000.wav'}: audio file not found (2 of 2 listed in {manifest} "
        f"are missing). A manifest holds absolute audio paths (or paths relative to its own "
        f"folder): if the corpus or its audio moved, recreate or re-import it where it now is")


@pytest.mark.parametrize("error, line", [
    (DataError("a.json", "not JSON\n(line 3)"), "error: a.json: not JSON (line 3)"),
    (OSError(errno.ENOSPC, "No space left on device", "out/model.safetensors"),
     "error: out/model.safetensors: No space left on device"),
])
def test_a_benchmark_script_reports_user_errors_in_one_line(error, line, capsys):
    """``run_script`` (the bench scripts' entry point) as the CLI does: one line, exit status 1."""
    def failing():
        raise error

    with pytest.raises(SystemExit) as exit_:
        run_script(failing)
    assert exit_.value.code == 1 and capsys.readouterr().err == line + "\n"
    with pytest.raises(SystemExit) as exit_:
        run_script(lambda: 3)
    assert exit_.value.code == 3
