"""The ``slimasr`` command: thin verbs that parse arguments, build a config, call the library and
write results. Every verb's work lives in a library function that can be called without the CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from slimasr import __version__
from slimasr.errors import SlimasrError

# Verbs that later work fills; until then they answer clearly instead of failing obscurely.
PLANNED_VERBS = {
    "export": "export to ONNX (optionally int8) with a parity check",
}


def _corpus_synth(args: argparse.Namespace) -> dict:
    from slimasr.config import load_config
    from slimasr.data.synth import SynthConfig, synthesize_corpus

    overrides = list(args.overrides)
    for name in ("hours", "seed", "num_workers"):
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"{name}={value}")
    cfg = load_config(SynthConfig, args.config, overrides)
    return synthesize_corpus(args.out, cfg, overwrite=args.overwrite, show_progress=not args.quiet)


def _corpus_import(args: argparse.Namespace) -> dict:
    from slimasr.data import importers

    show = not args.quiet
    if args.format == "librispeech":
        return importers.import_librispeech(args.src, args.out, overwrite=args.overwrite, show_progress=show)
    if args.format == "timit":
        return importers.import_timit(args.src, args.out, overwrite=args.overwrite, show_progress=show)
    return importers.import_jsonl(args.src, args.out, split=args.split, overwrite=args.overwrite,
                                  show_progress=show)


def _train(args: argparse.Namespace) -> dict:
    from slimasr.train import train_model

    return train_model(args.config, args.data, args.out, resume=args.resume, overrides=args.overrides)


def _distill(args: argparse.Namespace) -> dict:
    from slimasr.distill import distill_model

    overrides = [f"teacher.path={args.teacher}", *args.overrides]
    student = args.student
    if student in ("teacher", "from-teacher"):
        overrides.insert(0, "student.init=teacher")
    elif student:
        overrides.insert(0, f"model.preset={student}")
    if args.unlabelled:
        import json

        overrides.append(f"unlabelled={json.dumps(args.unlabelled)}")  # a YAML (JSON) list
    result = distill_model(args.config, args.data, args.out, resume=args.resume, overrides=overrides)
    result.pop("history", None)
    return result


def _prune(args: argparse.Namespace) -> dict:
    from slimasr.config import load_config
    from slimasr.prune.run import PruneConfig, prune_model_dir

    overrides = [f"criterion={args.criterion}"]
    if args.target_macs is not None:
        overrides += ["target.kind=macs", f"target.fraction={args.target_macs}"]
    elif args.target_params is not None:
        overrides += ["target.kind=params", f"target.fraction={args.target_params}"]
    if args.target_latency is not None:
        if args.target_macs is None and args.target_params is None:
            overrides += ["target.kind=latency", f"target.fraction={args.target_latency}"]
        else:
            overrides.append(f"target.latency_fraction={args.target_latency}")
    if args.latency_table:
        overrides.append(f"latency_table={args.latency_table}")
    for name in ("steps", "finetune_epochs", "scope", "round_to", "remove_layers"):
        value = getattr(args, name)
        if value is not None:
            key = f"target.{name}" if name in ("scope", "round_to") else name
            overrides.append(f"{key}={value}")
    if args.distill:
        overrides.append("distill=true")
    cfg = load_config(PruneConfig, args.config, [*overrides, *args.overrides])
    result = prune_model_dir(args.model, args.data, args.out, cfg, show_progress=not args.quiet)
    return {"out": args.out, **result["final"]}


def _evaluate(args: argparse.Namespace) -> dict:
    from slimasr.config import load_config
    from slimasr.evaluate.run import EvalConfig, evaluate_model

    overrides = list(args.overrides)
    if args.beam:
        overrides.append("decode.method=beam")
    if args.lm:
        overrides += ["decode.method=beam", f"decode.lm_path={args.lm}"]
    cfg = load_config(EvalConfig, None, overrides)
    result = evaluate_model(args.model, args.data, cfg, json_out=args.json, show_progress=not args.quiet)
    _print_worst(args.model)
    return result


def _print_worst(model_dir: str) -> None:
    from pathlib import Path

    from slimasr.evaluate.run import WORST_FILE
    from slimasr.io import read_json

    path = Path(model_dir) / WORST_FILE
    for row in read_json(path)[:5] if path.is_file() else []:
        print(f"  {row['errors']} errors  {row['id']}\n    ref: {row['ref']}\n    hyp: {row['hyp']}")


def _report(args: argparse.Namespace) -> dict:
    from slimasr.evaluate.report import collect_rows, markdown_table, write_report

    rows = collect_rows(args.models)
    paths = write_report(rows, args.out)
    print(markdown_table(rows))
    return {name: str(path) for name, path in paths.items()}


def _run(args: argparse.Namespace) -> dict:
    from slimasr.pipeline import run_pipeline

    return run_pipeline(args.recipe, args.overrides, experiment=args.experiment)


def _demo(args: argparse.Namespace) -> dict:
    from slimasr.pipeline import run_pipeline

    recipe = "demo_quick" if args.quick else "demo"
    return run_pipeline(recipe, args.overrides, experiment=args.experiment)


def _lm(args: argparse.Namespace) -> dict:
    from slimasr.data.manifests import read_split
    from slimasr.decode import build_ngram_lm
    from slimasr.text import normalize_text

    texts = (normalize_text(s.text or "") for c in read_split(args.data, args.split) for s in c.supervisions)
    model = build_ngram_lm(texts, args.out, order=args.order)
    return {"lm": args.out, "order": args.order, **{f"{n + 1}-grams": len(g) for n, g in enumerate(model.ngrams)}}


def _transcribe(args: argparse.Namespace) -> dict:
    from slimasr.data.audio import load_audio
    from slimasr.decode import DecodeConfig
    from slimasr.recognize import Recognizer

    if args.stream:
        raise NotAvailable("slimasr transcribe --stream: not yet available in this version")
    recognizer = Recognizer(args.model, DecodeConfig(method="beam", lm_path=args.lm) if args.lm else None)
    for path in args.audio:
        print(f"{path}\t{recognizer.transcribe(load_audio(path))}")
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slimasr",
        description="Make speech recognizers small and fast: distillation and structured pruning, measured.",
    )
    parser.add_argument("--version", action="version", version=f"slimasr {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    corpus = verbs.add_parser("corpus", help="build or import a speech corpus (lhotse manifests)")
    corpus_verbs = corpus.add_subparsers(dest="corpus_verb", metavar="ACTION")
    corpus_verbs.required = True

    synth = corpus_verbs.add_parser("synth", help="synthesize the embedded smart-home corpus with eSpeak NG")
    synth.add_argument("--out", required=True, help="output data directory")
    synth.add_argument("--hours", type=float, default=None, help="hours of training audio (default 1.5)")
    synth.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    synth.add_argument("--workers", dest="num_workers", type=int, default=None,
                       help="synthesis processes (default 2)")
    synth.add_argument("--config", default=None, help="YAML/JSON file with SynthConfig fields")
    synth.add_argument("--overwrite", action="store_true", help="replace a complete corpus in --out")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="SynthConfig overrides, e.g. snr_db=[5,30]")
    synth.set_defaults(func=_corpus_synth)

    imp = corpus_verbs.add_parser("import", help="turn a local corpus into lhotse manifests")
    imp.add_argument("format", choices=["librispeech", "timit", "jsonl"], help="layout of SRC")
    imp.add_argument("src", help="corpus folder (librispeech, timit) or manifest file (jsonl)")
    imp.add_argument("--out", required=True, help="output data directory")
    imp.add_argument("--split", default="train", help="split name for a jsonl manifest (default train)")
    imp.add_argument("--overwrite", action="store_true", help="replace a complete data directory in --out")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=_corpus_import)

    train = verbs.add_parser("train", help="train a CTC model (teacher or baseline)")
    train.add_argument("--config", required=True, help="training recipe YAML (recipes/train_*.yaml)")
    train.add_argument("--data", required=True, help="data directory (corpus synth / corpus import)")
    train.add_argument("--out", required=True, help="model directory to write")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. train.epochs=5")
    train.set_defaults(func=_train)

    dist = verbs.add_parser("distill", help="knowledge distillation from a teacher into a small student")
    dist.add_argument("--teacher", required=True,
                      help="teacher model directory (slimasr, or a local HF Wav2Vec2/HuBERT CTC folder)")
    dist.add_argument("--student", default=None,
                      help="student model preset (file or bundled name, e.g. crnn_student), or "
                           "'teacher' to cut the student down from the teacher (student.layers/width)")
    dist.add_argument("--config", default=None,
                      help="distillation recipe YAML (recipes/distill_*.yaml); default: all defaults")
    dist.add_argument("--data", required=True, help="data directory (train/dev splits)")
    dist.add_argument("--out", required=True, help="student model directory to write")
    dist.add_argument("--unlabelled", action="append", default=[],
                      help="cuts manifest of audio without transcripts (repeatable)")
    dist.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last")
    dist.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="recipe overrides, e.g. loss.kd_weight=0.5 loss.temperature=2")
    dist.set_defaults(func=_distill)

    prune = verbs.add_parser("prune", help="structured pruning (channels, units, heads) + fine-tuning")
    prune.add_argument("--model", required=True, help="model directory to prune")
    prune.add_argument("--criterion", default="taylor",
                       choices=["magnitude", "taylor", "activation", "apoz", "sensitivity", "random"],
                       help="how units are scored (default taylor)")
    goal = prune.add_mutually_exclusive_group()
    goal.add_argument("--target-macs", type=float, help="share of MACs to remove, e.g. 0.5 (the default)")
    goal.add_argument("--target-params", type=float, help="share of parameters to remove")
    prune.add_argument("--target-latency", type=float,
                       help="share of batch-1 latency to remove, measured on this machine (0.375 = "
                            "1.6x faster); alone, or also to meet beside --target-macs/--target-params")
    prune.add_argument("--latency-table", help="latency table JSON measured on the target device "
                                               "(default: measure here)")
    prune.add_argument("--steps", type=int, help="prune in K steps, fine-tuning after each (default 1)")
    prune.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs per step (default 2)")
    prune.add_argument("--distill", action="store_true",
                       help="fine-tune with the unpruned model as a distillation teacher")
    prune.add_argument("--scope", choices=["global", "layer"], help="rank units globally (default) or per layer")
    prune.add_argument("--round-to", type=int, help="kept widths are multiples of this (default 8)")
    prune.add_argument("--remove-layers", type=int,
                       help="first remove this many whole layers (Conformer blocks), by measured dev loss")
    prune.add_argument("--config", default=None, help="PruneConfig YAML (recipes/prune_*.yaml)")
    prune.add_argument("--data", required=True, help="data directory (train/dev splits)")
    prune.add_argument("--out", required=True, help="pruned model directory to write")
    prune.add_argument("--quiet", action="store_true", help="no progress output")
    prune.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="PruneConfig overrides")
    prune.set_defaults(func=_prune)

    ev = verbs.add_parser("evaluate", help="WER, CER, params, MACs, latency and RTF of a model")
    ev.add_argument("--model", required=True, help="model directory")
    ev.add_argument("--data", required=True, help="lhotse cuts manifest or NeMo-style JSONL manifest")
    ev.add_argument("--json", default=None, help="also write the metrics to this file")
    ev.add_argument("--beam", action="store_true", help="prefix beam search instead of greedy")
    ev.add_argument("--lm", default=None, help="ARPA n-gram LM for beam search (slimasr lm)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="EvalConfig overrides, e.g. decode.beam.alpha=0.8")
    ev.set_defaults(func=_evaluate)

    rep = verbs.add_parser("report", help="comparison table and plot of several evaluated models")
    rep.add_argument("models", nargs="+", help="model directories (the first is the reference)")
    rep.add_argument("--out", default="report", help="output prefix: writes OUT.md, OUT.json, OUT.png")
    rep.set_defaults(func=_report)

    run = verbs.add_parser("run", help="run a pipeline recipe; finished stages are skipped")
    run.add_argument("recipe", help="pipeline recipe YAML (or a bundled name: demo)")
    run.add_argument("--experiment", default=None, help="experiment folder (default: the recipe's)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    run.set_defaults(func=_run)

    demo = verbs.add_parser("demo", help="the bundled recipe on the embedded corpus, ending with a report")
    demo.add_argument("--quick", action="store_true", help="a tiny version (seconds; a smoke test)")
    demo.add_argument("--experiment", default=None, help="experiment folder (default exp/demo)")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    demo.set_defaults(func=_demo)

    lm = verbs.add_parser("lm", help="build a word n-gram LM (ARPA) from a corpus's training text")
    lm.add_argument("--data", required=True, help="data directory")
    lm.add_argument("--out", required=True, help="ARPA file to write")
    lm.add_argument("--split", default="train", help="split whose transcripts to use (default train)")
    lm.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    lm.set_defaults(func=_lm)

    tr = verbs.add_parser("transcribe", help="recognize audio files with a model")
    tr.add_argument("--model", required=True, help="model directory")
    tr.add_argument("audio", nargs="+", help="audio files (any rate; resampled to 16 kHz)")
    tr.add_argument("--lm", default=None, help="ARPA n-gram LM: beam search with it")
    tr.add_argument("--stream", action="store_true", help="chunk-by-chunk streaming (not yet available)")
    tr.set_defaults(func=_transcribe)

    for verb, help_text in PLANNED_VERBS.items():
        p = verbs.add_parser(verb, help=f"{help_text} (not yet available)", add_help=True)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_not_yet(verb))
    return parser


def _not_yet(verb: str) -> Callable[[argparse.Namespace], dict]:
    def run(args: argparse.Namespace) -> dict:
        raise NotAvailable(f"slimasr {verb}: not yet available in this version")

    return run


class NotAvailable(SlimasrError):
    """A verb the design names but this version does not implement yet."""


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except NotAvailable as e:
        print(str(e), file=sys.stderr)
        return 2
    except SlimasrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if isinstance(result, dict):
        print_summary(result)
    return 0


def print_summary(result: dict) -> None:
    """A short human summary of a result dict: its scalar fields and a per-split table."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    scalars = {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool))}
    for key, value in scalars.items():
        console.print(f"{key}: {value}")
    splits = result.get("splits")
    if isinstance(splits, dict) and splits:
        table = Table("split", "utterances", "hours", "speakers/voices")
        for name, info in splits.items():
            count = info.get("utterances", info.get("num_cuts", ""))
            speakers = info.get("voices", info.get("num_speakers", ""))
            table.add_row(name, str(count), f"{info.get('hours', 0):.2f}", str(speakers))
        console.print(table)
    skipped = result.get("skipped")
    if isinstance(skipped, dict) and any(skipped.values()):
        console.print("skipped: " + ", ".join(f"{k}={v}" for k, v in skipped.items() if v))
