"""What couples to what: each model family declares its prunable groups and its layer stack.

A *group* is a set of units (neurons, channels, RNN units, heads, ...) that are removed one at a
time, together with every tensor slice that goes when a unit goes: the unit's own rows (weights,
biases, norm parameters, BatchNorm running statistics) and the columns of whatever reads it.

    groups = prunable_groups(model)            # list[Group], dispatched on model.arch
    g = groups[0]; g.slices[0].positions       # (g.size, m): unit j owns these indices along dim
    params_per_unit(model, g)                  # parameters one unit of g costs

Importance criteria score the units of a group (one score per unit, ``Group.size`` scores) and
may observe them at ``Group.activation``; ``slimasr.prune.surgery`` slices the tensors. Neither
needs to know a family's internals: a new family registers a function with ``register_groups``
(and ``register_layer_stack`` for depth pruning).

Every declaration reads its widths from the built modules (not the config), so it describes the
model as it really is. The narrower layout is always the original with the removed indices
deleted and the order of the rest kept (gate-major LSTM rows, head-major attention, channel-major
flattened conv features all satisfy this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

import torch
from torch import Tensor, nn

from slimasr.models.common import AcousticModel, Conv2dSubsampling

RNN_GATES = {nn.LSTM: 4, nn.GRU: 3}  # gate blocks stacked (gate-major) in PyTorch's RNN weights
RNN_ROW_TENSORS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")  # one row per gate and unit
BATCH_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")  # per channel; not num_batches_tracked
LAYER_NORM_TENSORS = ("weight", "bias")  # per-channel affine of a LayerNorm


@dataclass(frozen=True, eq=False)
class Slice:
    """Indices of one tensor that belong to the units of a group.

    ``positions``: (size, m) int64; unit j owns indices ``positions[j, :]`` along ``dim`` of the
    state_dict entry ``tensor``. ``consumer`` is True for the columns of a layer that *reads* the
    units (their outgoing weights), False for the units' own weights, biases and norm entries.
    """

    tensor: str  # state_dict key, e.g. "rnns.0.fwd.weight_ih_l0"
    dim: int  # dimension that is sliced
    positions: Tensor  # (size, m) int64
    consumer: bool = False  # True: outgoing weights (the reader's columns)

    def __post_init__(self) -> None:
        if self.positions.dim() != 2 or self.positions.dtype != torch.int64:
            raise ValueError(f"{self.tensor}: positions must be a 2-D int64 tensor")


@dataclass(frozen=True, eq=False)
class ActivationSite:
    """Where the units' activations can be observed with a forward (pre-)hook.

    ``port`` "input": the first positional argument of ``module``'s forward (a pre-hook);
    "output": its output (the first element when it returns a tuple). Unit j is the features
    ``positions[j, :]`` along ``dim`` of that tensor: -1 for (N, T, D) tensors, 1 for (N, C, T, F).
    """

    module: str  # qualified module name, for model.get_submodule
    port: Literal["input", "output"]  # forward input or output
    dim: int  # dimension holding the units
    positions: Tensor  # (size, m) int64


@dataclass(frozen=True, eq=False)
class Group:
    """Units that are pruned as one kind of thing; see the module docstring."""

    name: str  # unique and stable, e.g. "rnns.1", "blocks.3.attn"
    kind: str  # "conv_channel" | "neuron" | "rnn_unit" | "head" | "ffn_unit" | "glu_channel"
    size: int  # current number of units
    slices: tuple[Slice, ...]  # every slice that goes when a unit goes
    config_field: str  # config field holding the width, e.g. "rnn_hidden_sizes"
    config_index: int  # index into that field's per-layer list
    min_size: int  # smallest legal width (0: the sub-module is then absent)
    activation: ActivationSite  # where a unit's activation is observed

    def __post_init__(self) -> None:
        for s in (*self.slices, self.activation):
            if s.positions.shape[0] != self.size:
                raise ValueError(f"group {self.name}: positions with {s.positions.shape[0]} rows "
                                 f"for {self.size} units")


@dataclass(frozen=True, eq=False)
class LayerStack:
    """The repeated layers of a family, for depth pruning (``surgery.select_layers``).

    Layer i's parameters are the state_dict keys starting with ``f"{prefix}.{i}."``. Each config
    field in ``config_fields`` holds ``per_layer`` entries per layer when it is a list (an int
    applies to every layer and stays as it is).
    """

    prefix: str  # ModuleList holding the layers: "layers", "rnns", "blocks"
    num_layers: int  # current number of layers
    config_fields: Mapping[str, int]  # per-layer config field -> entries per layer
    count_field: str | None  # config field holding the number of layers (e.g. "num_blocks"), if any
    # (input width, output width) of each layer when each reads the previous one's output and the
    # first reads the front-end; None when every layer reads and writes one shared (residual) width
    widths: tuple[tuple[int, int], ...] | None


GroupsFn = Callable[[AcousticModel], list[Group]]
StackFn = Callable[[AcousticModel], LayerStack]
_GROUPS: dict[str, GroupsFn] = {}
_STACKS: dict[str, StackFn] = {}


def register_groups(arch: str) -> Callable[[GroupsFn], GroupsFn]:
    """Decorator: ``fn(model) -> list[Group]`` declares the groups of family ``arch``."""
    def wrap(fn: GroupsFn) -> GroupsFn:
        _GROUPS[arch] = fn
        return fn
    return wrap


def register_layer_stack(arch: str) -> Callable[[StackFn], StackFn]:
    """Decorator: ``fn(model) -> LayerStack`` declares the layer stack of family ``arch``."""
    def wrap(fn: StackFn) -> StackFn:
        _STACKS[arch] = fn
        return fn
    return wrap


def prunable_groups(model: AcousticModel) -> list[Group]:
    """Every prunable group of ``model``, in forward order (names are unique)."""
    return _lookup(_GROUPS, model, "prunable groups")(model)


def group_by_name(model: AcousticModel) -> dict[str, Group]:
    """``prunable_groups`` keyed by name."""
    return {g.name: g for g in prunable_groups(model)}


def layer_stack(model: AcousticModel) -> LayerStack:
    """The layer stack of ``model``'s family."""
    return _lookup(_STACKS, model, "a layer stack")(model)


