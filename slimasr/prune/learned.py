"""Learned structured masks: hard-concrete gates trained jointly with distillation under a cost
constraint (the CoFi / DPHuBERT recipe), for every family that declares its groups.

    cost = CostModel.fit(model)                       # MACs as a polynomial of the group widths
    state, cost = train_masks(model, batches, LearnedConfig(), 0.5, cost)   # gates + weights, KD
    keep = binarize(state.gates, cost, 0.5)           # {group: kept unit indices}
    small = pruned_student(state, keep)               # gates folded in, the existing surgery

Expected cost: the planner counts MACs by running the model (``plan.model_cost``). Every counted
product is a product of layer dimensions, and a prunable group's width enters a dimension of the
tensors it slices; so MACs are a polynomial in the widths with a linear and a square term per group
(an RNN's ``weight_hh`` is hidden x hidden) and a bilinear term for each pair of groups that
slice one tensor (a layer and the next one that reads it). ``CostModel.fit`` measures the
coefficients with the real counter (each group at two narrower widths, each coupled pair at one),
so the expected MACs under independent gates, ``E[c] = C(n) + sum_g a_g (E w_g - n_g) +
q_g (E w_g^2 - n_g^2) + sum_(g,h) b_gh (E w_g - n_g)(E w_h - n_h)``, are exactly the counted MACs
when every gate is 0 or 1, and differentiable in the keep-probabilities otherwise.

Objective (``train_masks``): CTC + frame KD from the unpruned model (``slimasr.distill.losses``)
[+ hidden-layer matching: each layer/block output of the gated student, through a linear
projection that starts as the identity, against the same layer of the unpruned model, DPHuBERT's
distillation term] + ``l1 (r - t) + l2 (r - t)^2``, r = E[c] / C(n) the expected cost ratio, t
the target ratio warmed up from 1 to ``1 - fraction``; the multipliers l1, l2 are learned by gradient *ascent*
(Adam with ``maximize``), the weights and gates by descent. With a latency target beside it
(``LatencyCost``: the measured table's prediction) each constraint has its own pair, and both
become inequalities (``r - t`` clipped at 0): two equalities can contradict each other.
``learned.constraint=at_most`` makes a lone cost target an inequality too: as an equality the
multiplier l1, grown while the gates lag the warm-up, carries the cost past the target and then
pulls it further down until l1 has unwound (measured on the CRNN at 50%: 0.37 of the MACs after
300 steps); as an upper bound the term vanishes below the target and only the task loss acts.
Binarized (``binarize``): by the deterministic gate (> 0.5), or ranked by keep-probability until
the target is met exactly; ``pruned_student`` folds the gate values into the readers' columns
and removes the other units from the mask-trained student.

Depth gates (``LearnedConfig.depth``, residual blocks only: the Conformer's; a CRNN's LSTM layers
and a DNN's hidden layers are not residual and get none): one more hard-concrete gate per block,
applied as ``x + z (block(x) - x)`` (``slimasr.prune.gates``; z = 0 is the model without the
block). The cost counts a block's MACs only when its gate is kept: with k_i the block's gate in
{0, 1}, ``c = C(n) - sum_i (1 - k_i) (B_i + sum_(terms t of block i) t)``, B_i the block's cost
at full width (measured: the model minus the model with the block removed by ``select_layers``)
and the terms those of its groups (a term coupling two blocks' groups is kept with the product of
their gates). Block and unit gates are independent, so ``E[c]`` replaces k_i by P(block kept):
differentiable, and the counted MACs of the binarized model (blocks removed) when all gates are
0 or 1. Binarized, the blocks rank with the units (``rank``) or keep a deterministic gate > 0.5
(``threshold``), at least one block always; kept blocks run whole (their gate value is not
folded: exact when it is 1), the others are removed by ``select_layers`` after the unit surgery.
With a latency target the table must have timed whole blocks (``measure_latency_table(...,
depth=...)``): the predicted time is ``base - sum_i (1 - k_i) S_i - sum_g k_(block of g) s_g(w_g)``,
S_i block i's measured saving, s_g a group's; its expectation replaces k_i by P(block kept).
"""

from __future__ import annotations

import copy
import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

import torch
from torch import Tensor

from slimasr.config import check_numbers
from slimasr.distill import losses
from slimasr.errors import ConfigError
from safetensors.torch import load_file, save_file

from slimasr.io import atomic_dir, read_json, write_json_atomic
from slimasr.models.common import AcousticModel
from slimasr.prune.gates import DEPTH, ModelGates, recurrent_columns
from slimasr.prune.groups import Group, layer_stack, prunable_groups
from slimasr.prune.latency import LatencyTable
from slimasr.prune.plan import model_cost
from slimasr.prune.surgery import prune_model, select_layers
from slimasr.prune.unstructured import plain_name
from slimasr.train.checkpoint import optimizer_from_flat, optimizer_to_flat, rng_state, set_rng_state

GATE_OPEN = 0.5  # binarize "threshold": a unit stays when its deterministic gate exceeds this
MASKS_FILE = "masks"  # mask-training checkpoint folder in the step's folder (not part of the model)

