"""Compact safetensors: each tensor in its smallest layout, an exact round trip, honest sizes, and
model directories that load_model reads back (masked models saved as their plain weights)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from slimasr.errors import DataError
from slimasr.models import load_model, save_model
from slimasr.models.io import plain_state_dict
from slimasr.prune.sparse_io import bitmask_bytes, compact_shapes, csr_bytes, load_compact, save_compact
from slimasr.prune.unstructured import UnstructuredConfig, sparsify_, squash_
from tests.prune.helpers import random_model


def sparse(shape: tuple[int, ...], zeros: float, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen).to(dtype)
    t[torch.rand(shape, generator=gen) < zeros] = 0
    return t


def crnn(hidden: tuple[int, int] = (6, 5)):
    return random_model("crnn", dict(num_features=8, subsampling_channels=[3, 4], rnn_hidden_sizes=list(hidden)), 7)


def test_every_tensor_takes_its_smallest_layout_and_comes_back_exactly(tmp_path):
    state = {
        "dense": sparse((40, 30), 0.0),
        "half": sparse((40, 30), 0.5, 1),  # bitmask: 150 + 4 * ~600 bytes < 4800
        "almost_empty": sparse((64, 100), 0.98, 2),  # csr: ~6 * 128 + 258 * 4 < 800 + 512
        "bf16": sparse((16, 16), 0.7, 3, torch.bfloat16),
        "conv": sparse((4, 3, 3, 3), 0.9, 4),
        "bias": torch.zeros(5),  # all zeros: 1 byte of bitmask
        "steps": torch.tensor(7),  # an integer buffer stays as it is
        "ids": torch.arange(6),
    }
    layouts = save_compact(state, tmp_path / "m.safetensors", {"architecture": "x"})
    assert layouts == {"half": "bitmask", "almost_empty": "csr", "bf16": "bitmask", "conv": "bitmask",
                       "bias": "bitmask"}
    loaded = load_compact(tmp_path / "m.safetensors")
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    shapes = compact_shapes(tmp_path / "m.safetensors")
    assert shapes == {k: list(v.shape) for k, v in state.items()}
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert f.metadata()["architecture"] == "x"
        assert f.get_slice("almost_empty:indices").get_dtype() == "I16"


def test_sizes_are_the_bytes_of_each_layout():
    t = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
    assert bitmask_bytes(t) == 3 * 4 + 1  # 3 values + 8 bits
    assert csr_bytes(t) == 3 * (4 + 2) + 3 * 4  # values + int16 columns, 3 row pointers


def test_a_pruned_model_saves_compactly_and_loads_back_exactly(tmp_path):
    model = crnn((48, 48))  # 63k parameters, 62k of them in the pruned weights
    sparsify_(model, UnstructuredConfig(sparsity=0.9))
    squash_(model)
    save_model(model, tmp_path / "dense")
    save_model(model, tmp_path / "compact", compact=True)
    config = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert config["sparse"] is True and "sparse" not in json.loads((tmp_path / "dense" / "config.json").read_text())
    loaded = load_model(tmp_path / "compact")
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    dense_bytes = (tmp_path / "dense" / "model.safetensors").stat().st_size
    compact_bytes = (tmp_path / "compact" / "model.safetensors").stat().st_size
    # 10% of the weights as float32 + 1 bit per weight: 0.525 of 4 bytes per weight, + the biases
    assert compact_bytes < 0.2 * dense_bytes


def test_a_masked_model_is_saved_as_its_plain_masked_weights(tmp_path):
    model = crnn()
    sparsify_(model, UnstructuredConfig(sparsity=0.5))
    state = plain_state_dict(model)
    assert not any("parametrizations" in k for k in state)
    save_model(model, tmp_path / "m")
    squash_(model)
    assert set(state) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    loaded = load_model(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_compact_file_that_does_not_match_its_config_is_one_error(tmp_path):
    model = crnn()
    sparsify_(model, UnstructuredConfig(sparsity=0.9))
    save_model(model, tmp_path / "m", compact=True)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model"]["rnn_hidden_sizes"] = [6, 4]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"weights do not match config.json: wrong shape: head.weight \(7, 10\) vs \(7, 8\)"):
        load_model(tmp_path / "m")
    config["sparse"] = "yes"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="'sparse' must be true or false"):
        load_model(tmp_path / "m")


def test_int8_storage_keeps_zeros_and_each_weight_within_half_its_rows_step(tmp_path):
    state = {"w": sparse((40, 30), 0.8), "conv": sparse((4, 3, 3, 3), 0.5, 1), "dense": sparse((16, 8), 0.0, 2),
             "bias": sparse((40,), 0.0, 3), "steps": torch.tensor(7)}
    state["w"][3] = 0  # an all-zero row
    layouts = save_compact(state, tmp_path / "m.safetensors", precision="int8")
    assert layouts == {"w": "bitmask", "conv": "bitmask", "dense": "dense"}  # the vector stays float32
    loaded = load_compact(tmp_path / "m.safetensors")
    assert torch.equal(loaded["bias"], state["bias"]) and torch.equal(loaded["steps"], state["steps"])
    for name in ("w", "conv", "dense"):
        w, back = state[name], loaded[name]
        assert back.dtype == torch.float32 and back.shape == w.shape
        rows = w.reshape(w.shape[0], -1)
        step = rows.abs().amax(1) / 127  # the scale of each row
        err = (back.reshape_as(rows) - rows).abs()
        assert (err <= step[:, None] / 2 + 1e-7).all(), name
        assert (back[w == 0] == 0).all(), name  # zeros stay zeros
        assert torch.allclose(back.reshape_as(rows).abs().amax(1), rows.abs().amax(1), rtol=1e-6), name  # 127 steps
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert f.get_slice("w:values").get_dtype() == "I8" and f.get_slice("w:scale").get_dtype() == "F32"
        assert f.get_slice("dense:values").get_dtype() == "I8"
    assert compact_shapes(tmp_path / "m.safetensors") == {k: list(v.shape) for k, v in state.items()}


def test_fp16_storage_is_the_matrices_cast_to_half(tmp_path):
    state = {"w": sparse((40, 30), 0.8), "bias": sparse((40,), 0.0, 3)}
    save_compact(state, tmp_path / "m.safetensors", precision="fp16")
    loaded = load_compact(tmp_path / "m.safetensors")
    assert loaded["w"].dtype == torch.float16 and torch.equal(loaded["w"], state["w"].half())
    assert torch.equal(loaded["bias"], state["bias"])
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, int8"):
        save_compact(state, tmp_path / "x.safetensors", precision="int4")


def test_a_sparse_model_stored_in_int8_is_smaller_and_loads_into_float32(tmp_path):
    model = crnn((48, 48))
    sparsify_(model, UnstructuredConfig(sparsity=0.8))
    squash_(model)
    sizes = {}
    for precision in ("fp32", "fp16", "int8"):
        save_model(model, tmp_path / precision, compact=True, precision=precision)
        sizes[precision] = (tmp_path / precision / "model.safetensors").stat().st_size
        loaded = load_model(tmp_path / precision)
        for k, v in loaded.state_dict().items():
            assert v.dtype == model.state_dict()[k].dtype, k
            zeros = model.state_dict()[k] == 0
            assert (v[zeros] == 0).all(), k  # int8 may add zeros (weights below half a step), never lose one
            if precision != "int8":
                assert torch.equal(v == 0, zeros), k
    # per weight: 4, 2 or 1 byte of each kept value + 1 bit of mask (20% kept)
    assert sizes["int8"] < 0.6 * sizes["fp32"] and sizes["fp16"] < 0.75 * sizes["fp32"]
    with pytest.raises(ValueError, match="compact form"):
        save_model(model, tmp_path / "x", precision="int8")