def params_per_unit(model: AcousticModel, group: Group) -> int:
    """Parameters removed with one unit of ``group`` when only this group shrinks.

    Exact where a tensor is sliced along two dims (an RNN's ``weight_hh``: its row and column
    share one entry per gate). Buffers (BatchNorm running statistics) are not parameters.
    """
    params = dict(model.named_parameters())
    shapes: dict[str, list[int]] = {}
    for s in group.slices:
        if s.tensor in params:
            shape = shapes.setdefault(s.tensor, list(params[s.tensor].shape))
            shape[s.dim] -= s.positions.shape[1]
    return sum(params[k].numel() - math.prod(shape) for k, shape in shapes.items())


def _lookup(table: dict, model: AcousticModel, what: str) -> Callable:
    arch = getattr(model, "arch", "")
    if arch not in table:
        raise ValueError(f"model family {arch!r} declares no {what} (known: {', '.join(sorted(table))})")
    return table[arch]


# ---- position patterns ----------------------------------------------------------------------

def units(size: int) -> Tensor:
    """(size, 1): unit j owns index j."""
    return torch.arange(size, dtype=torch.int64)[:, None]


def contiguous(size: int, width: int) -> Tensor:
    """(size, width): unit j owns the contiguous block j*width .. j*width + width - 1."""
    return torch.arange(size, dtype=torch.int64)[:, None] * width + torch.arange(width)[None, :]


def strided(size: int, count: int) -> Tensor:
    """(size, count): unit j owns j, size + j, 2*size + j, ... (one entry per stacked block)."""
    return torch.arange(size, dtype=torch.int64)[:, None] + size * torch.arange(count)[None, :]


def _own(prefix: str, names: tuple[str, ...], positions: Tensor, dim: int = 0) -> list[Slice]:
    return [Slice(f"{prefix}.{n}", dim, positions) for n in names]


def _reads(tensor: str, positions: Tensor) -> Slice:
    """Columns of a weight that reads the units."""
    return Slice(tensor, 1, positions, consumer=True)


