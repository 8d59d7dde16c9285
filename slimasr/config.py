"""Dataclass configs: load from YAML/JSON, apply ``key=value`` overrides, reject unknown keys.

Configs are plain dataclasses with a comment on every default (see e.g. ``SynthConfig``). This
module only moves values in and out of them:

    cfg = load_config(SynthConfig, "recipes/demo.yaml", overrides=["hours=0.5", "seed=3"])
    data = config_to_dict(cfg)           # plain dict, JSON/YAML serializable

Nested dataclasses are addressed with dots (``model.hidden=256``). Values in overrides are parsed
as YAML scalars/lists (``1e-3``, ``true``, ``[0.9, 1.0, 1.1]``) and then checked against the
field's type, so a typo is an error that names the key, never a silent default. Numbers must be
finite (``nan`` and ``inf`` are refused); each config's ``__post_init__`` checks its own ranges,
usually with :func:`check_numbers`.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from slimasr.errors import ConfigError

T = TypeVar("T")


def read_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON mapping (JSON is YAML); one-line ConfigError naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = " ".join(str(e).split())
        raise ConfigError(f"{path}: not valid YAML/JSON ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}``."""
    out: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        value = _parse_scalar(raw)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is set both as a value and a section")
        node[parts[-1]] = value
    return out


def _parse_scalar(raw: str) -> Any:
    """YAML scalar/list parsing, plus the numbers YAML 1.1 leaves as strings (``1e-3``)."""
    if not raw.strip():
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def merge(base: Mapping, update: Mapping) -> dict:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses.

    Unknown keys and values of the wrong type raise ConfigError naming ``where.key``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {', '.join(unknown)} (known: {known})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise  # already names its key (``train.lr must be ...``)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def check_numbers(section: str, cfg: Any, positive: Sequence[str] = (),
                  non_negative: Sequence[str] = (), fractions: Sequence[str] = ()) -> None:
    """ConfigError naming ``section.field`` unless every named field of ``cfg`` is a finite number
    in its range: ``positive`` > 0, ``non_negative`` >= 0, ``fractions`` in [0, 1]. A field left
    at None (optional, unset) passes. For ``__post_init__``: it also catches NaN, which every
    ``<`` comparison lets through."""
    rules = ((positive, "> 0", lambda v: v > 0), (non_negative, ">= 0", lambda v: v >= 0),
             (fractions, "in [0, 1]", lambda v: 0 <= v <= 1))
    for names, wanted, ok in rules:
        for name in names:
            value = getattr(cfg, name)
            if value is None:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and _is_finite(value) and ok(value)):
                raise ConfigError(f"{section}.{name} must be a finite number {wanted}, got {value!r}")


def load_config(cls: type[T], source: str | Path | Mapping | None = None,
                overrides: Sequence[str] = (), section: str | None = None) -> T:
    """Defaults of ``cls``, updated by a file or mapping (optionally one ``section`` of it),
    then by ``key=value`` overrides."""
    data: Mapping = {}
    if isinstance(source, (str, Path)):
        data = read_config_file(source)
    elif source is not None:
        data = source
    if section is not None:
        data = data.get(section) or {}
    return from_dict(cls, merge(data, parse_overrides(overrides)))


def config_to_dict(cfg: Any) -> Any:
    """A dataclass (possibly nested) as plain JSON-serializable data."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def _is_finite(value: int | float) -> bool:
    """False for nan, inf and an int too large for a float (where math.isfinite overflows)."""
    return abs(value) <= sys.float_info.max


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; convert where it is lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(typing.get_args(tp), value, key)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}")
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, key)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return _coerce_sequence(tp, value, key)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(tp, value, key)


def _coerce_union(args: tuple, value: Any, key: str) -> Any:
    """The first member type of an ``X | Y | None`` that takes ``value``."""
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(arg, value, key)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")


def _coerce_sequence(tp: Any, value: Any, key: str) -> list | tuple:
    """A list or tuple, each item checked (fixed-length tuples item by item)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    inner = args[0] if args else Any
    items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple or tp is tuple else items


SCALARS: dict[Any, tuple[tuple[type, ...], str]] = {  # type -> (accepted Python types, its name)
    float: ((int, float), "a number"), int: ((int,), "an integer"),
    bool: ((bool,), "true or false"), str: ((str,), "a string"), Path: ((str, Path), "a path"),
}


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    """Numbers (no bools as numbers; floats finite), bools, strings and paths; other types as given."""
    if tp not in SCALARS:
        return value
    accepted, name = SCALARS[tp]
    if not isinstance(value, accepted) or (isinstance(value, bool) and tp is not bool):
        raise ConfigError(f"{key}: expected {name}, got {value!r}")
    if tp is float:
        if not _is_finite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    return Path(value) if tp is Path else value