@dataclass
class LearnedConfig:
    steps: int = 2000  # optimizer steps of mask training (weights, gates and multipliers together)
    lr: float = 5e-4  # AdamW learning rate of the weights
    gate_lr: float = 0.05  # Adam learning rate of the gates' log_alpha
    lambda_lr: float = 0.05  # Adam (ascent) learning rate of the Lagrange multipliers
    # the cost target as an equality (r = t, CoFi's form: the multipliers also push back up when
    # r falls below t) or an inequality (r <= t: the term is 0 below the target, so only the task
    # loss acts there); a latency target beside it makes both inequalities whatever this says
    constraint: Literal["equal", "at_most"] = "equal"
    warmup_steps: int = 500  # the target cost ratio falls linearly from 1 to 1 - fraction over these
    init_keep: float = 0.9  # initial deterministic gate value of every unit
    ctc_weight: float = 0.5  # CTC on the transcripts
    kd_weight: float = 0.5  # frame KD from the unpruned model
    temperature: float = 1.0  # KD softmax temperature
    # hidden-layer matching (DPHuBERT's distillation term): every layer/block output of the gated
    # student against the same layer of the unpruned model, through a linear projection per layer
    # (identity at the start, trained with the weights, not kept in the model)
    hidden_weight: float = 0.0
    hidden_kind: Literal["l1_cos", "mse"] = "l1_cos"  # DistilHuBERT's L1 - log sigmoid(cos), or MSE
    batch_seconds: float = 30.0  # audio per mask-training batch (of the calibration cuts)
    binarize: Literal["rank", "threshold"] = "rank"  # rank: meet the target exactly; threshold: z > 0.5
    checkpoint_every: int = 100  # steps between mask-training checkpoints (resumable)
    depth: bool = False  # also one gate per residual block (Conformer), removed when it closes
    # group -> kept width: learn which units (and their weights) at widths chosen elsewhere, e.g.
    # the sensitivity scan's plan. Replaces the cost target: each named group's expected width is
    # pulled to its width (its own multipliers, the same warm-up) and binarized to exactly it;
    # groups not named keep every unit. Not with a latency target or depth gates.
    widths: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_numbers("learned", self, positive=("steps", "lr", "gate_lr", "lambda_lr", "batch_seconds",
                                                 "checkpoint_every", "temperature"),
                      non_negative=("warmup_steps", "ctc_weight", "kd_weight", "hidden_weight"))
        if self.hidden_kind not in losses.HIDDEN_KINDS:
            raise ConfigError(f"learned.hidden_kind must be one of {losses.HIDDEN_KINDS}, "
                              f"got {self.hidden_kind!r}")
        if self.ctc_weight + self.kd_weight + self.hidden_weight == 0:
            raise ConfigError("learned: ctc_weight, kd_weight and hidden_weight are all 0 (nothing to train on)")
        if not 0.0 < self.init_keep < 1.0:
            raise ConfigError(f"learned.init_keep must be in (0, 1), got {self.init_keep}")
        if any(not isinstance(w, int) or isinstance(w, bool) for w in self.widths.values()):
            raise ConfigError(f"learned.widths: whole numbers of units per group, got {self.widths}")
        if self.constraint not in ("equal", "at_most"):
            raise ConfigError(f"learned.constraint must be 'equal' or 'at_most', got {self.constraint!r}")
        if self.binarize not in ("rank", "threshold"):
            raise ConfigError(f"learned.binarize must be 'rank' or 'threshold', got {self.binarize!r}")

    def refuse_with(self, latency: bool) -> None:
        """The combinations mask training cannot run, as a one-line ConfigError: ``PruneConfig``
        asks before any work, ``train_masks`` for library callers."""
        if self.widths and (self.depth or latency):
            raise ConfigError("learned.widths: not with a latency target or depth gates")


# ---- expected cost ------------------------------------------------------------------------------