def _norm_slices(prefix: str, norm: nn.Module, size: int) -> list[Slice]:
    """Per-channel entries of a norm over the units (none for Identity)."""
    if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _own(prefix, BATCH_NORM_TENSORS, units(size))
    if isinstance(norm, nn.LayerNorm):  # couples channels: removing one is not exact (see conformer.py)
        return _own(prefix, LAYER_NORM_TENSORS, units(size))
    return []


# ---- shared pieces --------------------------------------------------------------------------

def subsampling_groups(sub: Conv2dSubsampling, prefix: str, reader: list[str]) -> list[Group]:
    """Output channels of each conv of a ``Conv2dSubsampling`` at ``prefix``.

    ``reader``: the weights (Linear-style, columns = features ``c * F' + f``) that read the
    flattened output of the last conv.
    """
    out = []
    last = len(sub.convs) - 1
    for i, conv in enumerate(sub.convs):
        c = conv.out_channels
        slices = _own(f"{prefix}.convs.{i}", ("weight", "bias"), units(c))
        slices += _norm_slices(f"{prefix}.norms.{i}", sub.norms[i], c)
        if i < last:
            slices.append(_reads(f"{prefix}.convs.{i + 1}.weight", units(c)))
        else:
            slices += [_reads(t, contiguous(c, sub.out_freq)) for t in reader]
        site = ActivationSite(f"{prefix}.acts.{i}", "output", 1, units(c))
        out.append(Group(f"{prefix}.convs.{i}", "conv_channel", c, tuple(slices),
                         "subsampling_channels", i, 1, site))
    return out


# ---- DNN ------------------------------------------------------------------------------------

@register_groups("dnn")
def dnn_groups(model: AcousticModel) -> list[Group]:
    """Neurons of each hidden Linear: its rows and bias, the next layer's (or head's) columns."""
    out = []
    for i, layer in enumerate(model.layers):
        n = layer.out_features
        reader = f"layers.{i + 1}.weight" if i + 1 < len(model.layers) else "head.weight"
        slices = (*_own(f"layers.{i}", ("weight", "bias"), units(n)), _reads(reader, units(n)))
        site = ActivationSite(f"acts.{i}", "output", -1, units(n))
        out.append(Group(f"layers.{i}", "neuron", n, slices, "hidden_sizes", i, 1, site))
    return out


@register_layer_stack("dnn")
def dnn_stack(model: AcousticModel) -> LayerStack:
    widths = tuple((layer.in_features, layer.out_features) for layer in model.layers)
    return LayerStack("layers", len(model.layers), {"hidden_sizes": 1}, None, widths)


# ---- CRNN -----------------------------------------------------------------------------------

def _rnn_directions(layer: nn.Module) -> list[tuple[str, nn.RNNBase]]:
    return [(d, getattr(layer, d)) for d in ("fwd", "bwd") if getattr(layer, d) is not None]


def rnn_unit_group(model: AcousticModel, i: int) -> Group:
    """Hidden units of RNN layer i, removed from every gate of both directions at once."""
    dirs = _rnn_directions(model.rnns[i])
    hidden = dirs[0][1].hidden_size
    gates = RNN_GATES[type(dirs[0][1])]
    slices: list[Slice] = []
    for d, _ in dirs:
        p = f"rnns.{i}.{d}"
        slices += _own(p, RNN_ROW_TENSORS, strided(hidden, gates))
        slices.append(Slice(f"{p}.weight_hh_l0", 1, units(hidden)))  # recurrent input
    outputs = strided(hidden, len(dirs))  # [forward | backward] features of the layer's output
    if i + 1 < len(model.rnns):
        readers = _rnn_directions(model.rnns[i + 1])
        slices += [_reads(f"rnns.{i + 1}.{d}.weight_ih_l0", outputs) for d, _ in readers]
    else:
        slices.append(_reads("head.weight", outputs))
    site = ActivationSite(f"rnns.{i}", "output", -1, outputs)
    return Group(f"rnns.{i}", "rnn_unit", hidden, tuple(slices), "rnn_hidden_sizes", i, 1, site)


