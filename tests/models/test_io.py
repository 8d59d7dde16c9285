"""Registry, presets and the model directory (config.json + model.safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slimasr.config import config_to_dict
from slimasr.errors import ConfigError, DataError
from slimasr.models import (
    Crnn,
    CrnnConfig,
    build_model,
    list_models,
    load_model,
    load_preset,
    read_model_config,
    register_model,
    save_model,
)
from slimasr.models import io as model_io
from slimasr.models import registry

FEATS, VOCAB = 8, 7
PRESETS = Path(__file__).resolve().parents[2] / "recipes" / "models"
PRUNED_CONFORMER = dict(num_features=FEATS, subsampling_channels=[3, 4], d_model=8, num_blocks=3,
                        num_heads=[2, 0, 1], head_dim=4, ffn_dim=[12, 5, 0, 7, 9, 12],
                        conv_channels=[8, 3, 0], conv_kernel=3)


def tiny_crnn() -> Crnn:
    torch.manual_seed(0)
    return build_model("crnn", {"num_features": FEATS, "subsampling_channels": [3, 4],
                                "rnn_hidden_sizes": [6, 4]}, vocab_size=VOCAB)


def outputs(model, seed: int = 3):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 15, FEATS), torch.tensor([15, 8]))[0]


def test_registry_round_trip():
    assert list_models() == ["conformer", "crnn", "dnn"]
    model = build_model("crnn", CrnnConfig(num_features=FEATS, rnn_hidden_sizes=[4]), vocab_size=VOCAB)
    assert isinstance(model, Crnn) and model.arch == "crnn" and model.vocab_size == VOCAB
    again = build_model(model.arch, config_to_dict(model.config), vocab_size=VOCAB)
    assert again.config == model.config


def test_registry_rejects_unknown_names_keys_and_vocab():
    with pytest.raises(ConfigError, match=r"unknown model architecture 'rnn' \(known: conformer, crnn, dnn\)"):
        build_model("rnn", vocab_size=VOCAB)
    with pytest.raises(ConfigError, match=r"crnn: unknown key\(s\) hidden"):
        build_model("crnn", {"hidden": 3}, vocab_size=VOCAB)
    with pytest.raises(ConfigError, match="ffn_dim needs 4 values, got 3"):
        build_model("conformer", {"num_blocks": 2, "ffn_dim": [1, 2, 3]}, vocab_size=VOCAB)
    with pytest.raises(ConfigError, match="vocab_size must be an integer >= 2"):
        build_model("dnn", vocab_size=1)


def test_register_model_adds_a_family(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("crnn_copy", CrnnConfig)
    class CrnnCopy(Crnn):
        pass

    assert "crnn_copy" in list_models()
    assert isinstance(build_model("crnn_copy", {"num_features": FEATS}, vocab_size=VOCAB), CrnnCopy)


def test_save_and_load_reproduce_outputs_and_extras(tmp_path):
    model = tiny_crnn()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "tokenizer.txt").write_text("keep me")
    save_model(model, tmp_path / "m", extra={"tokenizer": {"type": "char"}, "features": {"num_mel_bins": 8}})
    loaded = load_model(tmp_path / "m")
    assert not loaded.training and loaded.config == model.config
    assert torch.equal(outputs(loaded), outputs(model))
    config = read_model_config(tmp_path / "m")
    assert config["architecture"] == "crnn" and config["vocab_size"] == VOCAB
    assert config["tokenizer"] == {"type": "char"} and config["features"] == {"num_mel_bins": 8}
    assert (tmp_path / "m" / "tokenizer.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors",
                                                                   "tokenizer.txt"]


@pytest.mark.parametrize("name,cfg", [
    ("conformer", PRUNED_CONFORMER),
    ("crnn", dict(num_features=FEATS, subsampling_channels=[3, 2], rnn_hidden_sizes=[7, 3, 5],
                  rnn_type="gru", bidirectional=False)),
    ("dnn", dict(num_features=FEATS, hidden_sizes=[9, 4, 6])),
])
def test_per_layer_widths_survive_save_and_load(tmp_path, name, cfg):
    torch.manual_seed(0)
    model = build_model(name, cfg, vocab_size=VOCAB)
    loaded = load_model(save_model(model, tmp_path / name))
    assert [p.shape for p in loaded.parameters()] == [p.shape for p in model.parameters()]
    assert torch.equal(outputs(loaded), outputs(model))


def test_save_refuses_reserved_extra_keys(tmp_path):
    with pytest.raises(ValueError, match="reserved config.json key"):
        save_model(tiny_crnn(), tmp_path / "m", extra={"vocab_size": 3})


def break_config(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("breakage,file,message", [
    (lambda d: (d / "config.json").unlink(), "config.json", "file not found"),
    (lambda d: (d / "config.json").write_text("{oops"), "config.json", "not valid JSON"),
    (lambda d: break_config(d / "config.json", architecture="lstm"), "config.json", "unknown architecture 'lstm'"),
    (lambda d: break_config(d / "config.json", format="other"), "config.json", "not a slimasr model config"),
    (lambda d: break_config(d / "config.json", model={"hiden": 3}), "config.json", r"unknown key\(s\) hiden"),
    (lambda d: break_config(d / "config.json", vocab_size="x"), "config.json", "vocab_size must be"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors", "file not found"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 8), "model.safetensors",
     "not a readable safetensors file"),
    (lambda d: break_config(d / "config.json", model={"num_features": FEATS, "subsampling_channels": [3, 4],
                                                      "rnn_hidden_sizes": [6, 5]}),
     "model.safetensors", r"weights do not match config.json: wrong shape: head.weight \(7, 8\) vs \(7, 10\)"),
    (lambda d: break_config(d / "config.json", model={"num_features": FEATS, "subsampling_channels": [3, 4],
                                                      "rnn_hidden_sizes": [6]}),
     "model.safetensors", r"unexpected: rnns.1.bwd.bias_hh_l0, .* \(\+5 more\)"),
])
def test_bad_model_dirs_give_one_line_errors_naming_the_file(tmp_path, breakage, file, message):
    model_dir = save_model(tiny_crnn(), tmp_path / "m")
    breakage(model_dir)
    with pytest.raises(DataError, match=message) as info:
        load_model(model_dir)
    assert info.value.path == str(model_dir / file)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("changes, file, message", [
    ({"vocab_size": 10**9}, "model.safetensors",
     r"wrong shape: head.bias \(7,\) vs \(1000000000,\) expected"),
    ({"model": {"num_features": FEATS, "subsampling_channels": [3, 4], "rnn_hidden_sizes": [20000, 4]}},
     "model.safetensors", r"rnns.0.bwd.weight_hh_l0 \(24, 6\) vs \(80000, 20000\) expected \(\+7 more\)"),
    ({"model": {"num_features": FEATS, "subsampling_channels": [3, 4], "rnn_hidden_sizes": [10**9]}},
     "config.json", "sizes that cannot be built"),
])
def test_config_sizes_are_checked_against_the_header_before_allocating(tmp_path, monkeypatch, changes,
                                                                      file, message):
    """config.json may claim any size: the shapes are compared on the meta device with the
    safetensors header, so nothing is allocated (or read) for a model that does not match."""
    model_dir = save_model(tiny_crnn(), tmp_path / "m")
    break_config(model_dir / "config.json", **changes)
    real_build = model_io.build_model

    def build_on_meta_only(*args, **kwargs):
        assert torch.empty(0).device.type == "meta", "a model was built for real before the check"
        return real_build(*args, **kwargs)

    monkeypatch.setattr(model_io, "build_model", build_on_meta_only)
    monkeypatch.setattr(model_io, "load_file", lambda *a, **k: pytest.fail("tensors were read"))
    with pytest.raises(DataError, match=message) as info:
        load_model(model_dir)
    assert info.value.path == str(model_dir / file)


def test_missing_model_dir_is_reported(tmp_path):
    with pytest.raises(DataError, match="model directory not found") as info:
        load_model(tmp_path / "nope")
    assert info.value.path == str(tmp_path / "nope")


PRESET_PARAMS = {  # millions of parameters with a 30-token vocabulary: (low, high)
    "crnn_teacher": (6.0, 10.0), "crnn_student": (0.3, 1.85), "conformer_teacher": (5.0, 15.0),
    "conformer_student": (0.3, 1.87), "dnn_teacher": (5.0, 15.0),
}


@pytest.mark.parametrize("preset", sorted(PRESET_PARAMS))
def test_presets_load_and_have_the_intended_size(preset):
    name, cfg = load_preset(PRESETS / f"{preset}.yaml")
    params = sum(p.numel() for p in build_model(name, cfg, vocab_size=30).parameters()) / 1e6
    low, high = PRESET_PARAMS[preset]
    assert low <= params <= high
    assert name == preset.split("_")[0]


def test_preset_overrides_and_unknown_keys(tmp_path):
    _, cfg = load_preset(PRESETS / "crnn_teacher.yaml", overrides=["rnn_type=gru", "rnn_hidden_sizes=[64]"])
    assert cfg.rnn_type == "gru" and cfg.rnn_hidden_sizes == [64]
    bad = tmp_path / "bad.yaml"
    bad.write_text("architecture: dnn\nmodel:\n  hiden_sizes: [3]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: dnn: unknown key\(s\) hiden_sizes"):
        load_preset(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_refused_naming_the_first_bad_tensor(tmp_path, value):
    """Such a model used to load, output NaN and transcribe everything to empty text."""
    model = tiny_crnn()
    with torch.no_grad():
        model.head.bias[2] = value
        model.head.weight[0, :3] = value
    model_dir = save_model(model, tmp_path / "m")
    with pytest.raises(DataError) as info:
        load_model(model_dir)
    assert str(info.value) == (f"{model_dir / 'model.safetensors'}: tensor head.bias holds 1 NaN/inf "
                               "values of 7 (a diverged or damaged model)")
