"""Benchmark: structured pruning of a trained teacher — WER against MACs for every criterion, with
and without KD fine-tuning, measured batch-1 latency speed-up against the MAC reduction, and the
two tools people use today side by side (Torch-Pruning, torch.nn.utils.prune).

    M=exp/bench_teachers/crnn_teacher
    python bench/prune_teacher.py reference --model $M
    python bench/prune_teacher.py grid --model $M --criteria magnitude taylor activation sensitivity random \
        --reductions 0.3 0.5 0.7 --finetune-epochs 0
    python bench/prune_teacher.py grid --model $M --criteria taylor --reductions 0.5 --finetune-epochs 4 --distill
    python bench/prune_teacher.py grid --model $M --criteria taylor --reductions 0.5 --finetune-epochs 4 --distill \
        --target-latency 0.375                          # half the MACs and 1.6x faster (latency table)
    python bench/prune_teacher.py latency --model $M     # all points again, one quiet process
    python bench/prune_teacher.py baselines --model $M
    python bench/prune_teacher.py table --model $M

Every point is one JSON in bench/results/prune/<model>/ (its pruned model in --out/<model>/<point>).
Quality: test split (voices never heard in training), greedy and beam search + the corpus trigram.
Latency: batch 1, a 3 s utterance, one thread, warm-up first (slimasr.evaluate.cost); the
``latency`` command re-times every model of the grid and the unpruned one in round-robin in one
process, so that speed-ups compare timings taken under the same conditions (grid runs may share
the machine). ``table`` writes bench/results/prune_<model>.md and prune_<model>.png.
Nothing is hard-coded: every number is measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from slimasr.config import from_dict
from slimasr.errors import run_script
from slimasr.evaluate.cost import count_macs, count_nonzero_params, example_input, measure_latency
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.io import read_json, write_json_atomic, write_text_atomic
from slimasr.models import load_model
from slimasr.prune.run import PruneConfig, prune_model_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "prune"
LATENCY_SECONDS = 3.0  # utterance length for batch-1 latency
LATENCY_THREADS = 1  # one core of a device
LATENCY_ROUNDS = 5  # round-robin rounds of the latency command (median of the rounds' p50s)
SPECIAL = ("baselines.json", "latency.json", "latency_focus.json")  # result files that are not grid points


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


def point_name(criterion: str, reduction: float, epochs: int, distill: bool, steps: int,
               remove_layers: int = 0, latency: float | None = None) -> str:
    tune = "none" if epochs == 0 else f"{'kd' if distill else 'ctc'}{epochs}"
    return (f"{criterion}_{int(round(reduction * 100))}_{tune}" + (f"_steps{steps}" if steps > 1 else "")
            + (f"_drop{remove_layers}" if remove_layers else "")
            + (f"_lat{int(round(latency * 1000))}" if latency else ""))


def grid(args: argparse.Namespace) -> None:
    tag = args.model.name
    for criterion in args.criteria:
        for reduction in args.reductions:
            name = point_name(criterion, reduction, args.finetune_epochs, args.distill, args.steps,
                              args.remove_layers, args.target_latency)
            path = RESULTS / tag / f"{name}.json"
            if path.is_file():
                continue
            cfg = from_dict(PruneConfig, {
                "criterion": criterion, "target": {"kind": "macs", "fraction": reduction, **(
                    {"latency_fraction": args.target_latency} if args.target_latency else {})},
                "steps": args.steps, "finetune_epochs": args.finetune_epochs, "distill": args.distill,
                "num_threads": args.threads, "remove_layers": args.remove_layers,
                **({"finetune_overrides": args.finetune_override} if args.finetune_override else {})})
            out = args.out / tag / name
            if out.exists():  # an interrupted point starts over
                import shutil

                shutil.rmtree(out)
            start = time.perf_counter()
            record = prune_model_dir(args.model, args.data, out, cfg, show_progress=False)
            seconds = time.perf_counter() - start
            tuned = sum(s.get("finetune_seconds", 0.0) for s in record["steps"])
            row = {"model": tag, "point": name, "criterion": criterion, "target_reduction": reduction,
                   "finetune_epochs": args.finetune_epochs, "distill": args.distill, "steps": args.steps,
                   "remove_layers": args.remove_layers, "target_latency": args.target_latency,
                   **_latency_fields(record),
                   "macs_ratio": record["final"]["macs_ratio"], "params_ratio": record["final"]["params_ratio"],
                   "widths": record["final"]["widths"], "prune_seconds": seconds - tuned,
                   "finetune_seconds": tuned, "finetune_overrides": cfg.finetune_overrides,
                   "dev_loss_pruned": record["steps"][-1]["dev_loss_pruned"],
                   "dev_loss_finetuned": record["steps"][-1].get("dev_loss_finetuned"),
                   **evaluate(out, args.data, args.lm),
                   "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s)"}
            write_json_atomic(path, row)
            print(json.dumps({k: v for k, v in row.items() if k != "widths"}), flush=True)


def _latency_fields(record: dict) -> dict:
    """What a latency-targeted prune measured while planning (same process, grid conditions)."""
    step = record["steps"][0]
    if "latency_ms_table" not in step:
        return {}
    return {"plan_latency": {"table_base_ms": step["latency_ms_table"],
                             "predicted_ms": step.get("latency_ms_predicted"),
                             "measured_ms": step.get("latency_ms_measured"),
                             "attempts": step.get("latency_attempts", [])}}


def reference(args: argparse.Namespace) -> None:
    """The unpruned model's own numbers, measured the same way."""
    tag = args.model.name
    row = {"model": tag, "point": "unpruned", "criterion": "none", "target_reduction": 0.0,
           "finetune_epochs": 0, "distill": False, "steps": 0, "macs_ratio": 1.0, "params_ratio": 1.0,
           **evaluate(args.model, args.data, args.lm)}
    write_json_atomic(RESULTS / tag / "unpruned.json", row)
    print(json.dumps(row), flush=True)


