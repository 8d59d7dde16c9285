"""Benchmark: a teacher of each family on the embedded corpus, trained until dev WER stops improving.

    python bench/train_teachers.py --data data/smarthome --out exp/bench_teachers \
        --families crnn conformer dnn --minutes 45

For each family: train with the bundled recipe (early stopping on dev WER, a wall-clock budget),
evaluate on the test split (voices never heard in training) with greedy decoding and with beam
search + a trigram LM built from the training text, and write one JSON per family to
bench/results/teacher_{family}.json plus bench/results/teachers.md (the README table).
Numbers are whatever this machine measures; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from slimasr.decode import build_ngram_lm
from slimasr.errors import run_script
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.config import from_dict
from slimasr.data.manifests import read_split
from slimasr.io import atomic_path, write_json_atomic, write_text_atomic
from slimasr.text import normalize_text
from slimasr.train import train_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def train_and_measure(family: str, data: Path, out: Path, minutes: float, patience: int, lm: Path,
                      overrides: list[str], tag: str = "") -> dict:
    recipe = ROOT / "recipes" / f"train_{family}_teacher.yaml"
    model_dir = out / f"{family}_teacher"
    resumed = (model_dir / "checkpoints" / "last").is_dir()
    start = time.perf_counter()
    training = train_model(recipe, data, model_dir, resume=resumed,
                           overrides=[f"train.max_minutes={minutes}", f"train.early_stop_patience={patience}", *overrides])
    wall = time.perf_counter() - start
    test = data / "test_cuts.jsonl.gz"
    train_cuts = str(data / "train_cuts.jsonl.gz")
    greedy = evaluate_model(model_dir, test, from_dict(EvalConfig, {"intent_reference": train_cuts}),
                            show_progress=False)
    beam = evaluate_model(model_dir, test, from_dict(EvalConfig, {
        "decode": {"method": "beam", "lm_path": str(lm)}, "lexicon_reference": train_cuts,
        "intent_reference": train_cuts}), show_progress=False)
    return {
        "family": family,
        "run": tag,
        "recipe": str(recipe.relative_to(ROOT)),
        "overrides": overrides,
        "resumed": resumed,  # continued an earlier run's checkpoint (its epochs and time are counted)
        "minutes": minutes,
        "patience": patience,
        "train_seconds": training.get("train_seconds"),
        "wall_seconds": wall,
        "epochs": training.get("epochs"),
        "stop_reason": training.get("stop_reason"),
        "dev_wer": training.get("dev_wer"),
        "best_epoch": training.get("best_epoch"),
        "model_dir": str(model_dir),
        "curve": curve(training["history"]),
        "test_wer_greedy": greedy["wer"],
        "test_cer_greedy": greedy["cer"],
        "test_wer_lm": beam["wer"],
        "test_intent_accuracy_lm": beam.get("intent_accuracy"),
        **{k: greedy[k] for k in ("params", "macs_per_second_audio", "latency_ms_p50", "latency_ms_p90",
                                  "rtf", "model_bytes")},
        "machine": f"{platform.processor() or platform.machine()}, {_train_threads(overrides)} torch threads",
    }


def curve(history: list[dict]) -> list[dict]:
    """Per validation of a training run (resumed runs included): epoch, seconds, losses, dev WER."""
    return [{k: h[k] for k in ("epoch", "seconds", "train_loss", "dev_loss", "dev_wer")} for h in history]


def plot_curves(rows: list[dict], path: Path) -> None:
    """PNG: dev WER (greedy) against training minutes for every run that recorded its curve."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    colors = {}
    for r in sorted(rows, key=lambda r: -len(r.get("curve") or [])):  # longest first, shorter on top
        if not r.get("curve"):
            continue
        color = colors.setdefault(r["family"], f"C{len(colors)}")
        minutes = [h["seconds"] / 60 for h in r["curve"]]
        wer = [h["dev_wer"] for h in r["curve"]]
        ax.plot(minutes, wer, color=color, lw=1.2, marker=".", markersize=3)
        ax.plot(minutes[-1:], wer[-1:], color=color, marker="o", markersize=7, ls="none",
                label=f"{r['family']}, {r.get('run') or 'run'} (end): test {r['test_wer_greedy']:.1f}% / "
                      f"{r['test_wer_lm']:.1f}% +LM")
    ax.axvline(45, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="training minutes (CPU; threads per run in its JSON)", ylabel="dev WER, greedy (%)", ylim=(0, 105),
           title="teachers on the embedded corpus: dev WER per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _train_threads(overrides: list[str]) -> int:
    """Threads the training ran with: a train.num_threads override, else torch's default."""
    for item in overrides:
        if item.startswith("train.num_threads="):
            return int(item.split("=", 1)[1])
    return torch.get_num_threads()


def markdown(rows: list[dict]) -> str:
    lines = ["| family | run | params | MMACs/s | train min | epochs | test WER greedy | test WER +LM | latency p50 ms (1 thread, 3 s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r.get('run') or '—'} | {r['params'] / 1e6:.2f}M | {r['macs_per_second_audio'] / 1e6:.0f} | "
                     f"{r['train_seconds'] / 60:.1f} | {r['epochs']} | {r['test_wer_greedy']:.2f}% | "
                     f"{r['test_wer_lm']:.2f}% | {r['latency_ms_p50']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="corpus directory (required unless --table)")
    ap.add_argument("--out", type=Path, default=Path("exp/bench_teachers"))
    ap.add_argument("--families", nargs="+", default=["crnn", "conformer", "dnn"])
    ap.add_argument("--minutes", type=float, default=45.0, help="training budget per family")
    ap.add_argument("--patience", type=int, default=3, help="epochs without a better dev WER")
    ap.add_argument("--override", action="append", default=[], help="recipe KEY=VALUE (repeatable)")
    ap.add_argument("--tag", default="", help="name of this run: results go to teacher_{family}_{tag}.json")
    ap.add_argument("--table", action="store_true", help="only rebuild the table and plot from the JSONs")
    args = ap.parse_args()
    if args.table:
        write_table()
        return
    if args.data is None:
        ap.error("--data is required to train")
    lm = args.out / "lm_3gram.arpa"
    if not lm.is_file():
        texts = (normalize_text(s.text or "") for c in read_split(args.data, "train") for s in c.supervisions)
        build_ngram_lm(texts, lm, order=3)
    rows = []
    for family in args.families:
        row = train_and_measure(family, args.data, args.out, args.minutes, args.patience, lm, args.override,
                                args.tag)
        write_json_atomic(RESULTS / f"teacher_{family}{'_' + args.tag if args.tag else ''}.json", row)
        rows.append(row)
        print(json.dumps(row, indent=1))
    write_table()


def write_table() -> None:
    """The table and the plot cover every run measured so far (one JSON each), not only this one."""
    everything = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("teacher_*.json"))]
    write_text_atomic(RESULTS / "teachers.md", markdown(everything))
    plot_curves(everything, RESULTS / "teacher_curves.png")
    print(markdown(everything))


if __name__ == "__main__":
    run_script(main)
