"""The ``slimasr`` command: thin verbs that parse arguments, build a config, call the library and
write results. Every verb's work lives in a library function that can be called without the CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from slimasr import __version__
from slimasr.errors import SlimasrError, error_line

# Each verb with a config has a ``resolve`` function: the config its arguments make, built and
# checked without running anything (the doc-example test resolves every documented command).


def _synth_config(args: argparse.Namespace) -> Any:
    from slimasr.config import load_config
    from slimasr.data.synth import SynthConfig

    overrides = list(args.overrides)
    for name in ("hours", "seed", "num_workers"):
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"{name}={value}")
    if getattr(args, "unlabelled", False):
        overrides.append("unlabelled=true")
    return load_config(SynthConfig, args.config, overrides)


OVERWRITE_HELP = ("replace a model or training run already in --out (its old files, metrics and "
                  "checkpoints go; never an input)")


def _corpus_synth(args: argparse.Namespace) -> dict:
    from slimasr.data.synth import synthesize_corpus

    from slimasr.io import output_lock

    with output_lock(args.out, "corpus synth"):
        return synthesize_corpus(args.out, _synth_config(args), overwrite=args.overwrite,
                                 show_progress=not args.quiet)


def _corpus_import(args: argparse.Namespace) -> dict:
    from slimasr.io import output_lock

    with output_lock(args.out, "corpus import"):
        return _import(args, not args.quiet)


def _import(args: argparse.Namespace, show: bool) -> dict:
    from slimasr.data import importers

    if args.format == "librispeech":
        return importers.import_librispeech(args.src, args.out, overwrite=args.overwrite, show_progress=show)
    if args.format == "timit":
        return importers.import_timit(args.src, args.out, overwrite=args.overwrite, show_progress=show)
    return importers.import_jsonl(args.src, args.out, split=args.split, overwrite=args.overwrite,
                                  show_progress=show)


def _train_recipe(args: argparse.Namespace) -> Any:
    from slimasr.train.config import load_recipe

    return _with_model_checked(load_recipe(args.config, [*_regularize_overrides(args), *args.overrides]))


def _with_model_checked(recipe: Any) -> Any:
    """The recipe, once its model (a preset's file, or an architecture's config) is found."""
    from slimasr.train.config import resolve_model

    if recipe.model.preset or recipe.model.architecture:
        resolve_model(recipe.model)
    return recipe


def _train(args: argparse.Namespace) -> dict:
    from slimasr.train import train_model

    return train_model(args.config, args.data, args.out, resume=args.resume,
                       overrides=[*_regularize_overrides(args), *args.overrides], overwrite=args.overwrite)


def _regularize_overrides(args: argparse.Namespace, prefix: str = "sparsity.regularize") -> list[str]:
    """``--regularize KIND --reg-strength L`` as config overrides (train, distill, prune)."""
    out = [f"{prefix}.kind={args.regularize}"] if args.regularize else []
    if args.reg_strength is not None:
        if not args.regularize:
            from slimasr.errors import ConfigError

            raise ConfigError("--reg-strength needs --regularize (l1, group-lasso or slimming)")
        out.append(f"{prefix}.strength={args.reg_strength}")
    return out


def _distill_overrides(args: argparse.Namespace) -> list[str]:
    import json

    teachers = args.teacher if isinstance(args.teacher, list) else [args.teacher]
    overrides = [f"teacher.path={teachers[0]}", *_regularize_overrides(args), *args.overrides]
    if len(teachers) > 1:  # an ensemble: their averaged posteriors are the soft target
        overrides.insert(1, f"teacher.paths={json.dumps(teachers)}")
    student = args.student
    if student in ("teacher", "from-teacher"):
        overrides.insert(0, "student.init=teacher")
    elif student:
        overrides.insert(0, f"model.preset={student}")
    if args.unlabelled:
        overrides.append(f"unlabelled={json.dumps(args.unlabelled)}")  # a YAML (JSON) list
    return overrides


def _distill_recipe(args: argparse.Namespace) -> Any:
    from slimasr.distill.config import load_distill_recipe

    return _with_model_checked(load_distill_recipe(args.config, _distill_overrides(args)))


def _distill(args: argparse.Namespace) -> dict:
    from slimasr.distill import distill_model

    result = distill_model(args.config, args.data, args.out, resume=args.resume,
                           overrides=_distill_overrides(args), overwrite=args.overwrite)
    result.pop("history", None)
    return result


def _prune_config(args: argparse.Namespace) -> Any:
    from slimasr.config import load_config
    from slimasr.prune.run import PruneConfig

    unstructured = args.method == "unstructured"
    overrides = [f"method={args.method}"] if args.method else []
    if args.criterion:
        overrides.append(f"{'unstructured.' if unstructured else ''}criterion={args.criterion}")
    if args.sparsity is not None or args.gradual:
        if not unstructured:
            from slimasr.errors import ConfigError

            raise ConfigError("--sparsity and --gradual need --method unstructured")
        overrides += [f"unstructured.sparsity={args.sparsity}"] if args.sparsity is not None else []
        overrides += ["gradual=true"] if args.gradual else []
    if unstructured:
        _refuse_structured_options(args)
    if args.remove_below is not None:
        overrides.append(f"remove_below={args.remove_below}")
    overrides += _regularize_overrides(args, "regularize")
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
            key = "unstructured.scope" if name == "scope" and unstructured else key
            overrides.append(f"{key}={value}")
    if args.distill:
        overrides.append("distill=true")
    return load_config(PruneConfig, args.config, [*overrides, *args.overrides])


def _refuse_structured_options(args: argparse.Namespace) -> None:
    """Structured targets have no effect on unstructured pruning: one error line, not ignored."""
    from slimasr.errors import ConfigError

    for name in ("target_macs", "target_params", "target_latency", "latency_table", "round_to",
                 "remove_layers", "remove_below"):
        if getattr(args, name) is not None:
            raise ConfigError(f"--{name.replace('_', '-')} has no effect with --method unstructured "
                              "(it zeroes the share --sparsity of the weights)")


def _prune(args: argparse.Namespace) -> dict:
    from slimasr.prune.run import prune_model_dir

    result = prune_model_dir(args.model, args.data, args.out, _prune_config(args),
                             show_progress=not args.quiet, overwrite=args.overwrite, resume=args.resume)
    return {"out": args.out, **result["final"]}


def _eval_config(args: argparse.Namespace) -> Any:
    from slimasr.config import load_config
    from slimasr.evaluate.run import EvalConfig

    overrides = list(args.overrides)
    if args.beam:
        overrides.append("decode.method=beam")
    if args.lm:
        overrides += ["decode.method=beam", f"decode.lm_path={args.lm}"]
    return load_config(EvalConfig, None, overrides)


def _evaluate(args: argparse.Namespace) -> dict:
    from slimasr.evaluate.run import evaluate_model, evaluated_on

    config = _eval_config(args)
    result = evaluate_model(args.model, args.data, config, json_out=args.json,
                            show_progress=not args.quiet)
    if evaluated_on(args.model, args.data, config):  # the worst list beside the model is this run's
        _print_worst(args.model)
    return result


def _print_worst(model: str) -> None:
    from slimasr.evaluate.outputs import outputs_of
    from slimasr.io import read_json

    path = outputs_of(model).worst
    for row in read_json(path)[:5] if path.is_file() else []:
        print(f"  {row['errors']} errors  {row['id']}\n    ref: {row['ref']}\n    hyp: {row['hyp']}")


def _report(args: argparse.Namespace) -> dict:
    from slimasr.evaluate.report import collect_rows, markdown_table, write_report

    rows = collect_rows(args.models)
    paths = write_report(rows, args.out)
    print(markdown_table(rows))
    return {name: str(path) for name, path in paths.items()}


def _pipeline_recipe(args: argparse.Namespace) -> str:
    if args.verb == "demo":
        return "demo_quick" if args.quick else "demo"
    return args.recipe


def _pipeline(args: argparse.Namespace) -> Any:
    from slimasr.pipeline import load_pipeline

    return load_pipeline(_pipeline_recipe(args), args.overrides, getattr(args, "train_teacher", False))


def _run(args: argparse.Namespace) -> dict:
    from slimasr.pipeline import load_pipeline, run_pipeline

    train = getattr(args, "train_teacher", False)
    experiment = args.experiment
    if train and experiment is None:  # its teacher folder is another stage's than the shipped copy
        experiment = f"{load_pipeline(_pipeline_recipe(args), args.overrides)[0]}_trained_teacher"
    return run_pipeline(_pipeline_recipe(args), args.overrides, experiment=experiment, train_models=train)


def _lm(args: argparse.Namespace) -> dict:
    from slimasr.data.manifests import read_split, split_path
    from slimasr.decode import build_ngram_lm
    from slimasr.text import normalize_text

    texts = (normalize_text(s.text or "") for c in read_split(args.data, args.split) for s in c.supervisions)
    model = build_ngram_lm(texts, args.out, order=args.order, source=split_path(args.data, args.split))
    return {"lm": args.out, "order": args.order, **{f"{n + 1}-grams": len(g) for n, g in enumerate(model.ngrams)}}


def _average(args: argparse.Namespace) -> dict:
    from slimasr.train.average import average_models

    return average_models(args.models, args.out, overwrite=args.overwrite)


def _transcribe(args: argparse.Namespace) -> dict:
    from slimasr.data.audio import load_audio
    from slimasr.decode import DecodeConfig
    from slimasr.recognize import load_recognizer

    from slimasr.errors import ConfigError

    if args.stream or args.mic:
        from slimasr.streaming.console import transcribe_stream

        return transcribe_stream(args.model, args.audio, args.chunk_ms, mic=args.mic, lm=args.lm)
    if not args.audio or args.chunk_ms is not None:
        raise ConfigError("--chunk-ms needs --stream" if args.audio else "transcribe needs audio files")
    recognizer = load_recognizer(args.model, DecodeConfig(method="beam", lm_path=args.lm) if args.lm else None)
    for path in args.audio:
        print(f"{path}\t{recognizer.transcribe(load_audio(path))}")
    return None


def _export_config(args: argparse.Namespace) -> Any:
    from slimasr.config import load_config
    from slimasr.export import ExportConfig

    overrides = ["int8=true"] if args.int8 else []
    for key, value in (("opset", args.opset), ("max_wer_increase", args.max_wer_increase),
                       ("wer_manifest", args.calib)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(ExportConfig, None, [*overrides, *args.overrides])


def _export(args: argparse.Namespace) -> dict:
    from slimasr.export import export_model

    info = export_model(args.model, args.out, _export_config(args), overwrite=args.overwrite)
    return {"bundle": args.out, "int8": info["files"]["model_int8"] or "no", **info["results"]}


class IntermixedParser(argparse.ArgumentParser):
    """Options and positional arguments in any order (``run R --experiment D key=value``).

    argparse parses a verb's arguments intermixed only when asked (``parse_intermixed_args``),
    and cannot intermix a parser that has sub-commands or a REMAINDER argument; so a parser with
    those parses as usual and hands the rest to its verb's parser, which parses intermixed."""

    _intermixing = False  # inside parse_known_intermixed_args, which calls parse_known_args

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse's own
        if self._intermixing or not self._can_intermix():
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def _can_intermix(self) -> bool:
        return all(a.nargs not in (argparse.PARSER, argparse.REMAINDER) for a in self._actions)