def latency(args: argparse.Namespace) -> None:
    """Re-time the unpruned model and every grid point's model (``--only``: the points whose name
    holds one of these strings, into latency_focus.json), round-robin, in this process. Speed-up
    is the median over rounds of each round's unpruned / model time, so that slow drifts of the
    machine cancel; its spread over the rounds is kept too."""
    tag = args.model.name
    dirs = {"unpruned": args.model}
    for p in sorted((RESULTS / tag).glob("*.json")):
        if p.name not in SPECIAL and p.stem != "unpruned" and (args.out / tag / p.stem).is_dir() and (
                not args.only or any(o in p.stem for o in args.only)):
            dirs[p.stem] = args.out / tag / p.stem
    rounds = args.rounds
    p50s = _round_robin({name: load_model(d).eval() for name, d in dirs.items()}, rounds)
    ratios = {n: [u / v for u, v in zip(p50s["unpruned"], t)] for n, t in p50s.items()}
    out = {"seconds": LATENCY_SECONDS, "threads": LATENCY_THREADS, "rounds": rounds,
           "latency_ms_p50": {n: statistics.median(v) for n, v in p50s.items()},
           "speedup": {n: statistics.median(r) for n, r in ratios.items()},
           "speedup_range": {n: [min(r), max(r)] for n, r in ratios.items()},
           "machine": f"{platform.processor() or platform.machine()}"}
    write_json_atomic(RESULTS / tag / ("latency_focus.json" if args.only else "latency.json"), out)
    print(json.dumps(out, indent=1), flush=True)


def baselines(args: argparse.Namespace) -> None:
    """Torch-Pruning and torch.nn.utils.prune on the same model and target (half of the weights /
    channels), next to our own structured pruning. Every model that runs is timed round-robin with
    the unpruned one in this process (median of LATENCY_ROUNDS rounds), as in ``latency``."""
    tag = args.model.name
    torch.set_num_threads(LATENCY_THREADS)
    model = load_model(args.model).eval()
    x, lens = example_input(model, LATENCY_SECONDS)
    timed: dict[str, torch.nn.Module] = {"unpruned": model}
    rows = {"model": tag, "unpruned_macs": count_macs(model, x, lens),
            "torch_nn_utils_prune": _masks(model, x, lens, timed),
            "torch_pruning": _torch_pruning(model, x, lens, timed)}
    med = {name: statistics.median(v) for name, v in _round_robin(timed).items()}
    rows["unpruned_latency_ms"] = med["unpruned"]
    masks = rows["torch_nn_utils_prune"]
    for key in ("with_masks", "after_remove"):
        masks[f"latency_ms_{key}"] = med[f"masks_{key}"]
        masks[f"speedup_{key}"] = med["unpruned"] / med[f"masks_{key}"]
    for setup, r in rows["torch_pruning"].items():
        if isinstance(r, dict) and f"tp_{setup}" in med:
            r["latency_ms"] = med[f"tp_{setup}"]
            r["speedup"] = med["unpruned"] / med[f"tp_{setup}"]
    rows["latency_rounds"] = LATENCY_ROUNDS
    write_json_atomic(RESULTS / tag / "baselines.json", rows)
    print(json.dumps(rows, indent=1), flush=True)


