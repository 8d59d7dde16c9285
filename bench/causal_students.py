"""Causal (streaming) students of the shipped bidirectional teacher on the default corpus: test
WER greedy and with beam search + the corpus trigram, params, MACs and latency of each trained
student, beside the teacher measured the same way. The students are trained with `slimasr
distill` (the commands are in bench/README.md, "Causal streaming students on the default
corpus"); this script evaluates them and builds the table and plot. It scores any model folder
the same way, so the Conformer teacher and the students with unlabelled audio use it too (their
own --out folders).

    python bench/causal_students.py run --data data/default --lm exp/lm3.arpa \
        --model teacher=exp/shipped --what teacher="the shipped smarthome-crnn (bidirectional)" \
        --model cut75=exp/causal/cut75 --what cut75="cut from the teacher; CTC alone" \
        --lag-teacher exp/shipped      # + when each student's tokens come against the teacher's
    python bench/causal_students.py table

Results: bench/results/causal_default/<name>.json, table.md and table.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slimasr.config import from_dict
from slimasr.decode import DecodeConfig
from slimasr.distill.delay import spike_lag
from slimasr.errors import run_script
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.frontend import Frontend
from slimasr.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from slimasr.models import load_model

RESULTS = Path(__file__).resolve().parent / "results" / "causal_default"
KEPT = ("wer", "cer", "first_word_accuracy", "last_word_accuracy", "num_utterances", "params",
        "macs_per_second_audio", "latency_ms_p50", "rtf", "model_bytes", "model_sha256", "data_sha256")
LAG_CUTS = 200  # test cuts the spike lag is measured on


def _pairs(specs: list[str]) -> dict[str, str]:
    return dict(spec.split("=", 1) for spec in specs)


def _lm_weights(name: str, spec: str) -> dict[str, float]:
    """``"1.6,6.0"`` -> {"alpha": 1.6, "beta": 6.0} (``--lm-weights NAME=ALPHA,BETA``)."""
    try:
        alpha, beta = (float(v) for v in spec.split(","))
    except ValueError:
        raise SystemExit(f"--lm-weights {name}={spec}: expected NAME=ALPHA,BETA, e.g. {name}=1.6,6.0") from None
    return {"alpha": alpha, "beta": beta}


def _provenance(model_dir: Path) -> dict:
    """What training the model folder records (steps, epochs, seconds, best dev WER, student init)."""
    prov = read_json(model_dir / "config.json").get("provenance") or {}
    keys = ("step", "steps", "epochs", "train_seconds", "best_dev_wer", "best_epoch", "student_init")
    return {k: prov[k] for k in keys if k in prov}


def _lag(teacher_dir: str, model_dir: str, data: Path, max_delay: int) -> dict:
    """When the student's tokens come, against the (bidirectional) teacher's, on test: the shift
    of most spike agreement (``spike_lag``, the first LAG_CUTS test cuts), in frames and ms."""
    frames, counts = spike_lag(teacher_dir, model_dir, data, "test", max_delay, max_cuts=LAG_CUTS)
    frame_ms = 1000 * Frontend.load(model_dir).features.frame_shift * load_model(model_dir).subsampling
    return {"frames": frames, "ms": frames * frame_ms, "split": "test", "cuts": LAG_CUTS, "agreement": counts}


def run(args: argparse.Namespace) -> None:
    out, data = Path(args.out), Path(args.data)
    test, train = data / "test_cuts.jsonl.gz", data / "train_cuts.jsonl.gz"
    whats = _pairs(args.what)
    weights = {name: _lm_weights(name, ab) for name, ab in _pairs(args.lm_weights).items()}
    for name, model_dir in _pairs(args.model).items():
        beam = {"decode": {"method": "beam", "lm_path": str(args.lm), "beam": weights.get(name, {})},
                "lexicon_reference": str(train)}
        row = {"name": name, "model_dir": model_dir, "what": whats.get(name, ""),
               "training": _provenance(Path(model_dir)), "runs": 1}
        if name in weights:
            row["lm_weights"] = weights[name]
        evals = out / "evals"
        evaluate_model(model_dir, test, from_dict(EvalConfig, beam), show_progress=False,
                       json_out=evals / f"{name}-lm.json", also=[(DecodeConfig(), evals / f"{name}-greedy.json")])
        for decode in ("greedy", "lm"):  # one pass of the network, decoded both ways
            r = read_json(evals / f"{name}-{decode}.json")
            row[decode] = {k: r[k] for k in KEPT if k in r}
            print(f"{name} {decode}: WER {r['wer']:.2f}%  CER {r['cer']:.2f}%")
        if args.lag_teacher and Path(model_dir).resolve() != Path(args.lag_teacher).resolve():
            row["spike_lag"] = _lag(args.lag_teacher, model_dir, data, args.lag_max)
            print(f"{name}: spikes {row['spike_lag']['ms']:.0f} ms after the teacher's")
        write_json_atomic(out / f"{name}.json", row)
    table(args)


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows = [read_json(p) for p in sorted(out.glob("*.json"))]
    teacher = next((r for r in rows if r["name"] == "teacher"), None)
    lines = ["| model | params | MMACs/s (x teacher) | steps | test WER greedy | test WER +LM (vs teacher) "
             "| test CER greedy | first word right greedy | latency p50 ms | spikes after teacher ms | what |",
             "|---" * 11 + "|"]
    for r in rows:
        g, lm = r["greedy"], r["lm"]
        ratio = g["macs_per_second_audio"] / teacher["greedy"]["macs_per_second_audio"] if teacher else 1
        gap = f" ({lm['wer'] - teacher['lm']['wer']:+.2f})" if teacher and r is not teacher else ""
        lag = f"{r['spike_lag']['ms']:.0f}" if "spike_lag" in r else "-"
        first = f"{g['first_word_accuracy']:.1f}%" if "first_word_accuracy" in g else "-"
        what = r["what"]
        if "lm_weights" in r:
            what += f" (LM weights alpha {r['lm_weights']['alpha']}, beta {r['lm_weights']['beta']})"
        lines.append(f"| {r['name']} | {g['params'] / 1e6:.2f}M | {g['macs_per_second_audio'] / 1e6:.1f} "
                     f"({ratio:.2f}x) | {r['training'].get('steps', '-')} | {g['wer']:.2f}% | "
                     f"{lm['wer']:.2f}%{gap} | {g['cer']:.2f}% | {first} | {g['latency_ms_p50']:.1f} | {lag} "
                     f"| {what} |")
    write_text_atomic(out / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, out / "table.png", args.title)


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["greedy"]["wer"] for r in rows], 0.4, label="greedy")
    ax.bar([x + 0.2 for x in xs], [r["lm"]["wer"] for r in rows], 0.4, label="beam + trigram")
    ax.set_xticks(list(xs), [r["name"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("test WER (%), unseen voices")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a unique temporary name: runs writing into one folder do not collide
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="evaluate trained students (and the teacher) on the test split")
    r.add_argument("--data", required=True, help="the corpus folder (its test and train manifests)")
    r.add_argument("--lm", required=True, help="ARPA LM for beam search (slimasr lm)")
    r.add_argument("--model", action="append", default=[], help="NAME=MODEL_DIR (repeatable)")
    r.add_argument("--what", action="append", default=[], help="NAME=description (repeatable)")
    r.add_argument("--lm-weights", action="append", default=[], help="NAME=ALPHA,BETA: that model's "
                   "LM fusion weights (e.g. chosen on dev by bench/tune_lm.py); default: decode.beam's")
    r.add_argument("--lag-teacher", help="also measure when each student's tokens come against this "
                                         "teacher's (spike lag on test)")
    r.add_argument("--lag-max", type=int, default=24, help="the longest lag tried, in student frames")
    t = sub.add_parser("table", help="table.md and table.png from the result JSONs")
    for p in (r, t):
        p.add_argument("--out", default=str(RESULTS))
        p.add_argument("--title", default="Causal students of the shipped teacher (default corpus, one run each)",
                       help="the plot's title")
    args = ap.parse_args()
    {"run": run, "table": table}[args.cmd](args)


if __name__ == "__main__":
    run_script(main)
