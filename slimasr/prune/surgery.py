"""Structured surgery: build a narrower (or shallower) dense model and copy the kept weights.

    small = prune_model(model, {"rnns.0": [0, 2, 5], "blocks.1.attn": []})   # width pruning
    student = select_layers(teacher, [0, 2, 4])                               # depth pruning

Surgery only slices: which tensors go together comes from ``slimasr.prune.groups``, which units
to keep from the caller (an importance criterion). The result is a fresh model of the same
family built from a config that records the new widths, so ``save_model``/``load_model``
round-trip it. The input model is never modified.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from slimasr.models import build_model
from slimasr.models.common import AcousticModel
from slimasr.prune.groups import Group, LayerStack, group_by_name, layer_stack

MAX_NAMES_LISTED = 8  # how many known group names an "unknown group" error lists


def prune_model(model: AcousticModel, keep: Mapping[str, Sequence[int]]) -> AcousticModel:
    """A new dense model keeping, for each named group, only the listed units.

    keep: group name -> unit indices to keep (any order, no duplicates, at least the group's
    ``min_size``). Groups not named are untouched. A Conformer sub-module kept at 0 units
    disappears. Returns the same class, on the same device and dtype, in the same train/eval mode.
    ValueError names the group on any bad entry.
    """
    groups = group_by_name(model)
    kept = {name: _checked_units(groups, name, units) for name, units in keep.items()}
    config = _pruned_config(model.config, groups.values(), kept)
    state = model.state_dict()
    index = _kept_indices(state, [(groups[n], k) for n, k in kept.items()])
    new_state = {}
    for key, tensor in state.items():
        for dim, idx in index.get(key, {}).items():
            tensor = tensor.index_select(dim, idx.to(tensor.device))
        new_state[key] = tensor
    return _rebuild(model, config, new_state)


def select_layers(model: AcousticModel, keep: Sequence[int]) -> AcousticModel:
    """A new model with only the listed layers of the family's stack (CRNN RNN layers, DNN hidden
    layers, Conformer blocks), renumbered, plus everything else (front-end, head) as it is.

    keep: layer indices, strictly increasing. Where layers chain (CRNN, DNN) the first layer
    must be kept and each kept layer must read the previous kept layer's output width, the last
    one writing the head's input width; Conformer blocks may be any non-empty subset.
    """
    stack = layer_stack(model)
    layers = _checked_layers(stack, keep)
    config = _selected_config(model.config, stack, layers)
    new_index = {old: new for new, old in enumerate(layers)}
    new_state = {}
    for key, tensor in model.state_dict().items():
        renamed = _renumbered(key, stack.prefix, new_index)
        if renamed is not None:
            new_state[renamed] = tensor
    return _rebuild(model, config, new_state)


def _checked_units(groups: Mapping[str, Group], name: str, units: Iterable[int]) -> list[int]:
    """Sorted unit indices to keep; ValueError naming the group when they are not usable."""
    if name not in groups:
        known = list(groups)
        more = f", ... ({len(known)} in all)" if len(known) > MAX_NAMES_LISTED else ""
        raise ValueError(f"unknown group {name!r} (known: {', '.join(known[:MAX_NAMES_LISTED])}{more})")
    group = groups[name]
    kept = _integers(units, f"group {name}: unit indices")
    bad = [u for u in kept if not 0 <= u < group.size]
    if bad:
        raise ValueError(f"group {name}: unit index {bad[0]} out of range (group has {group.size} units)")
    if len(set(kept)) != len(kept):
        raise ValueError(f"group {name}: duplicate unit indices")
    if len(kept) < group.min_size:
        raise ValueError(f"group {name}: keeps {len(kept)} units, fewer than its minimum {group.min_size}")
    return sorted(kept)


def _integers(values: Iterable[int], what: str) -> list[int]:
    """Python ints from ints, numpy or 0-d torch integers; ValueError for anything else (bools too)."""
    try:
        values = list(values)
        if any(isinstance(v, bool) for v in values):
            raise TypeError
        return [operator.index(v) for v in values]
    except TypeError:
        raise ValueError(f"{what} must be a sequence of integers") from None


def _pruned_config(config: Any, groups: Iterable[Group], kept: Mapping[str, list[int]]) -> Any:
    """Copy of ``config`` with each pruned group's width set to its number of kept units."""
    groups = list(groups)
    changes: dict[str, list[int]] = {}
    for name, units in kept.items():
        group = next(g for g in groups if g.name == name)
        field = group.config_field
        if field not in changes:
            value = getattr(config, field)
            if isinstance(value, int):  # one width for every layer: all present, one group each
                value = [value] * (1 + max(g.config_index for g in groups if g.config_field == field))
            changes[field] = list(value)
        changes[field][group.config_index] = len(units)
    return dataclasses.replace(copy.deepcopy(config), **changes)


