"""Regularization-driven pruning: penalties that drive weights, or whole units, to exactly zero
during training, and the removal of the units they emptied.

    reg = Regularizer(RegularizeConfig(kind="group-lasso", strength=0.05, warmup_steps=200), model)
    ... after every optimizer step: reg.after_step(trainer)   (the recipe's ``sparsity.regularize``)
    small, removed = remove_weak_units(model, threshold=0.0)   # a dense, narrower model (surgery)

Penalties (``strength`` = lambda):

- ``l1``: lambda * sum |w| over the weights ``slimasr.prune.unstructured`` would prune (Linear,
  Conv, LSTM/GRU weights matching ``include``/``exclude``): unstructured sparsity.
- ``group-lasso``: lambda * sum over units of sqrt(p_g) * ||w_unit||_2 (L2,1), a unit being one
  of the structured groups the model family declares (``slimasr.prune.groups``: an LSTM unit
  across all gates and both directions with its outgoing columns, a conv channel with its
  BatchNorm entry, a head, an FFN unit, a GLU pair); p_g is the parameters one unit owns, so
  big and small units are penalised alike per weight (Yuan & Lin 2006).
- ``slimming``: lambda * sum |gamma| over the norm scales of the groups that have one (network
  slimming, Liu et al. 2017: conv channels' BatchNorm, the Conformer conv module's norm).

Each is applied *decoupled*, as its proximal step after the optimizer's step, exactly like
AdamW's decoupled weight decay: with tau = lr_t * lambda * min(1, step / warmup_steps),
``l1`` soft-thresholds every weight (w <- sign(w) max(|w| - tau, 0)), ``group-lasso`` shrinks
each unit (w_u <- w_u max(0, 1 - tau sqrt(p_g) / ||w_u||)) and ``slimming`` soft-thresholds the
scales. Adding the penalty's subgradient to the loss instead would reach Adam scaled by its
per-weight normalisation (a weight with no task gradient moves by ~lr whatever lambda) and never
land on zero; the proximal step gives exact zeros, so sparsity is counted, not thresholded.

``metric`` says in which metric that proximal step is taken (group lasso only).
``euclidean`` (the default) shrinks every unit by tau sqrt(p_g) in plain weight space; Adam's own
steps are normalised (~lr per weight whatever the gradient's size), so the shrink competes with
the *sign* of the task gradient, and lambda near 1 empties every unit. ``adam`` takes the step in
Adam's preconditioned metric, as proximal adaptive methods do (ProxGen: Yun, Lozano & Yang,
NeurIPS 2021): the shrink of unit u is divided by c_u, the mean of sqrt(v_hat) + eps over its
weights (v_hat: AdamW's bias-corrected second moment; one c per unit keeps the group prox in
closed form). The shrink then meets the task gradient on the same scale as Adam's step does, and
a unit survives where the loss pushes back with a gradient norm above about lambda sqrt(p_g): the
group-lasso optimality condition. lambda is then in units of the loss gradient per weight (KD
and CTC gradients per weight of a trained model are ~1e-4..1e-3), not a share of Adam's step.

``target_macs`` (group lasso only) makes the penalty *targeted*: only the units that a removal of
that share of the MACs would take now are shrunk (the global plan of ``slimasr.prune.plan`` on
the units' L2 norms, re-chosen every ``reselect_steps``; or, with ``target_widths``, the
lowest-norm units beyond each named group's width, e.g. the widths a sensitivity plan chose), so
the units that will stay keep their weights, and the ones that will go fade out while training moves their work elsewhere; the
removal at the end then takes units that are already zero. This is growing regularization on the
units to prune (Wang, Qin, Zhang & Fu, ICLR 2021) with the group-lasso proximal step; plain group
lasso shrinks every unit, the kept ones included, and removal to a target cuts units it has
only weakened.

A unit emptied by group lasso outputs exactly zero (a zero LSTM unit: all gates at their
bias-free values, cell and output 0; a zero conv channel with zero BatchNorm scale and shift), so
``remove_weak_units`` (structured surgery) removes it without changing the outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from slimasr.config import check_numbers
from slimasr.errors import ConfigError
from slimasr.models.common import AcousticModel
from slimasr.prune.groups import Group, prunable_groups
from slimasr.prune.importance import Scores, magnitude_scores, unit_sums
from slimasr.prune.plan import PruneTarget, plan
from slimasr.prune.surgery import prune_model
from slimasr.prune.unstructured import plain_name, select_tensors

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)  # modules whose "weight" is a scale


@dataclass
class RegularizeConfig:
    """A sparsity-inducing training penalty (see the module docstring)."""

    kind: Literal["none", "l1", "group-lasso", "slimming"] = "none"  # the penalty ("none": off)
    strength: float = 0.0  # lambda; each step shrinks by lr * lambda (decoupled, like AdamW's decay)
    warmup_steps: int = 0  # lambda ramps linearly from 0 over these optimizer steps
    metric: Literal["euclidean", "adam"] = "euclidean"  # group-lasso: the proximal step's metric
    target_macs: float | None = None  # group-lasso: shrink only the units removing this MACs share takes
    target_widths: dict[str, int] | None = None  # group-lasso: or shrink the units beyond these widths
    reselect_steps: int = 50  # targets: re-choose those units every this many optimizer steps
    include: list[str] = field(default_factory=lambda: ["*"])  # l1: state_dict name patterns
    exclude: list[str] = field(default_factory=list)  # l1: patterns left alone

    def __post_init__(self) -> None:
        check_numbers("regularize", self, non_negative=("strength", "warmup_steps"), positive=("reselect_steps",))
        if self.kind != "none" and self.strength == 0:
            raise ConfigError(f"regularize.strength: {self.kind} needs a strength > 0")
        if self.metric == "adam" and self.kind != "group-lasso":
            raise ConfigError(f"regularize.metric: adam is built for group-lasso, not {self.kind}")
        for name in ("target_macs", "target_widths"):
            if getattr(self, name) is not None and self.kind != "group-lasso":
                raise ConfigError(f"regularize.{name}: targets group-lasso, not {self.kind}")
        if self.target_macs is not None and self.target_widths is not None:
            raise ConfigError("regularize: target_macs or target_widths, not both")
        if self.target_macs is not None:
            if not 0.0 < self.target_macs < 1.0:
                raise ConfigError(f"regularize.target_macs: a share of the MACs to remove in (0, 1), "
                                  f"got {self.target_macs}")


class Regularizer:
    """The proximal step of one penalty, called after every optimizer step (a training
    callback); ``penalty()`` is its current value R(w) (without lambda)."""

    def __init__(self, cfg: RegularizeConfig, model: nn.Module):
        self.cfg, self.model = cfg, model
        self.last_tau = 0.0
        self.last_unit_scale: float | None = None  # metric adam: the median c_u of the last step
        self.selected: dict[str, Tensor] | None = None  # target_macs: 1.0 for the units shrunk
        self._counts: tuple[frozenset[str], list[Tensor]] | None = None  # metric adam: weights per unit
        if cfg.kind == "l1":
            self.names = select_tensors(model, cfg.include, cfg.exclude)
        elif cfg.kind == "group-lasso":
            self.groups = prunable_groups(model)
            sizes = {g.name: g.size for g in self.groups}
            for name, width in (cfg.target_widths or {}).items():
                if name not in sizes or not 0 < width <= sizes[name]:
                    raise ConfigError(f"regularize.target_widths: {name}: {width} is not a width of a group "
                                      f"of this model ({sizes})")
            self.weights = [math.sqrt(unit_size(g, parameters_by_name(model))) for g in self.groups]
        elif cfg.kind == "slimming":
            self.scales = norm_scale_slices(model)
            if not self.scales:
                raise ConfigError("regularize.kind: slimming needs groups with a norm scale; this "
                                  "model has none (use group-lasso)")

    def after_step(self, trainer: Any) -> None:
        lr = trainer.optimizer.param_groups[0]["lr"]
        self.step(lr, trainer.state.step, trainer.optimizer)

    @torch.no_grad()
    def step(self, lr: float, step: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """One proximal step for learning rate ``lr`` after optimizer step ``step`` (1-based);
        ``metric: adam`` reads the second moments of ``optimizer`` (an Adam or AdamW)."""
        ramp = min(1.0, step / self.cfg.warmup_steps) if self.cfg.warmup_steps else 1.0
        tau = lr * self.cfg.strength * ramp
        self.last_tau = tau
        params = parameters_by_name(self.model)
        if self.cfg.kind == "l1":
            for n in self.names:
                soft_threshold_(params[n], tau)
        elif self.cfg.kind == "group-lasso":
            scale = adam_scale(optimizer, self.model) if self.cfg.metric == "adam" else None
            means = [None] * len(self.groups) if scale is None else self._unit_means(scale)
            if self._targeted() and (self.selected is None or step % self.cfg.reselect_steps == 0):
                self.selected = units_to_remove(self.model, self.cfg.target_macs, self.cfg.target_widths)
            for group, weight, c in zip(self.groups, self.weights, means):
                per_unit = tau * weight if c is None else tau * weight / c
                if self.selected is not None:
                    per_unit = per_unit * self.selected[group.name]
                shrink_group_(group, params, per_unit)
            if scale is not None:
                self.last_unit_scale = float(torch.cat(means).median())
        elif self.cfg.kind == "slimming":
            for name, positions in self.scales:
                soft_threshold_(params[name], tau, positions)

    def _unit_means(self, scale: dict[str, Tensor]) -> list[Tensor]:
        """c_u of every group; the weight counts per unit are computed once per set of tensors."""
        if self._counts is None or self._counts[0] != frozenset(scale):
            self._counts = (frozenset(scale), [unit_counts(g, scale) for g in self.groups])
        return [unit_means(g, scale, count) for g, count in zip(self.groups, self._counts[1])]

    def _targeted(self) -> bool:
        return self.cfg.target_macs is not None or self.cfg.target_widths is not None

    def penalty(self) -> float:
        """R(w): sum |w| (l1), sum sqrt(p_g) ||w_u|| (group-lasso) or sum |gamma| (slimming)."""
        params = parameters_by_name(self.model)
        if self.cfg.kind == "l1":
            return float(sum(params[n].detach().abs().double().sum() for n in self.names))
        if self.cfg.kind == "group-lasso":
            return float(sum(w * unit_norms(g, params).sum() for g, w in zip(self.groups, self.weights)))
        if self.cfg.kind == "slimming":
            return float(sum(params[n].detach()[p].abs().double().sum() for n, p in self.scales))
        return 0.0

    def summary(self) -> dict:
        out = {"kind": self.cfg.kind, "strength": self.cfg.strength, "penalty": self.penalty(),
               "last_tau": self.last_tau}
        if self.cfg.metric == "adam":  # the gradient scale lambda is compared with (see metric)
            out.update(metric="adam", median_unit_scale=self.last_unit_scale)
        if self.selected is not None:
            out.update(target_macs=self.cfg.target_macs, target_widths=self.cfg.target_widths,
                       targeted_units={n: int(m.sum()) for n, m in self.selected.items() if m.any()})
        return {"regularize": out}


# ---- proximal operators -------------------------------------------------------------------------

def soft_threshold_(w: Tensor, tau: float, positions: Tensor | None = None) -> None:
    """w <- sign(w) max(|w| - tau, 0), on all of ``w`` or its entries ``positions`` (dim 0)."""
    if positions is None:
        w.copy_(w.sign() * (w.abs() - tau).clamp(min=0))
    else:
        idx = positions.to(w.device)
        part = w[idx]
        w[idx] = part.sign() * (part.abs() - tau).clamp(min=0)


def shrink_group_(group: Group, params: dict[str, Tensor], tau: float | Tensor) -> None:
    """Group soft-threshold: every weight of unit j scaled by max(0, 1 - tau_j / ||w_j||) (0 for
    an empty unit); ``tau``: one threshold for all units or (size,) one per unit. A weight two
    units share (an RNN's recurrent weight: one unit's row, another's column) gets both factors."""
    norms = unit_norms(group, params)
    factor = (1.0 - tau / norms.clamp(min=torch.finfo(torch.float64).tiny)).clamp(min=0.0)
    for s in group.slices:
        if s.tensor not in params:
            continue  # a buffer (BatchNorm running statistics)
        w = params[s.tensor]
        scale = torch.ones(w.shape[s.dim], dtype=torch.float64)
        scale[s.positions] = factor[:, None].expand_as(s.positions)
        shape = [1] * w.dim()
        shape[s.dim] = -1
        w.mul_(scale.to(w).view(shape))


def unit_norms(group: Group, params: dict[str, Tensor]) -> Tensor:
    """(size,) float64: the L2 norm of every weight (parameters only) each unit owns."""
    squares = {s.tensor: params[s.tensor].detach().double() ** 2 for s in group.slices if s.tensor in params}
    return unit_sums(group, squares).clamp(min=0).sqrt()


def adam_scale(optimizer: torch.optim.Optimizer | None, model: nn.Module) -> dict[str, Tensor]:
    """Plain parameter name -> sqrt(v_hat) + eps, Adam's per-weight denominator (v_hat: the
    bias-corrected second moment), for every parameter the optimizer has stepped."""
    if optimizer is None:
        raise ValueError("regularize.metric adam needs the optimizer")
    names = {id(p): plain_name(k) for k, p in model.named_parameters()}
    out = {}
    for pg in optimizer.param_groups:
        if "betas" not in pg:
            raise ConfigError(f"regularize.metric: adam needs an Adam optimizer, not {type(optimizer).__name__}")
        beta2, eps = pg["betas"][1], pg["eps"]
        for p in pg["params"]:
            state = optimizer.state.get(p, {})
            if id(p) in names and "exp_avg_sq" in state:
                bias = 1.0 - beta2 ** float(state["step"])
                out[names[id(p)]] = (state["exp_avg_sq"].double() / bias).sqrt() + eps
    return out


def units_to_remove(model: AcousticModel, fraction: float | None, widths: dict[str, int] | None = None
                    ) -> dict[str, Tensor]:
    """Group name -> (size,) float64, 1.0 for each unit that removing ``fraction`` of the MACs
    by the units' L2 norms (the global plan) would take now, or (``widths``) each unit beyond
    its group's width, lowest norms first; 0.0 for the others."""
    groups = prunable_groups(model)
    scores = magnitude_scores(model, groups)
    if widths is not None:
        keep = {n: sorted(torch.argsort(-scores[n], stable=True)[:w].tolist()) for n, w in widths.items()}
    else:
        keep = plan(model, scores, PruneTarget(kind="macs", fraction=fraction))
    out = {}
    for g in groups:
        mask = torch.zeros(g.size, dtype=torch.float64)
        if g.name in keep:
            mask[:] = 1.0
            mask[keep[g.name]] = 0.0
        out[g.name] = mask
    return out


def unit_counts(group: Group, values: dict[str, Tensor]) -> Tensor:
    """(size,) float64: how many entries of the tensors in ``values`` each unit owns."""
    return unit_sums(group, {k: torch.ones_like(v) for k, v in values.items()})


def unit_means(group: Group, values: dict[str, Tensor], count: Tensor | None = None) -> Tensor:
    """(size,) float64: the mean of ``values`` over the weights each unit owns (tensors missing
    from ``values`` skipped; a unit with none of them: 1). ``count``: ``unit_counts`` of the same
    tensors, when the caller has it."""
    count = unit_counts(group, values) if count is None else count
    return torch.where(count > 0, unit_sums(group, values) / count.clamp(min=1), torch.ones_like(count))


def unit_size(group: Group, params: dict[str, Tensor]) -> int:
    """Parameters one unit of ``group`` owns (each entry once: p_g of group lasso)."""
    ones = {s.tensor: torch.ones_like(params[s.tensor], dtype=torch.float64)
            for s in group.slices if s.tensor in params}
    return int(unit_sums(group, ones)[0]) if group.size else 0


def parameters_by_name(model: nn.Module) -> dict[str, Tensor]:
    """Parameters under their plain state_dict names (a masked tensor: the one under its mask)."""
    return {plain_name(k): p for k, p in model.named_parameters()}


def norm_scale_slices(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(tensor, positions (n,)) of the norm scales (BatchNorm/LayerNorm ``weight``) in groups."""
    out = []
    for group in prunable_groups(model):
        for s in group.slices:
            prefix, _, attr = s.tensor.rpartition(".")
            if attr == "weight" and isinstance(model.get_submodule(prefix), NORM_TYPES):
                out.append((s.tensor, s.positions.flatten()))
    return out


# ---- removal ------------------------------------------------------------------------------------

def norm_scale_scores(model: AcousticModel) -> Scores:
    """|gamma| per unit of every group with a norm scale (network slimming's criterion)."""
    out = {}
    for group in prunable_groups(model):
        for s in group.slices:
            prefix, _, attr = s.tensor.rpartition(".")
            if attr == "weight" and isinstance(model.get_submodule(prefix), NORM_TYPES):
                gamma = model.get_submodule(prefix).weight.detach().abs().float().cpu()
                out[group.name] = gamma[s.positions[:, 0]]
    return out


def weak_units(model: AcousticModel, scores: Scores, threshold: float) -> dict[str, list[int]]:
    """Keep-lists for surgery: in every scored group, the units scoring above ``threshold``
    (at least the group's ``min_size``, the best ones); groups that lose nothing are left out."""
    keep = {}
    for group in prunable_groups(model):
        if group.name not in scores:
            continue
        s = scores[group.name]
        kept = [j for j in range(group.size) if float(s[j]) > threshold]
        if len(kept) < group.min_size:
            kept = sorted(torch.argsort(-s, stable=True)[:group.min_size].tolist())
        if len(kept) < group.size:
            keep[group.name] = kept
    return keep


def remove_weak_units(model: AcousticModel, threshold: float = 0.0, scores: Scores | None = None
                      ) -> tuple[AcousticModel, dict[str, list[int]]]:
    """A dense, narrower model without the units scoring at most ``threshold`` (default scores:
    each unit's L2 norm, what group lasso drives to zero; ``norm_scale_scores`` after slimming);
    returns it and, per group, the removed unit indices."""
    scores = magnitude_scores(model, p=2) if scores is None else scores
    keep = weak_units(model, scores, threshold)
    sizes = {g.name: g.size for g in prunable_groups(model)}
    removed = {n: sorted(set(range(sizes[n])) - set(k)) for n, k in keep.items()}
    return (prune_model(model, keep) if keep else model), removed


__all__ = ["NORM_TYPES", "RegularizeConfig", "Regularizer", "adam_scale", "norm_scale_scores", "norm_scale_slices",
           "parameters_by_name", "remove_weak_units", "shrink_group_", "soft_threshold_", "unit_counts",
           "unit_means", "unit_norms", "unit_size", "units_to_remove", "weak_units"]