def _verb(verbs: Any, name: str, help_text: str, *examples: str) -> argparse.ArgumentParser:
    """A verb's parser; its --help ends with the example command lines (tests/test_docs.py
    parses and checks every one)."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    return verbs.add_parser(name, help=help_text, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_regularize(parser: argparse.ArgumentParser, when: str = "") -> None:
    """--regularize and --reg-strength: the recipe's sparsity.regularize (docs/pruning.md)."""
    parser.add_argument("--regularize", choices=["l1", "group-lasso", "slimming"],
                        help=f"{when}a penalty driving weights (l1), whole units (group-lasso) or norm "
                             "scales (slimming) to exactly zero")
    parser.add_argument("--reg-strength", type=float,
                        help="its strength lambda: each step shrinks by lr x lambda (decoupled)")


def _add_overrides(parser: argparse.ArgumentParser, help_text: str) -> None:
    # default=[]: argparse otherwise calls an empty "*" positional missing in its error messages
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = IntermixedParser(
        prog="slimasr",
        description="Make speech recognizers small and fast: distillation and structured pruning, measured.",
    )
    parser.add_argument("--version", action="version", version=f"slimasr {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    _corpus_parser(verbs)
    _train_parser(verbs)
    _distill_parser(verbs)
    _prune_parser(verbs)
    _evaluate_parser(verbs)
    _report_parser(verbs)
    _run_parser(verbs)
    _lm_parser(verbs)
    _transcribe_parser(verbs)
    _export_parser(verbs)
    _average_parser(verbs)
    return parser


def _corpus_parser(verbs: Any) -> None:
    """The corpus verb and its actions (synth, import)."""
    corpus = verbs.add_parser("corpus", help="build or import a speech corpus (lhotse manifests)")
    corpus_verbs = corpus.add_subparsers(dest="corpus_verb", metavar="ACTION")
    corpus_verbs.required = True

    synth = _verb(corpus_verbs, "synth", "synthesize the embedded smart-home corpus (eSpeak NG, Flite, Festival)",
                  "slimasr corpus synth --out data/smarthome",
                  "slimasr corpus synth --out data/noisy --hours 0.5 --seed 1 snr_min_db=0 clean_share=0.1")
    synth.add_argument("--out", required=True, help="output data directory")
    synth.add_argument("--hours", type=float, default=None, help="hours of training audio (default 1.5)")
    synth.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    synth.add_argument("--workers", dest="num_workers", type=int, default=None,
                       help="synthesis processes (default 2)")
    synth.add_argument("--config", default=None, help="YAML/JSON file with SynthConfig fields")
    synth.add_argument("--overwrite", action="store_true", help="replace a complete corpus in --out")
    synth.add_argument("--unlabelled", action="store_true",
                       help="only an unlabelled split (train voices, no texts) for distill --unlabelled")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_overrides(synth, "SynthConfig fields (slimasr/data/synth.py), e.g. snr_min_db=5 snr_max_db=20")
    synth.set_defaults(func=_corpus_synth, resolve=_synth_config)

    imp = _verb(corpus_verbs, "import", "turn a local corpus into lhotse manifests",
                "slimasr corpus import librispeech /path/to/LibriSpeech --out data/librispeech",
                "slimasr corpus import jsonl /path/to/train.jsonl --out data/mine")
    imp.add_argument("format", choices=["librispeech", "timit", "jsonl"], help="layout of SRC")
    imp.add_argument("src", help="corpus folder (librispeech, timit) or manifest file (jsonl)")
    imp.add_argument("--out", required=True, help="output data directory")
    imp.add_argument("--split", default="train", help="split name for a jsonl manifest (default train)")
    imp.add_argument("--overwrite", action="store_true", help="replace a complete data directory in --out")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=_corpus_import)


