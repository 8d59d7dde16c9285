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
    "train": "train a CTC model (teacher or baseline)",
    "distill": "knowledge distillation from a teacher into a small student",
    "prune": "structured / unstructured pruning with fine-tuning",
    "evaluate": "WER, CER, params, MACs, latency and RTF of a model",
    "export": "export to ONNX (optionally int8) with a parity check",
    "transcribe": "recognize audio files, or stream them chunk by chunk",
    "run": "run a whole pipeline recipe (YAML)",
    "demo": "the bundled recipe on the embedded corpus",
    "report": "comparison table and plots of several models",
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