@dataclass
class CostModel:
    """MACs (or params) as a polynomial of the group widths; see the module docstring."""

    full: float  # cost of the unpruned model
    sizes: dict[str, int]  # group -> full width n_g
    linear: dict[str, float]  # a_g
    square: dict[str, float]  # q_g
    pairs: dict[tuple[str, str], float]  # b_gh for groups slicing a common tensor
    blocks: list[float] = field(default_factory=list)  # depth: B_i, block i's cost at full width
    block_of: dict[str, int] = field(default_factory=dict)  # depth: group -> its block

    @classmethod
    def fit(cls, model: AcousticModel, kind: str = "macs", groups: list[Group] | None = None,
            depth: tuple[str, int] | None = None) -> CostModel:
        """The polynomial's coefficients from the counter; ``depth = (prefix, layers)`` (see
        ``depth_layers``) also measures each block's cost, for the depth gates."""
        groups = groups if groups is not None else gateable_groups(model)
        measure = _measurer(model, kind)
        full = measure({})
        lin, sq = {}, {}
        for g in groups:
            lin[g.name], sq[g.name] = _fit_group(g, measure, full)
        pairs = {}
        for g, h in _coupled(groups):
            a, b = _probe_width(g), _probe_width(h)
            both = measure({g.name: a, h.name: b}) - full
            one = lin[g.name] * (a - g.size) + sq[g.name] * (a * a - g.size ** 2)
            other = lin[h.name] * (b - h.size) + sq[h.name] * (b * b - h.size ** 2)
            pairs[(g.name, h.name)] = (both - one - other) / ((a - g.size) * (b - h.size))
        blocks, block_of = [], {}
        if depth is not None:
            prefix, layers = depth
            for i in range(layers):
                rest = [j for j in range(layers) if j != i]
                blocks.append(full - float(model_cost(select_layers(model, rest), kind)))
                block_of.update({g.name: i for g in groups if g.name.startswith(f"{prefix}.{i}.")})
        return cls(full, {g.name: g.size for g in groups}, lin, sq, pairs, blocks, block_of)

    def at(self, widths: Mapping[str, float], blocks: Iterable[int] | None = None) -> float:
        """Cost at deterministic widths (groups not named keep their full width); ``blocks``:
        the kept blocks when the depth gates are on (None: all)."""
        m = {k: torch.tensor(float(widths.get(k, n)), dtype=torch.float64) for k, n in self.sizes.items()}
        kept = None
        if blocks is not None and self.blocks:
            kept = torch.zeros(len(self.blocks), dtype=torch.float64)
            kept[list(blocks)] = 1.0
        return float(self._cost(m, {k: v * v for k, v in m.items()}, kept))

    def expected(self, probs: Mapping[str, Tensor]) -> Tensor:
        """E[cost] for independent gates with keep-probabilities ``probs`` (group -> (size,);
        ``DEPTH`` -> (blocks,) P(block kept), when there are depth gates)."""
        mean = {k: probs[k].double().sum() for k in self.sizes}
        second = {k: mean[k] ** 2 + (probs[k].double() * (1 - probs[k].double())).sum() for k in self.sizes}
        kept = probs[DEPTH].double() if DEPTH in probs and self.blocks else None
        return self._cost(mean, second, kept)

    def _cost(self, mean: Mapping[str, Tensor], second: Mapping[str, Tensor], kept: Tensor | None = None
              ) -> Tensor:
        """The polynomial at first and second moments ``mean``, ``second``; ``kept`` (depth gates:
        0/1, or P(block kept), independent of the unit gates) multiplies block i's own cost and
        its groups' terms by ``kept[i]``."""
        def weight(*names: str) -> Tensor | float:
            out: Tensor | float = 1.0
            if kept is not None:
                for i in {self.block_of[k] for k in names if k in self.block_of}:
                    out = out * kept[i]
            return out

        total = torch.tensor(self.full, dtype=torch.float64)
        if kept is not None:
            b = torch.tensor(self.blocks, dtype=torch.float64)
            total = total - b.sum() + (kept * b).sum()
        for k, n in self.sizes.items():
            total = total + weight(k) * (self.linear[k] * (mean[k] - n) + self.square[k] * (second[k] - n * n))
        for (g, h), c in self.pairs.items():
            total = total + weight(g, h) * c * (mean[g] - self.sizes[g]) * (mean[h] - self.sizes[h])
        return total


@dataclass
class LatencyCost:
    """Batch-1 time (ms) from a measured ``LatencyTable``: ``base - sum_g saved_g(w_g)``, each
    group's saving interpolated linearly between its measured widths (the table's own prediction).
    The expectation uses each group's expected width (not exact: the saving is piecewise linear),
    and equals the table's prediction when every gate is 0 or 1."""

    table: LatencyTable
    sizes: dict[str, int]  # group -> full width

    @property
    def full(self) -> float:
        return self.table.base_ms

    def at(self, widths: Mapping[str, float], blocks: Iterable[int] | None = None) -> float:
        """Predicted time at deterministic widths; ``blocks``: the kept blocks (depth gates)."""
        return self.table.predict({k: w for k, w in widths.items() if k in self.table.groups}, blocks)

    def expected(self, probs: Mapping[str, Tensor]) -> Tensor:
        """E[time] for independent gates (``DEPTH`` -> P(block kept), with depth gates: each
        block's own saving weighted by P(removed), its groups' savings by P(kept))."""
        total = torch.tensor(self.table.base_ms, dtype=torch.float64)
        kept = probs[DEPTH].double() if DEPTH in probs and self.table.blocks is not None else None
        if kept is not None:
            total = total - ((1 - kept) * torch.tensor(self.table.blocks["saved_ms"], dtype=torch.float64)).sum()
        for k, entry in self.table.groups.items():
            if k in probs:
                saved = _interp(probs[k].double().sum(), entry["widths"][::-1], entry["saved_ms"][::-1])
                block = self.table.block_of(k) if kept is not None else None
                total = total - (saved if block is None else kept[block] * saved)
        return total


def _interp(x: Tensor, xs: list[float], ys: list[float]) -> Tensor:
    """``np.interp`` (xs ascending, clamped at the ends), differentiable in ``x``."""
    if len(xs) == 1 or x <= xs[0]:
        return torch.tensor(float(ys[0]), dtype=torch.float64) + 0 * x
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return torch.tensor(float(ys[-1]), dtype=torch.float64) + 0 * x


