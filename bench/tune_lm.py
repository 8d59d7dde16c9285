"""Choose the LM fusion weights (alpha, beta) of beam search on a dev set.

    python bench/tune_lm.py --model exp/demo/teacher --data exp/demo/data --lm exp/demo/lm_3gram.arpa

The model runs once over the dev split; every (alpha, beta) pair then re-decodes the stored
log-probabilities. Writes bench/results/lm_grid_{model}.json and prints the grid (dev WER %).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from slimasr.data.manifests import read_split
from slimasr.decode import BeamConfig, DecodeConfig, corpus_vocabulary, make_decoder
from slimasr.errors import run_script
from slimasr.evaluate.metrics import ErrorRateStats
from slimasr.evaluate.run import recognize
from slimasr.frontend import Frontend
from slimasr.io import write_json_atomic
from slimasr.models import load_model

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


class Keep:
    """A 'decoder' that keeps the log-probabilities so they can be decoded many times."""

    def __init__(self) -> None:
        self.outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def decode_batch(self, log_probs: torch.Tensor, lens: torch.Tensor) -> list[str]:
        self.outputs.append((log_probs, lens))
        return [""] * len(lens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--lm", type=Path, required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.8, 1.2])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 1.5, 3.0])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, frontend = load_model(args.model), Frontend.load(args.model)
    cuts = read_split(args.data, args.split)
    keep = Keep()
    batches = [[c for c in batch] for batch, _ in recognize(model, frontend, cuts, keep, 60.0, torch.device("cpu"))]
    lexicon = corpus_vocabulary(frontend.normalize(s.text or "") for c in read_split(args.data, "train")
                                for s in c.supervisions)
    grid = []
    for alpha, beta in itertools.product(args.alphas, args.betas):
        decoder = make_decoder(frontend.tokenizer.tokens, DecodeConfig(
            method="beam", lm_path=str(args.lm), beam=BeamConfig(alpha=alpha, beta=beta)), lexicon=lexicon)
        stats = ErrorRateStats(normalize=frontend.normalize)
        for batch, (log_probs, lens) in zip(batches, keep.outputs):
            stats.append([c.id for c in batch], decoder.decode_batch(log_probs, lens),
                         [c.supervisions[0].text for c in batch])
        grid.append({"alpha": alpha, "beta": beta, "wer": stats.summarize()["wer"]})
        print(f"alpha {alpha:4.2f} beta {beta:4.2f}  dev WER {grid[-1]['wer']:.2f}")
    greedy = make_decoder(frontend.tokenizer.tokens, DecodeConfig())
    stats = ErrorRateStats(normalize=frontend.normalize)
    for batch, (log_probs, lens) in zip(batches, keep.outputs):
        stats.append([c.id for c in batch], greedy.decode_batch(log_probs, lens), [c.supervisions[0].text for c in batch])
    best = min(grid, key=lambda g: g["wer"])
    result = {"model": str(args.model), "split": args.split, "greedy_wer": stats.summarize()["wer"],
              "grid": grid, "best": best}
    write_json_atomic(RESULTS / f"lm_grid_{args.model.name}.json", result)
    print(f"greedy {result['greedy_wer']:.2f}; best {best}")


if __name__ == "__main__":
    run_script(main)