def _round_robin(models: dict[str, torch.nn.Module], rounds: int = LATENCY_ROUNDS) -> dict[str, list[float]]:
    """Each model's batch-1 p50 in every one of ``rounds`` rounds, the models timed in turn
    within every round, so that all of them see the same machine conditions."""
    p50s: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            p50s[name].append(measure_latency(model, LATENCY_SECONDS, LATENCY_THREADS)["latency_ms_p50"])
    return p50s


def _masks(model: torch.nn.Module, x: torch.Tensor, lens: torch.Tensor, timed: dict) -> dict:
    """50% global L1 unstructured masks on every weight matrix / kernel (LSTM weights included):
    the zeros are there, every tensor keeps its dense shape. Adds the model with its masks (forward
    pre-hooks multiply weight_orig by the mask on every call) and the one after ``prune.remove``
    (plain dense tensors with zeros in them) to ``timed``."""
    import torch.nn.utils.prune as tprune

    def masked_copy() -> tuple[torch.nn.Module, list]:
        m_ = copy.deepcopy(model)
        params = [(m, n) for m in m_.modules() for n, p in m.named_parameters(recurse=False)
                  if n.startswith("weight") and p.dim() > 1]
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.5)
        return m_, params

    timed["masks_with_masks"], _ = masked_copy()
    removed, params = masked_copy()  # the same deterministic masks, then made permanent
    for m, n in params:
        tprune.remove(m, n)
    timed["masks_after_remove"] = removed
    return {"amount": 0.5, "params": sum(p.numel() for p in removed.parameters()),
            "nonzero_params": count_nonzero_params(removed), "macs": count_macs(removed, x, lens),
            "note": "masks zero weights but keep every tensor's shape: the same MACs, no speed-up"}


def _torch_pruning(model: torch.nn.Module, x: torch.Tensor, lens: torch.Tensor, timed: dict) -> dict:
    """Torch-Pruning's MetaPruner, L2 magnitude importance, 50% channel ratio, in two set-ups: every
    layer but the output head, and only what follows the front end (subsampling convs and the
    Conformer's input projection ignored as well, so that no flatten is involved)."""
    try:
        import torch_pruning as tp
    except ImportError:
        return {"available": False, "note": "pip install torch-pruning to compare"}
    out: dict = {"version": getattr(tp, "__version__", "?")}
    front = ("subsample", "input_proj", "head")
    setups = {"all_but_head": lambda n: n == "head", "after_front_end": lambda n: n.startswith(front)}
    for setup, ignore in setups.items():
        pruned = copy.deepcopy(model)
        ignored = [m for n, m in pruned.named_modules() if n and ignore(n)]
        out[setup] = _torch_pruning_once(tp, model, pruned, ignored, x, lens)
        if out[setup].get("runs"):
            timed[f"tp_{setup}"] = pruned
    return out


def _torch_pruning_once(tp, model, pruned, ignored, x, lens) -> dict:
    before = {n: tuple(p.shape) for n, p in model.named_parameters()}
    try:
        pruner = tp.pruner.MetaPruner(pruned, example_inputs=(x, lens),
                                      importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=ignored)
        pruner.step()
    except Exception as e:  # noqa: BLE001 - what the tool cannot do is the finding
        return {"ran": False, "error": f"{type(e).__name__}: {e}"[:500],
                "trace_tail": traceback.format_exc().splitlines()[-3:]}
    after = {n: tuple(p.shape) for n, p in pruned.named_parameters()}
    changed = sorted(n for n in before if after.get(n) != before[n])
    rnn = [n for n in before if ".fwd." in n or ".bwd." in n]
    out = {"ran": True, "params": sum(p.numel() for p in pruned.parameters()),
           "tensors_changed": len(changed), "tensors_changed_first": changed[:10],
           "rnn_tensors": len(rnn), "rnn_tensors_changed": sum(n in changed for n in rnn)}
    try:
        out["macs"] = count_macs(pruned, x, lens)  # a forward pass: the pruned model runs
        out["runs"] = True
    except Exception as e:  # noqa: BLE001 - a pruned model that no longer runs is the finding
        out["forward_error"] = f"{type(e).__name__}: {e}"[:500]
    return out


