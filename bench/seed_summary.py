"""Means over seeds: one table of several runs per method, from the rows the benchmarks wrote.

    python bench/seed_summary.py --ref sensitivity \
        --group sensitivity=shipped_m1000/learned.json#sensitivity_0.78,shipped_m1000_rows/sensitivity_78_seed1.row.json \
        --group learned=shipped_m300_rows/learned_78_..._kd22.row.json,shipped_m300_rows/learned_78_..._kd22_seed1.row.json \
        --root bench/results/prune_learned --out bench/results/prune_learned/shipped_seeds.json

A run is a ``*.row.json`` file (one row of ``bench/prune_learned.py``) or a point of a table's JSON,
``learned.json#CRITERION_TARGET``. The runs of a group are listed in seed order; against ``--ref``
each group gets the difference of the means and, where both have the same number of runs, the
paired differences seed by seed with the standard error of their mean (± in the table: a gap
within about two of them is within what the seeds move). Writes
the table (Markdown, printed and beside ``--out``), the numbers (``--out``, JSON) and a plot of every
run and each group's mean (beside ``--out``, .png).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

METRICS = (("wer_greedy", "WER greedy"), ("wer_lm", "WER +LM"))


def load_run(spec: str, root: Path) -> dict:
    """One run's row: ``FILE.row.json``, or ``TABLE.json#criterion_target`` (a point of a table)."""
    path, _, point = spec.partition("#")
    if not (root / path).is_file():
        raise SystemExit(f"{root / path}: no such file")
    data = json.loads((root / path).read_text())
    if not point:
        return data
    criterion, _, target = point.rpartition("_")
    for row in data.get("points", []):
        if row["criterion"] == criterion and f"{row['target']}" == target:
            return row
    raise SystemExit(f"{root / path}: no point {point!r} (criterion_target, e.g. sensitivity_0.78)")


def summarize(groups: dict[str, list[dict]], ref: str | None) -> dict:
    """Per group: each run's WERs, their mean, min and max; against ``ref``, the difference of the
    means and the paired per-seed differences (when the run counts match)."""
    out = {}
    for name, runs in groups.items():
        entry = {"runs": len(runs), "finetune_epochs": sorted({r.get("finetune_epochs") for r in runs}),
                 "macs_ratio": statistics.mean(r["macs_ratio"] for r in runs)}
        for key, _ in METRICS:
            values = [r[key] for r in runs if key in r]
            if values:
                entry[key] = {"values": values, "mean": statistics.mean(values), "min": min(values),
                              "max": max(values), "sd": statistics.stdev(values) if len(values) > 1 else None}
        out[name] = entry
    if ref is not None:
        for name, entry in out.items():
            for key, _ in METRICS:
                if key not in entry or key not in out[ref]:
                    continue
                mine, theirs = entry[key]["values"], out[ref][key]["values"]
                entry[key]["minus_ref"] = entry[key]["mean"] - out[ref][key]["mean"]
                if len(mine) == len(theirs):
                    paired = [a - b for a, b in zip(mine, theirs)]
                    entry[key]["paired_minus_ref"] = paired
                    # the standard error of the mean paired difference: a gap within ~2 of it is noise
                    entry[key]["paired_se"] = (statistics.stdev(paired) / len(paired) ** 0.5
                                               if len(paired) > 1 else None)
    return out


def table(summary: dict, ref: str | None) -> str:
    cols = [label for _, label in METRICS]
    head = "| method | runs | MACs kept | " + " | ".join(f"{c} (each) | {c} mean" for c in cols)
    head += (" | " + " | ".join(f"{c} − {ref}" for c in cols) if ref else "") + " |\n"
    head += "|---" * (3 + 2 * len(cols) + (len(cols) if ref else 0)) + "|\n"
    lines = []
    for name, e in summary.items():
        cells = [name, str(e["runs"]), f"{e['macs_ratio']:.3f}"]
        for key, _ in METRICS:
            m = e.get(key)
            cells += [" / ".join(f"{v:.2f}" for v in m["values"]), f"{m['mean']:.2f}"] if m else ["–", "–"]
        if ref:
            for key, _ in METRICS:
                m = e.get(key)
                if not m or "minus_ref" not in m:
                    cells.append("–")
                    continue
                paired = m.get("paired_minus_ref") if name != ref else None
                se = f" ± {m['paired_se']:.2f}" if paired and m.get("paired_se") is not None else ""
                cells.append(f"{m['minus_ref']:+.2f}{se}"
                             + (f" ({' / '.join(f'{d:+.2f}' for d in paired)})" if paired else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """Every run as a dot and each group's mean as a bar, greedy and beam + LM side by side."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    metrics = [(k, label) for k, label in METRICS if any(k in e for e in summary.values())]
    names = list(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 + 1.2 * len(names) * len(metrics), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        for x, name in enumerate(names):
            m = summary[name].get(key)
            if not m:
                continue
            ax.scatter([x] * len(m["values"]), m["values"], color=f"C{x % 10}", alpha=0.7, zorder=3)
            ax.hlines(m["mean"], x - 0.3, x + 0.3, color=f"C{x % 10}", lw=2)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(f"{label}: runs (dots) and mean (bar)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", action="append", required=True, metavar="NAME=RUN,RUN,...",
                   help="a method's runs in seed order (RUN: FILE.row.json or TABLE.json#criterion_target)")
    p.add_argument("--ref", default=None, help="the group the others are compared with")
    p.add_argument("--root", type=Path, default=Path("."), help="the runs' paths are relative to this")
    p.add_argument("--out", type=Path, default=None, help="JSON of the summary (the table beside it, .md)")
    args = p.parse_args(argv)
    specs: dict[str, list[str]] = {}
    for item in args.group:
        name, sep, runs = item.partition("=")
        if not sep or not runs:
            raise SystemExit(f"--group {item!r}: expected NAME=RUN,RUN,...")
        if name in specs:
            raise SystemExit(f"--group {name!r} given twice")
        specs[name] = runs.split(",")
    groups = {name: [load_run(spec, args.root) for spec in runs] for name, runs in specs.items()}
    if args.ref is not None and args.ref not in groups:
        raise SystemExit(f"--ref {args.ref!r}: no such group ({', '.join(groups)})")
    summary = summarize(groups, args.ref)
    text = table(summary, args.ref)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"ref": args.ref, "groups": summary, "runs": specs}, indent=1))
        args.out.with_suffix(".md").write_text(text)
        plot(summary, args.out.with_suffix(".png"))
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