def gateable_groups(model: AcousticModel) -> list[Group]:
    """Groups that can lose a unit (wider than their ``min_size``)."""
    return [g for g in prunable_groups(model) if g.size > g.min_size]


def depth_layers(model: AcousticModel) -> tuple[str, int] | None:
    """(ModuleList prefix, number of blocks) for the depth gates: residual blocks only (the
    Conformer's; ConfigError for a family whose layers chain: CRNN, DNN); None with one block
    (it cannot be removed)."""
    stack = layer_stack(model)
    if stack.widths is not None:
        raise ConfigError(f"learned.depth: the {model.arch} family has no residual blocks (its "
                          f"{stack.prefix} are not residual); depth gates apply to Conformer blocks")
    return (stack.prefix, stack.num_layers) if stack.num_layers > 1 else None


def _measurer(model: AcousticModel, kind: str):
    def measure(widths: Mapping[str, int]) -> float:
        keep = {name: list(range(w)) for name, w in widths.items()}
        return float(model_cost(prune_model(model, keep) if keep else model, kind))
    return measure


def _fit_width_points(g: Group) -> list[int]:
    """Up to two narrower widths to fit a group's terms at (>= 1 where the group allows it)."""
    low = max(g.min_size, 1) if g.size > 1 else g.min_size
    options = sorted({w for w in (g.size // 2, g.size // 4, g.size - 1, low) if low <= w < g.size}, reverse=True)
    return options[:2]


def _probe_width(g: Group) -> int:
    return _fit_width_points(g)[0]


def _fit_group(g: Group, measure, full: float) -> tuple[float, float]:
    """(a_g, q_g) from the cost at one or two narrower widths (one: no square term)."""
    points = _fit_width_points(g)
    deltas = [measure({g.name: w}) - full for w in points]
    n = g.size
    if len(points) == 1:
        return deltas[0] / (points[0] - n), 0.0
    a = torch.tensor([[w - n, w * w - n * n] for w in points], dtype=torch.float64)
    sol = torch.linalg.solve(a, torch.tensor(deltas, dtype=torch.float64))
    return float(sol[0]), float(sol[1])


def _coupled(groups: list[Group]) -> list[tuple[Group, Group]]:
    """Pairs of groups that slice a common tensor (their widths multiply in that layer's cost)."""
    tensors = [{s.tensor for s in g.slices} for g in groups]
    return [(groups[i], groups[j]) for i, j in itertools.combinations(range(len(groups)), 2)
            if tensors[i] & tensors[j]]


@dataclass
class WidthCost:
    """One group's kept units as a cost (``learned.widths``' constraints): expected = the sum of
    its keep-probabilities, ``at`` = its width."""

    group: str
    full: float  # the group's full width

    def expected(self, probs: Mapping[str, Tensor]) -> Tensor:
        return probs[self.group].sum()

    def at(self, widths: Mapping[str, int]) -> float:
        return float(widths[self.group])


def width_constraints(groups: list[Group], widths: Mapping[str, int]) -> list[tuple[WidthCost, float]]:
    """``learned.widths`` as (cost, share removed) constraints, one per named group; a one-line
    ConfigError names an unknown group or a width outside [min_size, size]."""
    by_name = {g.name: g for g in groups}
    out = []
    for name, width in widths.items():
        if name not in by_name:
            raise ConfigError(f"learned.widths: unknown group {name!r} (groups: {', '.join(by_name)})")
        g = by_name[name]
        if not g.min_size <= width <= g.size:
            raise ConfigError(f"learned.widths: {name} must keep {g.min_size}..{g.size} units, got {width}")
        out.append((WidthCost(name, float(g.size)), 1.0 - width / g.size))
    return out


# ---- binarization -------------------------------------------------------------------------------

def binarize_widths(gates: ModelGates, widths: Mapping[str, int]) -> dict[str, list[int]]:
    """Keep-lists with exactly ``widths[g]`` units of each named group (its most probable) and
    every unit of the others."""
    with torch.no_grad():
        probs = {k: v.detach() for k, v in gates.keep_probs().items()}
    out = {}
    for k, p in probs.items():
        w = int(widths.get(k, len(p)))
        out[k] = sorted(torch.argsort(p, descending=True, stable=True)[:w].tolist())
    return out


def binarize(gates: ModelGates, cost: CostModel, fraction: float, how: str = "rank",
             latency: tuple[LatencyCost, float] | None = None) -> dict[str, list[int]]:
    """Keep-lists (ascending indices) for ``prune_model`` from trained gates. ``threshold``:
    units whose deterministic gate is > 0.5; ``rank``: the fewest lowest-probability units whose
    removal brings the cost to at most ``(1 - fraction)`` of the full cost (and, with
    ``latency = (cost, share)``, the predicted time to ``1 - share`` of it). Each group keeps at
    least its ``min_size`` units (its most probable). With depth gates, ``keep[DEPTH]`` lists the
    kept blocks (ranked with the units; at least one); ``apply_keep`` applies such a keep-list."""
    with torch.no_grad():
        probs = {k: v.detach().double() for k, v in gates.keep_probs().items()}
        if how == "threshold":
            keep = {k: (gates.gate(k).deterministic() > GATE_OPEN).nonzero().flatten().tolist() for k in probs}
            return _with_minimum(gates, probs, keep)
        order = sorted(((float(p[j]), k, j) for k, p in probs.items() for j in range(len(p))))
        limits = [(cost, (1.0 - fraction) * cost.full)]
        if latency is not None:
            limits.append((latency[0], (1.0 - latency[1]) * latency[0].full))
        lo, hi = 0, len(order)  # remove the first k units of ``order``: find the smallest k that fits
        while lo < hi:
            mid = (lo + hi) // 2
            keep = _with_minimum(gates, probs, _kept(probs, order[:mid]))
            if all(_cost_at(c, keep) <= limit for c, limit in limits):
                hi = mid
            else:
                lo = mid + 1
        return _with_minimum(gates, probs, _kept(probs, order[:lo]))


def _cost_at(cost: Any, keep: Mapping[str, list[int]]) -> float:
    """``cost.at`` the binarized state ``keep`` (kept blocks under ``DEPTH``, if any)."""
    if DEPTH in keep and isinstance(cost, (CostModel, LatencyCost)):
        return cost.at(_widths(keep), keep[DEPTH])
    return cost.at(_widths(keep))


def _kept(probs: Mapping[str, Tensor], removed: Iterable[tuple[float, str, int]]) -> dict[str, list[int]]:
    gone: dict[str, set[int]] = {k: set() for k in probs}
    for _, k, j in removed:
        gone[k].add(j)
    return {k: [j for j in range(len(p)) if j not in gone[k]] for k, p in probs.items()}


def _with_minimum(gates: ModelGates, probs: Mapping[str, Tensor], keep: dict[str, list[int]]
                  ) -> dict[str, list[int]]:
    out = {}
    for k, idx in keep.items():
        need = (1 if k == DEPTH else gates.groups[k].min_size) - len(idx)  # at least one block
        if need > 0:
            extra = [j for j in torch.argsort(probs[k], descending=True).tolist() if j not in idx][:need]
            idx = sorted(idx + extra)
        out[k] = idx
    return out


def _widths(keep: Mapping[str, list[int]]) -> dict[str, int]:
    """Group widths of a keep-list (the kept blocks, ``DEPTH``, are not a width)."""
    return {k: len(v) for k, v in keep.items() if k != DEPTH}


def apply_keep(model: AcousticModel, keep: Mapping[str, list[int]]) -> AcousticModel:
    """``model`` with the units not in ``keep`` removed (``prune_model``), then the blocks not in
    ``keep[DEPTH]`` (``select_layers``; the kept blocks' weights are untouched)."""
    units = {k: v for k, v in keep.items() if k != DEPTH}
    small = prune_model(model, units) if units else copy.deepcopy(model)
    blocks = keep.get(DEPTH)
    if blocks is not None and len(blocks) < layer_stack(small).num_layers:
        small = select_layers(small, blocks)
    return small


@torch.no_grad()
def fold_gates_(model: AcousticModel, gates: ModelGates) -> None:
    """Multiply every group's deterministic gate values into the weights that read its units (the
    consumer slices: next layer's columns, ``out_proj``/``down``/``pw_out`` columns, and an RNN
    layer's own ``weight_hh`` columns), so that ``model`` without hooks computes what it computed
    with the gates (in eval mode). Exact for every site: each gate sits right before the linear
    layer (or conv) whose columns it scales (dropout between them is the identity in eval mode)."""
    params = dict(model.named_parameters())
    for name, group in gates.groups.items():
        z = gates.gate(name).deterministic()
        for s in [*(s for s in group.slices if s.consumer), *recurrent_columns(group)]:
            w = params[s.tensor]
            scale = torch.ones(w.shape[s.dim], dtype=w.dtype)
            scale[s.positions.reshape(-1)] = z[:, None].expand(-1, s.positions.shape[1]).reshape(-1).to(w.dtype)
            shape = [1] * w.dim()
            shape[s.dim] = -1
            w.mul_(scale.view(shape))


def pruned_student(state: MaskState, keep: Mapping[str, list[int]]) -> AcousticModel:
    """The mask-trained student, gates folded into its weights, units not in ``keep`` removed
    (and the blocks not in ``keep[DEPTH]``; kept blocks run whole, see the module docstring)."""
    student = copy.deepcopy(state.student).eval()
    fold_gates_(student, state.gates)
    small = prune_model(student, {k: v for k, v in keep.items()
                                  if k != DEPTH and len(v) < state.gates.groups[k].size})
    if DEPTH in keep:
        small = apply_keep(small, {DEPTH: keep[DEPTH]})
    return small.eval()


# ---- training -----------------------------------------------------------------------------------

def target_ratio(step: int, fraction: float, warmup: int) -> float:
    """Cost ratio the constraint asks for after ``step`` steps: 1 -> 1 - fraction over ``warmup``."""
    return 1.0 - fraction * (min(1.0, step / warmup) if warmup else 1.0)


@dataclass
class MaskState:
    """Everything mask training needs to continue: model and gate weights, multipliers,
    optimizers, the step and the curves."""

    student: AcousticModel
    gates: ModelGates
    lambdas: Tensor  # (2 * constraints,): l1, l2 of the cost target, then of the latency target
    opt_w: torch.optim.Optimizer
    opt_g: torch.optim.Optimizer
    opt_l: torch.optim.Optimizer
    step: int
    curves: dict[str, list[float]]
    projector: torch.nn.Module | None = None  # hidden-layer matching's projections (hidden_weight > 0)

    def save(self, folder: Path) -> None:
        """Write the state as ``folder/{tensors.safetensors,state.json}`` atomically (no pickle:
        tensors in safetensors, the rest in JSON, as training checkpoints are)."""
        tensors = {**_prefixed("student", {plain_name(k): v for k, v in self.student.state_dict().items()}),
                   **_prefixed("gates", self.gates.state_dict()),
                   "lambdas": self.lambdas.detach().clone()}
        if self.projector is not None:
            tensors.update(_prefixed("projector", self.projector.state_dict()))
        meta: dict = {"step": self.step, "curves": self.curves, "optimizers": {}}
        for key, opt in self._optimizers().items():
            flat, opt_meta = optimizer_to_flat(opt.state_dict())
            tensors.update(_prefixed(key, flat))
            meta["optimizers"][key] = opt_meta
        rng, meta["rng"] = rng_state()
        tensors.update(_prefixed("rng", rng))
        with atomic_dir(folder) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                      str(tmp / "tensors.safetensors"))
            write_json_atomic(tmp / "state.json", meta)

    def load(self, folder: Path) -> None:
        """Restore what :meth:`save` wrote (bitwise: the random state too)."""
        tensors, meta = load_file(str(folder / "tensors.safetensors")), read_json(folder / "state.json")
        self.student.load_state_dict(_unprefixed("student", tensors))
        self.gates.load_state_dict(_unprefixed("gates", tensors))
        if self.projector is not None:
            self.projector.load_state_dict(_unprefixed("projector", tensors))
        with torch.no_grad():
            self.lambdas.copy_(tensors["lambdas"])
        for key, opt in self._optimizers().items():
            opt.load_state_dict(optimizer_from_flat(_unprefixed(key, tensors), meta["optimizers"][key]))
        self.step, self.curves = meta["step"], meta["curves"]
        set_rng_state(_unprefixed("rng", tensors), meta["rng"])

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_w": self.opt_w, "opt_g": self.opt_g, "opt_l": self.opt_l}


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def new_state(model: AcousticModel, cfg: LearnedConfig, groups: list[Group], constraints: int = 1
              ) -> MaskState:
    """A fresh state; ``constraints``: 1 (the cost target), 2 (cost and latency) or, with
    ``cfg.widths``, one per named group."""
    student = copy.deepcopy(model).train()
    gates = ModelGates(groups, cfg.init_keep, depth_layers(model) if cfg.depth else None)
    lambdas = torch.zeros(2 * constraints, requires_grad=True)
    curves = ["step", "expected_ratio", "target_ratio", "lambda1", "lambda2", "loss", "task_loss"]
    if constraints == 2 and not cfg.widths:
        curves += ["expected_latency_ratio", "latency_target_ratio", "lambda3", "lambda4"]
    projector = hidden_projector(model) if cfg.hidden_weight > 0 else None
    if projector is not None:
        curves.append("hidden_loss")
    weights = list(student.parameters()) + (list(projector.parameters()) if projector is not None else [])
    return MaskState(student, gates, lambdas,
                     torch.optim.AdamW(weights, lr=cfg.lr, weight_decay=0.0),
                     torch.optim.Adam(gates.parameters(), lr=cfg.gate_lr),
                     torch.optim.Adam([lambdas], lr=cfg.lambda_lr, maximize=True), 0,
                     {k: [] for k in curves}, projector)


def hidden_projector(model: AcousticModel) -> losses.HiddenProjector:
    """One ``Linear(D_i -> D_i)`` per layer/block output of ``model`` (``forward_hidden``'s states
    1..L), initialised to the identity: before any gate closes, the student's states are the
    unpruned model's and the hidden loss is 0."""
    frames = 64
    x, lens = torch.zeros(1, frames, model.config.num_features), torch.tensor([frames])
    was_training = model.training
    with torch.no_grad():
        hidden = model.eval().forward_hidden(x, lens)[2][1:]
    model.train(was_training)
    return losses.HiddenProjector([(h.shape[-1], h.shape[-1]) for h in hidden]).identity_()


def train_masks(model: AcousticModel, batches: Iterable[dict], cfg: LearnedConfig, fraction: float,
                cost: CostModel | None = None, checkpoint: Path | None = None, log=None, seed: int = 0,
                latency: tuple[LatencyCost, float] | None = None) -> tuple[MaskState, CostModel]:
    """Train gates (and weights) on ``batches`` (cycled) until ``cfg.steps``; ``model`` is the
    frozen KD teacher and is not changed. With ``checkpoint``, the state is saved there every
    ``cfg.checkpoint_every`` steps (atomically) and training resumes from it when it exists
    (bitwise the same as an uninterrupted run: the random state is saved too). ``log(state)``
    is called every tenth of the steps. ``latency = (cost, share)`` adds a second constraint
    (its own multipliers): the predicted time at most ``1 - share`` of the unpruned one."""
    groups = gateable_groups(model)
    depth = depth_layers(model) if cfg.depth else None
    cfg.refuse_with(latency=latency is not None)
    cost = cost or CostModel.fit(model, "macs", groups, depth)
    if depth is not None and not cost.blocks:
        raise ValueError("learned.depth: the cost model has no block costs (CostModel.fit(..., depth=...))")
    if depth is not None and latency is not None and latency[0].table.blocks is None:
        raise ConfigError("learned.depth with a latency target: the latency table has no whole-block "
                          "timings (measure it with depth, as slimasr prune does for learned.depth)")
    torch.manual_seed(seed)
    constraints = (width_constraints(groups, cfg.widths) if cfg.widths
                   else [(cost, fraction)] + ([latency] if latency is not None else []))
    state = new_state(model, cfg, groups, len(constraints))
    if checkpoint is not None and (checkpoint / "state.json").is_file():
        state.load(checkpoint)
    teacher = model.eval()
    handles = state.gates.attach(state.student)
    try:
        for batch in _cycle(batches, state.step):
            if state.step >= cfg.steps:
                break
            _train_step(state, teacher, batch, cfg, constraints, cost)
            if checkpoint is not None and (state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps):
                state.save(checkpoint)
            if log is not None and state.step % max(1, cfg.steps // 10) == 0:
                log(state)
    finally:
        for h in handles:
            h.remove()
    state.gates.mode = "deterministic"
    return state, cost


def _cycle(batches: Iterable[dict], start: int) -> Iterator[dict]:
    """``batches`` over and over, from batch ``start`` (a resumed run continues where it was)."""
    items = list(batches)
    if not items:
        raise ConfigError("learned masks: no training batches")
    return itertools.islice(itertools.cycle(items), start % len(items), None)


def _train_step(state: MaskState, teacher: AcousticModel, batch: dict, cfg: LearnedConfig,
                constraints: list[tuple[Any, float]], cost: CostModel | None = None) -> None:
    state.student.train()
    state.gates.mode = "sample"
    x, x_lens = batch["features"], batch["feature_lens"]
    hidden = state.projector is not None
    with torch.no_grad():
        t_out = teacher.forward_hidden(x, x_lens) if hidden else teacher(x, x_lens)
    s_out = state.student.forward_hidden(x, x_lens) if hidden else state.student(x, x_lens)
    t_logp, logp, lens = t_out[0], s_out[0], s_out[1]
    task = torch.zeros(())
    if cfg.ctc_weight > 0:
        task = task + cfg.ctc_weight * losses.ctc_term(logp, lens, batch["targets"], batch["target_lens"])
    if cfg.kd_weight > 0:
        task = task + cfg.kd_weight * losses.kd_kl(logp, t_logp, lens, cfg.temperature)
    hidden_term = None
    if hidden:
        projected = state.projector(s_out[2][1:])
        hidden_term = sum(losses.hidden_loss(s, t, lens, cfg.hidden_kind)
                          for s, t in zip(projected, t_out[2][1:])) / len(projected)
        task = task + cfg.hidden_weight * hidden_term
    probs = state.gates.keep_probs()
    ratios, targets, lagrangian = [], [], torch.zeros((), dtype=torch.float64)
    for i, (limit, fraction) in enumerate(constraints):
        ratios.append(limit.expected(probs) / limit.full)
        targets.append(target_ratio(state.step + 1, fraction, cfg.warmup_steps))
        gap = ratios[-1] - targets[-1]
        if _inequality(cfg, len(constraints)):
            gap = gap.clamp(min=0.0)
        lagrangian = lagrangian + state.lambdas[2 * i] * gap + state.lambdas[2 * i + 1] * gap ** 2
    loss = task + lagrangian.float()
    for opt in (state.opt_w, state.opt_g, state.opt_l):
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in (state.opt_w, state.opt_g, state.opt_l):
        opt.step()
    state.step += 1
    if cfg.widths and cost is not None:  # the curves show the MACs the widths' constraints lead to
        with torch.no_grad():
            ratios, targets = [cost.expected(probs) / cost.full], [target_ratio(
                state.step, 1.0 - cost.at(cfg.widths) / cost.full, cfg.warmup_steps)]
    _record(state, ratios, targets, float(loss.detach()), float(task.detach()),
            None if hidden_term is None else float(hidden_term.detach()))


def _inequality(cfg: LearnedConfig, constraints: int) -> bool:
    """Whether the cost targets are upper bounds (r - t clipped at 0): always with a latency
    target beside the MAC one (two equalities may conflict), with ``learned.constraint=at_most``
    alone; never for ``learned.widths`` (each group is pulled to exactly its width)."""
    return not cfg.widths and (constraints == 2 or cfg.constraint == "at_most")


def _record(state: MaskState, ratios: list[Tensor], targets: list[float], loss: float, task: float,
            hidden: float | None = None) -> None:
    lam = state.lambdas.detach().tolist()
    values = {"step": state.step, "expected_ratio": float(ratios[0].detach()), "target_ratio": targets[0],
              "lambda1": lam[0], "lambda2": lam[1], "loss": loss, "task_loss": task}
    if hidden is not None:
        values["hidden_loss"] = hidden
    if "expected_latency_ratio" in state.curves:
        values.update({"expected_latency_ratio": float(ratios[1].detach()), "latency_target_ratio": targets[1],
                       "lambda3": lam[2], "lambda4": lam[3]})
    for key, v in values.items():
        state.curves[key].append(v)


def plot_curves(curves: Mapping[str, list[float]], path: Path) -> Path:
    """Expected vs target cost ratio, the multipliers and the losses per step (PNG)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    s = curves["step"]
    axes[0].plot(s, curves["expected_ratio"], label="expected cost / original")
    axes[0].plot(s, curves["target_ratio"], "--", label="target")
    if "expected_latency_ratio" in curves:
        axes[0].plot(s, curves["expected_latency_ratio"], label="predicted latency / original")
        axes[0].plot(s, curves["latency_target_ratio"], ":", label="latency target")
    for name in ("lambda1", "lambda2", "lambda3", "lambda4"):
        if name in curves:
            axes[1].plot(s, curves[name], label=name)
    axes[2].plot(s, curves["loss"], label="total loss")
    axes[2].plot(s, curves["task_loss"], label="CTC + KD" + (" + hidden" if "hidden_loss" in curves else ""))
    if "hidden_loss" in curves:
        axes[2].plot(s, curves["hidden_loss"], label="hidden-layer matching (unweighted)")
    axes[2].set_xlabel("step")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def learned_record(state: MaskState, cost: CostModel, keep: Mapping[str, list[int]], actual: float,
                   kind: str = "macs") -> dict[str, Any]:
    """prune.json's ``learned`` entry: widths per group, the expected cost at the end of mask
    training, the cost the binarized widths predict and the counted one, the curves."""
    with torch.no_grad():
        probs = state.gates.keep_probs()
        expected = float(cost.expected(probs))
    out = {"kind": kind, "widths": _widths(keep), "original": cost.full, "expected": expected,
           "binarized_predicted": _cost_at(cost, keep), "actual": actual, "steps": state.step,
           "lambdas": state.lambdas.detach().tolist(),
           "expected_widths": {k: float(v.sum()) for k, v in probs.items() if k != DEPTH}, "curves": state.curves}
    if DEPTH in keep:  # depth gates: the kept blocks (original numbering) and P(kept) per block
        out["blocks"] = list(keep[DEPTH])
        out["block_keep_probs"] = probs[DEPTH].tolist()
    return out


def learned_prune(model: AcousticModel, cfg: LearnedConfig, kind: str, fraction: float,
                 batches: list[dict], step_dir: Path, row: dict, log=None, seed: int = 0,
                 table: LatencyTable | None = None, latency_share: float | None = None,
                 meet_latency: Callable[[Callable[[float], dict]], dict] | None = None) -> AcousticModel:
    """``slimasr prune --criterion learned``: train masks (checkpoint folder ``step_dir/masks/``,
    resumed when there), binarize them, record them in ``row["learned"]``, plot the curves
    (``step_dir/learned.png``) and return the pruned mask-trained student (gates folded into its
    weights). The gates and multipliers are not kept in the model. With a latency target and
    ``rank`` binarization, ``meet_latency(plan)`` chooses the keep-lists, ``plan(share)`` binarizing
    the same gates to the latency share ``share`` (``slimasr prune`` times the plans and asks for
    more while the measured time misses the goal: the table's prediction is optimistic when
    many classes shrink at once)."""
    cost = CostModel.fit(model, kind, depth=depth_layers(model) if cfg.depth else None)
    latency = None
    if table is not None and latency_share is not None:
        latency = (LatencyCost(table, cost.sizes), latency_share)
    state, cost = train_masks(model, batches, cfg, fraction, cost, step_dir / MASKS_FILE, log, seed, latency)
    def plan(share: float | None) -> dict[str, list[int]]:
        limit = None if latency is None or share is None else (latency[0], share)
        return (binarize_widths(state.gates, cfg.widths) if cfg.widths
                else binarize(state.gates, cost, fraction, cfg.binarize, limit))

    use_meet = meet_latency is not None and latency is not None and cfg.binarize == "rank"
    keep = meet_latency(plan) if use_meet else plan(latency_share)
    small = pruned_student(state, keep)
    row["learned"] = learned_record(state, cost, keep, model_cost(small, kind), kind)
    if latency is not None:
        row["learned"]["latency_ms_expected"] = float(latency[0].expected(state.gates.keep_probs()).detach())
        row["learned"]["latency_ms_predicted"] = _cost_at(latency[0], keep)
    plot_curves(state.curves, step_dir / "learned.png")
    shutil.rmtree(step_dir / MASKS_FILE, ignore_errors=True)  # done: the gates are not part of the result
    return small