def _baseline_lines(base: dict) -> list[str]:
    """The other tools on the same model, as a markdown table."""
    lines = ["| tool | set-up | pruned model runs | params | MACs | latency p50 ms | speed-up | what happened |",
             "|---|---|---|---|---|---|---|---|",
             f"| (unpruned) | - | - | - | {base['unpruned_macs'] / 1e6:.0f}M | {base['unpruned_latency_ms']:.1f} | 1.00x | |"]
    m = base.get("torch_nn_utils_prune")
    if m:
        lines.append(f"| torch.nn.utils.prune | global L1, {m['amount']:.0%} of weights | yes | "
                     f"{m['nonzero_params'] / 1e6:.2f}M non-zero of {m['params'] / 1e6:.2f}M | {m['macs'] / 1e6:.0f}M | "
                     f"{m['latency_ms_with_masks']:.1f} | {m['speedup_with_masks']:.2f}x | {m['note']} |")
        lines.append(f"| torch.nn.utils.prune | the same, after `prune.remove` | yes | "
                     f"{m['nonzero_params'] / 1e6:.2f}M non-zero of {m['params'] / 1e6:.2f}M | {m['macs'] / 1e6:.0f}M | "
                     f"{m['latency_ms_after_remove']:.1f} | {m['speedup_after_remove']:.2f}x | dense tensors with zeros in them |")
    tp_ = base.get("torch_pruning", {})
    for setup in ("all_but_head", "after_front_end"):
        r = tp_.get(setup)
        if not r:
            continue
        what = (r.get("error") or r.get("forward_error") or f"{r['tensors_changed']} tensors changed").replace("|", "/")
        params = f"{r['params'] / 1e6:.2f}M" if r.get("ran") else "-"
        cost = (f"{r['macs'] / 1e6:.0f}M | {r['latency_ms']:.1f} | {r['speedup']:.2f}x" if r.get("runs")
                else "- | - | -")
        lines.append(f"| Torch-Pruning {tp_.get('version', '?')} | 50% channels, {setup.replace('_', ' ')} | "
                     f"{'yes' if r.get('runs') else 'no'} | {params} | {cost} | {what} |")
    return lines


def table(args: argparse.Namespace) -> None:
    tag = args.model.name
    rows = [read_json(p) for p in sorted((RESULTS / tag).glob("*.json")) if p.name not in SPECIAL]
    lat_path = RESULTS / tag / "latency.json"
    clean = read_json(lat_path)["latency_ms_p50"] if lat_path.is_file() else {}
    ref = next((r for r in rows if r["point"] == "unpruned"), None)

    def lat(r: dict) -> float:
        return clean.get(r["point"], r["latency_ms_p50"])

    lines = ["| point | criterion | fine-tune | MACs kept | params kept | test WER greedy | test WER +LM | "
             "latency p50 ms | speed-up | speed-up / MAC reduction |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(rows, key=lambda r: (r["point"] != "unpruned", r["finetune_epochs"], r["distill"],
                                        r.get("target_latency") or 0.0, r["criterion"], r["target_reduction"]))
    for r in order:
        tune = "none" if not r["finetune_epochs"] else f"{r['finetune_epochs']} ep {'KD' if r['distill'] else 'CTC'}"
        speed = lat(ref) / lat(r) if ref else float("nan")
        lm = f"{r['test_wer_lm']:.2f}%" if "test_wer_lm" in r else "-"
        crit = r["criterion"] + (f" + latency -{r['target_latency']:.1%}" if r.get("target_latency") else "")
        lines.append(f"| {r['point']} | {crit} | {tune} | {r['macs_ratio']:.1%} | "
                     f"{r['params_ratio']:.1%} | {r['test_wer_greedy']:.2f}% | {lm} | {lat(r):.1f} | "
                     f"{speed:.2f}x | {speed * r['macs_ratio']:.2f} |")
    base_path = RESULTS / tag / "baselines.json"
    base = read_json(base_path) if base_path.is_file() else None
    if base:
        lines += ["", *_baseline_lines(base)]
    write_text_atomic(ROOT / "bench" / "results" / f"prune_{tag}.md", "\n".join(lines) + "\n")
    _plot(tag, rows, ref, lat, base)
    print("\n".join(lines))


