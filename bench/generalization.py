"""How far do models trained on synthesized speech carry? WER and CER (greedy) of each model on
each evaluation set: unseen voices of the synthesizers it heard, a synthesizer family it never
heard (``test_unseen_synth``), and real recordings (bench/real_speech/).

    python bench/generalization.py run \
        --model espeak_only=exp/teacher --model three_synth=exp/teacher_v2 \
        --set espeak_test=data/smarthome/test_cuts.jsonl.gz \
        --set new_test=data/smarthome_v2/test_cuts.jsonl.gz \
        --set unseen_synth=data/smarthome_v2/test_unseen_synth_cuts.jsonl.gz \
        --set real_speech=data/real_speech/test_cuts.jsonl.gz
    python bench/generalization.py table

Results: bench/results/generalization/<model>.json and generalization.md. The real-speech set is
not the smart-home domain: its CER is the headline there, its WER comes with that note.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimasr.config import from_dict
from slimasr.errors import run_script
from slimasr.evaluate.run import EvalConfig, evaluate_model
from slimasr.io import read_json, write_json_atomic, write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import name_pairs, rates_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "generalization"


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    sets = name_pairs(args.set)
    for name, model_dir in name_pairs(args.model).items():
        record = {"model": name, "model_dir": model_dir, "sets": {}}
        for set_name, manifest in sets.items():
            # json_out: leave the model folder's own metrics.json (its test split) as it is
            r = evaluate_model(model_dir, manifest, from_dict(EvalConfig, {}),
                               json_out=out / "evals" / f"{name}-{set_name}.json", show_progress=False)
            record["sets"][set_name] = {"manifest": manifest, "wer": r["wer"], "cer": r["cer"],
                                        "num_utterances": r["num_utterances"],
                                        "excluded": r.get("excluded")}
            print(f"{name} on {set_name}: WER {r['wer']:.2f}%  CER {r['cer']:.2f}%")
        write_json_atomic(out / f"{name}.json", record)
    table(args)


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    lines = rates_table([read_json(p) for p in sorted(out.glob("*.json"))])
    write_text_atomic(out / "generalization.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    r = verbs.add_parser("run", help="evaluate every model on every set")
    r.add_argument("--model", action="append", required=True, help="NAME=MODEL_DIR (repeatable)")
    r.add_argument("--set", action="append", required=True, help="NAME=MANIFEST (repeatable)")
    r.add_argument("--out", default=str(RESULTS), help="results folder")
    r.set_defaults(func=run)
    t = verbs.add_parser("table", help="rebuild the table from the JSONs")
    t.add_argument("--out", default=str(RESULTS), help="results folder")
    t.set_defaults(func=table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    run_script(main)
