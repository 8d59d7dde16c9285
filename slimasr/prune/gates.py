"""Hard-concrete (L0) gates on the prunable units of a model, attached from outside.

    gates = ModelGates(prunable_groups(model))      # one gate per unit of every group
    handles = gates.attach(model)                   # forward hooks on the groups' ActivationSites
    gates.mode = "sample"                           # training: stochastic gates (Louizos et al. 2018)
    p = gates.keep_probs()                          # {group: (size,) P(gate != 0)}, differentiable
    for h in handles: h.remove()

A gate multiplies its unit's features at the group's ``ActivationSite`` (``slimasr.prune.groups``):
conv channels at their activation's output, DNN neurons at theirs, heads at the input of
``out_proj`` (their context), FFN units at the input of ``down`` (their activation), GLU channels
at the input of ``pw_out``. RNN units are gated where their hidden state h leaves them: at the
layer's output (both directions) and, through a parametrization ``W -> W * z`` on the columns of
each direction's ``weight_hh`` (``torch.nn.utils.parametrize``; the fused LSTM/GRU kernel still
runs, as for ``slimasr.prune.unstructured``'s masks), where h re-enters the recurrence. One z is
drawn per forward of the layer and used at both places. A unit's h (and its LSTM cell c, which
only reaches the rest of the model through h) then affects nothing else in proportion to z, and
a closed gate gives exactly the outputs of the model with that unit removed.

Hard concrete (beta 2/3, stretched to (-0.1, 1.1), clipped to [0, 1]): training samples
``z = clip(sigmoid((log u - log(1-u) + log_alpha) / beta) * 1.2 - 0.1)``; evaluation uses the
deterministic ``clip(sigmoid(log_alpha) * 1.2 - 0.1)``; ``P(z != 0) = sigmoid(log_alpha - beta *
log(-gamma / zeta))``. ``mode = "fixed"`` applies ``fixed`` gate values (tests, binarized states).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimasr.prune.groups import ActivationSite, Group

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # hard-concrete temperature and stretch (Louizos et al.)
EPS = 1e-6  # keeps the uniform noise away from 0 and 1
DEPTH = "depth"  # the key of the per-block depth gates (no group is named so)


def log_alpha_for(keep: float) -> float:
    """The log_alpha whose deterministic gate is ``keep`` (in (0, 1)): an initial value."""
    s = (keep - GAMMA) / (ZETA - GAMMA)
    return math.log(s / (1.0 - s))


class GroupGate(nn.Module):
    """Gates of one group's units: ``log_alpha`` (size,)."""

    def __init__(self, size: int, init: float):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((size,), float(init)))

    def sample(self) -> Tensor:
        u = torch.rand_like(self.log_alpha).clamp(EPS, 1.0 - EPS)
        s = torch.sigmoid((u.log() - (-u).log1p() + self.log_alpha) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def deterministic(self) -> Tensor:
        return (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def keep_prob(self) -> Tensor:
        """P(z != 0), differentiable in log_alpha."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA))


class ModelGates(nn.Module):
    """One ``GroupGate`` per group (keyed by group name), and with ``depth = (prefix, layers)``
    one per residual block of the ModuleList ``prefix`` (keyed ``DEPTH``); see the module docstring."""

    def __init__(self, groups: list[Group], init_keep: float = 0.9, depth: tuple[str, int] | None = None):
        super().__init__()
        self.groups = {g.name: g for g in groups}
        self.gates = nn.ModuleDict({_key(g.name): GroupGate(g.size, log_alpha_for(init_keep)) for g in groups})
        self.depth = depth
        if depth is not None:  # registered only when asked: unit-only states keep their keys
            self.depth_gate = GroupGate(depth[1], log_alpha_for(init_keep))
        self.mode: Literal["sample", "deterministic", "fixed"] = "sample"
        self.fixed: dict[str, Tensor] = {}  # mode "fixed": group name (or DEPTH) -> (size,) gate values

    def gate(self, name: str) -> GroupGate:
        if name == DEPTH and self.depth is not None:
            return self.depth_gate
        return self.gates[_key(name)]

    def names(self) -> list[str]:
        """Group names, then ``DEPTH`` when there are depth gates."""
        return list(self.groups) + ([DEPTH] if self.depth is not None else [])

    def values(self, name: str) -> Tensor:
        """The (size,) gate values of group ``name`` in the current mode."""
        if self.mode == "fixed":
            return self.fixed[name]
        g = self.gate(name)
        return g.sample() if self.mode == "sample" else g.deterministic()

    def keep_probs(self) -> dict[str, Tensor]:
        """{group: (size,) P(gate != 0)}, and ``DEPTH``: (layers,) when there are depth gates."""
        return {name: self.gate(name).keep_prob() for name in self.names()}

    def attach(self, model: nn.Module) -> list:
        """Forward (pre-)hooks on every group's site (and on every block for the depth gates);
        returns the handles (``remove()`` them)."""
        handles = [_rnn_hooks(model, group, self, name) if group.kind == "rnn_unit"
                   else _hook(model, group.activation, self, name) for name, group in self.groups.items()]
        if self.depth is not None:
            prefix, layers = self.depth
            handles += [_block_hook(model.get_submodule(f"{prefix}.{i}"), self, i) for i in range(layers)]
        return handles


def _key(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys may not contain dots


def feature_mask(z: Tensor, positions: Tensor, features: int) -> Tensor:
    """(features,) multiplier: unit j's value at its ``positions[j, :]``, 1 elsewhere."""
    pos = positions.to(z.device)
    vals = z[:, None].expand(-1, pos.shape[1]).reshape(-1)
    return torch.ones(features, dtype=z.dtype, device=z.device).index_put((pos.reshape(-1),), vals)


def _apply(x: Tensor, site: ActivationSite, z: Tensor) -> Tensor:
    dim = site.dim % x.dim()
    shape = [1] * x.dim()
    shape[dim] = x.shape[dim]
    return x * feature_mask(z.to(x.dtype), site.positions, x.shape[dim]).view(shape)


def _hook(model: nn.Module, site: ActivationSite, gates: ModelGates, name: str):
    module = model.get_submodule(site.module)
    if site.port == "input":
        def pre(_m, args):
            return (_apply(args[0], site, gates.values(name)), *args[1:])
        return module.register_forward_pre_hook(pre)

    def post(_m, _args, out):
        if isinstance(out, tuple):
            return (_apply(out[0], site, gates.values(name)), *out[1:])
        return _apply(out, site, gates.values(name))
    return module.register_forward_hook(post)


def recurrent_columns(group: Group) -> list:
    """An RNN group's slices of its own directions' ``weight_hh`` columns (column j: unit j's h
    re-entering the recurrence), where its gates act besides the output; [] for other groups."""
    if group.kind != "rnn_unit":
        return []
    return [s for s in group.slices if s.dim == 1 and s.tensor.startswith(f"{group.activation.module}.")
            and s.tensor.endswith(".weight_hh_l0")]


class _RecurrentGate(nn.Module):
    """The parametrization ``W -> W * z`` on the columns of a ``weight_hh`` (h re-entering the
    recurrence); z: the layer's draw of this forward (``current["z"]``; none outside a forward)."""

    def __init__(self, current: dict, positions: Tensor):
        super().__init__()
        self.current, self.positions = current, positions

    def forward(self, weight: Tensor) -> Tensor:
        z = self.current.get("z")
        if z is None:
            return weight
        return weight * feature_mask(z.to(weight.dtype), self.positions, weight.shape[1])[None, :]


class _RnnHandle:
    """Removes an RNN group's hooks and recurrent parametrizations (the weights as they were)."""

    def __init__(self, hooks: list, parametrized: list[tuple[nn.Module, str]]):
        self.hooks, self.parametrized = hooks, parametrized

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for module, attr in self.parametrized:
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            module._init_flat_weights()  # the fused kernel reads the plain parameters again
        self.hooks, self.parametrized = [], []


def _rnn_hooks(model: nn.Module, group: Group, gates: ModelGates, name: str) -> _RnnHandle:
    """An RNN group's gates: drawn once per forward of the layer (pre-hook), applied to its
    output (post-hook) and to its directions' ``weight_hh`` columns (parametrizations)."""
    site, current = group.activation, {}
    layer = model.get_submodule(site.module)

    def pre(_m, _args):
        current["z"] = gates.values(name)

    def post(_m, _args, out):
        z = current.pop("z")
        return (_apply(out[0], site, z), *out[1:]) if isinstance(out, tuple) else _apply(out, site, z)

    parametrized = []
    for s in recurrent_columns(group):
        prefix, _, attr = s.tensor.rpartition(".")
        module = model.get_submodule(prefix)
        parametrize.register_parametrization(module, attr, _RecurrentGate(current, s.positions))
        parametrized.append((module, attr))
    return _RnnHandle([layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)], parametrized)


def _block_hook(block: nn.Module, gates: ModelGates, i: int):
    """Block i's output y -> z y + (1 - z) x, x the block's input (exact identity at z = 0,
    exactly the block at z = 1)."""
    def post(_m, args, out):
        z = gates.values(DEPTH)[i].to(out.dtype)
        return z * out + (1 - z) * args[0]
    return block.register_forward_hook(post)
