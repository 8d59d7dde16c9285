"""The model directory: ``config.json`` + ``model.safetensors``. Nothing is ever pickled.

    save_model(model, "exp/teacher", extra={"tokenizer": {...}, "features": {...}})
    model = load_model("exp/teacher")          # exact (possibly pruned) shapes, strict weights

``config.json`` holds ``format``, ``format_version``, ``architecture`` (registry name),
``vocab_size``, ``model`` (the family's dataclass config, which records every per-layer width)
and whatever ``extra`` added (tokenizer, feature config, provenance, ...). ``"sparse": true``
marks weights saved in the compact form of ``slimasr.prune.sparse_io`` (``compact=True``).
A model carrying pruning masks (parametrizations) is saved as its masked plain tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from slimasr.config import config_to_dict
from slimasr.errors import ConfigError, DataError
from slimasr.io import atomic_path, read_json, write_json_atomic
from slimasr.models.common import AcousticModel
from slimasr.models.registry import build_model, list_models

CONFIG_NAME = "config.json"  # architecture + config + extras
WEIGHTS_NAME = "model.safetensors"  # state dict
FORMAT_NAME = "slimasr-model"  # value of config.json's "format"
FORMAT_VERSION = 1  # bump when config.json's layout changes
RESERVED_KEYS = ("format", "format_version", "architecture", "vocab_size", "model", "sparse")
MAX_LISTED = 3  # how many mismatching weight names an error message lists


def save_model(model: AcousticModel, out_dir: str | Path, extra: Mapping[str, Any] | None = None,
               compact: bool = False, precision: str = "fp32") -> Path:
    """Write ``out_dir/model.safetensors`` then ``out_dir/config.json``, each atomically.

    ``compact``: sparse tensors as values + bitmask or CSR (``slimasr.prune.sparse_io``), when
    smaller; ``precision`` (compact only): weight matrices' values in fp32 (exact), fp16 or int8
    with a scale per row (lossy). Other files in ``out_dir`` (tokenizer, metrics) are left alone.
    Returns ``out_dir``.
    """
    if not isinstance(model, AcousticModel) or not model.arch:
        raise TypeError(f"save_model needs a registered slimasr model, got {type(model).__name__}")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra may not set reserved config.json key(s): {', '.join(clash)}")
    if precision != "fp32" and not compact:
        raise ValueError(f"precision {precision} is a compact form: pass compact=True")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in plain_state_dict(model).items()}
    metadata = {"format": "pt", "architecture": model.arch}
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        if compact:
            from slimasr.prune.sparse_io import save_compact  # noqa: PLC0415 (prune imports models)

            compact = bool(save_compact(tensors, tmp, metadata, precision))
        else:
            save_file(tensors, str(tmp), metadata=metadata)
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "architecture": model.arch,
              "vocab_size": model.vocab_size, "model": config_to_dict(model.config)}
    if compact:
        config["sparse"] = True
    config.update(config_to_dict(extra))
    write_json_atomic(out_dir / CONFIG_NAME, config)
    return out_dir


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every parametrized tensor (a pruning mask) as its computed
    value under its own name, and no parametrization entries: what the unmasked family holds."""
    state = model.state_dict()
    for prefix, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        dot = f"{prefix}." if prefix else ""
        for name in module.parametrizations:
            inner = f"{dot}parametrizations.{name}."
            for key in [k for k in state if k.startswith(inner)]:
                del state[key]
            state[dot + name] = getattr(module, name).detach()
    return state


