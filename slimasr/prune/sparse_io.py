"""Compact safetensors for sparse weights: honest bytes on disk, an exact round trip (or fp16 /
int8 values, ``precision``).

    save_compact(state, "model.safetensors", metadata)   # returns {name: layout} of compact tensors
    save_compact(state, "model.safetensors", metadata, precision="int8")   # int8 values, row scales
    state = load_compact("model.safetensors")            # the dense tensors again, exactly
    shapes = compact_shapes("model.safetensors")         # name -> shape, from the header only

Each floating-point tensor is stored in the smallest of three layouts (ties: dense):

- ``dense``: as usual, under its own name (int8 values: ``NAME:values``);
- ``bitmask``: ``NAME:values`` (the nonzero entries, row-major) + ``NAME:bitmask`` (one bit per
  entry, ``numpy.packbits``, little bit order): n/8 + 4 nnz bytes in float32, smaller than dense
  from ~3% zeros on;
- ``csr``: the tensor as a (rows = dim 0, cols = the rest) matrix: ``NAME:values``,
  ``NAME:indices`` (column of each value, int16 when the columns fit, else int32) and
  ``NAME:indptr`` (int32 or int64, rows + 1): smaller than the bitmask only above ~94% zeros.

The layouts and shapes are in the safetensors header's metadata (``slimasr_sparse``, JSON), so
the file stays an ordinary safetensors file (no pickle) that any reader opens; ``load_model``
recognises it when config.json says ``"sparse": true``. Negative zeros are stored as zeros.

``precision`` shrinks the stored values of every weight matrix (a floating tensor of 2 or more
dimensions: Linear, Conv, LSTM/GRU weights; vectors such as biases and norms stay as they are):

- ``fp32`` (default): the values as they are; the round trip is exact;
- ``fp16``: the matrices cast to float16 (``load_model`` casts them back into the float32 model);
- ``int8``: symmetric int8 with one float32 scale per row (dim 0: an output unit or channel),
  ``scale = max |w_row| / 127``, stored as ``NAME:scale`` beside the int8 parts of the layout
  chosen for the int8 tensor; a stored weight differs from the original by at most half its row's
  scale, zeros stay zeros and a weight below half a step becomes one (``quant: int8_rows`` in the
  header). Decoding returns float32.

fp16 and int8 are lossy: a model saved so is scored as stored (``slimasr prune``'s
``unstructured.storage``; the size against WER is in bench/README.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

META_KEY = "slimasr_sparse"  # safetensors metadata entry: {name: {"layout", "shape", "dtype"}}
SEP = ":"  # NAME:values, NAME:bitmask, NAME:indices, NAME:indptr (":" never occurs in a state_dict key)
INT16_MAX = 2**15 - 1  # largest column index stored as int16
INT32_MAX = 2**31 - 1
PRECISIONS = ("fp32", "fp16", "int8")  # how the values of weight matrices are stored
INT8_QUANT = "int8_rows"  # header tag: int8 values, one float32 scale per row
INT8_MAX = 127  # symmetric int8: -127..127


def save_compact(state: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, str] | None = None,
                 precision: str = "fp32") -> dict[str, str]:
    """Write ``state`` (CPU tensors) to ``path``, every tensor in its smallest layout, weight
    matrices' values in ``precision`` (module docstring); returns the layout of each tensor stored
    compactly."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    tensors: dict[str, Tensor] = {}
    layouts: dict[str, dict] = {}
    for name, tensor in state.items():
        if SEP in name:
            raise ValueError(f"tensor name {name!r} holds {SEP!r}, which compact files reserve")
        tensor = tensor.detach().cpu().contiguous()
        info = {"shape": list(tensor.shape), "dtype": str(tensor.dtype)}
        if precision != "fp32" and is_matrix(tensor):
            if precision == "fp16":
                tensor = tensor.half()
                info["dtype"] = str(tensor.dtype)
            else:
                q, scale = quantize_rows(tensor)
                parts, layout = encode(q)
                parts = {**(parts or {"values": q}), "scale": scale}
                tensors.update({f"{name}{SEP}{k}": v for k, v in parts.items()})
                layouts[name] = {"layout": layout, **info, "quant": INT8_QUANT}
                continue
        parts, layout = encode(tensor)
        if layout == "dense":
            tensors[name] = tensor
            continue
        tensors.update({f"{name}{SEP}{k}": v for k, v in parts.items()})
        layouts[name] = {"layout": layout, **info}
    meta = {**(metadata or {}), META_KEY: json.dumps(layouts, sort_keys=True)}
    save_file(tensors, str(path), metadata=meta)
    return {k: v["layout"] for k, v in layouts.items()}


def is_matrix(tensor: Tensor) -> bool:
    """A weight matrix (floating, 2 or more dimensions): what ``precision`` fp16/int8 shrinks."""
    return tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() > 0


