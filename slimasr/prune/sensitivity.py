"""Measured sensitivity: prune one group at a time, evaluate, and choose per-group ratios from it.

    scan = sensitivity_scan(model, evaluate=lambda m: dev_loss(m))   # lower = better
    plot_sensitivity(scan, "exp/sensitivity.png"); save_scan(scan, "exp/sensitivity.json")
    ratios = ratios_from_scan(model, scan, PruneTarget(kind="macs", fraction=0.5))
    # or a latency target, priced with a measured table (slimasr.prune.latency):
    ratios = ratios_from_scan(model, scan, PruneTarget("macs", 0.5, latency_fraction=0.375), table)
    small = prune_model(model, plan_from_ratios(model, scores, ratios, round_to=8))

A scan is plain JSON-ready data::

    {"baseline": float,                     # evaluate(model)
     "macs": int, "params": int,            # the unpruned model's cost (MACs on ``seconds`` of audio)
     "seconds": float, "requested_ratios": [...],
     "groups": {name: {"kind": str, "size": int,
                       "ratios": [...],      # share of units actually removed (after rounding)
                       "values": [...],      # evaluate(pruned model)
                       "macs_saved": [...], "params_saved": [...]}}}

Requested ratios that round to the same number of units (or to none) are measured once (or not at
all), so a group's lists may be shorter than ``requested_ratios``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from torch import Tensor

from slimasr.errors import ConfigError, DataError
from slimasr.io import atomic_path, read_json, write_json_atomic
from slimasr.models.common import AcousticModel
from slimasr.progress import progress_bar
from slimasr.prune.groups import Group, prunable_groups
from slimasr.prune.importance import magnitude_scores
from slimasr.prune.latency import LatencyTable
from slimasr.prune.plan import EPS, PruneTarget, legal_widths, model_cost, plan_from_ratios
from slimasr.prune.surgery import prune_model

DEFAULT_RATIOS = (0.25, 0.5, 0.75)  # shares of a group's units removed in a scan
MAX_LINES_PER_AXES = 8  # with more groups, the plot gets one panel per group kind
FIGURE_DPI = 120  # resolution of the sensitivity plot
PANEL_SIZE = (6.0, 4.0)  # inches per panel (width, height)
LIST_KEYS = ("ratios", "values", "macs_saved", "params_saved")  # per-group lists of one length


def sensitivity_scan(model: AcousticModel, evaluate: Callable[[AcousticModel], float],
                     ratios: Sequence[float] = DEFAULT_RATIOS, groups: Sequence[str] | None = None,
                     scores: Mapping[str, Tensor] | None = None, show_progress: bool = True,
                     seconds: float = 1.0) -> dict[str, Any]:
    """For each group (``groups``: names, default all) and ratio, remove that share of the group's
    units (lowest ``scores``, default L2 magnitude), record ``evaluate(pruned)`` (lower = better)
    and the MACs/params saved; also ``evaluate(model)`` as the baseline. See the module docstring."""
    by_name = {g.name: g for g in prunable_groups(model)}
    names = list(by_name) if groups is None else list(groups)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown group {unknown[0]!r} (known: {', '.join(by_name)})")
    if any(not 0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"scan ratios must be in (0, 1], got {list(ratios)}")
    scores = magnitude_scores(model) if scores is None else scores
    base = {k: model_cost(model, k, seconds) for k in ("macs", "params")}
    scan = {"baseline": float(evaluate(model)), **base, "seconds": seconds,
            "requested_ratios": [float(r) for r in ratios], "groups": {}}
    with progress_bar(disable=not show_progress) as bar:
        task = bar.add_task("sensitivity scan", total=len(names) * len(ratios))
        for name in names:
            scan["groups"][name] = _scan_group(model, by_name[name], evaluate, ratios, scores, base,
                                               seconds, lambda: bar.advance(task))
    return scan


def _scan_group(model: AcousticModel, group: Group, evaluate: Callable[[AcousticModel], float],
                ratios: Sequence[float], scores: Mapping[str, Tensor], base: Mapping[str, int],
                seconds: float, step: Callable[[], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": group.kind, "size": group.size, **{k: [] for k in LIST_KEYS}}
    done: set[int] = set()
    for ratio in sorted(ratios):
        keep = plan_from_ratios(model, scores, {group.name: ratio}).get(group.name)
        if keep is not None and len(keep) not in done:
            done.add(len(keep))
            pruned = prune_model(model, {group.name: keep})
            out["ratios"].append((group.size - len(keep)) / group.size)
            out["values"].append(float(evaluate(pruned)))
            for k in ("macs", "params"):
                out[f"{k}_saved"].append(base[k] - model_cost(pruned, k, seconds))
        step()
    return out


# ---- choosing ratios ------------------------------------------------------------------------

def ratios_from_scan(model: AcousticModel, scan: Mapping[str, Any], target: PruneTarget,
                     latency: LatencyTable | None = None) -> dict[str, float]:
    """Per-group removal ratios meeting ``target`` (kind, fraction, latency_fraction, round_to,
    protect, max_group_fraction) at the least total increase of the scanned metric.

    Greedy on the scan's curves, linearly interpolated (increase 0 at ratio 0) and never beyond a
    group's largest measured ratio: one rounding step at a time, the group with the smallest
    metric increase per unit of cost saved goes one step further. The cost is the target's kind,
    or the latency (the ``latency`` table's prediction) whenever latency is part of the target.
    The scan's single-group MAC / param savings add up to at least the real saving (coupled groups
    share weights), so the real cost of the planned model is measured once their sum reaches the
    target, and after every step from then on, until every constraint is met. Returns
    {group: removed / size} for every scanned, unprotected group; pass it to
    ``plan_from_ratios(model, scores, ratios, target.round_to)``. ValueError when unreachable.
    """
    by_name = {g.name: g for g in prunable_groups(model)}
    if target.latency_share is not None:
        if latency is None:
            raise ValueError("a latency target needs a latency table (slimasr.prune.latency)")
        latency.check(model)
    priced = "latency" if target.latency_share is not None else target.kind
    curves = {n: _Curve(by_name[n], entry, scan, target.round_to, target.max_group_fraction,
                        priced, latency) for n, entry in scan["groups"].items()
              if n in by_name and n not in target.protect}
    share = dict(target.constraints())[priced]
    budget = {kind: (1.0 - f) * (latency.base_ms if kind == "latency" else model_cost(model, kind, target.seconds))
              for kind, f in target.constraints()}
    estimated = 0.0  # estimated share of the priced cost saved
    while True:
        if estimated >= share - EPS and all(
                _measured(model, curves, kind, target.seconds, latency) <= b for kind, b in budget.items()):
            return {n: c.ratio for n, c in curves.items()}
        movable = [c for c in curves.values() if c.can_step()]
        if not movable:
            wanted = " and ".join(f"{f:.1%} of the {k}" for k, f in target.constraints())
            raise ConfigError(f"prune target: cannot remove {wanted} within the scanned ratios "
                              f"and the constraints (lower the target, scan larger ratios with "
                              f"sensitivity_ratios=[0.25,0.5,0.75,0.9], or check protect, round_to, "
                              f"max_group_fraction)")
        best = min(movable, key=lambda c: c.step_price())
        estimated += best.step()


class _Curve:
    """One group's scanned metric increase and cost saving (as a share of the unpruned model's
    cost) against the share of units removed, and the greedy's position on it."""

    def __init__(self, group: Group, entry: Mapping[str, Any], scan: Mapping[str, Any], round_to: int,
                 max_group_fraction: float, kind: str, latency: LatencyTable | None):
        if entry.get("size") != group.size:
            raise ValueError(f"group {group.name}: the scan saw {entry.get('size')} units, the model "
                             f"has {group.size} (a scan of another model?)")
        self.size = group.size
        self.x = np.array([0.0, *entry["ratios"]])
        self.increase = np.array([0.0, *(v - scan["baseline"] for v in entry["values"])])
        if kind == "latency":  # the table's prediction at the scanned widths
            saved = [0.0 if group.name not in latency.groups else latency.saved_ms(
                group.name, group.size - round(r * group.size)) for r in entry["ratios"]]
            self.saved = np.array([0.0, *saved]) / latency.base_ms
        else:
            self.saved = np.array([0.0, *entry[f"{kind}_saved"]]) / scan[kind]
        order = np.argsort(self.x, kind="stable")
        self.x, self.increase, self.saved = self.x[order], self.increase[order], self.saved[order]
        widths = legal_widths(group, round_to, max_group_fraction)
        # kept widths, widest first, within the measured range
        self.widths = [w for w in reversed(widths) if (group.size - w) / group.size <= self.x[-1] + EPS]
        self.index = 0  # position in self.widths (0 = full width)

    @property
    def ratio(self) -> float:
        return (self.size - self.widths[self.index]) / self.size

    def can_step(self) -> bool:
        return self.index + 1 < len(self.widths)

    def _next_ratio(self) -> float:
        return (self.size - self.widths[self.index + 1]) / self.size

    def _delta(self, values: np.ndarray) -> float:
        return float(np.interp(self._next_ratio(), self.x, values) - np.interp(self.ratio, self.x, values))

    def step_price(self) -> tuple[float, float]:
        """(metric increase per share of cost saved, minus the saving) of the next step."""
        saved = self._delta(self.saved)
        price = self._delta(self.increase) / saved if saved > 0 else math.inf
        return price, -saved

    def step(self) -> float:
        """Go one step further; returns the estimated share of cost it saves."""
        saved = self._delta(self.saved)
        self.index += 1
        return saved


