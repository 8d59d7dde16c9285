"""Benchmark: a student with at most a quarter of the teacher's parameters, trained from scratch,
with each distillation loss alone, and with combinations, all with the same epochs and data.

    python bench/distill_students.py --teacher exp/bench_teachers/crnn_teacher \
        --data data/smarthome --out exp/bench_distill --epochs 30 --variants scratch kd hidden

Each variant runs ``distill_model`` with recipes/distill_crnn_student.yaml plus its overrides, is
evaluated on the test split (voices never heard in training) greedily and with beam search + the
corpus trigram, and writes bench/results/distill/<variant>.json; bench/results/distill.md is the
table of every variant measured so far (and the teacher). One torch thread per run, so two
variants can run side by side on two cores. Nothing is hard-coded: numbers are measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from slimasr.config import from_dict
from slimasr.decode import build_ngram_lm
from slimasr.data.manifests import read_split
from slimasr.distill import distill_model
from slimasr.errors import run_script
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.io import read_json, write_json_atomic, write_text_atomic
from slimasr.text import normalize_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "distill"
RECIPE = ROOT / "recipes" / "distill_crnn_student.yaml"
SCRATCH = ["student.init=scratch"]
NO_KD = ["loss.ctc_weight=1.0", "loss.kd_weight=0.0"]
MEASURED_AT = ["loss.temperature=2.0"]  # the recipe's T when this table was measured (now 1)

# name -> (what it tests, recipe overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "scratch": ("no teacher: CTC only, random init", [*SCRATCH, *NO_KD]),
    "scratch_nowarp": ("no teacher, no SpecAugment time warp (as every frame-level KD variant)", [
        *SCRATCH, *NO_KD, "augment.time_warp=0"]),
    "kd": ("CTC 0.5 + frame KD 0.5 (T=2)", SCRATCH),
    "kd_blank": ("CTC 0.5 + frame KD 0.5, teacher-blank frames weighted 0.3", [
        *SCRATCH, "loss.blank_weight=0.3"]),
    "hidden": ("CTC 1 + hidden-layer matching 1 (L1+cos)", [
        *SCRATCH, *NO_KD, "loss.hidden_weight=1.0"]),
    "pseudo": ("CTC 0.5 + CTC on teacher transcripts 0.5 (WER filter 20%)", [
        *SCRATCH, "loss.ctc_weight=0.5", "loss.kd_weight=0.0", "loss.pseudo_weight=0.5"]),
    "init": ("initialised from the teacher (2 of 3 layers, half the units), CTC only", NO_KD),
    "init_kd": ("initialised from the teacher + CTC 0.5 + frame KD 0.5", []),
    "init_kd_t1": ("initialised from the teacher + CTC 0.5 + frame KD 0.5 at T=1", ["loss.temperature=1.0"]),
    "init_kd_online": ("initialised from the teacher + CTC 0.5 + KD 0.5, teacher run online on the "
                       "same (time-warped) features", ["teacher.cache=false"]),
    "init_kd_hidden": ("initialised from the teacher + CTC 0.5 + KD 0.5 + hidden 0.5", [
        "loss.hidden_weight=0.5"]),
    # A deeper student at the size limit: all 3 layers, 152 units (~23% of the teacher's params).
    "scratch3": ("3 x BiLSTM 152 from scratch: CTC only", [
        *SCRATCH, *NO_KD, "model.config.rnn_hidden_sizes=[152,152,152]"]),
    "init3": ("3 x BiLSTM 152 cut from the teacher (all layers), CTC only", [
        "student.layers=3", "student.width=0.475", *NO_KD]),
    "init3_kd": ("3 x BiLSTM 152 cut from the teacher (all layers) + CTC 0.5 + KD 0.5", [
        "student.layers=3", "student.width=0.475"]),
    # The student is the teacher pruned (sensitivity, 77% of the params removed, no fine-tuning:
    # `slimasr prune ... --criterion sensitivity --target-params 0.77 --finetune-epochs 0`),
    # widths 80/160/224, ~22% of the teacher's params.
    "pruned3": ("the teacher pruned to 22% of its params (sensitivity; BiLSTM 80/160/224), CTC only", [
        "student.init=path", "student.path=exp/bench_distill/pruned_student_init", *NO_KD]),
    "pruned3_kd": ("the teacher pruned to 22% of its params (sensitivity; BiLSTM 80/160/224) + CTC 0.5 + KD 0.5", [
        "student.init=path", "student.path=exp/bench_distill/pruned_student_init"]),
}


def run_variant(name: str, teacher: Path, data: Path, out: Path, epochs: int, lm: Path,
                extra: list[str]) -> dict:
    what, overrides = VARIANTS[name]
    model_dir = out / name
    start = time.perf_counter()
    training = distill_model(RECIPE, data, model_dir, resume=(model_dir / "checkpoints" / "last").is_dir(),
                             overrides=[f"teacher.path={teacher}", f"train.epochs={epochs}",
                                        "train.num_threads=1", *MEASURED_AT, *overrides, *extra],
                             show_progress=False)
    wall = time.perf_counter() - start
    test, train_cuts = data / "test_cuts.jsonl.gz", str(data / "train_cuts.jsonl.gz")
    greedy = evaluate_model(model_dir, test, from_dict(EvalConfig, {"intent_reference": train_cuts}),
                            show_progress=False)
    beam = evaluate_model(model_dir, test, from_dict(EvalConfig, {
        "decode": {"method": "beam", "lm_path": str(lm)}, "lexicon_reference": train_cuts,
        "intent_reference": train_cuts}), show_progress=False)
    return {
        "variant": name, "what": what, "overrides": overrides + extra, "epochs": training["epochs"],
        "train_seconds": training["train_seconds"], "wall_seconds": wall,
        "dev_wer": training["dev_wer"], "test_wer_greedy": greedy["wer"], "test_cer_greedy": greedy["cer"],
        "test_wer_lm": beam["wer"], "test_intent_accuracy_lm": beam.get("intent_accuracy"),
        "pseudo_labels_kept": training.get("pseudo_labels_kept"),
        **{k: greedy[k] for k in ("params", "macs_per_second_audio", "latency_ms_p50", "rtf", "model_bytes")},
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread per run",
    }


def cache_speed(teacher: Path, data: Path, out: Path, epochs: int) -> dict:
    """Frame KD for ``epochs`` epochs with the teacher's top-k posteriors cached once against the
    teacher run online on every batch: seconds of training per epoch, and the one-off cache fill."""
    row: dict = {"epochs": epochs}
    for mode, cache in (("cached", "true"), ("online", "false")):
        model_dir = out / f"cache_speed_{mode}"
        if model_dir.exists():
            import shutil

            shutil.rmtree(model_dir)
        start = time.perf_counter()
        training = distill_model(RECIPE, data, model_dir, overrides=[
            f"teacher.path={teacher}", f"train.epochs={epochs}", "train.num_threads=1",
            f"teacher.cache={cache}", "student.init=teacher"], show_progress=False)
        wall = time.perf_counter() - start
        row[mode] = {"train_seconds": training["train_seconds"], "wall_seconds": wall,
                     "seconds_per_epoch": training["train_seconds"] / training["epochs"]}
    row["cache_fill_and_setup_seconds"] = row["cached"]["wall_seconds"] - row["cached"]["train_seconds"]
    row["speedup_per_epoch"] = row["online"]["seconds_per_epoch"] / row["cached"]["seconds_per_epoch"]
    row["machine"] = f"{platform.processor() or platform.machine()}, 1 torch thread"
    return row


# The from-scratch student each variant is compared with (same shape); default "scratch".
BASELINE = {"scratch": None, "scratch3": None,
            **{v: "scratch3" for v in ("init3", "init3_kd", "pruned3", "pruned3_kd")}}


def relative(row: dict, rows: dict[str, dict], key: str) -> str:
    base = rows.get(BASELINE.get(row["variant"], "scratch"))
    if base is None or base is row:
        return ""
    return f" ({100 * (row[key] / base[key] - 1):+.0f}%)"


def markdown(rows: list[dict], teacher: dict | None) -> str:
    head = ["| model | params | MMACs/s | epochs | train min | test WER greedy (vs scratch) | "
            "test WER +LM (vs scratch) | latency p50 ms | what |", "|---|---|---|---|---|---|---|---|---|"]
    if teacher:
        head.append(f"| teacher | {teacher['params'] / 1e6:.2f}M | {teacher['macs_per_second_audio'] / 1e6:.0f} | "
                    f"{teacher['epochs']} | {teacher['train_seconds'] / 60:.1f} | {teacher['test_wer_greedy']:.2f}% | "
                    f"{teacher['test_wer_lm']:.2f}% | {teacher['latency_ms_p50']:.1f} | the CRNN teacher |")
    by_name = {r["variant"]: r for r in rows}
    for r in rows:
        head.append(f"| {r['variant']} | {r['params'] / 1e6:.2f}M | {r['macs_per_second_audio'] / 1e6:.0f} | "
                    f"{r['epochs']} | {r['train_seconds'] / 60:.1f} | "
                    f"{r['test_wer_greedy']:.2f}%{relative(r, by_name, 'test_wer_greedy')} | "
                    f"{r['test_wer_lm']:.2f}%{relative(r, by_name, 'test_wer_lm')} | "
                    f"{r['latency_ms_p50']:.1f} | {r['what']} |")
    return "\n".join(head) + "\n"


def plot(rows: list[dict], teacher: dict | None, path: Path) -> None:
    """Test WER of every variant (greedy and beam + trigram), the teacher as lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.45 * len(rows) + 1.5), layout="constrained")
    ax = fig.subplots()
    y = list(range(len(rows)))
    ax.barh([i + 0.2 for i in y], [r["test_wer_greedy"] for r in rows], 0.4, label="greedy")
    ax.barh([i - 0.2 for i in y], [r["test_wer_lm"] for r in rows], 0.4, label="beam + trigram")
    if teacher:
        ax.axvline(teacher["test_wer_greedy"], color="C0", linestyle=":", label="teacher, greedy")
        ax.axvline(teacher["test_wer_lm"], color="C1", linestyle=":", label="teacher, + trigram")
    ax.set_yticks(y, [f"{r['variant']} ({r['params'] / 1e6:.2f}M)" for r in rows])
    ax.invert_yaxis()
    ax.set(xlabel="test WER (%), voices never heard in training", title="Students: scratch against distilled")
    ax.legend(fontsize=7)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def write_table() -> None:
    rows = [read_json(RESULTS / f"{n}.json") for n in VARIANTS if (RESULTS / f"{n}.json").is_file()]
    teacher_json = ROOT / "bench" / "results" / "teacher_crnn.json"
    teacher = read_json(teacher_json) if teacher_json.is_file() else None
    write_text_atomic(ROOT / "bench" / "results" / "distill.md", markdown(rows, teacher))
    if rows:
        plot(rows, teacher, ROOT / "bench" / "results" / "distill.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("exp/bench_distill"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--override", action="append", default=[], help="recipe KEY=VALUE for every variant")
    ap.add_argument("--cache-speed", type=int, default=0, metavar="EPOCHS",
                    help="instead: time frame KD with the teacher cache against the online teacher")
    ap.add_argument("--table", action="store_true", help="only rewrite distill.md and distill.png")
    args = ap.parse_args()
    if args.table:
        write_table()
        return
    if args.cache_speed:
        row = cache_speed(args.teacher, args.data, args.out, args.cache_speed)
        write_json_atomic(RESULTS / "cache_speed.json", row)
        print(json.dumps(row, indent=1))
        return
    lm = args.out / "lm_3gram.arpa"
    if not lm.is_file():
        texts = (normalize_text(s.text or "") for c in read_split(args.data, "train") for s in c.supervisions)
        build_ngram_lm(texts, lm, order=3)
    for name in args.variants:
        row = run_variant(name, args.teacher, args.data, args.out, args.epochs, lm, args.override)
        write_json_atomic(RESULTS / f"{name}.json", row)
        print(json.dumps(row, indent=1), flush=True)
    write_table()


if __name__ == "__main__":
    run_script(main)
