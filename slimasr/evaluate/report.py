"""Compare models side by side: a table (Markdown + JSON) and a WER-against-cost plot.

    rows = collect_rows(["exp/demo/teacher", "exp/demo/student"])
    write_report(rows, "exp/demo/report")   # report.md, report.json, report.png

Each row comes from the ``metrics.json`` that ``evaluate`` left in a model directory; the first
model is the reference the ratios (size, MACs, speed-up) are computed against. A bundle folder
from ``slimasr export`` gives a row per evaluated graph (``student_onnx (fp32)``,
``student_onnx (int8)``; ``slimasr.evaluate.outputs``), and a bundle's .onnx file that graph's row.
A ``greedy.json`` beside a ``metrics.json`` of beam search (the pipeline's evaluate stage with
``lm_order`` writes both) fills the ``greedy WER %`` column. Any folder holding a metrics.json is a
row: the pipeline's sherpa and stream stages write one (their ``note``, when present, is printed
under the table). The plot: WER against MACs, against batch-1 latency (the Pareto front drawn:
the models no other model beats on both) and against bytes on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from slimasr.errors import DataError
from slimasr.evaluate.outputs import METRICS_FILE, Outputs, bundle_outputs, outputs_of
from slimasr.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from slimasr.runtime.bundle import is_bundle

__all__ = ["COLUMNS", "GREEDY_STEM", "METRICS_FILE", "collect_rows", "greedy_path", "markdown_table",
           "pareto_front", "plot_report", "read_metrics", "write_report"]

GREEDY_STEM = "greedy"  # greedy.json (greedy.int8.json): greedy results beside beam-search metrics


@dataclass(frozen=True)
class Column:
    key: str  # key of the metrics row
    title: str  # column heading
    fmt: str  # format spec of the value


COLUMNS = (
    Column("wer", "WER %", ".2f"),
    Column("wer_greedy", "greedy WER %", ".2f"),
    Column("cer", "CER %", ".2f"),
    Column("sentence_accuracy", "sent. acc. %", ".1f"),
    Column("first_word_accuracy", "1st word %", ".1f"),  # a late-starting stream loses it
    Column("params", "params", ",d"),
    Column("size_ratio", "size x", ".2f"),
    Column("macs_per_second_audio", "MMACs/s audio", ".1f"),
    Column("macs_ratio", "MACs x", ".2f"),
    Column("latency_ms_p50", "latency p50 ms", ".1f"),
    Column("speedup", "speed-up", ".2f"),
    Column("rtf", "RTF", ".4f"),
    Column("model_bytes", "MB", ".2f"),
    Column("final_ms_p50", "final ms", ".1f"),  # streaming: end of audio to final text (p50)
)


def collect_rows(model_dirs: Sequence[str | Path]) -> list[dict]:
    """One row per model directory (its metrics.json) or evaluated bundle graph, with ratios
    against the first one."""
    rows = []
    for model_dir in model_dirs:
        for outputs in _evaluated(Path(model_dir)):
            name = outputs.folder.name + (f" ({outputs.label})" if outputs.label else "")
            rows.append({"model": name, "model_dir": str(outputs.folder), **_shipped(outputs),
                         **read_metrics(outputs.metrics), **_greedy(outputs)})
    if rows:
        base = rows[0]
        for row in rows:
            row["size_ratio"] = _div(row.get("params"), base.get("params"))
            row["macs_ratio"] = _div(row.get("macs_per_second_audio"), base.get("macs_per_second_audio"))
            row["speedup"] = _div(base.get("latency_ms_p50"), row.get("latency_ms_p50"))
    return rows


def _shipped(outputs: Outputs) -> dict:
    """A ``note`` naming the shipped model a model directory is a copy of (its provenance.json,
    ``slimasr.shipped``), with the provenance's one-line summary where it has one."""
    from slimasr.shipped import PROVENANCE_NAME

    path = outputs.folder / PROVENANCE_NAME
    if outputs.label or not path.is_file():
        return {}
    prov = read_json(path)
    if not isinstance(prov, dict) or not isinstance(prov.get("name"), str):
        return {}
    summary = prov.get("summary")
    return {"note": f"shipped model {prov['name']}" + (f": {summary}" if isinstance(summary, str) else "")}


def greedy_path(outputs: Outputs) -> Path:
    """Where greedy results sit beside ``outputs.metrics`` (metrics.json -> greedy.json)."""
    return outputs.metrics.with_name(outputs.metrics.name.replace("metrics", GREEDY_STEM, 1))


def _greedy(outputs: Outputs) -> dict:
    """``wer_greedy`` / ``cer_greedy``: from greedy.json when there is one, else the metrics' own
    rates when they were decoded greedily; empty otherwise."""
    path = greedy_path(outputs)
    metrics = read_metrics(path) if path.is_file() else read_metrics(outputs.metrics)
    if not path.is_file() and metrics.get("decode") != "greedy":
        return {}
    return {f"{key}_greedy": metrics[key] for key in ("wer", "cer") if metrics.get(key) is not None}


def _evaluated(path: Path) -> list[Outputs]:
    """The results a path contributes: a model directory's or a bundle graph's (whether present
    or not: ``read_metrics`` says when they are missing), or every evaluated graph of a bundle
    folder (at least one)."""
    if path.suffix == ".onnx" or not is_bundle(path):
        return [outputs_of(path)]
    graphs = bundle_outputs(path)
    evaluated = [outputs for outputs in graphs if outputs.metrics.is_file()]
    if not evaluated:
        raise DataError(graphs[0].metrics, "no evaluation results; run `slimasr evaluate` on this "
                                           "bundle (or its model.int8.onnx) first")
    return evaluated