def quantize_rows(tensor: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 tensor of ``tensor``'s shape, float32 scale per row): symmetric, round to nearest;
    an all-zero row gets scale 1."""
    rows = tensor.reshape(tensor.shape[0], -1).float()
    amax = rows.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(rows / scale[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.view(tensor.shape), scale


def dequantize_rows(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The float tensor ``quantize_rows`` stands for."""
    return (q.reshape(q.shape[0], -1).float() * scale[:, None].float()).view(q.shape).to(dtype)


def encode(tensor: Tensor) -> tuple[dict[str, Tensor], str]:
    """The parts of ``tensor``'s smallest layout and its name (``dense``: no parts)."""
    encodable = tensor.is_floating_point() or tensor.dtype == torch.int8
    if not encodable or tensor.dim() == 0 or tensor.numel() == 0:
        return {}, "dense"
    dense = tensor.numel() * tensor.element_size()
    candidates = [(dense, "dense"), (bitmask_bytes(tensor), "bitmask"), (csr_bytes(tensor), "csr")]
    size, layout = min(candidates, key=lambda c: c[0])  # min keeps the first of equals: dense
    if layout == "bitmask":
        return _bitmask_parts(tensor), layout
    if layout == "csr":
        return _csr_parts(tensor), layout
    return {}, "dense"


def bitmask_bytes(tensor: Tensor) -> int:
    """Bytes of ``tensor`` as values + bitmask."""
    nnz = int(torch.count_nonzero(tensor))
    return nnz * tensor.element_size() + math.ceil(tensor.numel() / 8)


def csr_bytes(tensor: Tensor) -> int:
    """Bytes of ``tensor`` as CSR (values, column indices, row pointers)."""
    rows, cols = _matrix_shape(tensor)
    nnz = int(torch.count_nonzero(tensor))
    index = 2 if cols - 1 <= INT16_MAX else 4
    pointer = 4 if nnz <= INT32_MAX else 8
    return nnz * (tensor.element_size() + index) + (rows + 1) * pointer


def load_compact(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a file ``save_compact`` wrote (or any safetensors file), dense, on CPU."""
    raw = load_file(str(path), device="cpu")
    layouts = _layouts(path)
    out = {k: v for k, v in raw.items() if SEP not in k}
    for name, info in layouts.items():
        parts = {k.split(SEP, 1)[1]: v for k, v in raw.items() if k.startswith(name + SEP)}
        out[name] = decode(parts, info)
    return out


def compact_shapes(path: str | Path) -> dict[str, list[int]]:
    """name -> shape of every tensor the file holds, read from its header only."""
    layouts = _layouts(path)
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys() if SEP not in k}
    return {**shapes, **{k: list(v["shape"]) for k, v in layouts.items()}}


def decode(parts: Mapping[str, Tensor], info: Mapping) -> Tensor:
    """The dense tensor of one compact entry (``info``: its layout, shape and dtype; with
    ``quant``, the int8 values dequantized with ``parts["scale"]``)."""
    shape = [int(s) for s in info["shape"]]
    values = parts["values"]
    numel = math.prod(shape)
    if info["layout"] == "dense":  # only int8 values are stored densely under NAME:values
        out = values.reshape(shape)
    elif info["layout"] == "bitmask":
        bits = np.unpackbits(parts["bitmask"].numpy(), count=numel, bitorder="little").astype(bool)
        out = torch.zeros(numel, dtype=values.dtype)
        out[torch.from_numpy(bits)] = values
        out = out.view(shape)
    elif info["layout"] == "csr":
        rows = shape[0] if shape else 1
        cols = numel // max(rows, 1)
        counts = parts["indptr"].long().diff()
        row_of = torch.repeat_interleave(torch.arange(rows), counts)
        out = torch.zeros(rows, cols, dtype=values.dtype)
        out[row_of, parts["indices"].long()] = values
        out = out.view(shape)
    else:
        raise ValueError(f"unknown compact layout {info['layout']!r}")
    if "quant" not in info:
        return out
    if info["quant"] != INT8_QUANT:
        raise ValueError(f"unknown compact quantization {info['quant']!r}")
    return dequantize_rows(out, parts["scale"], getattr(torch, info["dtype"].removeprefix("torch.")))


def _bitmask_parts(tensor: Tensor) -> dict[str, Tensor]:
    flat = tensor.flatten()
    nonzero = flat != 0
    bits = np.packbits(nonzero.numpy(), bitorder="little")
    return {"values": flat[nonzero].clone(), "bitmask": torch.from_numpy(bits)}


def _csr_parts(tensor: Tensor) -> dict[str, Tensor]:
    rows, cols = _matrix_shape(tensor)
    matrix = tensor.reshape(rows, cols)
    row, col = torch.nonzero(matrix, as_tuple=True)  # row-major order
    counts = torch.bincount(row, minlength=rows)
    index_dtype = torch.int16 if cols - 1 <= INT16_MAX else torch.int32
    pointer_dtype = torch.int32 if row.numel() <= INT32_MAX else torch.int64
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return {"values": matrix[row, col].clone(), "indices": col.to(index_dtype),
            "indptr": indptr.to(pointer_dtype)}


def _matrix_shape(tensor: Tensor) -> tuple[int, int]:
    rows = tensor.shape[0]
    return rows, tensor.numel() // max(rows, 1)


def _layouts(path: str | Path) -> dict[str, dict]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get(META_KEY, "{}"))


__all__ = ["META_KEY", "PRECISIONS", "bitmask_bytes", "compact_shapes", "csr_bytes", "decode", "dequantize_rows",
           "encode", "is_matrix", "load_compact", "quantize_rows", "save_compact"]
