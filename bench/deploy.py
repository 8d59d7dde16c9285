"""Deployment benchmark: each model as PyTorch fp32, ONNX fp32 and ONNX int8 — WER through slimasr
and through sherpa-onnx, bytes on disk, batch-1 latency side by side in one process, RTF.

    python bench/deploy.py run --data data/smarthome --lm exp/lm.arpa \
        --model teacher=exp/teacher --model causal_student=exp/causal_student
    python bench/deploy.py run --data data/smarthome --lm exp/lm.arpa --model pruned3=exp/pruned3 \
        --reference teacher=exp/teacher    # also: each variant against the teacher's PyTorch model
    python bench/deploy.py table            # rebuild bench/results/deploy/deploy.md from the JSONs

Per model: ``slimasr export --int8`` into ``OUT/bundles/NAME`` (its WER gate scores the dev split),
then the test split through ``evaluate`` for every variant (greedy, and beam + LM when ``--lm``),
the same test split through sherpa-onnx's offline CTC recognizer (greedy) for both ONNX graphs,
and latency on 3 s of input at batch 1 with one thread: the three variants timed in turn within
each of ``--rounds`` rounds (so all see the same machine conditions); the median of the rounds'
p50s is reported with the range. ``--reference NAME=DIR`` (the teacher) is timed as PyTorch fp32
within the same rounds, so "how much faster than the teacher" compares timings taken under the
same conditions; its WER comes from ``OUT/NAME.json`` (run it as a ``--model`` once). Results:
``OUT/NAME.json`` and ``OUT/deploy.md`` (with the table against the reference).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from slimasr.config import from_dict
from slimasr.data.manifests import read_split
from slimasr.errors import run_script
from slimasr.evaluate.cost import measure_latency
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.export.run import ExportConfig, export_model
from slimasr.io import read_json, write_json_atomic, write_text_atomic
from slimasr.models import load_model
from slimasr.runtime import open_session, read_bundle
from slimasr.runtime.recognizer import measure_session_latency

RESULTS = Path(__file__).resolve().parent / "results" / "deploy"
LATENCY_SECONDS = 3.0  # seconds of input per timed call
ROUNDS = 5  # latency rounds (each: every variant timed in turn)
VARIANTS = ("pytorch", "onnx_fp32", "onnx_int8")


def export(name: str, model_dir: Path, out: Path) -> Path:
    bundle = out / "bundles" / name
    if not (bundle / "bundle.json").is_file():
        export_model(model_dir, bundle, from_dict(ExportConfig, {"int8": True}))
    return bundle


def evaluate_variants(model_dir: Path, bundle: Path, data: Path, lm: Path | None) -> dict:
    """WER (greedy; beam + LM with ``lm``), model bytes and parameters of every variant."""
    test = data / "test_cuts.jsonl.gz"
    paths = {"pytorch": model_dir, "onnx_fp32": bundle / "model.onnx",
             "onnx_int8": bundle / "model.int8.onnx"}
    results = {}
    for variant, path in paths.items():
        greedy = evaluate_model(path, test, from_dict(EvalConfig, {}), show_progress=False)
        row = {"wer_greedy": greedy["wer"], "cer_greedy": greedy["cer"],
               "model_bytes": greedy["model_bytes"], "params": greedy["params"],
               "num_utterances": greedy["num_utterances"]}
        if lm is not None:
            beam = evaluate_model(path, test, from_dict(EvalConfig, {
                "decode": {"method": "beam", "lm_path": str(lm)},
                "lexicon_reference": str(data / "train_cuts.jsonl.gz")}), show_progress=False)
            row["wer_lm"] = beam["wer"]
        results[variant] = row
    return results


def sherpa_wer(bundle: Path, data: Path, int8: bool) -> dict:
    """Greedy WER of sherpa-onnx's offline CTC recognizer on the test split, scored like evaluate
    (``slimasr.pipeline.deploy.sherpa_offline_wer``, as the demo's sherpa stage measures it)."""
    from slimasr.pipeline.deploy import sherpa_offline_wer

    result = sherpa_offline_wer(bundle, read_split(data, "test"), int8)
    return {"wer_greedy": result["wer"], "cer_greedy": result["cer"]}


def side_by_side_latency(model_dir: Path, bundle: Path, rounds: int, reference: Path | None = None) -> dict:
    """Each variant's batch-1 p50 per round, the variants (and the ``reference`` model's PyTorch
    fp32, as "reference") timed in turn within every round."""
    torch.set_num_threads(1)
    model = load_model(model_dir).eval()
    feat_dim = read_bundle(bundle).features.num_mel_bins
    sessions = {"onnx_fp32": open_session(bundle / "model.onnx", num_threads=1),
                "onnx_int8": open_session(bundle / "model.int8.onnx", num_threads=1)}
    torch_models = {"pytorch": model, **({"reference": load_model(reference).eval()} if reference else {})}
    p50s: dict[str, list[float]] = {v: [] for v in (*VARIANTS, *torch_models)}
    for _ in range(rounds):
        for variant, net in torch_models.items():
            p50s[variant].append(measure_latency(net, LATENCY_SECONDS, 1)["latency_ms_p50"])
        for variant, session in sessions.items():
            p50s[variant].append(measure_session_latency(session, feat_dim, LATENCY_SECONDS)["latency_ms_p50"])
    return {v: {"latency_ms_p50": statistics.median(t), "range": [min(t), max(t)],
                "rtf": statistics.median(t) / 1000.0 / LATENCY_SECONDS} for v, t in p50s.items()}


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    ref_name, _, ref_path = (args.reference or "").partition("=")
    reference = Path(ref_path) if ref_path else None
    for spec in args.model:
        name, _, path = spec.partition("=")
        model_dir = Path(path)
        start = time.perf_counter()
        bundle = export(name, model_dir, out)
        record = {"name": name, "model_dir": str(model_dir), "bundle": str(bundle),
                  "data": str(args.data), "lm": args.lm, "rounds": args.rounds,
                  "slimasr": evaluate_variants(model_dir, bundle, Path(args.data),
                                               Path(args.lm) if args.lm else None),
                  "sherpa_onnx": {"onnx_fp32": sherpa_wer(bundle, Path(args.data), int8=False),
                                  "onnx_int8": sherpa_wer(bundle, Path(args.data), int8=True)},
                  "latency": side_by_side_latency(model_dir, bundle, args.rounds, reference),
                  "reference": reference and {"name": ref_name, "model_dir": str(reference),
                                              "bytes": (reference / "model.safetensors").stat().st_size},
                  "export": read_json(bundle / "bundle.json").get("results", {})}
        record["seconds"] = time.perf_counter() - start
        write_json_atomic(out / f"{name}.json", record)
        print(f"{name}: done in {record['seconds']:.0f} s")
    table(args)


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows = [read_json(p) for p in sorted(out.glob("*.json"))]
    lines = ["| model | variant | WER greedy | WER +LM | sherpa-onnx WER greedy | MB on disk | "
             "latency p50 ms (range) | RTF | speed-up vs PyTorch |", "|---" * 9 + "|"]
    for r in rows:
        torch_ms = r["latency"]["pytorch"]["latency_ms_p50"]
        for variant in VARIANTS:
            s, lat = r["slimasr"][variant], r["latency"][variant]
            sherpa = r["sherpa_onnx"].get(variant, {}).get("wer_greedy")
            lm = f"{s['wer_lm']:.2f}%" if "wer_lm" in s else "–"
            lines.append(
                f"| {r['name']} | {variant} | {s['wer_greedy']:.2f}% | {lm} | "
                f"{f'{sherpa:.2f}%' if sherpa is not None else '–'} | {s['model_bytes'] / 1e6:.2f} | "
                f"{lat['latency_ms_p50']:.1f} ({lat['range'][0]:.1f}–{lat['range'][1]:.1f}) | "
                f"{lat['rtf']:.4f} | {torch_ms / lat['latency_ms_p50']:.2f}x |")
    lines += against_reference(rows)
    write_text_atomic(out / "deploy.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def against_reference(rows: list[dict]) -> list[str]:
    """Every variant of the models timed beside a reference (the teacher): speed-up over the
    reference's PyTorch fp32 in the same rounds, how many times smaller on disk, WER (+LM) above
    the reference's PyTorch WER (+LM) from its own JSON."""
    by_name = {r["name"]: r for r in rows}
    lines = []
    for r in rows:
        ref = r.get("reference")
        if not ref or ref["name"] not in by_name or "reference" not in r["latency"]:
            continue
        if not lines:
            lines = ["", f"Against {ref['name']}'s PyTorch fp32 (timed in the same rounds):", "",
                     "| model | variant | WER +LM (vs reference) | times smaller on disk | speed-up |",
                     "|---" * 5 + "|"]
        ref_lm = by_name[ref["name"]]["slimasr"]["pytorch"].get("wer_lm")
        ref_ms = r["latency"]["reference"]["latency_ms_p50"]
        for variant in VARIANTS:
            s, lat = r["slimasr"][variant], r["latency"][variant]
            delta = f" ({s['wer_lm'] - ref_lm:+.2f})" if ref_lm is not None and "wer_lm" in s else ""
            lm = f"{s['wer_lm']:.2f}%{delta}" if "wer_lm" in s else "–"
            lines.append(f"| {r['name']} | {variant} | {lm} | {ref['bytes'] / s['model_bytes']:.1f}x | "
                         f"{ref_ms / lat['latency_ms_p50']:.1f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    r = verbs.add_parser("run", help="export, evaluate and time each model")
    r.add_argument("--model", action="append", required=True, help="NAME=MODEL_DIR (repeatable)")
    r.add_argument("--data", required=True, help="data directory with train/dev/test splits")
    r.add_argument("--lm", default=None, help="ARPA LM for beam search (slimasr lm)")
    r.add_argument("--rounds", type=int, default=ROUNDS, help="latency rounds")
    r.add_argument("--reference", default=None,
                   help="NAME=MODEL_DIR timed as PyTorch fp32 beside every model (the teacher)")
    r.add_argument("--out", default=str(RESULTS), help="results folder")
    r.set_defaults(func=run)
    t = verbs.add_parser("table", help="rebuild the table from the JSONs")
    t.add_argument("--out", default=str(RESULTS), help="results folder")
    t.set_defaults(func=table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    run_script(main)