def _train_parser(verbs: Any) -> None:
    """The train verb."""
    train = _verb(verbs, "train", "train a CTC model (teacher or baseline)",
                  "slimasr train --config recipes/train_crnn_teacher.yaml --data data/smarthome "
                  "--out exp/teacher train.epochs=20")
    train.add_argument("--config", required=True, help="training recipe YAML (recipes/train_*.yaml)")
    train.add_argument("--data", required=True, help="data directory (corpus synth / corpus import)")
    train.add_argument("--out", required=True, help="model directory to write")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last")
    train.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_regularize(train)
    _add_overrides(train, "recipe overrides, e.g. train.epochs=5")
    train.set_defaults(func=_train, resolve=_train_recipe)


def _distill_parser(verbs: Any) -> None:
    """The distill verb."""
    dist = _verb(verbs, "distill", "knowledge distillation from a teacher into a small student",
                 "slimasr distill --teacher exp/teacher --config recipes/distill_crnn_student.yaml "
                 "--data data/smarthome --out exp/student",
                 "slimasr distill --teacher exp/teacher --student crnn_student --data data/smarthome "
                 "--out exp/s2 loss.kd_weight=0.5")
    dist.add_argument("--teacher", required=True, action="append",
                      help="teacher model directory (slimasr, or a local HF Wav2Vec2/HuBERT CTC "
                           "folder); repeat for an ensemble of slimasr teachers (same tokenizer)")
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
    dist.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_regularize(dist)
    _add_overrides(dist, "recipe overrides, e.g. loss.kd_weight=0.5 loss.temperature=2")
    dist.set_defaults(func=_distill, resolve=_distill_recipe)


