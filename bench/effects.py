"""Which acoustic conditions move the numbers? Issue 16's effect ablation: teachers trained on
corpora that differ only in the shares of the acoustic effects (``SynthConfig``: room, far
talker, microphone, telephone, codec), scored greedily on the same evaluation sets, overall and
broken down by the condition each test utterance was made with (``cut.custom``).

    slimasr corpus synth --out data/fx_none reverb_share=0 far_field_share=0 microphone_share=0 \
        telephone_share=0 codec_share=0       # the same sentences, voices and noise, no effects
    slimasr train --config recipes/train_crnn_teacher.yaml --data data/fx_none --out exp/fx_none ...
    python bench/effects.py run --model all=exp/fx_all --model none=exp/fx_none \
        --set test=data/default/test_cuts.jsonl.gz --set clean_test=data/fx_none/test_cuts.jsonl.gz \
        --set unseen_synth=data/default/test_unseen_synth_cuts.jsonl.gz \
        --set real_speech=data/real_speech/test_cuts.jsonl.gz
    python bench/effects.py table

Setting a share to 0 leaves every other draw of the corpus as it was (the plan draws the
condition whatever its share), so the corpora hold the same utterances and differ only in the
effects. Results: bench/results/effects/<model>.json, effects.md and effects.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from slimasr.decode import DecodeConfig, make_decoder
from slimasr.errors import run_script
from slimasr.evaluate.metrics import ErrorRateStats
from slimasr.evaluate.run import network_outputs
from slimasr.evaluate.runners import TorchRunner
from slimasr.io import read_json, write_json_atomic, write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import name_pairs, rates_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "effects"
CONDITIONS = ("room", "microphone", "channel", "noise")  # cut.custom fields broken down


def score_set(runner: TorchRunner, manifest: str) -> dict:
    """Greedy WER/CER on ``manifest``, overall and per value of each condition in ``CONDITIONS``."""
    from slimasr.data.manifests import load_cuts, transcript

    decoder = make_decoder(runner.frontend.tokenizer.tokens, DecodeConfig(), word_sep=runner.word_sep)
    stats = ErrorRateStats(normalize=runner.frontend.normalize)
    condition_of: dict[str, dict] = {}
    for cuts, log_probs, lens in network_outputs(runner.model, runner.frontend, load_cuts(manifest),
                                                 max_duration=60.0, device=runner.device):
        stats.append([c.id for c in cuts], decoder.decode_batch(log_probs, lens),
                     [transcript(c) for c in cuts])
        condition_of.update({c.id: {k: (c.custom or {}).get(k) for k in CONDITIONS} for c in cuts})
    return {"manifest": manifest, **_rates(stats), "by_condition": _by_condition(stats, condition_of)}


def _rates(stats: ErrorRateStats) -> dict:
    summary = stats.summarize()
    return {k: summary[k] for k in ("wer", "cer", "num_utterances")}


def _by_condition(stats: ErrorRateStats, condition_of: dict[str, dict]) -> dict:
    """{condition: {value: rates}} for the conditions recorded on this set's cuts."""
    out: dict[str, dict] = {}
    for name in CONDITIONS:
        values = sorted({str(condition_of[s.id][name]) for s in stats.scores
                         if condition_of[s.id][name] is not None})
        for value in values:
            subset = ErrorRateStats(normalize=None)
            subset.scores = [s for s in stats.scores if str(condition_of[s.id][name]) == value]
            out.setdefault(name, {})[value] = _rates(subset)
    return out


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    sets = name_pairs(args.set)
    for name, model_dir in name_pairs(args.model).items():
        runner = TorchRunner(model_dir, torch.device("cpu"))
        record = {"model": name, "model_dir": model_dir,
                  "training": _training(Path(model_dir)), "sets": {}}
        for set_name, manifest in sets.items():
            record["sets"][set_name] = r = score_set(runner, manifest)
            print(f"{name} on {set_name}: WER {r['wer']:.2f}%  CER {r['cer']:.2f}%", flush=True)
        write_json_atomic(out / f"{name}.json", record)
    table(args)


def _training(model_dir: Path) -> dict:
    """How long the model trained and its dev WER, best and last (its training.json)."""
    t = read_json(model_dir / "training.json") if (model_dir / "training.json").exists() else {}
    keep = ("epochs", "steps", "train_seconds", "dev_wer", "best_epoch", "last_dev_wer")
    return {k: t.get(k) for k in keep if k in t}


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows = [read_json(p) for p in sorted(out.glob("*.json"))]
    sets = list(dict.fromkeys(s for r in rows for s in r["sets"]))
    lines = rates_table(rows)
    lines += ["", *_condition_table(rows, sets[0])] if rows else []
    write_text_atomic(out / "effects.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    if rows:
        _plot(rows, sets, out / "effects.png")


def _condition_table(rows: list[dict], set_name: str) -> list[str]:
    """WER per condition value on ``set_name`` (the first set): which conditions cost whom."""
    groups = [(c, v) for c in CONDITIONS
              for v in sorted({v for r in rows for v in r["sets"][set_name]["by_condition"].get(c, {})})]
    lines = [f"WER on {set_name} by the condition of the utterance (utterances):", "",
             "| model | " + " | ".join(f"{c}={v}" for c, v in groups) + " |",
             "|---" * (len(groups) + 1) + "|"]
    for r in rows:
        by = r["sets"][set_name]["by_condition"]
        cells = [f"{by[c][v]['wer']:.1f} ({by[c][v]['num_utterances']})" if v in by.get(c, {}) else "–"
                 for c, v in groups]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return lines


def _plot(rows: list[dict], sets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(max(3.2 * len(sets), 7.0), 3.6), squeeze=False)
    for ax, s in zip(axes[0], sets):
        scored = [r for r in rows if s in r["sets"]]
        metric = "cer" if s.startswith("real") else "wer"
        ax.barh([r["model"] for r in scored], [r["sets"][s][metric] for r in scored], color="tab:blue")
        ax.set_title(f"{s} ({metric.upper()} %)", fontsize=9)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    fig.suptitle("Teachers trained with and without each acoustic effect (greedy)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="score models on sets, overall and per condition")
    r.add_argument("--model", action="append", required=True, help="NAME=MODEL_DIR (repeatable)")
    r.add_argument("--set", action="append", required=True, help="NAME=MANIFEST (repeatable)")
    r.add_argument("--out", default=str(RESULTS), help="results folder")
    r.set_defaults(func=run)
    t = sub.add_parser("table", help="the table and plot from the saved results")
    t.add_argument("--out", default=str(RESULTS), help="results folder")
    t.set_defaults(func=table)
    args = p.parse_args()
    run_script(lambda: args.func(args))


if __name__ == "__main__":
    main()