def _kept_indices(state: Mapping[str, Tensor], pruned: list[tuple[Group, list[int]]]
                  ) -> dict[str, dict[int, Tensor]]:
    """tensor -> dim -> ascending indices kept along dim (the removed units' positions deleted).

    Several groups may slice one tensor (rows by one, columns by the next); their removals add up.
    """
    removed: dict[str, dict[int, set[int]]] = {}
    for group, units in pruned:
        gone = sorted(set(range(group.size)) - set(units))
        for s in group.slices:
            dims = removed.setdefault(s.tensor, {})
            dims.setdefault(s.dim, set()).update(s.positions[gone].flatten().tolist())
    index: dict[str, dict[int, Tensor]] = {}
    for key, dims in removed.items():
        for dim, gone in dims.items():
            keep = [i for i in range(state[key].shape[dim]) if i not in gone]
            index.setdefault(key, {})[dim] = torch.tensor(keep, dtype=torch.int64)
    return index


def _checked_layers(stack: LayerStack, keep: Sequence[int]) -> list[int]:
    """The kept layer indices; ValueError in words when they cannot form a model."""
    layers = _integers(keep, f"{stack.prefix}: layer indices")
    if not layers:
        raise ValueError(f"{stack.prefix}: keep at least one layer")
    if any(not 0 <= i < stack.num_layers for i in layers):
        raise ValueError(f"{stack.prefix}: layer indices must be in 0..{stack.num_layers - 1}, got {layers}")
    if any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(f"{stack.prefix}: layer indices must be strictly increasing, got {layers}")
    if stack.widths is not None:
        _check_chain(stack, layers)
    return layers


def _check_chain(stack: LayerStack, layers: list[int]) -> None:
    w = stack.widths
    if layers[0] != 0:
        raise ValueError(f"{stack.prefix}: layer 0 reads the front-end and must be kept")
    for a, b in zip(layers, layers[1:]):
        if w[a][1] != w[b][0]:
            raise ValueError(f"{stack.prefix}: layer {b} reads width {w[b][0]} but layer {a} "
                             f"writes {w[a][1]}")
    if w[layers[-1]][1] != w[-1][1]:
        raise ValueError(f"{stack.prefix}: the head reads width {w[-1][1]} but layer {layers[-1]} "
                         f"writes {w[layers[-1]][1]}")


def _selected_config(config: Any, stack: LayerStack, layers: list[int]) -> Any:
    changes: dict[str, Any] = {}
    for field, per_layer in stack.config_fields.items():
        value = getattr(config, field)
        if not isinstance(value, int):
            changes[field] = [value[i * per_layer + j] for i in layers for j in range(per_layer)]
    if stack.count_field is not None:
        changes[stack.count_field] = len(layers)
    return dataclasses.replace(copy.deepcopy(config), **changes)


def _renumbered(key: str, prefix: str, new_index: Mapping[int, int]) -> str | None:
    """State key with its layer renumbered; None for a dropped layer's key."""
    if not key.startswith(prefix + "."):
        return key
    layer, _, rest = key[len(prefix) + 1:].partition(".")
    if int(layer) not in new_index:
        return None
    return f"{prefix}.{new_index[int(layer)]}.{rest}"


def _rebuild(model: AcousticModel, config: Any, state: Mapping[str, Tensor]) -> AcousticModel:
    """A fresh model of ``model``'s family from ``config``, holding ``state`` (strictly), on
    ``model``'s device and dtype and in its train/eval mode."""
    new = build_model(model.arch, config, vocab_size=model.vocab_size)
    param = next(model.parameters())
    new.to(device=param.device, dtype=param.dtype)
    expected = new.state_dict()
    new.load_state_dict({k: state[k] for k in expected if k in state}, strict=True)
    return new.train(model.training)