def _plot(tag: str, rows: list[dict], ref: dict | None, lat, base: dict | None) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax, sp = fig.subplots(1, 2)
    crits = sorted({r["criterion"] for r in rows if r["criterion"] != "none"})
    color = {c: f"C{i}" for i, c in enumerate(crits)}  # one colour per criterion
    kinds = sorted({(r["finetune_epochs"], r["distill"], r.get("steps", 1), r.get("remove_layers", 0),
                     r.get("target_latency") or 0.0) for r in rows if r["point"] != "unpruned"})
    for ep, distill, steps, drop, faster in kinds:
        how = ("no fine-tune" if not ep else f"{ep} ep {'KD' if distill else 'CTC'}"
               ) + (f", {steps} steps" if steps > 1 else "") + (f", {drop} layers removed" if drop else "") \
            + (f", latency -{faster:.1%}" if faster else "")
        style = "--" if not ep else "-" if distill else ":"
        for crit in crits:
            pts = sorted((r["macs_ratio"], r.get("test_wer_lm", r["test_wer_greedy"])) for r in rows
                         if r["criterion"] == crit and r["finetune_epochs"] == ep and r["distill"] == distill
                         and r.get("steps", 1) == steps and r.get("remove_layers", 0) == drop
                         and (r.get("target_latency") or 0.0) == faster and r["point"] != "unpruned")
            if len(pts) > 1:  # a grid series: a line
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=color[crit],
                        label=f"{crit}, {how}")
            elif pts:  # a single extra point: a star
                ax.plot(*pts[0], "*", markersize=11, color=color[crit], markeredgecolor="k",
                        label=f"{crit}, {how}")
    if ref:
        ax.axhline(ref.get("test_wer_lm", ref["test_wer_greedy"]), color="k", linestyle=":", label="unpruned")
    ax.set(xlabel="MACs kept (share of the unpruned model)", ylabel="test WER, beam + trigram (%)",
           title=f"{tag}: WER against MACs (dashed: no fine-tuning, solid: KD fine-tuning)", xlim=(0, 1.05))
    ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    if ref:
        aware = [r for r in rows if r.get("target_latency")]
        pts = sorted((1.0 / r["macs_ratio"], lat(ref) / lat(r)) for r in rows if r not in aware)
        sp.plot([p[0] for p in pts], [p[1] for p in pts], "o", label="slimasr structured pruning (measured)")
        if aware:
            sp.plot([1.0 / r["macs_ratio"] for r in aware], [lat(ref) / lat(r) for r in aware], "*",
                    markersize=12, color="C1", markeredgecolor="k", label="slimasr, latency-aware target")
        top = max(p[0] for p in pts) * 1.05
        sp.plot([1, top], [1, top], "k:", label="speed-up = MAC reduction")
        sp.plot([1, top], [0.8, 0.8 * top], "r--", label="0.8 x MAC reduction (target)")
        masks = (base or {}).get("torch_nn_utils_prune")
        if masks:  # the weights it zeroes, as if they were MACs saved, against its measured speed-up
            sp.plot(masks["params"] / masks["nonzero_params"], masks["speedup_with_masks"], "s", color="C3",
                    markersize=8, label=f"torch.nn.utils.prune, {masks['amount']:.0%} zeros (x: weight reduction)")
        sp.set(xlabel="MAC reduction (unpruned / pruned)", ylabel="latency speed-up",
               title="measured batch-1 speed-up against MAC reduction")
        sp.legend(fontsize=7)
    png = ROOT / "bench" / "results" / f"prune_{tag}.png"
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["grid", "reference", "latency", "baselines", "table"])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("data/smarthome"))
    ap.add_argument("--out", type=Path, default=Path("exp/bench_prune"))
    ap.add_argument("--lm", type=Path, default=Path("exp/bench_teachers/lm_3gram.arpa"))
    ap.add_argument("--criteria", nargs="+", default=["magnitude", "taylor", "activation", "sensitivity", "random"])
    ap.add_argument("--reductions", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    ap.add_argument("--finetune-epochs", type=int, default=0)
    ap.add_argument("--finetune-override", action="append", default=[],
                    help="fine-tuning recipe KEY=VALUE (repeatable; replaces the defaults)")
    ap.add_argument("--distill", action="store_true")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--remove-layers", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=LATENCY_ROUNDS, help="latency: round-robin rounds")
    ap.add_argument("--only", nargs="+", default=[], help="latency: only points whose name holds one of these")
    ap.add_argument("--target-latency", type=float, default=None,
                    help="also remove this share of the measured batch-1 latency (latency table)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of grid runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"grid": grid, "reference": reference, "latency": latency, "baselines": baselines,
     "table": table}[args.command](args)


if __name__ == "__main__":
    run_script(main)
