"""Benchmark (issue 17): where soft labels pay. One student shape, trained from scratch and with
soft labels (no teacher weights copied), every variant with the same data, number of updates
(``--steps``) and decoding.

    python bench/distill_soft.py --teacher exp/bench_teachers/crnn_teacher --data data/smarthome \
        --out exp/bench_soft --steps 6000 --variants scratch kd kd_t1 kd_t4 kd_w09 kd_only \
        kd_blank kd_symmetric kd_full_topk
    # unlabelled audio (slimasr corpus synth --unlabelled --hours 6 --out data/unl6, the labelled
    # corpus's seed and voices); 3 h is the first half of the same cuts. The labelled-only
    # scratch run is the baseline of every unlabelled row.
    python bench/distill_soft.py ... --tag unl6 --baseline crnn \
        --unlabelled data/unl6/unlabelled_cuts.jsonl.gz --variants kd_unl
    python bench/distill_soft.py ... --tag unl3 --baseline crnn --unlabelled-hours 3 \
        --unlabelled data/unl6/unlabelled_cuts.jsonl.gz --variants kd_unl
    # offline -> streaming: a causal student; kd_delay picks d on dev against the causal scratch run
    python bench/distill_soft.py ... --tag causal --student model.config.bidirectional=false \
        --variants scratch kd kd_delay pseudo
    # another family, an ensemble
    python bench/distill_soft.py ... --tag dnn --student model.preset=dnn_student --variants scratch kd
    python bench/distill_soft.py --teacher exp/crnn --teacher exp/conformer ... --tag ens --variants kd

Each variant writes RESULTS/<tag>_<variant>.json (greedy and beam + trigram test WER on unseen
voices, params, MACs, latency, training time, the run's loss counts); RESULTS/table.md and
table.png collect every row measured so far. One seed per number (say so when quoting it).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from lhotse import CutSet

from slimasr.config import from_dict
from slimasr.data.manifests import load_cuts, read_split
from slimasr.decode import DecodeConfig, build_ngram_lm
from slimasr.distill import distill_model
from slimasr.distill.delay import dev_kd_delay
from slimasr.errors import run_script
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from slimasr.text import normalize_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "distill_soft"
SCRATCH_CTC = ["loss.ctc_weight=1.0", "loss.kd_weight=0.0"]
CUT3 = ["student.init=teacher", "student.layers=3", "student.width=0.475"]  # 320 -> 152 units
KD = ["loss.ctc_weight=0.5", "loss.kd_weight=0.5", "loss.temperature=2.0"]  # today's KD setting

# name -> (what it tests, recipe overrides); every variant starts from scratch (no weight copy)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "scratch": ("no teacher: CTC only", SCRATCH_CTC),
    "kd": ("CTC 0.5 + frame KD 0.5, T=2", KD),
    "kd_t1": ("CTC 0.5 + frame KD 0.5, T=1", [*KD, "loss.temperature=1.0"]),
    "kd_t4": ("CTC 0.5 + frame KD 0.5, T=4", [*KD, "loss.temperature=4.0"]),
    "kd_w09": ("CTC 0.1 + frame KD 0.9, T=2", [*KD, "loss.ctc_weight=0.1", "loss.kd_weight=0.9"]),
    "kd_only": ("frame KD 1.0, CTC off, T=2", [*KD, "loss.ctc_weight=0.0", "loss.kd_weight=1.0"]),
    "kd_blank": ("KD 0.5 + CTC 0.5, teacher-blank frames weighted 0.3", [*KD, "loss.blank_weight=0.3"]),
    "kd_symmetric": ("KD 0.5 + CTC 0.5, symmetric blank selection (keep 10%)", [
        *KD, "loss.blank_selection=symmetric"]),
    "kd_full_topk": ("KD 0.5 + CTC 0.5 against the full distribution (top-k = 4096)", [
        *KD, "teacher.top_k=4096"]),
    "kd_unl": ("KD 0.5 + CTC 0.5 + unlabelled audio (KD + teacher transcripts 0.5)", [
        *KD, "loss.pseudo_weight=0.5"]),
    "kd_delay": ("KD 0.5 + CTC 0.5 against the teacher delayed by d frames (d on dev)", KD),
    "cut_causal": ("cut from the teacher: forward directions, half the units, 2 of 3 layers; CTC only "
                   "(weights copied, no soft labels; run without --student)", [
        *SCRATCH_CTC, "student.init=teacher", "student.causal=true"]),
    # weights copied: a quarter-size student cut from the teacher (3 x BiLSTM 152, 1.70M), with
    # and without unlabelled audio (the 6 h target allows any student of that size)
    "cut3": ("cut from the teacher: 3 x BiLSTM 152 (weights copied); CTC only", [
        *SCRATCH_CTC, *CUT3]),
    "cut3_kd_unl": ("cut from the teacher (3 x BiLSTM 152) + KD 0.5 + CTC 0.5 + unlabelled audio "
                    "(KD + teacher transcripts 0.5)", [*KD, "loss.pseudo_weight=0.5", *CUT3]),
    "pseudo": ("CTC 0.5 + CTC on teacher transcripts 0.5 (sequence-level KD)", [
        "loss.ctc_weight=0.5", "loss.kd_weight=0.0", "loss.pseudo_weight=0.5"]),
}


def unlabelled_prefix(manifests: list[Path], hours: float | None, out: Path) -> tuple[list[Path], float]:
    """The unlabelled manifests to train on and their hours: all of them, or (``hours``) their
    first cuts in manifest order up to ``hours``, written as one manifest under ``out``."""
    cuts = [c for m in manifests for c in load_cuts(m)]  # audio paths made absolute
    if hours is None or not cuts:
        return manifests, sum(c.duration for c in cuts) / 3600
    kept, total = [], 0.0
    for cut in cuts:
        if total + cut.duration > hours * 3600:
            break
        kept.append(cut)
        total += cut.duration
    path = out / f"unlabelled_first_{hours:g}h_cuts.jsonl.gz"
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            CutSet.from_cuts(kept).to_file(tmp)
    return [path], total / 3600


def run_variant(name: str, args: argparse.Namespace, lm: Path | None) -> dict:
    what, overrides = VARIANTS[name]
    model_dir = args.out / f"{args.tag}_{name}"
    extra = [f"unlabelled={json.dumps([str(p) for p in args.unlabelled])}"] if args.unlabelled else []
    if name == "kd_delay":
        d, counts = dev_kd_delay(args.teacher[0], args.out / f"{args.tag}_scratch", args.data,
                                 max_delay=args.max_delay)
        extra, what = [f"loss.kd_delay={d}"], f"{what}: d = {d} (agreement per d: {counts})"
    teachers = [f"teacher.path={args.teacher[0]}"]
    if len(args.teacher) > 1:
        teachers.append(f"teacher.paths={json.dumps([str(t) for t in args.teacher])}")
    start = time.perf_counter()
    training = distill_model(args.recipe, args.data, model_dir,
                             resume=(model_dir / "checkpoints" / "last").is_dir(),
                             overrides=[*teachers, "student.init=scratch", f"train.max_steps={args.steps}",
                                        f"train.decay_steps={args.steps}", "train.epochs=100000",
                                        "train.num_threads=1", *args.student,
                                        *overrides, *extra], show_progress=False)
    row = {"variant": name, "tag": args.tag, "baseline_tag": args.baseline or args.tag, "what": what,
           "unlabelled": [str(p) for p in args.unlabelled], "unlabelled_hours": args.unlabelled_hours_total,
           "overrides": [*args.student, *overrides, *extra],
           "teachers": [str(t) for t in args.teacher], "steps": args.steps, "seeds": 1,
           "train_seconds": training["train_seconds"], "wall_seconds": time.perf_counter() - start,
           "dev_wer": training["dev_wer"], "loss_counts": training.get("loss_counts")}
    return {**row, **evaluate(model_dir, args.data, lm)}


def evaluate(model_dir: Path, data: Path, lm: Path | None) -> dict:
    """Greedy (and beam + trigram when ``lm``, from the same pass of the network) on the test
    split: unseen voices."""
    test, train_cuts = data / "test_cuts.jsonl.gz", str(data / "train_cuts.jsonl.gz")
    if lm is None:
        greedy, beam = evaluate_model(model_dir, test, from_dict(EvalConfig, {}), show_progress=False), None
    else:
        greedy_json = model_dir / "metrics_greedy.json"
        beam = evaluate_model(model_dir, test, from_dict(EvalConfig, {
            "decode": {"method": "beam", "lm_path": str(lm)}, "lexicon_reference": train_cuts}),
            show_progress=False, also=[(DecodeConfig(), greedy_json)])
        greedy = read_json(greedy_json)
    out = {"test_wer_greedy": greedy["wer"], "test_cer_greedy": greedy["cer"],
           **{k: greedy[k] for k in ("params", "macs_per_second_audio", "latency_ms_p50", "rtf")},
           "machine": f"{platform.processor() or platform.machine()}, 1 torch thread per run"}
    if beam is not None:
        out["test_wer_lm"] = beam["wer"]
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| tag | variant | params | MMACs/s | steps | train min | test WER greedy (vs base) | "
             "test WER +LM (vs base) | latency p50 ms | what |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    scratch = {r["tag"]: r for r in rows if r["variant"] in ("scratch", "cut3")}
    for r in rows:
        base = scratch.get(r.get("baseline_tag", r["tag"]))
        lm = f"{r['test_wer_lm']:.2f}%" if r.get("test_wer_lm") is not None else "-"
        lines.append(f"| {r['tag']} | {r['variant']} | {r['params'] / 1e6:.3f}M | "
                     f"{r['macs_per_second_audio'] / 1e6:.0f} | {r['steps']} | {r['train_seconds'] / 60:.1f} | "
                     f"{r['test_wer_greedy']:.2f}%{_rel(r, base, 'test_wer_greedy')} | "
                     f"{lm}{_rel(r, base, 'test_wer_lm')} | {r['latency_ms_p50']:.1f} | {r['what']} |")
    return "\n".join(lines) + "\n"


def _rel(row: dict, base: dict | None, key: str) -> str:
    """" (-12%)": the row's ``key`` relative to its baseline row (empty for the baseline itself)."""
    if base is None or base is row or not base.get(key) or row.get(key) is None:
        return ""
    return f" ({100 * (row[key] / base[key] - 1):+.0f}%)"


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.4 * len(rows) + 1.5), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(rows)), [r["test_wer_greedy"] for r in rows])
    ax.set_yticks(range(len(rows)), [f"{r['tag']}/{r['variant']}" for r in rows])
    ax.invert_yaxis()
    ax.set(xlabel="test WER (%), greedy, unseen voices", title="Soft labels against scratch")
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def write_table(results: Path) -> None:
    rows = [read_json(p) for p in sorted(results.glob("*.json"))]
    write_text_atomic(results / "table.md", markdown(rows))
    if rows:
        plot(rows, results / "table.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, action="append", required=True,
                    help="teacher model directory; repeat for an ensemble")
    ap.add_argument("--data", type=Path, required=True, help="labelled data directory")
    ap.add_argument("--out", type=Path, default=Path("exp/bench_soft"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "distill_crnn_student.yaml"))
    ap.add_argument("--steps", type=int, default=6000, help="optimizer updates of every variant")
    ap.add_argument("--tag", default="crnn", help="names this student shape / setting in the table")
    ap.add_argument("--student", action="append", default=[], help="recipe KEY=VALUE of the student")
    ap.add_argument("--unlabelled", type=Path, action="append", default=[],
                    help="unlabelled cuts (slimasr corpus synth --unlabelled) added to every variant's "
                         "training data")
    ap.add_argument("--unlabelled-hours", type=float, default=None,
                    help="use only the first H hours of the --unlabelled cuts (one manifest, written "
                         "into --out): 3 h and 6 h from one 6 h synthesis")
    ap.add_argument("--baseline", default=None,
                    help="tag whose scratch run the table compares against (default: --tag)")
    ap.add_argument("--max-delay", type=int, default=8, help="kd_delay: largest d tried on dev")
    ap.add_argument("--no-lm", action="store_true", help="greedy only (no trigram beam search)")
    ap.add_argument("--variants", nargs="*", default=["scratch", "kd"], choices=list(VARIANTS))
    ap.add_argument("--teacher-row", action="store_true", help="also evaluate the (first) teacher")
    args = ap.parse_args()
    if "kd_unl" in args.variants and not args.unlabelled:
        ap.error("kd_unl needs --unlabelled MANIFEST")
    args.unlabelled, args.unlabelled_hours_total = unlabelled_prefix(args.unlabelled, args.unlabelled_hours,
                                                                    args.out)
    lm = None if args.no_lm else args.out / "lm_3gram.arpa"
    if lm is not None and not lm.is_file():
        lm.parent.mkdir(parents=True, exist_ok=True)
        build_ngram_lm((normalize_text(s.text or "") for c in read_split(args.data, "train")
                        for s in c.supervisions), lm, order=3)
    args.results.mkdir(parents=True, exist_ok=True)
    if args.teacher_row:  # the teacher through the same evaluation: the rows' reference
        row = {"variant": "teacher", "tag": "teacher", "what": f"the teacher ({args.teacher[0]})",
               "steps": 0, "seeds": 1, "train_seconds": 0.0, **evaluate(args.teacher[0], args.data, lm)}
        write_json_atomic(args.results / "teacher.json", row)
    for name in args.variants:
        row = run_variant(name, args, lm)
        write_json_atomic(args.results / f"{args.tag}_{name}.json", row)
        print(json.dumps(row, indent=1), flush=True)
    write_table(args.results)


if __name__ == "__main__":
    run_script(main)
