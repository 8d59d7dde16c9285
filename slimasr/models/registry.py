"""Model families by name: ``register_model`` (decorator), ``build_model``, ``list_models``.

    model = build_model("crnn", {"rnn_hidden_sizes": [256, 256]}, vocab_size=30)
    name, cfg = load_preset("recipes/models/crnn_teacher.yaml", overrides=["rnn_type=gru"])

A preset file is a mapping with ``architecture: NAME`` and ``model: {config fields}``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from slimasr.config import from_dict, merge, parse_overrides, read_config_file
from slimasr.errors import ConfigError
from slimasr.models.common import AcousticModel

M = TypeVar("M", bound=type[AcousticModel])

_REGISTRY: dict[str, tuple[type[AcousticModel], type]] = {}


def register_model(name: str, config_cls: type) -> Callable[[M], M]:
    """Class decorator: make model class ``cls(config, vocab_size)`` buildable as ``name``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")

    def wrap(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"model name {name!r} is already registered")
        cls.arch = name
        _REGISTRY[name] = (cls, config_cls)
        return cls

    return wrap


def list_models() -> list[str]:
    """Registered family names, sorted."""
    return sorted(_REGISTRY)


def get_config_class(name: str) -> type:
    """The config dataclass of family ``name``."""
    return _lookup(name)[1]


def make_config(name: str, cfg: Any = None) -> Any:
    """A config instance of family ``name`` from an instance, a mapping (unknown keys rejected), or
    None (defaults)."""
    config_cls = get_config_class(name)
    if cfg is None:
        return config_cls()
    if isinstance(cfg, config_cls):
        return cfg
    if isinstance(cfg, Mapping):
        return from_dict(config_cls, cfg, where=name)
    raise ConfigError(f"{name}: expected a {config_cls.__name__} or a mapping, got {type(cfg).__name__}")


def build_model(name: str, cfg: Any = None, *, vocab_size: int) -> AcousticModel:
    """A freshly initialized model of family ``name``; ``cfg`` as in ``make_config``."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ConfigError(f"{name}: vocab_size must be an integer >= 2 (blank + tokens), got {vocab_size!r}")
    model_cls, _ = _lookup(name)
    return model_cls(make_config(name, cfg), vocab_size)


def load_preset(source: str | Path | Mapping, overrides: Sequence[str] = ()) -> tuple[str, Any]:
    """Read a preset (``architecture: NAME`` + ``model: {...}``) -> (name, config instance).

    ``overrides`` are ``key=value`` strings for the ``model`` section (``rnn_hidden_sizes=[128]``).
    """
    where = str(source) if isinstance(source, (str, Path)) else "preset"
    data = read_config_file(source) if isinstance(source, (str, Path)) else dict(source)
    unknown = sorted(set(data) - {"architecture", "model"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: architecture, model)")
    name = data.get("architecture")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: missing 'architecture' (one of {', '.join(list_models())})")
    section = data.get("model") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: 'model' must be a mapping of config fields")
    try:
        return name, make_config(name, merge(section, parse_overrides(overrides)))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _lookup(name: str) -> tuple[type[AcousticModel], type]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model architecture {name!r} (known: {', '.join(list_models())})")
    return _REGISTRY[name]