def _prune_parser(verbs: Any) -> None:
    """The prune verb."""
    prune = _verb(verbs, "prune", "structured pruning (channels, units, heads) or unstructured (weights) + fine-tuning",
                  "slimasr prune --model exp/teacher --data data/smarthome --out exp/pruned "
                  "--criterion taylor --target-macs 0.5 --finetune-epochs 4 --distill",
                  "slimasr prune --model exp/teacher --data data/smarthome --out exp/sparse "
                  "--method unstructured --criterion magnitude --sparsity 0.8 --finetune-epochs 4 --distill",
                  "slimasr prune --model exp/teacher --data data/smarthome --out exp/pruned "
                  "--criterion learned --target-macs 0.5 --resume")
    prune.add_argument("--model", required=True, help="model directory to prune")
    prune.add_argument("--method", choices=["structured", "unstructured"],
                       help="remove units: a dense, smaller model (default); or zero single weights "
                            "(same shapes, saved compactly, fine-tuned with the mask kept)")
    prune.add_argument("--criterion", default=None,
                       choices=["magnitude", "taylor", "activation", "apoz", "sensitivity", "random", "gradient",
                                "learned"],
                       help="how units are scored (default taylor; learned: hard-concrete masks trained with "
                            "KD under the target); unstructured: magnitude (default) "
                            "or gradient (|w * dL/dw| on calibration audio)")
    prune.add_argument("--sparsity", type=float,
                       help="unstructured: share of the weights set to zero, e.g. 0.8 (default 0.8)")
    prune.add_argument("--gradual", action="store_true",
                       help="unstructured: reach --sparsity during fine-tuning (cubic schedule) instead of at once")
    prune.add_argument("--remove-below", type=float,
                       help="structured, instead of a target: remove every unit whose weights' L2 norm is at "
                            "most this (after group-lasso training: 0 removes the units it emptied)")
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
    prune.add_argument("--config", default=None,
                       help="YAML/JSON file of PruneConfig fields (slimasr/prune/run.py)")
    prune.add_argument("--data", required=True, help="data directory (train/dev splits)")
    prune.add_argument("--out", required=True, help="pruned model directory to write")
    prune.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    prune.add_argument("--resume", action="store_true",
                       help="continue the unfinished (structured) prune run in OUT with the same settings: "
                            "completed steps are kept, mask training and fine-tuning resume from checkpoints")
    prune.add_argument("--quiet", action="store_true", help="no progress output")
    _add_regularize(prune, "during fine-tuning: ")
    _add_overrides(prune, "PruneConfig overrides, e.g. calibration_cuts=128")
    prune.set_defaults(func=_prune, resolve=_prune_config)