@register_groups("crnn")
def crnn_groups(model: AcousticModel) -> list[Group]:
    """Subsampling conv channels, then the hidden units of every RNN layer."""
    first = [f"rnns.0.{d}.weight_ih_l0" for d, _ in _rnn_directions(model.rnns[0])]
    out = subsampling_groups(model.subsample, "subsample", first)
    return out + [rnn_unit_group(model, i) for i in range(len(model.rnns))]


@register_layer_stack("crnn")
def crnn_stack(model: AcousticModel) -> LayerStack:
    widths = []
    for layer in model.rnns:
        dirs = _rnn_directions(layer)
        widths.append((dirs[0][1].input_size, dirs[0][1].hidden_size * len(dirs)))
    return LayerStack("rnns", len(model.rnns), {"rnn_hidden_sizes": 1}, None, tuple(widths))


# ---- Conformer ------------------------------------------------------------------------------

def attention_group(attn: nn.Module, prefix: str, index: int) -> Group:
    """Heads, head-major: rows of q/k/v (weight, bias), columns of out_proj, row of rel_bias."""
    h, dh = attn.heads, attn.head_dim
    per_head = contiguous(h, dh)
    slices = [Slice(f"{prefix}.{p}_proj.{w}", 0, per_head) for p in "qkv" for w in ("weight", "bias")]
    slices += [_reads(f"{prefix}.out_proj.weight", per_head), Slice(f"{prefix}.rel_bias", 0, units(h))]
    site = ActivationSite(f"{prefix}.out_proj", "input", -1, per_head)
    return Group(prefix, "head", h, tuple(slices), "num_heads", index, 0, site)


def ffn_group(ffn: nn.Module, prefix: str, index: int) -> Group:
    """Inner units: rows of ``up`` (weight, bias), columns of ``down``."""
    n = ffn.up.out_features
    slices = (*_own(f"{prefix}.up", ("weight", "bias"), units(n)), _reads(f"{prefix}.down.weight", units(n)))
    site = ActivationSite(f"{prefix}.down", "input", -1, units(n))
    return Group(prefix, "ffn_unit", n, slices, "ffn_dim", index, 0, site)


def glu_group(conv: nn.Module, prefix: str, index: int) -> Group:
    """GLU channels: value AND gate rows, depthwise channel, norm channel, pw_out column."""
    c = conv.pw_value.out_features
    slices = _own(f"{prefix}.pw_value", ("weight", "bias"), units(c))
    slices += _own(f"{prefix}.pw_gate", ("weight", "bias"), units(c))
    slices += _own(f"{prefix}.depthwise", ("weight", "bias"), units(c))
    slices += _norm_slices(f"{prefix}.norm", conv.norm, c)
    slices.append(_reads(f"{prefix}.pw_out.weight", units(c)))
    site = ActivationSite(f"{prefix}.pw_out", "input", -1, units(c))
    return Group(prefix, "glu_channel", c, tuple(slices), "conv_channels", index, 0, site)


@register_groups("conformer")
def conformer_groups(model: AcousticModel) -> list[Group]:
    """Subsampling channels, then per block (forward order) ffn1, attn, conv, ffn2; absent
    sub-modules (width 0) have no group. ``d_model`` is not prunable."""
    out = subsampling_groups(model.subsample, "subsample", ["input_proj.weight"])
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}"
        if block.ffn1 is not None:
            out.append(ffn_group(block.ffn1, f"{p}.ffn1", 2 * i))
        if block.attn is not None:
            out.append(attention_group(block.attn, f"{p}.attn", i))
        if block.conv is not None:
            out.append(glu_group(block.conv, f"{p}.conv", i))
        if block.ffn2 is not None:
            out.append(ffn_group(block.ffn2, f"{p}.ffn2", 2 * i + 1))
    return out


@register_layer_stack("conformer")
def conformer_stack(model: AcousticModel) -> LayerStack:
    fields = {"num_heads": 1, "ffn_dim": 2, "conv_channels": 1}
    return LayerStack("blocks", len(model.blocks), fields, "num_blocks", None)
