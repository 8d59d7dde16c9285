"""Benchmark: structured pruning of a trained teacher — WER against MACs for every criterion, with
and without (KD) fine-tuning, measured batch-1 latency speed-up, and the two tools people use
today side by side (Torch-Pruning, torch.nn.utils.prune).

    python bench/prune_teacher.py grid --model exp/bench_teachers/crnn_teacher --data data/smarthome \
        --criteria magnitude taylor activation sensitivity random --reductions 0.3 0.5 0.7 --finetune-epochs 0
    python bench/prune_teacher.py grid ... --criteria taylor --reductions 0.5 --finetune-epochs 3 --distill
    python bench/prune_teacher.py baselines --model exp/bench_teachers/crnn_teacher --data data/smarthome
    python bench/prune_teacher.py table --model exp/bench_teachers/crnn_teacher

Every point is its own JSON in bench/results/prune/<model>/; ``table`` writes
bench/results/prune_<model>.md and a WER-vs-MACs plot. Latency: batch 1, a 3 s utterance, one
thread, warm-up first (slimasr.evaluate.cost). Nothing is hard-coded: numbers are measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import traceback
from pathlib import Path

import torch

from slimasr.config import from_dict
from slimasr.evaluate.cost import count_macs, example_input, measure_latency
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.io import read_json, write_json_atomic, write_text_atomic
from slimasr.models import load_model
from slimasr.prune.plan import PruneTarget
from slimasr.prune.run import PruneConfig, prune_model_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "prune"
LATENCY_SECONDS = 3.0  # utterance length for batch-1 latency
LATENCY_THREADS = 1


def evaluate(model_dir: Path, data: Path, lm: Path | None) -> dict:
    test, train_cuts = data / "test_cuts.jsonl.gz", str(data / "train_cuts.jsonl.gz")
    greedy = evaluate_model(model_dir, test, from_dict(EvalConfig, {}), show_progress=False)
    out = {"test_wer_greedy": greedy["wer"], "test_cer_greedy": greedy["cer"],
           **{k: greedy[k] for k in ("params", "macs_per_second_audio", "latency_ms_p50",
                                     "latency_ms_p90", "model_bytes")}}
    if lm is not None:
        beam = evaluate_model(model_dir, test, from_dict(EvalConfig, {
            "decode": {"method": "beam", "lm_path": str(lm)}, "lexicon_reference": train_cuts}),
            show_progress=False)
        out["test_wer_lm"] = beam["wer"]
    return out


def point_name(criterion: str, reduction: float, epochs: int, distill: bool, steps: int) -> str:
    tune = "none" if epochs == 0 else f"{'kd' if distill else 'ctc'}{epochs}"
    return f"{criterion}_{int(round(reduction * 100))}_{tune}" + (f"_steps{steps}" if steps > 1 else "")


def grid(args: argparse.Namespace) -> None:
    tag = args.model.name
    out_root = args.out / tag
    for criterion in args.criteria:
        for reduction in args.reductions:
            name = point_name(criterion, reduction, args.finetune_epochs, args.distill, args.steps)
            path = RESULTS / tag / f"{name}.json"
            if path.is_file():
                continue
            cfg = PruneConfig(criterion=criterion, target=PruneTarget(kind="macs", fraction=reduction),
                              steps=args.steps, finetune_epochs=args.finetune_epochs,
                              distill=args.distill, num_threads=1)
            out = out_root / name
            start = time.perf_counter()
            record = prune_model_dir(args.model, args.data, out, cfg, show_progress=False)
            seconds = time.perf_counter() - start
            row = {"model": tag, "point": name, "criterion": criterion, "target_reduction": reduction,
                   "finetune_epochs": args.finetune_epochs, "distill": args.distill, "steps": args.steps,
                   "macs_ratio": record["final"]["macs_ratio"], "params_ratio": record["final"]["params_ratio"],
                   "widths": record["final"]["widths"], "prune_seconds": seconds,
                   **evaluate(out, args.data, args.lm if args.finetune_epochs else None),
                   "machine": f"{platform.processor() or platform.machine()}, 1 thread"}
            write_json_atomic(path, row)
            print(json.dumps({k: v for k, v in row.items() if k != "widths"}), flush=True)


def reference(args: argparse.Namespace) -> None:
    """The unpruned model's own numbers, measured the same way."""
    tag = args.model.name
    row = {"model": tag, "point": "unpruned", "criterion": "none", "target_reduction": 0.0,
           "finetune_epochs": 0, "distill": False, "steps": 0, "macs_ratio": 1.0, "params_ratio": 1.0,
           **evaluate(args.model, args.data, args.lm)}
    write_json_atomic(RESULTS / tag / "unpruned.json", row)
    print(json.dumps(row), flush=True)


def baselines(args: argparse.Namespace) -> None:
    """Torch-Pruning and torch.nn.utils.prune on the same model and target (50% of the MACs)."""
    tag = args.model.name
    model = load_model(args.model).eval()
    x, lens = example_input(model, LATENCY_SECONDS)
    torch.set_num_threads(LATENCY_THREADS)
    base = _latency(model, x, lens)
    rows = {"model": tag, "unpruned_latency_ms": base, "unpruned_macs": count_macs(model, x, lens)}
    rows["torch_nn_utils_prune"] = _masks(model, x, lens, base)
    rows["torch_pruning"] = _torch_pruning(model, x, lens, base)
    write_json_atomic(RESULTS / tag / "baselines.json", rows)
    print(json.dumps(rows, indent=1), flush=True)