def _evaluate_parser(verbs: Any) -> None:
    """The evaluate verb."""
    ev = _verb(verbs, "evaluate", "WER, CER, params, MACs, latency and RTF of a model",
               "slimasr evaluate --model exp/teacher --data data/smarthome/test_cuts.jsonl.gz "
               "--lm exp/lm3.arpa --json exp/teacher_test.json",
               "slimasr evaluate --model exp/teacher_onnx/model.int8.onnx "
               "--data data/smarthome/test_cuts.jsonl.gz")
    ev.add_argument("--model", required=True,
                    help="model directory, or a bundle from slimasr export (runs on onnxruntime; "
                         "BUNDLE/model.int8.onnx: its int8 graph)")
    ev.add_argument("--data", required=True, help="lhotse cuts manifest or NeMo-style JSONL manifest")
    ev.add_argument("--json", default=None,
                    help="also write the metrics to this file (the only copy when the model "
                         "folder is read-only)")
    ev.add_argument("--beam", action="store_true", help="prefix beam search instead of greedy")
    ev.add_argument("--lm", default=None, help="ARPA n-gram LM for beam search (slimasr lm)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_overrides(ev, "EvalConfig overrides, e.g. decode.beam.alpha=0.8")
    ev.set_defaults(func=_evaluate, resolve=_eval_config)


def _report_parser(verbs: Any) -> None:
    """The report verb."""
    rep = _verb(verbs, "report", "comparison table and plot of several evaluated models",
                "slimasr report exp/teacher exp/student exp/pruned --out exp/report",
                "slimasr report exp/teacher exp/teacher_onnx --out exp/deploy_report")
    rep.add_argument("models", nargs="+",
                     help="model directories or bundles (a row per evaluated graph); the first is the reference")
    rep.add_argument("--out", default="report", help="output prefix: writes OUT.md, OUT.json, OUT.png")
    rep.set_defaults(func=_report)


def _run_parser(verbs: Any) -> None:
    """The run and demo verbs (both run a pipeline recipe)."""
    run = _verb(verbs, "run", "run a pipeline recipe; finished stages are skipped",
                "slimasr run recipes/demo.yaml --experiment exp/demo2")
    run.add_argument("recipe", help="pipeline recipe YAML (or a bundled name: demo)")
    run.add_argument("--experiment", default=None, help="experiment folder (default: the recipe's)")
    _add_overrides(run, "recipe overrides (its keys: experiment, stages)")
    run.set_defaults(func=_run, resolve=_pipeline)

    demo = _verb(verbs, "demo", "the bundled recipe on the embedded corpus: the shipped teacher, a "
                 "distilled streaming student, a pruned teacher, int8 bundles, sherpa-onnx, "
                 "streaming, report", "slimasr demo", "slimasr demo --quick --experiment exp/quick")
    demo.add_argument("--quick", action="store_true", help="a tiny version (seconds; a smoke test)")
    demo.add_argument("--train-teacher", action="store_true",
                      help="train the teacher from scratch instead of using the shipped one (the "
                           "benchmark's recipe, 36 epochs: 48 min on one thread; default experiment "
                           "exp/demo_trained_teacher)")
    demo.add_argument("--experiment", default=None, help="experiment folder (default exp/demo)")
    _add_overrides(demo, "recipe overrides (its keys: experiment, stages)")
    demo.set_defaults(func=_run, resolve=_pipeline)


def _lm_parser(verbs: Any) -> None:
    """The lm verb."""
    lm = _verb(verbs, "lm", "build a word n-gram LM (ARPA) from a corpus's training text",
               "slimasr lm --data data/smarthome --out exp/lm3.arpa --order 3")
    lm.add_argument("--data", required=True, help="data directory")
    lm.add_argument("--out", required=True, help="ARPA file to write")
    lm.add_argument("--split", default="train", help="split whose transcripts to use (default train)")
    lm.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    lm.set_defaults(func=_lm)


def _average_parser(verbs: Any) -> None:
    """The average verb."""
    av = _verb(verbs, "average",
               "one model whose weights are the mean of several checkpoints (one shape, one front end)",
               "slimasr average --out exp/student_avg exp/student/checkpoints/epoch-*",
               "slimasr average --out exp/student_avg2 exp/student exp/student_more")
    av.add_argument("models", nargs="+", metavar="MODEL",
                    help="model folders of one shape and front end (train.keep_epochs=N keeps the last N epochs)")
    av.add_argument("--out", required=True, help="model folder to write")
    av.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    av.set_defaults(func=_average)


def _transcribe_parser(verbs: Any) -> None:
    """The transcribe verb."""
    tr = _verb(verbs, "transcribe", "recognize audio files with a model",
               "slimasr transcribe --model exp/teacher some.wav other.flac --lm exp/lm3.arpa")
    tr.add_argument("--model", required=True,
                    help="model directory, or a bundle from slimasr export (runs on onnxruntime)")
    tr.add_argument("audio", nargs="*", help="audio files (any rate; resampled to 16 kHz)")
    tr.add_argument("--lm", default=None, help="ARPA n-gram LM: beam search with it")
    tr.add_argument("--stream", action="store_true",
                    help="stream chunk by chunk through a causal model, printing the partial text (docs/streaming.md)")
    tr.add_argument("--chunk-ms", type=float, default=None,
                    help="with --stream: audio per model call in ms (default 160)")
    tr.add_argument("--mic", action="store_true",
                    help="stream the microphone until Ctrl-C (needs sounddevice: pip install 'slimasr[mic]')")
    tr.set_defaults(func=_transcribe)


def _export_parser(verbs: Any) -> None:
    """The export verb."""
    exp = _verb(verbs, "export", "ONNX bundle (optionally int8) for onnxruntime and sherpa-onnx, parity-checked",
                "slimasr export --model exp/teacher --out exp/teacher_onnx --int8")
    exp.add_argument("--model", required=True, help="model directory to export")
    exp.add_argument("--out", required=True, help="bundle folder to write (docs/export.md)")
    exp.add_argument("--format", choices=["onnx"], default="onnx", help="bundle format (onnx, the only one)")
    exp.add_argument("--int8", action="store_true",
                     help="also write model.int8.onnx; refused when dev WER rises more than --max-wer-increase")
    exp.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    exp.add_argument("--max-wer-increase", type=float, default=None,
                     help="absolute WER points int8 may add over fp32 (default 0.5)")
    exp.add_argument("--calib", default=None,
                     help="cuts manifest to score WER on (default: the dev split of the model's training data)")
    exp.add_argument("--overwrite", action="store_true", help="replace an earlier bundle in --out")
    _add_overrides(exp, "ExportConfig overrides, e.g. int8_per_channel=true")
    exp.set_defaults(func=_export, resolve=_export_config)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        _resolve_shipped(args)
        result = args.func(args)
    except (SlimasrError, OSError) as e:  # OSError: a read-only or full disk, a name too long, ...
        print(error_line(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if isinstance(result, dict):
        print_summary(result)
        return int(result.get("exit_code", 0))  # e.g. 3: a pipeline model learned nothing
    return 0


def _resolve_shipped(args: argparse.Namespace) -> None:
    """Every verb's ``model`` and ``teacher`` (one value or a list): a shipped model's name
    (``smarthome-crnn``) becomes its folder, unless a path of that name exists."""
    from slimasr.shipped import resolve_model

    for name in ("model", "teacher"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, resolve_model(value))
        elif isinstance(value, list):
            setattr(args, name, [resolve_model(v) if isinstance(v, str) else v for v in value])


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