def _measured(model: AcousticModel, curves: Mapping[str, _Curve], kind: str, seconds: float,
              latency: LatencyTable | None) -> float:
    """Real cost (latency: predicted) of ``model`` with each curve's current width (which units
    does not matter)."""
    widths = {n: c.widths[c.index] for n, c in curves.items() if c.index > 0}
    if kind == "latency":
        return latency.predict(widths)
    return model_cost(prune_model(model, {n: list(range(w)) for n, w in widths.items()}), kind, seconds)


# ---- plot and files -------------------------------------------------------------------------

def plot_sensitivity(scan: Mapping[str, Any], path: str | Path) -> Path:
    """PNG of the scan: metric against share of units removed, one line per group, the baseline
    dashed; one panel per group kind when there are more than ``MAX_LINES_PER_AXES`` groups.
    Written atomically; returns the path."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (matplotlib is slow to import; Agg canvas)

    path = Path(path)
    groups = scan["groups"]
    if len(groups) > MAX_LINES_PER_AXES:
        kinds = sorted({e["kind"] for e in groups.values()})
        panels = [(k, [n for n, e in groups.items() if e["kind"] == k]) for k in kinds]
    else:
        panels = [("one group pruned at a time", list(groups))]
    fig = Figure(figsize=(PANEL_SIZE[0] * len(panels), PANEL_SIZE[1]), layout="constrained")
    for ax, (title, names) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for name in names:
            e = groups[name]
            ax.plot([0.0, *e["ratios"]], [scan["baseline"], *e["values"]], marker="o", label=name)
        ax.axhline(scan["baseline"], color="black", linestyle="--", linewidth=1, label="baseline")
        ax.set(title=title, xlabel="share of units removed", ylabel="metric (lower = better)")
        ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI)
    return path


def save_scan(scan: Mapping[str, Any], path: str | Path) -> Path:
    """Write the scan as JSON, atomically."""
    write_json_atomic(path, scan)
    return Path(path)


def load_scan(path: str | Path) -> dict[str, Any]:
    """Read a scan written by ``save_scan``; DataError naming the file when it is not one."""
    scan = read_json(path)
    problem = _scan_problem(scan)
    if problem:
        raise DataError(path, f"not a sensitivity scan ({problem})")
    return scan


def _scan_problem(scan: Any) -> str | None:
    if not isinstance(scan, dict) or not isinstance(scan.get("groups"), dict):
        return "no 'groups' object"
    for key in ("baseline", "macs", "params"):
        if not isinstance(scan.get(key), (int, float)):
            return f"no numeric {key!r}"
    for name, entry in scan["groups"].items():
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), list) for k in LIST_KEYS):
            return f"group {name} lacks one of {', '.join(LIST_KEYS)}"
        if len({len(entry[k]) for k in LIST_KEYS}) != 1:
            return f"group {name}: lists of different lengths"
    return None