def read_metrics(path: Path) -> dict:
    """A metrics.json whose table columns hold numbers (whole numbers for counts) or are absent;
    one-line DataError naming the file otherwise."""
    if not path.is_file():
        raise DataError(path, "no evaluation results; run `slimasr evaluate` on this model first")
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise DataError(path, f"expected a JSON object of metrics, got {type(metrics).__name__}")
    for column in COLUMNS:
        value = metrics.get(column.key)
        kinds = (int,) if column.fmt.endswith("d") else (int, float)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            wanted = "a whole number" if kinds == (int,) else "a number"
            raise DataError(path, f"'{column.key}' must be {wanted}, got {value!r}")
    return metrics


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a Markdown table (``size x`` and ``MACs x`` are fractions of the first model);
    the last column names the data each row was measured on (evaluate's ``data`` label)."""
    head = "| model | " + " | ".join(c.title for c in COLUMNS) + " | data |"
    rule = "|---|" + "---|" * (len(COLUMNS) + 1)
    lines = [head, rule]
    for row in rows:
        cells = [_cell(row, c) for c in COLUMNS]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {row.get('data') or '—'} |")
    notes = [f"- {row['model']}: {row['note']}" for row in rows if row.get("note")]
    cpus = list(dict.fromkeys(row["latency_cpu"] for row in rows if row.get("latency_cpu")))
    if cpus:  # latency means little without the machine
        notes.append(f"- latency timed on {', '.join(cpus)}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


PANELS = (("macs_per_second_audio", 1e-6, "MMACs per second of audio", "against compute"),
          ("latency_ms_p50", 1.0, "batch-1 latency p50 (ms)", "against latency (Pareto front)"),
          ("model_bytes", 1e-6, "MB on disk", "against size"))  # (key, scale, x label, title)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (lower is better), sorted by x."""
    front, best = [], float("inf")
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


def plot_report(rows: Sequence[dict], out_png: str | Path) -> None:
    """WER against MACs, latency (with its Pareto front) and bytes: a point per row, each model in
    its own colour in all three panels and named once in a legend under them (labels beside the
    points overlap where models share a cost: a student and its int8 bundle have the same MACs);
    PyTorch models are dots, exported graphs (onnxruntime) open squares around where they fall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    styles = _styles(rows, plt.get_cmap("tab10"))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 4.6), dpi=120)
    top = max([row["wer"] for row in rows if row["model"] in styles], default=100.0)
    for ax, (key, scale, label, title) in zip(axes, PANELS):
        points = _points(rows, key, scale, ax, styles)
        if key == "latency_ms_p50" and len(points) > 1:
            front = pareto_front(points)
            ax.plot(*zip(*front), "--", color="gray", lw=1, label="Pareto front")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel(label)
        ax.set_ylabel("WER (%)")
        ax.set_xlim(left=0)
        ax.set_ylim(0, top * 1.12 + 1)  # from zero, so distances between models are not exaggerated
        ax.set_title(f"Word error rate {title}")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], linestyle="", label=name, **_marker(color, marker, legend=True))
               for name, (color, marker) in styles.items()]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(handles) / 4), 1, 1))  # room for the legend's rows
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _styles(rows: Sequence[dict], cmap) -> dict[str, tuple]:
    """(colour, marker) per plotted model: colours in row order, squares for onnxruntime graphs."""
    plotted = [row for row in rows
               if row.get("wer") is not None and any(row.get(key) is not None for key, *_ in PANELS)]
    return {row["model"]: (cmap(i % cmap.N), "s" if (row.get("runtime") or "").startswith("onnxruntime") else "o")
            for i, row in enumerate(plotted)}


def _points(rows: Sequence[dict], key: str, scale: float, ax, styles: dict[str, tuple]) -> list[tuple[float, float]]:
    """Scatter the rows that have ``key`` and a WER on ``ax``, in their styles; return their points."""
    points = []
    for row in rows:
        x, y = row.get(key), row.get("wer")
        if x is None or y is None:
            continue
        points.append((x * scale, y))
        ax.plot([x * scale], [y], linestyle="", zorder=3, **_marker(*styles[row["model"]]))
    return points


def _marker(color, marker: str, legend: bool = False) -> dict:
    """Line2D marker keywords: a filled dot, or an open square large enough to show a dot inside."""
    if marker == "o":
        return {"marker": "o", "color": color, "markersize": 6.5}
    return {"marker": "s", "markerfacecolor": "none", "markeredgecolor": color, "markeredgewidth": 1.6,
            "markersize": 8 if legend else 11}


def write_report(rows: Sequence[dict], out_prefix: str | Path) -> dict[str, Path]:
    """Write ``PREFIX.md``, ``PREFIX.json`` and ``PREFIX.png``; return their paths."""
    prefix = Path(out_prefix)
    paths = {ext: prefix.with_name(prefix.name + f".{ext}") for ext in ("md", "json", "png")}
    write_text_atomic(paths["md"], markdown_table(rows))
    write_json_atomic(paths["json"], list(rows))
    plot_report(rows, paths["png"])
    return paths


def _div(num, den) -> float | None:
    """``num / den``, or None when either is missing or zero."""
    if not num or not den:
        return None
    return num / den


def _cell(row: dict, column: Column) -> str:
    value = row.get(column.key)
    if value is None:
        return "—"
    if column.key == "macs_per_second_audio":
        value = value / 1e6
    elif column.key == "model_bytes":
        value = value / 1e6
    return format(value, column.fmt)
