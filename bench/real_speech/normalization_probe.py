"""Does per-utterance feature normalization at test time move a model's real-speech error rates?

    python bench/real_speech/normalization_probe.py --model exp/shipped \
        --cuts data/real_speech/test_cuts.jsonl.gz --first 200

Scores the model greedily three ways on the same utterances: with the global CMVN it was trained
with, with each utterance's own mean in place of the global mean (cepstral mean normalization,
the classic remedy for a fixed channel), and with the utterance's own mean and variance. Prints
WER and CER of each; no training, nothing written.
"""

from __future__ import annotations

import argparse

import jiwer
import torch

from slimasr.data.features import compute_fbank
from slimasr.data.manifests import load_cuts
from slimasr.decode.greedy import GreedyDecoder
from slimasr.frontend import Frontend
from slimasr.models import load_model

STD_FLOOR = 1e-3  # per-utterance std floor (a bin can be constant in a short utterance)


def normalizations(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"global CMVN": (x - mean) / std,
            "utterance mean, global std": (x - x.mean(0)) / std,
            "utterance mean and std": (x - x.mean(0)) / x.std(0).clamp(min=STD_FLOOR)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cuts", required=True, help="a cuts manifest (the real-speech test_cuts.jsonl.gz)")
    ap.add_argument("--first", type=int, default=None, help="score only the first N cuts")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, frontend = load_model(args.model).eval(), Frontend.load(args.model)
    if frontend.cmvn is None:
        raise SystemExit(f"{args.model}: the model has no global CMVN to compare with")
    decoder = GreedyDecoder(frontend.tokenizer.tokens)
    cuts = list(load_cuts(args.cuts))[:args.first]
    refs, hyps = [], {}
    with torch.no_grad():
        for cut in cuts:
            x = compute_fbank(cut.resample(16000).load_audio()[0], frontend.features)
            refs.append(frontend.normalize(cut.supervisions[0].text))
            for name, feats in normalizations(x, frontend.cmvn.mean, frontend.cmvn.std).items():
                log_probs, lens = model(feats[None], torch.tensor([feats.shape[0]]))
                hyps.setdefault(name, []).append(decoder.decode_batch(log_probs, lens)[0])
    for name, h in hyps.items():
        print(f"{name}: WER {100 * jiwer.wer(refs, h):.2f}%  CER {100 * jiwer.cer(refs, h):.2f}%  "
              f"({len(refs)} utterances)")


if __name__ == "__main__":
    main()
