"""Checkpoint averaging: ``train.keep_epochs`` keeps the last epochs' weights as model folders,
``slimasr average`` averages model folders (or a run's last training checkpoint) into one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from slimasr.cli import main
from slimasr.errors import ConfigError, DataError
from slimasr.frontend import Frontend
from slimasr.models import load_model
from slimasr.models.io import plain_state_dict
from slimasr.train import train_model
from slimasr.train.average import average_models, average_state_dicts
from tests.train.helpers import make_corpus, tiny_recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny 5-epoch run keeping its last 3 epochs' weights; and the corpus."""
    root = tmp_path_factory.mktemp("average")
    data = make_corpus(root / "data", n_train=8, n_dev=3)
    train_model(tiny_recipe(epochs=5, keep_epochs=3), data, root / "run", show_progress=False)
    return root / "run", data


def epochs_of(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("epoch-*"))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return plain_state_dict(load_model(folder))


def test_average_state_dicts_means_floats_and_keeps_the_last_integer_buffers() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16),
         "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([2.0], dtype=torch.float16),
         "n": torch.tensor(7)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["h"].dtype == torch.float16 and out["h"].item() == 1.5
    assert out["n"].item() == 7 and out["n"].dtype == b["n"].dtype
    with pytest.raises(ValueError):
        average_state_dicts([])


def test_keep_epochs_keeps_the_last_n_epochs_as_model_folders(run) -> None:
    folder, _ = run
    assert [p.name for p in epochs_of(folder)] == ["epoch-0002", "epoch-0003", "epoch-0004"]
    for epoch in epochs_of(folder):
        load_model(epoch), Frontend.load(epoch)  # each is a complete model folder
        provenance = json.loads((epoch / "config.json").read_text())["provenance"]
        assert provenance["epoch"] == int(epoch.name.split("-")[1]) and provenance["steps"] > 0
    last = load_file(str(folder / "checkpoints" / "last" / "model.safetensors"))
    final = weights(epochs_of(folder)[-1])
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in last)
    training = json.loads((folder / "training.json").read_text())
    assert training["epochs"] == 5


def test_average_of_three_epochs_is_their_mean_and_a_model_folder(run, tmp_path) -> None:
    folder, _ = run
    sources = epochs_of(folder)
    record = average_models(sources, tmp_path / "avg")
    assert record["averaged"] == 3
    got = weights(tmp_path / "avg")
    states = [weights(s) for s in sources]
    for key, value in got.items():
        if value.is_floating_point():
            expected = (states[0][key] + states[1][key] + states[2][key]) / 3
            assert torch.allclose(value, expected, atol=1e-6), key
        else:
            assert torch.equal(value, states[-1][key]), key
    assert any(not torch.equal(states[0][k], states[2][k]) for k in got)  # the epochs differ
    config = json.loads((tmp_path / "avg" / "config.json").read_text())
    assert config["provenance"]["averaged"] == [str(s) for s in sources]
    assert config["provenance"]["step"] == "average"
    assert config["provenance"]["first_source"]["epoch"] == 2
    assert (tmp_path / "avg" / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    assert Frontend.load(tmp_path / "avg").cmvn is not None


def test_a_run_s_last_training_checkpoint_is_read_with_the_run_s_config(run, tmp_path) -> None:
    folder, _ = run
    last_epoch = epochs_of(folder)[-1]
    average_models([last_epoch, folder / "checkpoints" / "last"], tmp_path / "avg")
    got, expected = weights(tmp_path / "avg"), weights(last_epoch)
    assert all(torch.equal(got[k], expected[k]) for k in got)  # the same weights twice


def test_a_distillation_checkpoint_s_student_prefix_is_stripped(run, tmp_path) -> None:
    folder, _ = run
    distilled = shutil.copytree(folder, tmp_path / "distilled")
    last = distilled / "checkpoints" / "last" / "model.safetensors"
    save_file({f"student.{k}": v for k, v in load_file(str(last)).items()}, str(last))
    average_models([folder / "checkpoints" / "last", distilled / "checkpoints" / "last"], tmp_path / "avg")
    got, expected = weights(tmp_path / "avg"), weights(epochs_of(folder)[-1])
    assert all(torch.equal(got[k], expected[k]) for k in got)


def test_models_that_are_not_alike_are_refused_and_nothing_is_written(run, tmp_path) -> None:
    folder, _ = run
    a, b = epochs_of(folder)[:2]
    with pytest.raises(ConfigError, match="two or more"):
        average_models([a], tmp_path / "one")
    wider = shutil.copytree(b, tmp_path / "wider")
    config = json.loads((wider / "config.json").read_text())
    config["model"]["rnn_hidden_sizes"] = [40]
    (wider / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="model differ"):
        average_models([a, wider], tmp_path / "out")
    other_cmvn = shutil.copytree(b, tmp_path / "other_cmvn")
    cmvn = json.loads((other_cmvn / "cmvn.json").read_text())
    cmvn["mean"] = [m + 1.0 for m in cmvn["mean"]]
    (other_cmvn / "cmvn.json").write_text(json.dumps(cmvn))
    with pytest.raises(DataError, match="CMVN differs"):
        average_models([a, other_cmvn], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_an_existing_model_or_a_source_as_output(run, tmp_path, capsys) -> None:
    folder, _ = run
    a, b = epochs_of(folder)[:2]
    assert main(["average", "--out", str(tmp_path / "avg"), str(a), str(b)]) == 0
    before = (tmp_path / "avg" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["average", "--out", str(tmp_path / "avg"), str(b), str(a)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "Traceback" not in err
    assert (tmp_path / "avg" / "model.safetensors").read_bytes() == before
    assert main(["average", "--out", str(a), str(a), str(b), "--overwrite"]) == 1
    assert "is the input" in capsys.readouterr().err
    assert main(["average", "--out", str(tmp_path / "avg"), str(b), str(a), "--overwrite"]) == 0
    config = json.loads((tmp_path / "avg" / "config.json").read_text())
    assert config["provenance"]["averaged"] == [str(b), str(a)]  # replaced