def read_model_config(model_dir: str | Path) -> dict:
    """config.json of a model directory, checked for the keys load_model needs."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DataError(model_dir, "model directory not found")
    path = model_dir / CONFIG_NAME
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise DataError(path, f"not a slimasr model config (format is {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise DataError(path, f"unsupported format_version {data.get('format_version')!r} "
                              f"(this slimasr reads {FORMAT_VERSION})")
    if data.get("architecture") not in list_models():
        raise DataError(path, f"unknown architecture {data.get('architecture')!r} "
                              f"(known: {', '.join(list_models())})")
    if not isinstance(data.get("model"), dict):
        raise DataError(path, "'model' must be an object of config fields")
    if not isinstance(data.get("sparse", False), bool):
        raise DataError(path, "'sparse' must be true or false")
    return data


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> AcousticModel:
    """Rebuild the model described by ``model_dir/config.json`` and load its weights strictly.

    Returns the model in eval mode on ``device``. Any bad or missing file -> one-line DataError.
    """
    model_dir = Path(model_dir)
    data = read_model_config(model_dir)
    check_shapes(model_dir, data)  # before any real allocation: config.json may claim any size
    try:
        model = build_model(data["architecture"], data["model"], vocab_size=data.get("vocab_size"))
    except ConfigError as e:
        raise DataError(model_dir / CONFIG_NAME, str(e)) from None
    _load_weights(model, model_dir / WEIGHTS_NAME, data.get("sparse", False))
    return model.to(device).eval()


def check_shapes(model_dir: Path, data: Mapping[str, Any]) -> None:
    """DataError unless the model that config.json describes has exactly the tensors (names and
    shapes) of model.safetensors' header. Costs no memory: the model is built on the meta device
    and only the header is read, so absurd sizes (hidden 10^9) fail here, not in the allocator."""
    config_path, path = model_dir / CONFIG_NAME, model_dir / WEIGHTS_NAME
    found = _header_tensors(path, data.get("sparse", False))
    try:
        with torch.device("meta"):
            skeleton = build_model(data["architecture"], data["model"], vocab_size=data.get("vocab_size"))
    except ConfigError as e:
        raise DataError(config_path, str(e)) from None
    except (RuntimeError, OverflowError) as e:  # e.g. a size beyond what a tensor can hold
        raise DataError(config_path, f"sizes that cannot be built ({e})") from None
    problem = _state_mismatch(skeleton.state_dict(), found)
    if problem:
        raise DataError(path, f"weights do not match {CONFIG_NAME}: {problem}")


def _header_tensors(path: Path, sparse: bool = False) -> dict[str, torch.Tensor]:
    """Empty meta tensors with the names and shapes of a safetensors file's header (``sparse``:
    the dense tensors a compact file stands for)."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        if sparse:
            from slimasr.prune.sparse_io import compact_shapes  # noqa: PLC0415 (prune imports models)

            shapes = compact_shapes(path)
        else:
            with safe_open(str(path), framework="pt") as f:
                shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a corrupt file; all mean "unreadable"
        raise DataError(path, f"not a readable safetensors file ({e})") from None
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def _load_weights(model: AcousticModel, path: Path, sparse: bool = False) -> None:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        if sparse:
            from slimasr.prune.sparse_io import load_compact  # noqa: PLC0415 (prune imports models)

            tensors = load_compact(path)
        else:
            tensors = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises several types for a corrupt file; all mean "unreadable"
        raise DataError(path, f"not a readable safetensors file ({e})") from None
    problem = _state_mismatch(model.state_dict(), tensors)
    if problem:
        raise DataError(path, f"weights do not match {CONFIG_NAME}: {problem}")
    _check_finite(tensors, path)
    model.load_state_dict(tensors, strict=True)


def _check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """DataError naming the first tensor (by name) holding NaN/inf: such a model outputs NaN,
    which decodes to empty text as if the model had heard silence."""
    for name in sorted(state):
        tensor = state[name]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise DataError(path, f"tensor {name} holds {bad} NaN/inf values of {tensor.numel()} "
                                  "(a diverged or damaged model)")


def _state_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """'' when names and shapes agree, else a short description of the differences."""
    parts = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)} expected"
             for k in sorted(set(expected) & set(found)) if found[k].shape != expected[k].shape]
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if names:
            more = f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
            parts.append(f"{label}: {', '.join(names[:MAX_LISTED])}{more}")
    return "; ".join(parts)