def _latency(model: torch.nn.Module, x: torch.Tensor, lens: torch.Tensor) -> float:
    return float(measure_latency(model, x, lens)["p50_ms"])


def _masks(model: torch.nn.Module, x: torch.Tensor, lens: torch.Tensor, base: float) -> dict:
    """50% L1 unstructured masks on every Linear/Conv/LSTM weight: zeros, same dense shapes."""
    import torch.nn.utils.prune as tprune

    masked = copy.deepcopy(model)
    params = [(m, n) for m in masked.modules() for n, _ in m.named_parameters(recurse=False)
              if n.startswith("weight") and _.dim() > 1]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.5)
    with_masks = _latency(masked, x, lens)
    for m, n in params:
        tprune.remove(m, n)
    zeros = sum(int((p == 0).sum()) for p in masked.parameters())
    after_remove = _latency(masked, x, lens)
    return {"amount": 0.5, "zeroed_weights": zeros, "latency_ms_with_masks": with_masks,
            "latency_ms_after_remove": after_remove, "speedup": base / after_remove,
            "macs": count_macs(masked, x, lens),
            "note": "masks zero weights but keep every tensor's shape: no fewer MACs, no speed-up"}


def _torch_pruning(model: torch.nn.Module, x: torch.Tensor, lens: torch.Tensor, base: float) -> dict:
    """Torch-Pruning's MetaPruner with magnitude importance at 50% channel sparsity."""
    try:
        import torch_pruning as tp
    except ImportError:
        return {"available": False, "note": "pip install torch-pruning to compare"}
    out: dict = {"version": getattr(tp, "__version__", "?")}
    pruned = copy.deepcopy(model)
    try:
        pruner = tp.pruner.MetaPruner(pruned, example_inputs=(x, lens),
                                      importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=[pruned.head])
        pruner.step()
        before = {n: p.shape for n, p in model.named_parameters()}
        changed = sorted(n for n, p in pruned.named_parameters() if before.get(n) != p.shape)
        unchanged_rnn = sorted(n for n, p in pruned.named_parameters()
                               if "rnn" in n and before.get(n) == p.shape)
        out.update({"ran": True, "changed_tensors": changed, "rnn_tensors_unchanged": unchanged_rnn,
                    "macs": count_macs(pruned, x, lens)})
        try:
            out["latency_ms"] = _latency(pruned, x, lens)
            out["speedup"] = base / out["latency_ms"]
        except Exception as e:  # noqa: BLE001 - a broken pruned model is the finding
            out["forward_error"] = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - report what the tool cannot do
        out.update({"ran": False, "error": f"{type(e).__name__}: {e}",
                    "trace_tail": traceback.format_exc().splitlines()[-3:]})
    return out


def table(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = args.model.name
    rows = [read_json(p) for p in sorted((RESULTS / tag).glob("*.json")) if p.name != "baselines.json"]
    ref = next((r for r in rows if r["point"] == "unpruned"), None)
    lines = ["| point | criterion | MAC reduction | fine-tune | MACs kept | params kept | test WER greedy | "
             "test WER +LM | latency p50 ms | speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["finetune_epochs"], r["distill"], r["criterion"], r["target_reduction"])):
        tune = "none" if not r["finetune_epochs"] else f"{r['finetune_epochs']} ep {'KD' if r['distill'] else 'CTC'}"
        speed = f"{ref['latency_ms_p50'] / r['latency_ms_p50']:.2f}x" if ref else "-"
        lm = f"{r['test_wer_lm']:.2f}%" if "test_wer_lm" in r else "-"
        lines.append(f"| {r['point']} | {r['criterion']} | {r['target_reduction']:.0%} | {tune} | "
                     f"{r['macs_ratio']:.1%} | {r['params_ratio']:.1%} | {r['test_wer_greedy']:.2f}% | {lm} | "
                     f"{r['latency_ms_p50']:.1f} | {speed} |")
    write_text_atomic(ROOT / "bench" / "results" / f"prune_{tag}.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (tuned, distill), style in {(0, False): "o--", (1, False): "s-", (1, True): "^-"}.items():
        for crit in sorted({r["criterion"] for r in rows if r["criterion"] != "none"}):
            pts = sorted((r["macs_ratio"], r["test_wer_greedy"]) for r in rows
                         if r["criterion"] == crit and bool(r["finetune_epochs"]) == bool(tuned)
                         and r["distill"] == distill)
            if pts:
                label = f"{crit} ({'no fine-tune' if not tuned else 'KD fine-tune' if distill else 'CTC fine-tune'})"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    if ref:
        ax.axhline(ref["test_wer_greedy"], color="k", linestyle=":", label="unpruned")
    ax.set_xlabel("MACs kept (share of the unpruned model)")
    ax.set_ylabel("test WER, greedy (%)")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, None)
    ax.legend(fontsize=7)
    ax.set_title(f"Structured pruning of {tag}")
    fig.tight_layout()
    png = ROOT / "bench" / "results" / f"prune_{tag}.png"
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(png)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["grid", "reference", "baselines", "table"])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("data/smarthome"))
    ap.add_argument("--out", type=Path, default=Path("exp/bench_prune"))
    ap.add_argument("--lm", type=Path, default=Path("exp/bench_teachers/lm_3gram.arpa"))
    ap.add_argument("--criteria", nargs="+", default=["magnitude", "taylor", "activation", "sensitivity", "random"])
    ap.add_argument("--reductions", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    ap.add_argument("--finetune-epochs", type=int, default=0)
    ap.add_argument("--distill", action="store_true")
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"grid": grid, "reference": reference, "baselines": baselines, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
