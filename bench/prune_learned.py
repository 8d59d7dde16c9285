"""Benchmark: learned structured masks (hard-concrete gates + KD under the MAC target) against
sensitivity and Taylor pruning at the same targets and the same fine-tuning epochs.

    python bench/prune_learned.py --model exp/bench_teachers/crnn_teacher --data data/smarthome \
        --targets 0.5 0.78 --finetune-epochs 4 --mask-steps 2000 [--lm data/smarthome/lm.arpa]

Every point (criterion x target) is pruned with ``slimasr.prune.prune_model_dir`` (KD fine-tuning
from the unpruned model), evaluated on the test split (greedy, and beam + LM with ``--lm``), and
timed at batch 1 (3 s of audio, one thread) against the unpruned model, paired (the two
alternate; ``ROUNDS`` repeats over all the models; the median ratio and its range: ``paired_times``;
before stop 50 every model was timed in turn and medians divided, which spread by up to 0.25x for
models of the same architecture). Learned masks also train for
``--mask-steps`` steps before pruning (recorded); with ``--match-steps`` the other criteria get as
many extra fine-tuning epochs as those steps hold audio (steps x ``learned.batch_seconds``, 30 s by
default, over the audio of one training epoch), so every point sees the same audio in training.
(Before stop 44 this assumed 60 s batches while the masks trained on 30 s ones: the learned points
of earlier tables saw half the mask-training audio their rows claim; bench/README.md says where.)
Writes ``--results/<model>/learned.json``, ``learned.md`` (table) and ``learned.png``. Nothing is
hard-coded: every number is measured. The peers of issue 20 (NVIDIA ModelOpt FastNAS, torchao's
structured pruner) are not run here: they need their own environment (``bench/peers.py``). A model
they made and fine-tuned joins the table with ``--extra NAME=DIR``: scored on the same test split and
timed in the same way as the points.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import torch
from lhotse import CutSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slimasr.config import from_dict, parse_overrides  # noqa: E402
from slimasr.errors import run_script  # noqa: E402
from slimasr.evaluate.cost import measure_latency  # noqa: E402
from slimasr.models import load_model  # noqa: E402
from slimasr.prune.latency import relative_latency  # noqa: E402
from slimasr.prune.learned import LearnedConfig  # noqa: E402
from slimasr.prune.run import PruneConfig, prune_model_dir  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import test_wer  # noqa: E402

LATENCY_SECONDS, LATENCY_THREADS, ROUNDS = 3.0, 1, 5  # batch-1 timing set-up


def epoch_seconds(data: Path) -> float:
    """Seconds of audio in one fine-tuning epoch: the training split of ``--data``."""
    return sum(c.duration for c in CutSet.from_file(data / "train_cuts.jsonl.gz"))


def finetune_epochs(args: argparse.Namespace, criterion: str) -> int:
    """``--finetune-epochs``; with ``--match-steps`` the other criteria also get the epochs of
    audio that the learned masks' training sees (steps x ``learned.batch_seconds``, rounded), so
    every point has the same total training."""
    if criterion == "learned" or not args.match_steps:
        return args.finetune_epochs
    seen = args.mask_steps * LearnedConfig(**args.learned).batch_seconds
    return args.finetune_epochs + round(seen / epoch_seconds(args.data))


def _tag(value: object) -> str:
    """A setting's value in a folder name: a list's or a dict's values joined by commas."""
    if isinstance(value, dict):
        value = list(value.values())
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def prune_point(args: argparse.Namespace, criterion: str, target: float, out: Path) -> dict:
    epochs = finetune_epochs(args, criterion)
    cfg = {"criterion": criterion, "target": {"kind": "macs", "fraction": target, "round_to": args.round_to},
           "finetune_epochs": epochs, "distill": True, "calibration_cuts": args.calibration_cuts,
           "num_threads": args.threads, "seed": args.seed,
           "learned": {"steps": args.mask_steps, "warmup_steps": max(1, args.mask_steps // 4), **args.learned},
           **(args.prune if criterion != "learned" else {})}
    record = prune_model_dir(args.model, args.data, out, from_dict(PruneConfig, cfg), show_progress=False,
                             overwrite=True)
    row = {"criterion": criterion, "target": target, "macs_ratio": record["final"]["macs_ratio"],
           "finetune_epochs": epochs, "seed": args.seed, "widths": record["final"]["widths"]}
    learned = record["steps"][0].get("learned")
    if learned:
        row.update({"mask_steps": learned["steps"], "expected_ratio": learned["expected"] / learned["original"]})
    return {**row, **test_wer(out, args.data, args.lm)}


def extra_row(name: str, folder: Path, args: argparse.Namespace, ref_macs: float) -> dict:
    """A table row for a model pruned elsewhere: its test WER and MACs here (with ``--reuse``, from
    the ``DIR.row.json`` of an earlier run of this script when there is one), its KD epochs from
    its own training record."""
    saved = folder.with_name(folder.name + ".row.json")
    if args.reuse and saved.is_file():
        scores = {k: v for k, v in json.loads(saved.read_text()).items() if k in ("wer_greedy", "wer_lm", "macs",
                                                                                  "params", "mask_steps")}
    else:
        scores = test_wer(folder, args.data, args.lm)
    epochs = json.loads((folder / "training.json").read_text())["epochs"]
    return {"criterion": name, "target": None, "macs_ratio": scores["macs"] / ref_macs,
            "finetune_epochs": epochs, "model_dir": str(folder), **scores}


def paired_times(models: dict[str, Path], reference: str = "unpruned") -> dict[str, dict]:
    """Each model's batch-1 time against ``models[reference]``, paired: ``relative_latency``
    (the two alternate in blocks of consecutive runs, so drifts of the machine cancel) repeated
    ``ROUNDS`` times over all the models; per model the median ratio, its spread and the times.
    Timing every model in turn and dividing medians did not hold: in one such table run three
    models with the same architecture (ModelOpt's plan, three fine-tuning seeds) ran 1.38x, 1.53x
    and 1.63x faster than the teacher; paired, 1.34-1.43x in three rounds each."""
    loaded = {k: load_model(v).eval() for k, v in models.items()}
    ref = loaded[reference]
    ratios: dict[str, list[float]] = {k: [] for k in loaded if k != reference}
    for _ in range(ROUNDS):
        for k in ratios:
            ratios[k].append(relative_latency(ref, loaded[k], LATENCY_SECONDS, LATENCY_THREADS))
    ref_ms = measure_latency(ref, LATENCY_SECONDS, LATENCY_THREADS, feat_dim=ref.config.num_features)["latency_ms_p50"]
    out = {reference: {"latency_ms": ref_ms, "speedup": 1.0}}
    for k, v in ratios.items():
        mid = statistics.median(v)
        out[k] = {"latency_ms": ref_ms * mid, "speedup": 1.0 / mid,
                  "speedup_range": [1.0 / max(v), 1.0 / min(v)], "ratios": v}
    return out


def _range(row: dict) -> str:
    lo_hi = row.get("speedup_range")
    return f" ({lo_hi[0]:.2f}-{lo_hi[1]:.2f})" if lo_hi else ""


def table(rows: list[dict], ref: dict) -> str:
    lm = "wer_lm" in ref
    head = "| criterion | MACs removed (target) | MACs ratio | training | WER greedy |" + (" WER beam+LM |" if lm else "") \
        + " speed-up (range) |\n|---|---|---|---|---|" + ("---|" if lm else "") + "---|\n"
    line = (f"| unpruned | - | 1.000 | - | {ref['wer_greedy']:.2f} |" + (f" {ref['wer_lm']:.2f} |" if lm else "")
            + " 1.00x |\n")
    for r in rows:
        training = (f"{r['mask_steps']} mask steps + " if r.get("mask_steps") else "") + \
            f"{r['finetune_epochs']} KD epochs"
        target = "-" if r["target"] is None else f"{r['target']:.0%}"
        line += (f"| {r['criterion']} | {target} | {r['macs_ratio']:.3f} | {training} | {r['wer_greedy']:.2f} |"
                 + (f" {r['wer_lm']:.2f} |" if lm else "") + f" {r['speedup']:.2f}x{_range(r)} |\n")
    return head + line


def method(criterion: str) -> str:
    """A row's method, without the target, seed or fine-tuning tags of its name (learned_78_seed1 ->
    learned): rows of one method share a colour and marker in the plot."""
    return re.sub(r"_(\d+|seed\d+|kd\d+)(?=_|$)", "", criterion)


def plot(rows: list[dict], ref: dict, path: Path) -> None:
    """WER greedy (and beam + LM when measured) against the MACs kept, one colour per method,
    every run a point."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    metrics = [("wer_greedy", "WER greedy (%)")] + ([("wer_lm", "WER beam + LM (%)")] if "wer_lm" in ref else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics) + 2.5, 4), squeeze=False)
    methods = sorted({method(r["criterion"]) for r in rows})
    markers = "osD^vP*Xph<>"
    for ax, (key, label) in zip(axes[0], metrics):
        for k, m in enumerate(methods):
            pts = [(r["macs_ratio"], r[key]) for r in rows if method(r["criterion"]) == m]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[k % len(markers)],
                       color=f"C{k % 10}", label=m, alpha=0.8)
        ax.axhline(ref[key], color="k", ls="--", label="unpruned")
        ax.set_xlabel("MACs / unpruned")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="trained model directory (the teacher)")
    p.add_argument("--data", type=Path, required=True, help="data directory (train/dev[/test])")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.78], help="shares of MACs to remove")
    p.add_argument("--criteria", nargs="+", default=["learned", "sensitivity", "taylor"])
    p.add_argument("--finetune-epochs", type=int, default=4, help="KD fine-tuning epochs after pruning (all)")
    p.add_argument("--mask-steps", type=int, default=2000, help="learned: mask-training steps")
    p.add_argument("--match-steps", action="store_true",
                   help="give sensitivity/taylor the mask-training steps as extra fine-tuning epochs")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--calibration-cuts", type=int, default=256, help="also the learned masks' training cuts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lm", type=Path, default=None, help="ARPA LM for beam search")
    p.add_argument("--out", type=Path, default=Path("exp/bench_prune_learned"), help="pruned models")
    p.add_argument("--results", type=Path, default=Path("bench/results/prune_learned"))
    p.add_argument("--reuse", action="store_true",
                   help="reuse points measured by an earlier run (OUT/<model>/<criterion>_<pct>.row.json): "
                        "run one criterion per process, then all of them with --reuse for the table and timing")
    p.add_argument("--points-only", action="store_true", help="prune and evaluate the points, no table or timing")
    p.add_argument("--seed", type=int, default=0, help="prune's seed (fine-tuning order, gates' noise)")
    p.add_argument("--extra", nargs="*", default=[], metavar="NAME=DIR",
                   help="other pruned model directories in the table and the timing (e.g. a peer's, "
                        "fine-tuned by bench/peers.py); their training is read from DIR/training.json")
    p.add_argument("--learned", nargs="*", default=[], metavar="KEY=VALUE",
                   help="LearnedConfig settings, e.g. lambda_lr=0.01 (the point's folder gets them as a suffix)")
    p.add_argument("--prune", nargs="*", default=[], metavar="KEY=VALUE",
                   help="PruneConfig settings for the other criteria, e.g. sensitivity_ratios=[0.25,0.5,0.75,0.9] "
                        "(the point's folder gets them as a suffix)")
    args = p.parse_args()
    args.learned, args.prune = parse_overrides(args.learned), parse_overrides(args.prune)
    torch.set_num_threads(args.threads)
    tag = args.model.name
    rows, models = [], {"unpruned": args.model}
    for target in args.targets:
        for criterion in args.criteria:
            settings = args.learned if criterion == "learned" else args.prune
            suffix = "".join(f"_{k}{_tag(v)}" for k, v in settings.items())
            suffix += f"_seed{args.seed}" if args.seed else ""
            out = args.out / tag / f"{criterion}_{round(target * 100)}{suffix}"
            saved = out.with_name(out.name + ".row.json")
            if args.reuse and saved.is_file():
                rows.append(json.loads(saved.read_text()))
            else:
                rows.append(prune_point(args, criterion, target, out))
                saved.write_text(json.dumps(rows[-1], indent=1))
            models[f"{criterion}_{target}"] = out
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "widths"}), flush=True)
    if args.points_only:
        return
    ref = test_wer(args.model, args.data, args.lm)
    for name, _, folder in (item.partition("=") for item in args.extra):
        rows.append(extra_row(name, Path(folder), args, ref["macs"]))
        models[f"{name}_None"] = Path(folder)
    times = paired_times(models)
    ref["latency_ms"] = times["unpruned"]["latency_ms"]
    for r in rows:
        r.update(times[f"{r['criterion']}_{r['target']}"])
    folder = args.results / tag
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "learned.json").write_text(json.dumps({"reference": ref, "points": rows}, indent=1))
    (folder / "learned.md").write_text(table(rows, ref))
    plot(rows, ref, folder / "learned.png")
    print(table(rows, ref))


if __name__ == "__main__":
    run_script(main)
