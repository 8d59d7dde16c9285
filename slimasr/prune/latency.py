"""Measured latency cost of every prunable group, for pruning to a latency target.

    table = measure_latency_table(model, round_to=8, threads=1)    # times pruned variants
    table.predict({"blocks.0.attn": 2, "blocks.3.ffn1": 352})       # ms at batch 1
    keep = plan(model, scores, PruneTarget("macs", 0.5, latency_fraction=0.375), latency=table)

MACs are a poor proxy for batch-1 time on a CPU: per counted MAC, a Conformer's attention (softmax,
the relative-position bias gather, four small projections per head) and its depthwise conv take
longer than its FFN matrix products. A plan that only counts MACs may remove the "cheap" MACs and
leave the slow ones (measured on our Conformer teacher at 50% fewer MACs: 1.42x faster with Taylor
scores, 1.82x with magnitude; bench/README.md). The table measures, on the machine it runs on, what
each group's units really cost:

- Groups of the same shape (the FFNs of identical Conformer blocks, LSTM layers with equal widths)
  form a *class*. For each class, the model is pruned to a few legal widths of all its groups at
  once (the narrowest legal width and the one nearest half of it; ``points``) and timed in
  alternating blocks of consecutive runs with the unpruned model (batch 1, ``seconds`` of audio,
  ``threads`` threads, warm-up first). The saving is the difference of the two medians, so slow
  drifts of the machine cancel, and each group of the class is credited an equal share. Timing one group at a time
  does not work: on our Conformer teacher one block's FFN or heads save 0.1-0.5 ms of 28 ms,
  within timing noise, and the sum of 42 such noisy, clipped savings over-predicted the saving
  of a pruned model by 2-4 ms.
- Savings are made monotone (never negative, never smaller for a narrower width) and interpolated
  linearly between the measured widths (0 at the full width).
- The prediction for a model with several groups narrowed is the unpruned time minus the sum of
  the groups' savings. ``prune.json`` records it beside the pruned model's measured time.

The MACs each group saves at the same widths are recorded too, so a plan can weigh a unit by its
time per MAC (``time_per_mac``).

Whole blocks (``depth = (prefix, layers)``, the residual blocks learned depth gates may close; see
``slimasr.prune.learned``): blocks whose groups have the same widths form a class; half of each
class (at least one block, never all of the model's) is removed at once with ``select_layers`` and
timed against the unpruned model, and each removed block is credited an equal share, as for the
groups. A removed block takes its groups with it, so the prediction for kept blocks ``K`` is the
unpruned time minus the savings of the blocks not in ``K`` and of the groups of the kept blocks
(and of the groups in no block). At batch 1 a block costs more time than its groups' savings
add up to: its norms, residual adds and small kernels are time that no width removes.

A table is JSON (``save`` / ``LatencyTable.load``); one measured on the target device can be
handed to ``slimasr prune`` (``latency_table=FILE``) instead of measuring on the machine that
prunes. It only fits the model it was measured on: group names and sizes are checked.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from slimasr.errors import DataError
from slimasr.evaluate.cost import AUDIO_SECONDS, count_macs, example_input
from slimasr.io import atomic_path, read_json, write_json_atomic
from slimasr.models.common import AcousticModel
from slimasr.progress import progress_bar
from slimasr.prune.groups import Group, prunable_groups
from slimasr.prune.plan import legal_widths
from slimasr.prune.surgery import prune_model, select_layers

DEFAULT_POINTS = (0.5, 1.0)  # measured widths: these shares of each group's removable range
DEFAULT_RUNS = 20  # timed runs of each model per measured width (alternating, so 2x this)
WARMUP = 2  # untimed runs of every freshly built variant
BLOCK = 10  # consecutive timed runs of one model before switching to the other
TABLE_VERSION = 1


@dataclass
class LatencyTable:
    """Per-group latency savings, measured; see the module docstring."""

    base_ms: float  # unpruned model, batch 1, ``seconds`` of audio, median
    seconds: float
    threads: int
    machine: str
    total_macs: float  # unpruned model, on ``seconds`` of audio
    # group name -> {"size": int, "class": int, "widths": [kept widths, descending, first = size],
    #                "saved_ms": [...], "macs_saved": [...]} (first entries 0; per group: the
    #                class's saving divided by its number of groups)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    # whole blocks, when measured: {"prefix": the ModuleList's name, "saved_ms": [per block],
    # "macs_saved": [per block]} (removing block i at full width saves saved_ms[i])
    blocks: dict[str, Any] | None = None
    version: int = TABLE_VERSION

    def saved_ms(self, name: str, width: int) -> float:
        """Predicted time saved by narrowing group ``name`` alone to ``width`` units."""
        return _interp(self.groups[name], "saved_ms", width)

    def macs_saved(self, name: str, width: int) -> float:
        return _interp(self.groups[name], "macs_saved", width)

    def predict(self, widths: Mapping[str, int], blocks: Iterable[int] | None = None) -> float:
        """Predicted batch-1 time (ms) with the given kept widths (groups not named: full) and,
        with measured blocks, only the ``blocks`` kept (None: all; original numbering)."""
        if blocks is None or self.blocks is None:
            return self.base_ms - sum(self.saved_ms(n, w) for n, w in widths.items() if n in self.groups)
        kept = set(blocks)
        gone = sum(ms for i, ms in enumerate(self.blocks["saved_ms"]) if i not in kept)
        return self.base_ms - gone - sum(self.saved_ms(n, w) for n, w in widths.items()
                                         if n in self.groups and self.block_of(n) in kept | {None})

    def block_of(self, name: str) -> int | None:
        """The measured block group ``name`` belongs to (None: no blocks measured, or in none)."""
        if self.blocks is None:
            return None
        head, _, rest = name.partition(self.blocks["prefix"] + ".")
        index = rest.split(".", 1)[0]
        return int(index) if not head and index.isdigit() else None

    def time_per_mac(self, name: str) -> float:
        """Group ``name``'s ms saved per MAC saved at its narrowest measured width, relative to
        the whole model's ms per MAC (1 = as fast per MAC as the model on average); nan when it
        saves no MACs there (e.g. a group that was not measured)."""
        g = self.groups[name]
        macs, ms = g["macs_saved"][-1], g["saved_ms"][-1]
        if macs <= 0 or self.total_macs <= 0:
            return math.nan
        return (ms / macs) / (self.base_ms / self.total_macs)

    def check(self, model: AcousticModel, source: str | Path = "latency table") -> None:
        """DataError when a group of the table is not in ``model`` with the same size."""
        sizes = {g.name: g.size for g in prunable_groups(model)}
        for name, entry in self.groups.items():
            if sizes.get(name) != entry["size"]:
                raise DataError(source, f"group {name} was measured with {entry['size']} units, the "
                                        f"model has {sizes.get(name)} (a table of another model?)")

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "base_ms": self.base_ms, "seconds": self.seconds,
                "threads": self.threads, "machine": self.machine, "total_macs": self.total_macs,
                "groups": self.groups, **({"blocks": self.blocks} if self.blocks is not None else {})}

    def save(self, path: str | Path) -> Path:
        write_json_atomic(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | Path = "latency table") -> LatencyTable:
        problem = _problem(data)
        if problem:
            raise DataError(source, f"not a latency table ({problem})")
        return cls(base_ms=float(data["base_ms"]), seconds=float(data["seconds"]),
                   threads=int(data["threads"]), machine=str(data.get("machine", "")),
                   total_macs=float(data["total_macs"]),
                   groups={n: dict(e) for n, e in data["groups"].items()},
                   blocks=dict(data["blocks"]) if data.get("blocks") is not None else None,
                   version=int(data["version"]))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        return cls.from_dict(read_json(path), path)


def _measure_class(model: AcousticModel, index: int, members: list[Group], widths: Sequence[int],
                   example: tuple, runs: int, total_macs: float, base_times: list[float],
                   advance: Any) -> dict[str, Any]:
    """Class ``index``, groups that are pruned together, at each of ``widths``: the latency and MACs
    saved per group against the unpruned model (timed alternately; the unpruned times are added
    to ``base_times``), made monotone in the width."""
    x, lens = example
    size = members[0].size
    entry: dict[str, Any] = {"size": size, "class": index, "widths": [size], "saved_ms": [0.0],
                             "macs_saved": [0.0]}
    for width in widths:
        variant = prune_model(model, {g.name: list(range(width)) for g in members}).eval()
        _time(variant, x, lens, WARMUP)
        base, pruned = _alternate(model, variant, x, lens, runs)
        base_times += base
        entry["widths"].append(width)
        entry["saved_ms"].append((statistics.median(base) - statistics.median(pruned)) / len(members))
        entry["macs_saved"].append(float(total_macs - count_macs(variant, x, lens)) / len(members))
        advance()
    entry["saved_ms"] = _monotone(entry["saved_ms"])
    return entry


def measure_latency_table(model: AcousticModel, round_to: int = 8, max_group_fraction: float = 0.9,
                          groups: Sequence[str] | None = None, seconds: float = AUDIO_SECONDS,
                          threads: int = 1, runs: int = DEFAULT_RUNS,
                          points: Sequence[float] = DEFAULT_POINTS, show_progress: bool = True,
                          depth: tuple[str, int] | None = None) -> LatencyTable:
    """Measure every group's (or the named ``groups``') latency saving at a few legal widths; see
    the module docstring. ``round_to`` and ``max_group_fraction`` give the legal widths, as in
    ``PruneTarget``; ``points`` are shares of each group's removable range (1.0 = narrowest);
    ``depth = (prefix, layers)`` (``learned.depth_layers``) also times removing whole blocks."""
    if runs < 1 or not points or any(not 0.0 < p <= 1.0 for p in points):
        raise ValueError("runs must be >= 1 and points in (0, 1]")
    by_name = {g.name: g for g in prunable_groups(model)}
    names = list(by_name) if groups is None else list(groups)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown group {unknown[0]!r} (known: {', '.join(by_name)})")
    model = model.eval()
    x, lens = example_input(model, seconds, model.config.num_features)
    classes = _classes(model, [by_name[n] for n in names])
    plans = [_measured_widths(c[0], legal_widths(c[0], round_to, max_group_fraction), points) for c in classes]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    base_times: list[float] = []
    table_groups: dict[str, dict[str, Any]] = {}
    block_classes = _block_classes(depth[0], depth[1], by_name) if depth is not None else []
    blocks = None
    try:
        total_macs = count_macs(model, x, lens)
        _time(model, x, lens, WARMUP)
        with progress_bar(disable=not show_progress) as bar:
            task = bar.add_task("latency table", total=sum(len(w) for w in plans) + len(block_classes))
            for ci, (members, widths) in enumerate(zip(classes, plans)):
                entry = _measure_class(model, ci, members, widths, (x, lens), runs, total_macs,
                                       base_times, lambda: bar.advance(task))
                for g in members:
                    table_groups[g.name] = {**entry, "widths": list(entry["widths"])}
            if depth is not None:
                blocks = _measure_blocks(model, depth, block_classes, (x, lens), runs, total_macs,
                                         base_times, lambda: bar.advance(task))
        base_ms = statistics.median(base_times) if base_times else _median_time(model, x, lens, runs)
    finally:
        torch.set_num_threads(old_threads)
    table_groups = {n: table_groups[n] for n in names}  # forward order
    return LatencyTable(base_ms=base_ms, seconds=seconds, threads=threads, total_macs=float(total_macs),
                        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
                        groups=table_groups, blocks=blocks)


def _block_classes(prefix: str, layers: int, groups: Mapping[str, Group]) -> list[list[int]]:
    """Blocks ``0..layers-1`` of ``prefix`` whose groups have the same names (past the block
    index) and sizes, in order of first appearance."""
    out: dict[tuple, list[int]] = {}
    for i in range(layers):
        head = f"{prefix}.{i}."
        key = tuple(sorted((n[len(head):], g.size) for n, g in groups.items() if n.startswith(head)))
        out.setdefault(key, []).append(i)
    return list(out.values())


def _measure_blocks(model: AcousticModel, depth: tuple[str, int], classes: list[list[int]],
                    example: tuple, runs: int, total_macs: float, base_times: list[float],
                    advance: Any) -> dict[str, Any]:
    """Per block, the time and MACs saved by removing it whole: half of each class of blocks
    (at least one; one block of the model always stays) removed at once and timed alternately
    with the unpruned model, each removed block credited an equal share."""
    prefix, layers = depth
    x, lens = example
    saved, macs = [0.0] * layers, [0.0] * layers
    for members in classes:
        gone = members[: max(1, len(members) // 2)] if layers > 1 else []
        if not gone:  # one block in all: it cannot be removed
            advance()
            continue
        variant = select_layers(model, [i for i in range(layers) if i not in gone]).eval()
        _time(variant, x, lens, WARMUP)
        base, pruned = _alternate(model, variant, x, lens, runs)
        base_times += base
        share = max(statistics.median(base) - statistics.median(pruned), 0.0) / len(gone)
        mac_share = float(total_macs - count_macs(variant, x, lens)) / len(gone)
        for i in members:
            saved[i], macs[i] = share, mac_share
        advance()
    return {"prefix": prefix, "saved_ms": saved, "macs_saved": macs}


def relative_latency(base: AcousticModel, other: AcousticModel, seconds: float = AUDIO_SECONDS,
                     threads: int = 1, runs: int = 2 * DEFAULT_RUNS) -> float:
    """Batch-1 time of ``other`` over that of ``base`` (medians of ``runs`` timings each, in
    alternating blocks after warm-up), so that drifts of the machine cancel."""
    x, lens = example_input(base, seconds, base.config.num_features)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        base, other = base.eval(), other.eval()
        _time(base, x, lens, WARMUP)
        _time(other, x, lens, WARMUP)
        ta, tb = _alternate(base, other, x, lens, runs)
    finally:
        torch.set_num_threads(old_threads)
    return statistics.median(tb) / statistics.median(ta)


def plot_latency_table(table: LatencyTable, path: str | Path) -> Path:
    """PNG: per class of groups, the share of the model's time and of its MACs that narrowing the
    whole class to its narrowest measured width saves, and their ratio (time per MAC, 1 = the
    model's average). Written atomically; returns the path."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (slow to import; Agg canvas)

    classes: dict[int, list[str]] = {}
    for name, e in table.groups.items():
        classes.setdefault(e["class"], []).append(name)
    labels, time_share, mac_share = [], [], []
    for members in classes.values():
        e = table.groups[members[0]]
        labels.append(members[0] if len(members) == 1 else f"{members[0]} (+{len(members) - 1} alike)")
        time_share.append(100.0 * e["saved_ms"][-1] * len(members) / table.base_ms)
        mac_share.append(100.0 * e["macs_saved"][-1] * len(members) / max(table.total_macs, 1.0))
    if table.blocks is not None and any(table.blocks["saved_ms"]):
        n = len(table.blocks["saved_ms"])
        labels.append(f"one whole {table.blocks['prefix']} block (mean of {n})")
        time_share.append(100.0 * sum(table.blocks["saved_ms"]) / n / table.base_ms)
        mac_share.append(100.0 * sum(table.blocks["macs_saved"]) / n / max(table.total_macs, 1.0))
    fig = Figure(figsize=(max(6.0, 1.2 * len(labels) + 2.0), 4.5), layout="constrained")
    ax = fig.subplots()
    pos = np.arange(len(labels))
    ax.bar(pos - 0.2, time_share, 0.4, label="share of the time saved (measured)")
    ax.bar(pos + 0.2, mac_share, 0.4, label="share of the MACs saved (counted)")
    for x, t, m in zip(pos, time_share, mac_share):
        if m > 0:
            ax.annotate(f"{t / m:.2f}", (x, max(t, m)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(pos, labels, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="% of the unpruned model", title=f"latency table: each class at its narrowest measured width "
           f"(numbers: time per MAC; {table.base_ms:.1f} ms, {table.threads} thread(s), {table.seconds:g} s)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


# ---- helpers --------------------------------------------------------------------------------

def _classes(model: AcousticModel, groups: list[Group]) -> list[list[Group]]:
    """Groups with the same kind, size and sliced tensor shapes, in order of first appearance."""
    state = model.state_dict()
    out: dict[tuple, list[Group]] = {}
    for g in groups:
        key = (g.kind, g.size, tuple((tuple(state[s.tensor].shape), s.dim, s.consumer,
                                      tuple(s.positions.shape)) for s in g.slices))
        out.setdefault(key, []).append(g)
    return list(out.values())


def _measured_widths(group: Group, legal: list[int], points: Sequence[float]) -> list[int]:
    """Kept widths to time for ``group``, descending: for each point p, the legal width nearest to
    removing p of the removable range (``legal`` ascending, ending at the full width)."""
    narrowest = legal[0]
    if narrowest >= group.size:
        return []
    chosen = set()
    for p in points:
        goal = group.size - p * (group.size - narrowest)
        chosen.add(min(legal[:-1], key=lambda w: (abs(w - goal), w)))
    return sorted(chosen, reverse=True)


@torch.inference_mode()
def _time(model: AcousticModel, x: torch.Tensor, lens: torch.Tensor, n: int) -> list[float]:
    out = []
    for _ in range(n):
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        model(x, lens)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        out.append(1000.0 * (time.perf_counter() - start))
    return out


def _alternate(a: AcousticModel, b: AcousticModel, x: torch.Tensor, lens: torch.Tensor, runs: int,
               block: int = BLOCK) -> tuple[list[float], list[float]]:
    """``runs`` timings of each model, in alternating blocks of ``block`` consecutive runs (each
    after one untimed run): drifts of the machine cancel between blocks, while inside a block a
    model runs with its own weights in cache, as a deployed model does. Strict alternation
    (block 1) evicts each model's weights before every run and under-measured a pruned
    Conformer's speed-up: 1.59x against 1.68x in a round-robin of 30-run series."""
    ta: list[float] = []
    tb: list[float] = []
    while len(ta) < runs:
        n = min(block, runs - len(ta))
        for model, out in ((a, ta), (b, tb)):
            _time(model, x, lens, 1)
            out += _time(model, x, lens, n)
    return ta, tb


def _median_time(model: AcousticModel, x: torch.Tensor, lens: torch.Tensor, runs: int) -> float:
    return statistics.median(_time(model, x, lens, runs))


def _monotone(saved: list[float]) -> list[float]:
    """Savings along widths that narrow: clipped at 0 and never below an earlier (wider) one;
    timing noise can make a narrower variant look slower, removing units never adds work."""
    return [float(v) for v in np.maximum.accumulate(np.maximum(np.asarray(saved, dtype=float), 0.0))]


def _interp(entry: Mapping[str, Any], key: str, width: int) -> float:
    widths = np.asarray(entry["widths"][::-1], dtype=float)  # ascending
    values = np.asarray(entry[key][::-1], dtype=float)
    return float(np.interp(width, widths, values))


def _problem(data: Any) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("groups"), dict):
        return "no 'groups' object"
    if data.get("version") != TABLE_VERSION:
        return f"version {data.get('version')!r}, expected {TABLE_VERSION}"
    for key in ("base_ms", "seconds", "threads", "total_macs"):
        if not isinstance(data.get(key), (int, float)) or isinstance(data.get(key), bool):
            return f"no numeric {key!r}"
    for name, e in data["groups"].items():
        lists = [e.get(k) for k in ("widths", "saved_ms", "macs_saved")] if isinstance(e, dict) else [None]
        if any(not isinstance(v, list) or not v for v in lists) or len({len(v) for v in lists}) != 1:
            return f"group {name}: needs equally long lists widths, saved_ms, macs_saved"
        if not isinstance(e.get("size"), int) or e["widths"][0] != e["size"]:
            return f"group {name}: widths must start at its size"
        if any(b >= a for a, b in zip(e["widths"], e["widths"][1:])):
            return f"group {name}: widths must be descending"
    blocks = data.get("blocks")
    if blocks is not None:
        if (not isinstance(blocks, dict) or not isinstance(blocks.get("prefix"), str)
                or any(not isinstance(blocks.get(k), list) for k in ("saved_ms", "macs_saved"))
                or len(blocks["saved_ms"]) != len(blocks["macs_saved"])):
            return "'blocks' needs a prefix and equally long lists saved_ms, macs_saved"
    return None
