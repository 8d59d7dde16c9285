"""How many, and which, units to remove to meet a cost target.

    target = PruneTarget(kind="macs", fraction=0.5)         # remove half the MACs
    keep = plan(model, scores, target)                      # {group name: unit indices to keep}
    small = prune_model(model, keep)                        # model_cost(small) <= 0.5 * original

Scopes:
- ``global``: every unit of every prunable group is ranked together by its *normalised* score,
  the score divided by its group's mean score. Raw scores are not comparable across groups: a
  norm grows with the number of weights a unit owns (an LSTM unit owns ~8x the weights of a
  neuron), Taylor and activation values scale with each layer's activation and gradient sizes.
  Dividing by the group mean keeps the order inside each group and makes "how far below its
  group's typical unit" the global currency. The k lowest-ranked units are removed; k is
  binary-searched so that the pruned model just meets the target.
- ``layer``: the same fraction of every group; that fraction is binary-searched.

Widths are rounded *up* (fewer units removed) to a legal width: a multiple of ``round_to``, the
group's ``min_size``, or its full width, never removing more than ``max_group_fraction`` of a
group. For attention heads ``round_to`` counts features (heads x head_dim), see ``unit_step``:
counted in heads, round_to 8 would make a 4-head layer unprunable.

Every candidate is measured for real (``prune_model`` then ``model_cost``): couplings make cost
non-linear in the widths (an LSTM layer's input columns shrink with the previous layer).
Cost only falls as units go, so the search finds the smallest candidate that meets the target; the
next-smaller candidate (k - 1 units, or the previous fraction) differs by one rounding step in one
group (global) or in the groups changing at that fraction (layer) and is above the target.

Latency: ``kind="latency"`` (or ``latency_fraction`` beside a MACs / params target, and then both
must be met) needs a ``LatencyTable`` (``slimasr.prune.latency``) measured on the device. Its
prediction is the cost, and the global ranking weighs each unit by its group's measured time per
MAC: the key is the normalised score divided by ``time_per_mac ** time_per_mac_weight`` (1 = the
model's average), so of two equally unimportant units the one in a slow-per-MAC group (attention
heads, depthwise conv channels on a CPU at batch 1) goes first. Weight 0 keeps the plain ranking.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Mapping

import torch
from torch import Tensor

from slimasr.errors import ConfigError
from slimasr.evaluate.cost import count_macs, count_params, example_input
from slimasr.models.common import AcousticModel
from slimasr.prune.groups import Group, prunable_groups
from slimasr.prune.surgery import prune_model

if TYPE_CHECKING:
    from slimasr.prune.latency import LatencyTable

EPS = 1e-9  # float slack when turning fractions into unit counts
MEAN_FLOOR = 1e-12  # a group whose mean score is below this is not rescaled (all-zero scores)
FEATURE_ROUNDED_KINDS = ("head",)  # group kinds whose round_to counts features, not units
TIME_PER_MAC_FLOOR = 0.05  # a group that measured (almost) no time saving is weighed as this

Widths = dict[str, int]  # group name -> units kept


@dataclass
class PruneTarget:
    kind: Literal["macs", "params", "latency"] = "macs"  # what to reduce (latency: measured table)
    fraction: float = 0.5  # share to REMOVE (0 < f < 1): 0.5 = half the MACs
    # Also remove at least this share of the batch-1 latency (macs/params targets; needs a latency
    # table): e.g. fraction 0.5 with latency_fraction 0.375 = half the MACs and 1.6x faster.
    latency_fraction: float | None = None
    time_per_mac_weight: float = 1.0  # latency targets: exponent of the time-per-MAC weighting
    scope: Literal["global", "layer"] = "global"  # one ranking of normalised scores, or one share each
    round_to: int = 8  # kept widths are multiples of this (or the full width / min_size); heads: features
    protect: list[str] = field(default_factory=list)  # group names never pruned (e.g. the first conv)
    max_group_fraction: float = 0.9  # never remove more than this share of one group
    seconds: float = 1.0  # audio MACs are counted on (100 frames/s); params ignore it

    def __post_init__(self) -> None:
        if self.kind not in ("macs", "params", "latency"):
            raise ValueError(f"prune target kind must be 'macs', 'params' or 'latency', got {self.kind!r}")
        if self.latency_fraction is not None:
            if self.kind == "latency":
                raise ValueError("latency_fraction goes with a macs or params target; "
                                 "for latency alone use kind 'latency'")
            if not 0.0 < self.latency_fraction < 1.0:
                raise ValueError(f"latency_fraction must be in (0, 1), got {self.latency_fraction}")
        if self.time_per_mac_weight < 0:
            raise ValueError(f"time_per_mac_weight must be >= 0, got {self.time_per_mac_weight}")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"prune target scope must be 'global' or 'layer', got {self.scope!r}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"prune target fraction must be in (0, 1), got {self.fraction}")
        if not 0.0 < self.max_group_fraction <= 1.0:
            raise ValueError(f"max_group_fraction must be in (0, 1], got {self.max_group_fraction}")
        if self.round_to < 1 or self.seconds <= 0:
            raise ValueError("round_to must be >= 1 and seconds > 0")

    @property
    def latency_share(self) -> float | None:
        """Share of the latency to remove, or None when latency is not part of the target."""
        return self.fraction if self.kind == "latency" else self.latency_fraction

    def constraints(self) -> list[tuple[str, float]]:
        """(cost kind, share to remove) pairs that must all be met."""
        out = [(self.kind, self.fraction)]
        if self.latency_fraction is not None:
            out.append(("latency", self.latency_fraction))
        return out


def model_cost(model: AcousticModel, kind: str, seconds: float = 1.0) -> int:
    """MACs of one forward pass over ``seconds`` of audio (batch 1, ``count_macs``, eval mode) or
    the number of parameters."""
    if kind == "params":
        return count_params(model)
    if kind != "macs":
        raise ValueError(f"cost kind must be 'macs' or 'params', got {kind!r}")
    was_training = model.training
    model.eval()
    try:
        return count_macs(model, *example_input(model, seconds, model.config.num_features))
    finally:
        model.train(was_training)


def plan(model: AcousticModel, scores: Mapping[str, Tensor], target: PruneTarget,
         latency: LatencyTable | None = None) -> dict[str, list[int]]:
    """Keep-lists (highest-scored units, ascending indices) for ``prune_model`` whose pruned model
    costs at most ``(1 - target.fraction)`` of ``model``'s cost (and, with ``latency_fraction``,
    is predicted at most that much slower), as close to it as rounding allows.

    scores: group name -> (size,) scores (higher = more important); groups without scores and
    ``target.protect`` are never pruned. Only groups that lose units appear in the result.
    latency: the model's measured table, needed when latency is part of the target.
    ValueError when the target cannot be met within the constraints.
    """
    groups = _prunable(model, scores, target.protect)
    widths = {g.name: legal_widths(g, target.round_to, target.max_group_fraction) for g in groups}
    if target.latency_share is not None:
        if latency is None:
            raise ValueError("a latency target needs a latency table (slimasr.prune.latency)")
        latency.check(model)
    weights = _time_weights(groups, latency, target) if target.latency_share is not None else None
    if target.scope == "global":
        candidates = _global_candidates(groups, scores, widths, weights)
    else:
        candidates = _layer_candidates(groups, widths)
    measure = _measurer(model, target, latency)
    original = measure({})
    budget = {kind: (1.0 - share) * original[kind] for kind, share in target.constraints()}

    def within(w: Widths) -> bool:
        cost = measure(w)
        return all(cost[k] <= b for k, b in budget.items())
    best = _first_within(candidates, within)
    if best is None:
        most = measure(candidates(candidates.count - 1))
        wanted = " and ".join(f"{share:.1%} of the {kind}" for kind, share in target.constraints())
        reached = " and ".join(f"{1.0 - most[k] / original[k]:.1%} of the {k}" for k in budget)
        raise ConfigError(f"prune target: cannot remove {wanted} within the constraints (at most "
                          f"{reached}: lower the target, or check protect, round_to, "
                          f"max_group_fraction)")
    return keep_lists(groups, scores, best)


def plan_from_ratios(model: AcousticModel, scores: Mapping[str, Tensor], ratios: Mapping[str, float],
                     round_to: int = 1) -> dict[str, list[int]]:
    """Keep-lists removing ``ratios[g]`` of each named group's units, lowest scores first.

    The removed count is ``ratio * size`` rounded half up; the kept width is then rounded to the
    nearest multiple of ``round_to`` (``unit_step``; ties keep more), never below ``min_size`` nor
    above the full width. No ``max_group_fraction`` applies here. Groups that keep every unit are left out.
    """
    by_name = {g.name: g for g in prunable_groups(model)}
    chosen = []
    kept: Widths = {}
    for name, ratio in ratios.items():
        if name not in by_name:
            raise ValueError(f"unknown group {name!r}")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"group {name}: ratio must be in [0, 1], got {ratio}")
        g = by_name[name]
        _check_scores(g, scores)
        chosen.append(g)
        kept[name] = _rounded_width(g, g.size - math.floor(ratio * g.size + 0.5 + EPS), round_to)
    return keep_lists(chosen, scores, kept)


def legal_widths(group: Group, round_to: int, max_fraction: float = 1.0) -> list[int]:
    """Ascending kept widths allowed for ``group``: multiples of its ``unit_step`` and
    ``min_size`` that remove at most ``max_fraction`` of its units, and its full width (last)."""
    step = unit_step(group, round_to)
    lowest = max(group.min_size, group.size - math.floor(max_fraction * group.size + EPS))
    allowed = {w for w in range(lowest, group.size) if w % step == 0 or w == group.min_size}
    return sorted(allowed) + [group.size]


def unit_step(group: Group, round_to: int) -> int:
    """Kept unit counts are multiples of this: ``round_to`` units, except for groups whose units
    are blocks of features (attention heads), where ``round_to`` counts features: 4 heads of
    head_dim 36 are 144 features, so round_to 8 means an even number of heads, not 8 of them."""
    if group.kind not in FEATURE_ROUNDED_KINDS:
        return round_to
    features = group.activation.positions.shape[1]
    return round_to // math.gcd(round_to, features)


def keep_lists(groups: list[Group], scores: Mapping[str, Tensor], widths: Mapping[str, int]
               ) -> dict[str, list[int]]:
    """For each group narrower than its size in ``widths``: its ``widths[name]`` highest-scored
    units, ascending (ties keep the lower index)."""
    out = {}
    for g in groups:
        n = widths.get(g.name, g.size)
        if n < g.size:
            order = _descending(scores[g.name])
            out[g.name] = sorted(order[:n].tolist())
    return out


# ---- candidates: a monotone sequence of width assignments, index 0 = nothing removed ----------

class _Candidates:
    """``count`` width assignments, each removing at least as much as the one before."""

    def __init__(self, count: int, widths_at: Callable[[int], Widths]):
        self.count = count
        self.widths_at = widths_at

    def __call__(self, i: int) -> Widths:
        return self.widths_at(i)


def _global_candidates(groups: list[Group], scores: Mapping[str, Tensor],
                       widths: Mapping[str, list[int]], weights: Mapping[str, float] | None = None
                       ) -> _Candidates:
    """Candidate k removes the k lowest units of the global ranking of normalised scores (divided
    by the group's ``weights`` entry when given), then rounds each group's width up to a legal one."""
    ranked = []  # (normalised score, group position, unit) for every unit of a prunable group
    for gi, g in enumerate(groups):
        s = scores[g.name].detach().double().cpu()
        mean = float(s.mean())
        norm = s / mean if mean > MEAN_FLOOR else s
        if weights is not None:
            norm = norm / weights[g.name]
        ranked += [(float(v), gi, j) for j, v in enumerate(norm)]
    ranked.sort()
    owner = [groups[gi].name for _, gi, _ in ranked]

    def widths_at(k: int) -> Widths:
        removed = {g.name: 0 for g in groups}
        for name in owner[:k]:
            removed[name] += 1
        return {g.name: _round_up(widths[g.name], g.size - removed[g.name]) for g in groups}
    return _Candidates(len(ranked) + 1, widths_at)


def _time_weights(groups: list[Group], table: LatencyTable, target: PruneTarget) -> dict[str, float]:
    """Per group: its measured time per MAC (relative to the model's) to the power
    ``target.time_per_mac_weight``; groups the table lacks, or that save no MACs, weigh 1."""
    out = {}
    for g in groups:
        tpm = table.time_per_mac(g.name) if g.name in table.groups else math.nan
        tpm = 1.0 if math.isnan(tpm) else max(tpm, TIME_PER_MAC_FLOOR)
        out[g.name] = tpm ** target.time_per_mac_weight
    return out


def _layer_candidates(groups: list[Group], widths: Mapping[str, list[int]]) -> _Candidates:
    """Candidate i applies the i-th smallest fraction at which some group's legal width changes
    (fraction 0 first) to every group, rounding widths up."""
    fractions = sorted({0.0} | {(g.size - w) / g.size for g in groups for w in widths[g.name]})

    def widths_at(i: int) -> Widths:
        f = fractions[i]
        return {g.name: _round_up(widths[g.name], math.ceil(g.size * (1.0 - f) - EPS)) for g in groups}
    return _Candidates(len(fractions), widths_at)


def _first_within(candidates: _Candidates, within: Callable[[Widths], bool]) -> Widths | None:
    """The first candidate that is ``within`` budget (binary search; costs fall along the list)."""
    lo, hi = 0, candidates.count - 1
    if not within(candidates(hi)):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if within(candidates(mid)):
            hi = mid
        else:
            lo = mid + 1
    return candidates(lo)


def _measurer(model: AcousticModel, target: PruneTarget, latency: LatencyTable | None
              ) -> Callable[[Widths], dict[str, float]]:
    """Costs ({kind: cost} for every kind in the target) of ``model`` pruned to the given widths
    (which units does not matter for the cost); MACs and params are counted on the pruned model,
    latency is the table's prediction. Memoised within one planning call only."""
    seen: dict[tuple, dict[str, float]] = {}
    by_name = {g.name: g for g in prunable_groups(model)}
    kinds = [k for k, _ in target.constraints()]

    def measure(widths: Widths) -> dict[str, float]:
        narrowed = {n: w for n, w in widths.items() if w < by_name[n].size}
        key = tuple(sorted(narrowed.items()))
        if key not in seen:
            cost = {}
            counted = [k for k in kinds if k != "latency"]
            if counted:
                small = prune_model(model, {n: list(range(w)) for n, w in narrowed.items()}) if narrowed else model
                cost.update({k: float(model_cost(small, k, target.seconds)) for k in counted})
            if "latency" in kinds:
                cost["latency"] = latency.predict(narrowed)
            seen[key] = cost
        return seen[key]
    return measure


# ---- helpers --------------------------------------------------------------------------------

def _prunable(model: AcousticModel, scores: Mapping[str, Tensor], protect: list[str]) -> list[Group]:
    """Scored, unprotected groups, in forward order; ValueError on unknown names or bad scores."""
    groups = prunable_groups(model)
    names = {g.name for g in groups}
    for name in [*scores, *protect]:
        if name not in names:
            raise ValueError(f"unknown group {name!r} (known: {', '.join(sorted(names))})")
    chosen = [g for g in groups if g.name in scores and g.name not in protect]
    for g in chosen:
        _check_scores(g, scores)
    return chosen


def _check_scores(group: Group, scores: Mapping[str, Tensor]) -> None:
    s = scores.get(group.name)
    if s is None or tuple(s.shape) != (group.size,) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"group {group.name}: needs {group.size} finite scores")


def _descending(s: Tensor) -> Tensor:
    """Unit indices from highest to lowest score, ties by ascending index."""
    return torch.sort(-s.detach().double().cpu(), stable=True).indices


def _round_up(allowed: list[int], width: int) -> int:
    """The smallest allowed width >= ``width`` (``allowed`` ascending, ending at the full width)."""
    return allowed[min(bisect.bisect_left(allowed, width), len(allowed) - 1)]


def _rounded_width(group: Group, width: int, round_to: int) -> int:
    """``width`` rounded to the nearest multiple of ``unit_step`` (ties up), in [min_size, size];
    ``min_size`` and the full width stay as they are."""
    if width <= group.min_size or width >= group.size:
        return min(group.size, max(group.min_size, width))
    step = unit_step(group, round_to)
    nearest = step * math.floor(width / step + 0.5)
    return min(group.size, max(group.min_size, nearest))
