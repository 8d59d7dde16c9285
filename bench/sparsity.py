"""Benchmark: unstructured sparsity on a trained model. When does removing single weights buy size
or speed on this CPU, and when does only structure?

    M=exp/bench_teachers/crnn_teacher D=data/smarthome
    python bench/sparsity.py wer --model $M --data $D --sparsities 0.5 0.8 0.9 0.95 \
        --methods magnitude gradient gradual --finetune-epochs 4 --distill
    python bench/sparsity.py kernels --model $M --sparsities 0.5 0.8 0.9 0.95
    python bench/sparsity.py group-lasso --model $M --data $D --target-macs 0.5 --reg-epochs 2 \
        --finetune-epochs 2 --strength 0.2
    python bench/sparsity.py storage --model $M --data $D --points gradual_80_ft4kd
    python bench/sparsity.py table --model $M

- ``wer``: one-shot magnitude, one-shot gradient saliency and the gradual (Zhu & Gupta) schedule,
  each with the same fine-tuning budget (``slimasr prune --method unstructured``): WER on the test
  split (greedy; beam + the LM with ``--lm``), nonzero parameters, bytes on disk (compact form
  against the dense file), batch-1 latency of the squashed model.
- ``kernels``: batch-1 latency (3 s of audio, one thread) of the dense model, the masked model
  (parametrizations), the squashed model, and the structurally pruned model with the same number
  of parameters removed; and per weight shape (every Linear, the LSTM/GRU input projection over
  the utterance) dense ``x @ W.T`` against torch's sparse CSR and, with 4x4 blocks pruned by block
  norm, BSR kernels. onnxruntime is not measured: it densifies sparse initializers when it loads a
  model, and its only sparse kernel (the contrib ``SparseToDenseMatMul``) rejects sparse
  initializers (microsoft/onnxruntime#5578, #31730).
- ``group-lasso``: fine-tune with group lasso for ``--reg-epochs``, remove the smallest units down
  to ``--target-macs`` and fine-tune ``--finetune-epochs``; against sensitivity pruning to the same
  MACs fine-tuned ``--reg-epochs + --finetune-epochs`` (the same total); ``--baseline-only`` runs
  that baseline alone.
- ``storage``: the dense model and each ``--points`` model (a point of ``wer``) saved compactly with
  their weight matrices' values in fp32, fp16 and int8 (one scale per row;
  ``slimasr.prune.sparse_io``), each scored as stored: bytes on disk against WER.
- ``table``: bench/results/sparsity_<model>.md and .png from the JSON of the other commands.

Every point is one JSON in ``--results`` (default bench/results/sparsity/<model>/), its model in
``--out``/<model>/<point>. Nothing is hard-coded: every number is measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from slimasr.config import from_dict
from slimasr.distill import distill_model
from slimasr.errors import run_script
from slimasr.evaluate.cost import example_input, measure_latency
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.io import read_json, write_json_atomic, write_text_atomic
from slimasr.frontend import Frontend
from slimasr.models import load_model, save_model
from slimasr.models.io import RESERVED_KEYS
from slimasr.prune import magnitude_scores, model_cost, plan, prune_model
from slimasr.prune.plan import PruneTarget
from slimasr.prune.run import PruneConfig, prune_model_dir
from slimasr.prune.sparse_io import PRECISIONS
from slimasr.prune.unstructured import UnstructuredConfig, select_tensors, sparsify_, squash_, tensor_of

ROOT = Path(__file__).resolve().parents[1]
LATENCY_SECONDS = 3.0  # utterance length for batch-1 latency
THREADS = 1  # one core of a device
ROUNDS = 5  # round-robin rounds of model timings (median of the rounds' p50s)
KERNEL_RUNS = 50  # timed calls per kernel (median), after as many warm-up calls
BLOCK = 4  # BSR block size


def evaluate(model_dir: Path, data: Path, lm: Path | None) -> dict:
    """Test WER (the dev split when the corpus has no test split), greedy and beam + LM."""
    split = "test" if (data / "test_cuts.jsonl.gz").is_file() else "dev"
    manifest = data / f"{split}_cuts.jsonl.gz"
    greedy = evaluate_model(model_dir, manifest, from_dict(EvalConfig, {}), show_progress=False)
    out = {"split": split, "wer_greedy": greedy["wer"], "nonzero_params": greedy["nonzero_params"],
           "params": greedy["params"], "model_bytes": greedy["model_bytes"]}
    if lm is not None and lm.is_file():
        beam = evaluate_model(model_dir, manifest, from_dict(EvalConfig, {
            "decode": {"method": "beam", "lm_path": str(lm)}}), show_progress=False)
        out["wer_lm"] = beam["wer"]
    return out


# ---- WER against sparsity ------------------------------------------------------------------------

def wer(args: argparse.Namespace) -> None:
    tag, results = args.model.name, args.results / args.model.name
    if not (results / "dense.json").is_file():
        row = {"point": "dense", "method": "dense", "sparsity": 0.0, **evaluate(args.model, args.data, args.lm),
               "latency_ms": _latency(load_model(args.model))}
        write_json_atomic(results / "dense.json", row)
    for method in args.methods:
        for sparsity in args.sparsities:
            lr = f"_lr{args.finetune_lr:g}" if args.finetune_lr else ""
            scope = "_global" if args.scope == "global" else ""
            hid = f"_hid{args.hidden_weight:g}" if args.hidden_weight else ""
            seed = f"_seed{args.seed}" if args.seed else ""
            end = f"_end{args.end_share:g}" if method == "gradual" and args.end_share is not None else ""
            name = (f"{method}{scope}_{int(round(sparsity * 100))}_ft{args.finetune_epochs}"
                    f"{'kd' if args.distill else ''}{lr}{hid}{end}{seed}")
            tune = [f"train.lr={args.finetune_lr}"] if args.finetune_lr else []
            tune += [f"sparsity.gradual.end_share={args.end_share}"] if end else []
            out = args.out / tag / name
            cfg = from_dict(PruneConfig, {
                "method": "unstructured", "gradual": method == "gradual", "finetune_epochs": args.finetune_epochs,
                "distill": args.distill, "num_threads": args.threads, "seed": args.seed,
                **({"finetune_overrides": [*PruneConfig().finetune_overrides, *tune]} if tune else {}),
                **({"distill_overrides": [f"loss.hidden_weight={args.hidden_weight}", "loss.hidden_init=identity"]}
                   if args.hidden_weight else {}),
                "unstructured": {"criterion": "gradient" if method == "gradient" else "magnitude",
                                 "sparsity": sparsity, "scope": args.scope, "exclude": args.exclude}})
            start = time.perf_counter()
            record = prune_model_dir(args.model, args.data, out, cfg, show_progress=False, overwrite=True)
            row = {"point": name, "method": method, "scope": args.scope, "sparsity": sparsity,
                   "finetune_epochs": args.finetune_epochs,
                   "finetune_lr": args.finetune_lr or 1e-3, "hidden_weight": args.hidden_weight,
                   **({"end_share": args.end_share} if end else {}),
                   "distill": args.distill, "seed": args.seed, "seconds": round(time.perf_counter() - start, 1),
                   "reached": record["final"]["sparsity"], "bytes": record["final"]["bytes"],
                   "dense_bytes": record["original"]["bytes"], "bytes_ratio": record["final"]["bytes_ratio"],
                   **evaluate(out, args.data, args.lm), "latency_ms": _latency(load_model(out))}
            write_json_atomic(results / f"{name}.json", row)
            print(json.dumps(row), flush=True)


def _latency(model: torch.nn.Module) -> float:
    return measure_latency(model, LATENCY_SECONDS, THREADS, feat_dim=model.config.num_features)["latency_ms_p50"]


# ---- kernels ---------------------------------------------------------------------------------------

def kernels(args: argparse.Namespace) -> None:
    """Model-level and per-shape batch-1 timings at every sparsity."""
    torch.set_num_threads(THREADS)
    dense = load_model(args.model).eval()
    rows = {"model": args.model.name, "threads": THREADS, "seconds": LATENCY_SECONDS, "rounds": ROUNDS,
            "machine": platform.processor() or platform.machine(), "points": []}
    for sparsity in args.sparsities:
        models = {"dense": dense, **_variants(dense, sparsity, args.exclude)}
        p50 = {n: statistics.median(v) for n, v in _round_robin(models).items()}
        point = {"sparsity": sparsity, "latency_ms": p50,
                 "params": {n: model_cost(m, "params") if n != "masked" else None for n, m in models.items()},
                 "shapes": _shape_timings(dense, sparsity)}
        rows["points"].append(point)
        print(json.dumps(point), flush=True)
    write_json_atomic(args.results / args.model.name / "kernels.json", rows)


def _variants(dense: torch.nn.Module, sparsity: float, exclude: list[str]) -> dict[str, torch.nn.Module]:
    """The masked and squashed models at ``sparsity``, and the structured model with the same
    share of parameters removed (magnitude units, global ranking)."""
    masked = copy.deepcopy(dense)
    sparsify_(masked, UnstructuredConfig(sparsity=sparsity, exclude=exclude))
    squashed = squash_(copy.deepcopy(masked))
    out = {"masked": masked, "squashed": squashed}
    removed = sum(tensor_of(dense, n).numel() for n in select_tensors(dense, exclude=exclude)) * sparsity
    share = min(removed / model_cost(dense, "params"), 0.9)
    try:
        keep = plan(dense, magnitude_scores(dense), PruneTarget(kind="params", fraction=share, round_to=1,
                                                                max_group_fraction=0.95))
        out["structured"] = prune_model(dense, keep).eval()
    except ValueError as e:  # the target is out of the structured constraints
        print(f"structured at {share:.0%} of the parameters: {e}", flush=True)
    return out


def _round_robin(models: dict[str, torch.nn.Module]) -> dict[str, list[float]]:
    p50s: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(ROUNDS):
        for name, model in models.items():
            p50s[name].append(_latency(model))
    return p50s


def _shape_timings(model: torch.nn.Module, sparsity: float) -> list[dict]:
    """Per distinct weight shape of a Linear or an RNN input projection: dense matmul against
    CSR (unstructured mask) and BSR (``BLOCK`` x ``BLOCK`` blocks pruned by block norm)."""
    frames = int(model.output_lengths(example_input(model, LATENCY_SECONDS, model.config.num_features)[1])[0])
    out, seen = [], set()
    for name in select_tensors(model, exclude=["*weight_hh*", "subsample.*"]):
        w = tensor_of(model, name).detach()
        if w.dim() != 2 or tuple(w.shape) in seen:
            continue
        seen.add(tuple(w.shape))
        x = torch.randn(w.shape[1], frames)  # the utterance's frames as columns
        unstructured = _pruned(w, sparsity)
        blocked = _block_pruned(w, sparsity)
        row = {"tensor": name, "shape": list(w.shape), "frames": frames,
               "dense_ms": _time(lambda: w @ x),
               "csr_ms": _time(lambda a=unstructured.to_sparse_csr(): a @ x)}
        if w.shape[0] % BLOCK == 0 and w.shape[1] % BLOCK == 0:
            row["bsr_ms"] = _time(lambda a=blocked.to_sparse_bsr((BLOCK, BLOCK)): a @ x)
        row["csr_speedup"] = row["dense_ms"] / row["csr_ms"]
        if "bsr_ms" in row:
            row["bsr_speedup"] = row["dense_ms"] / row["bsr_ms"]
        out.append(row)
    return out


def _pruned(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    module = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        module.weight.copy_(w)
    sparsify_(module, UnstructuredConfig(sparsity=sparsity))
    return squash_(module).weight.detach()


def _block_pruned(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``w`` with the ``sparsity`` share of its BLOCK x BLOCK blocks (lowest L2 norm) zeroed."""
    rows, cols = w.shape[0] // BLOCK * BLOCK, w.shape[1] // BLOCK * BLOCK
    blocks = w[:rows, :cols].reshape(rows // BLOCK, BLOCK, cols // BLOCK, BLOCK)
    norms = blocks.pow(2).sum((1, 3)).flatten()
    keep = torch.ones_like(norms, dtype=torch.bool)
    keep[torch.argsort(norms, stable=True)[:round(sparsity * norms.numel())]] = False
    mask = keep.view(rows // BLOCK, 1, cols // BLOCK, 1).expand_as(blocks).reshape(rows, cols)
    out = w.clone()
    out[:rows, :cols] *= mask
    return out


def _time(fn) -> float:
    """Median ms of ``KERNEL_RUNS`` calls after as many warm-up calls."""
    with torch.inference_mode():
        for _ in range(KERNEL_RUNS):
            fn()
        times = []
        for _ in range(KERNEL_RUNS):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


# ---- group lasso -> structured removal ---------------------------------------------------------------

def group_lasso(args: argparse.Namespace) -> None:
    tag, results = args.model.name, args.results / args.model.name
    work = args.out / tag
    total = args.reg_epochs + args.finetune_epochs
    kd = "kd" if args.distill else ""
    loss = (["loss.ctc_weight=0.5", "loss.kd_weight=0.5", "loss.temperature=2.0"] if args.distill
            else ["loss.ctc_weight=1.0", "loss.kd_weight=0.0"])
    start = time.perf_counter()
    # the baseline does not depend on the strength: measured once per target, budget and seed
    seed = f"_seed{args.seed}" if args.seed else ""
    baseline = results / f"sensitivity_macs{_pct_int(args.target_macs)}_e{total}{kd}{seed}.json"
    metric = ("" if args.metric == "euclidean" else f"_{args.metric}")
    metric += {None: "", "macs": "_targeted", "sensitivity": "_targeted_sens"}[args.targeted]
    metric += f"_w{args.reg_warmup}" if args.reg_warmup else ""  # the plain euclidean runs' names stand
    regularized = work / f"grouplasso{metric}_{args.strength}_e{args.reg_epochs}{kd}{seed}"
    if args.baseline_only:  # the sensitivity baseline alone (--targeted sensitivity reads seed 0's widths)
        print(json.dumps(_sensitivity_baseline(args, baseline, total, work)), flush=True)
        return
    distill_model({}, args.data, regularized, overwrite=True, show_progress=False, overrides=[
        f"teacher.path={args.model}", "student.init=path", f"student.path={args.model}",
        f"train.epochs={args.reg_epochs}", *loss, f"train.seed={args.seed}",
        *PruneConfig().finetune_overrides, "sparsity.regularize.kind=group-lasso",
        f"sparsity.regularize.strength={args.strength}", f"sparsity.regularize.metric={args.metric}",
        f"sparsity.regularize.warmup_steps={args.reg_warmup}",
        *_target_overrides(args, results / f"sensitivity_macs{_pct_int(args.target_macs)}_e{total}{kd}.json"),
        *([f"train.num_threads={args.threads}"] if args.threads else [])])
    rows = {"group_lasso": _structured_point(args, regularized, "magnitude", args.finetune_epochs,
                                             work / f"group_lasso{metric}_{args.strength:g}_macs{_pct_int(args.target_macs)}_e{total}{kd}{seed}")}
    rows["sensitivity"] = _sensitivity_baseline(args, baseline, total, work)
    row = {"point": "group_lasso", "seed": args.seed, "strength": args.strength, "metric": args.metric, "targeted": args.targeted,
           "reg_warmup": args.reg_warmup, "reg_epochs": args.reg_epochs,
           "finetune_epochs": args.finetune_epochs, "target_macs": args.target_macs, "distill": args.distill,
           "seconds": round(time.perf_counter() - start, 1),
           "regularized": read_json(regularized / "training.json").get("regularize"), **rows}
    budget = f"_t{total}" if total != 4 else ""  # the 4-epoch points (stops 26-43) were named before the budget was
    name = f"group_lasso{metric}_s{args.strength:g}_e{args.reg_epochs}{kd}{budget}{seed}"
    write_json_atomic(results / f"{name}.json", row)
    print(json.dumps(row), flush=True)


def _sensitivity_baseline(args: argparse.Namespace, path: Path, total: int, work: Path) -> dict:
    """Sensitivity pruning to ``--target-macs`` fine-tuned ``total`` epochs, the row at ``path``:
    run only where it is missing (it does not depend on the strength)."""
    if not path.is_file():
        write_json_atomic(path, _structured_point(args, args.model, "sensitivity", total, work / path.stem))
    return read_json(path)


def _target_overrides(args: argparse.Namespace, baseline: Path) -> list[str]:
    """--targeted: the penalty on the units the removal to --target-macs would take (``macs``) or
    on those beyond the widths the sensitivity baseline chose (``sensitivity``; run it first). The
    seed-0 baseline's widths serve every seed: the scan runs in eval mode on fixed batches."""
    if args.targeted == "macs":
        return [f"sparsity.regularize.target_macs={args.target_macs}"]
    if args.targeted == "sensitivity":
        if not baseline.is_file():
            raise SystemExit(f"{baseline}: --targeted sensitivity reads the widths of this baseline; run "
                             "group-lasso without --targeted first")
        return [f"sparsity.regularize.target_widths={json.dumps(read_json(baseline)['widths'])}"]
    return []


def _pct_int(share: float) -> int:
    return int(round(share * 100))


def _structured_point(args: argparse.Namespace, source: Path, criterion: str, epochs: int, out: Path) -> dict:
    """``source`` pruned by ``criterion`` to ``--target-macs``, fine-tuned ``epochs`` (with
    ``--distill``: KD from ``--model``, the unpruned, unregularized model), evaluated and timed."""
    cfg = from_dict(PruneConfig, {"criterion": criterion, "finetune_epochs": epochs, "seed": args.seed,
                                  "num_threads": args.threads, "distill": args.distill,
                                  "distill_overrides": [f"teacher.path={args.model}"],
                                  "target": {"kind": "macs", "fraction": args.target_macs}})
    record = prune_model_dir(source, args.data, out, cfg, show_progress=False, overwrite=True)
    return {"criterion": criterion, "finetune_epochs": epochs, "macs_ratio": record["final"]["macs_ratio"],
            "widths": record["final"]["widths"], **evaluate(out, args.data, args.lm),
            "latency_ms": _latency(load_model(out))}


# ---- table -------------------------------------------------------------------------------------------

# ---- bytes on disk against WER: fp32, fp16 and int8 values -------------------------------------

def storage(args: argparse.Namespace) -> None:
    tag, results = args.model.name, args.results / args.model.name
    rows = []
    for point in ["dense", *args.points]:
        source = args.model if point == "dense" else args.out / tag / point
        for precision in PRECISIONS:
            folder = args.out / tag / "storage" / f"{point}_{precision}"
            _store(source, folder, precision)
            row = {"point": point, "precision": precision, **evaluate(folder, args.data, args.lm)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_json_atomic(results / "storage.json", {"model": str(args.model), "rows": rows})


def _store(source: Path, folder: Path, precision: str) -> None:
    """``source``'s model directory again in ``folder``, compact, values in ``precision``."""
    config = read_json(source / "config.json")
    folder.mkdir(parents=True, exist_ok=True)
    save_model(load_model(source), folder, {k: v for k, v in config.items() if k not in RESERVED_KEYS},
               compact=True, precision=precision)
    Frontend.load(source).save(folder)


def table(args: argparse.Namespace) -> None:
    tag, results = args.model.name, args.results / args.model.name
    # the points of `wer` (the kernels, storage and group-lasso files, and group lasso's sensitivity
    # baselines, have their own tables)
    points = [row for row in map(read_json, sorted(results.glob("*.json"))) if "method" in row and "sparsity" in row]
    lines = [f"# Unstructured sparsity: {tag}", "",
             "| point | sparsity | WER greedy | WER +LM | nonzero params | MB on disk | x fewer bytes | latency ms |",
             "|---|---|---|---|---|---|---|---|"]
    dense = next((p for p in points if p["point"] == "dense"), None)
    for p in sorted(points, key=lambda p: (p["method"] != "dense", p["method"], p["sparsity"])):
        ratio = dense["model_bytes"] / p["model_bytes"] if dense else float("nan")
        lines.append(f"| {p['point']} | {p['sparsity']:.0%} | {p['wer_greedy']:.2f}% | "
                     f"{_pct(p.get('wer_lm'))} | {p['nonzero_params']:,} | {p['model_bytes'] / 2**20:.2f} | "
                     f"{ratio:.2f} | {p['latency_ms']:.1f} |")
    lines += _kernel_lines(results / "kernels.json")
    lines += _storage_lines(results / "storage.json")
    for path in sorted(results.glob("group_lasso*.json")):
        lines += _group_lasso_lines(path)
    out = args.results.parent / f"sparsity_{tag}.md"
    write_text_atomic(out, "\n".join(lines) + "\n")
    _plot(points, args.results.parent / f"sparsity_{tag}.png")
    if (results / "storage.json").is_file():
        _plot_storage(read_json(results / "storage.json")["rows"], args.results.parent / f"sparsity_{tag}_bytes.png")
    print("\n".join(lines))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _kernel_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    k = read_json(path)
    lines = ["", f"Batch-1 latency, {k['seconds']} s of audio, {k['threads']} thread(s), median of {k['rounds']} "
                 "rounds (ms):", "", "| sparsity | dense | masked | squashed | structured, same params removed |",
             "|---|---|---|---|---|"]
    for p in k["points"]:
        ms = p["latency_ms"]
        lines.append(f"| {p['sparsity']:.0%} | {ms['dense']:.2f} | {ms['masked']:.2f} | {ms['squashed']:.2f} | "
                     f"{ms.get('structured', float('nan')):.2f} |")
    lines += ["", "Per weight shape, x @ W.T over the utterance's frames (speed-up over dense; > 1 is faster):", "",
              "| sparsity | tensor | shape | dense ms | CSR | BSR 4x4 |", "|---|---|---|---|---|---|"]
    for p in k["points"]:
        for s in p["shapes"]:
            bsr = f"{s['bsr_speedup']:.2f}x" if "bsr_speedup" in s else "-"
            lines.append(f"| {p['sparsity']:.0%} | {s['tensor']} | {s['shape'][0]}x{s['shape'][1]} | "
                         f"{s['dense_ms']:.3f} | {s['csr_speedup']:.2f}x | {bsr} |")
    return lines


def _storage_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    rows = read_json(path)["rows"]
    dense = next(r for r in rows if r["point"] == "dense" and r["precision"] == "fp32")
    lines = ["", "Stored compactly, the weight matrices' values in fp32, fp16 or int8 (a scale per row), "
                 "each scored as stored:", "",
             "| point | values | WER greedy | WER +LM | MB on disk | x fewer bytes than dense fp32 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['point']} | {r['precision']} | {r['wer_greedy']:.2f}% | {_pct(r.get('wer_lm'))} | "
                     f"{r['model_bytes'] / 2**20:.2f} | {dense['model_bytes'] / r['model_bytes']:.2f} |")
    return lines


def _group_lasso_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    g = read_json(path)
    kd = "KD " if g.get("distill") else ""
    metric = f", {g['metric']} metric" if g.get("metric", "euclidean") != "euclidean" else ""
    metric += {"macs": ", targeted by norms", "sensitivity": ", targeted at the sensitivity widths"}.get(g.get("targeted"), "")
    lines = ["", f"Group lasso (strength {g['strength']}{metric}, {g['reg_epochs']} {kd}epochs) then removal to "
                 f"{1 - g['target_macs']:.0%} of the MACs + {g['finetune_epochs']} {kd}epochs, against sensitivity "
                 f"pruning with {g['reg_epochs'] + g['finetune_epochs']} {kd}epochs:", "",
             "| method | MACs | WER greedy | WER +LM | latency ms |", "|---|---|---|---|---|"]
    for name in ("group_lasso", "sensitivity"):
        r = g[name]
        lines.append(f"| {name} | {r['macs_ratio']:.1%} | {r['wer_greedy']:.2f}% | {_pct(r.get('wer_lm'))} | "
                     f"{r['latency_ms']:.1f} |")
    return lines


def _plot_storage(rows: list[dict], path: Path) -> None:
    """WER + LM against MB on disk (log scale): one marker per stored form, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for point in dict.fromkeys(r["point"] for r in rows):
        mine = [r for r in rows if r["point"] == point and r.get("wer_lm") is not None]
        ax.plot([r["model_bytes"] / 2**20 for r in mine], [r["wer_lm"] for r in mine], "o-", label=point)
        for r in mine:
            ax.annotate(r["precision"], (r["model_bytes"] / 2**20, r["wer_lm"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("MB on disk (compact safetensors)")
    ax.set_ylabel("WER beam + LM (%)")
    ax.set_title("Bytes on disk against WER: fp32, fp16, int8 values")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot(points: list[dict], path: Path) -> None:
    """WER (greedy and beam + LM) against sparsity: one line per method and fine-tuning budget;
    the dense model, and the dense model given the same fine-tuning (0% points), as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "wer_greedy", "WER greedy (%)"), (axes[1], "wer_lm", "WER beam + LM (%)")):
        for curve, rows in sorted(_curves(points).items()):
            rows = [p for p in rows if p.get(key) is not None]
            ax.plot([p["sparsity"] for p in rows], [p[key] for p in rows], "o-", label=curve)
        for p in points:
            if p["sparsity"] == 0 and p.get(key) is not None:
                what = "dense" if p["method"] == "dense" else f"dense + {p['finetune_epochs']} KD epochs"
                ax.axhline(p[key], color="gray", ls="--" if p["method"] == "dense" else ":", label=what)
        ax.set_xlabel("sparsity of the pruned weights")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _curves(points: list[dict]) -> dict[str, list[dict]]:
    """Pruned points grouped by method and fine-tuning budget, in order of sparsity."""
    curves: dict[str, list[dict]] = {}
    for p in sorted(points, key=lambda p: p["sparsity"]):
        if p["sparsity"] > 0:
            lr = f", lr {p['finetune_lr']:g}" if p.get("finetune_lr", 1e-3) != 1e-3 else ""
            scope = ", global" if p.get("scope") == "global" else ""
            hid = f", hidden {p['hidden_weight']:g}" if p.get("hidden_weight") else ""
            hid += f", pruned by {p['end_share']:.0%} of the steps" if "end_share" in p else ""
            curves.setdefault(f"{p['method']}{scope} ({p['finetune_epochs']} KD epochs{lr}{hid})", []).append(p)
    return curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["wer", "kernels", "group-lasso", "storage", "table"])
    ap.add_argument("--model", type=Path, required=True, help="trained model directory")
    ap.add_argument("--data", type=Path, default=Path("data/smarthome"), help="data directory")
    ap.add_argument("--lm", type=Path, default=Path("exp/bench_teachers/lm_3gram.arpa"), help="ARPA LM (if present)")
    ap.add_argument("--out", type=Path, default=Path("exp/bench_sparsity"), help="pruned models go here")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "sparsity")
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.8, 0.9, 0.95])
    ap.add_argument("--methods", nargs="+", choices=["magnitude", "gradient", "gradual"],
                    default=["magnitude", "gradient", "gradual"])
    ap.add_argument("--exclude", nargs="*", default=[], help="weight name patterns kept dense")
    ap.add_argument("--scope", choices=["layer", "global"], default="layer",
                    help="wer: the sparsity of every tensor (layer) or of all selected weights together (global)")
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--distill", action="store_true", help="fine-tune with KD from the dense model")
    ap.add_argument("--finetune-lr", type=float, default=None,
                    help="peak learning rate of the fine-tuning (default: prune's, 1e-3)")
    ap.add_argument("--hidden-weight", type=float, default=0.0,
                    help="wer with --distill: hidden-layer matching to the dense model at this weight "
                         "(identity projections; runs the dense model online)")
    ap.add_argument("--end-share", type=float, default=None,
                    help="wer, gradual: share of the fine-tuning's steps by which the final sparsity is "
                         "reached (default: the schedule's, 0.75)")
    ap.add_argument("--reg-epochs", type=int, default=2, help="group-lasso: epochs with the penalty")
    ap.add_argument("--strength", type=float, default=0.2, help="group-lasso: lambda")
    ap.add_argument("--metric", choices=["euclidean", "adam"], default="euclidean",
                    help="group-lasso: the proximal step's metric (slimasr.prune.regularize)")
    ap.add_argument("--target-macs", type=float, default=0.5, help="group-lasso: share of MACs removed")
    ap.add_argument("--targeted", choices=["macs", "sensitivity"],
                    help="group-lasso: shrink only the units the removal to --target-macs would take "
                         "(by norm), or those beyond the sensitivity baseline's widths")
    ap.add_argument("--reg-warmup", type=int, default=0, help="group-lasso: steps lambda ramps up over")
    ap.add_argument("--baseline-only", action="store_true",
                    help="group-lasso: only the sensitivity baseline of the budget and seed (run it for seed 0 "
                         "before --targeted sensitivity, and for other seeds beside their group-lasso runs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the fine-tuning runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--points", nargs="*", default=[], help="storage: points of wer (folders in --out/<model>)")
    args = ap.parse_args()
    if args.hidden_weight and not args.distill:
        ap.error("--hidden-weight matches the dense model's hidden states: it needs --distill")
    {"wer": wer, "kernels": kernels, "group-lasso": group_lasso, "storage": storage,
     "table": table}[args.command](args)


if __name__ == "__main__":
    run_script(main)
