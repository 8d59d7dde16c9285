"""Is the real-speech gap the voice or the words? The same transcripts, spoken by synthesizers.

    python bench/real_speech/text_probe.py --model exp/shipped \
        --cuts data/real_speech/test_cuts.jsonl.gz --out bench/results/generalization/text_probe/shipped.json

The real-speech set (the Asterisk prompts) differs from the training corpus twice over: a person
speaks it, and it says telephone-system sentences the smart-home grammar never produces. This
probe holds the words fixed and changes only the voice: each prompt's transcript is spoken again,
clean (no room, noise or channel), by voices the model trained on and by voices it never heard,
and the model is scored greedily on each version and on the recording itself. If the
synthesized prompts score far better than the recording, the gap is the voice (acoustics); if
they score about as badly, it is the words (the model's implicit knowledge of which letters
follow which), and no voice can close it without text beyond the grammar.
Nothing is written except ``--out``; no training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jiwer
import numpy as np
import soxr
import torch

from slimasr.data.manifests import load_cuts
from slimasr.data.synth import SynthConfig, _trim
from slimasr.data.synthesizers import get_synthesizer
from slimasr.data.synthesizers.base import Prosody
from slimasr.decode.greedy import GreedyDecoder
from slimasr.frontend import Frontend
from slimasr.models import load_model

SAMPLE_RATE = 16000
CORPUS = SynthConfig()  # the corpus's trim level and dither
LEAD_S = 0.2  # silence before and after the speech, as a corpus utterance has (0.05-0.5 s)
# (name, family, voice as the family names it, heard in the default corpus's train split?)
VOICES = [
    ("espeak en-us+f1 (train voice)", "espeak", "en-us+f1", True),
    ("espeak en-us+m3 (test voice)", "espeak", "en-us+m3", False),
    ("festival kal_diphone (train voice)", "festival", "kal_diphone", True),
    ("festival slt HTS (test voice)", "festival", "cmu_us_slt_arctic_hts", False),
    ("flite slt (unseen synthesizer)", "flite", "slt", False),
]


def spoken(family: str, voice: str, text: str) -> np.ndarray:
    """``text`` in ``voice``, clean: trimmed, at 16 kHz, padded with silence, dithered."""
    raw, rate = get_synthesizer(family).synthesize(text, voice, Prosody())
    speech = soxr.resample(_trim(raw, CORPUS.trim_level), rate, SAMPLE_RATE).astype(np.float64)
    pad = np.zeros(round(LEAD_S * SAMPLE_RATE))
    audio = np.concatenate([pad, 0.5 * speech / np.max(np.abs(speech)), pad])
    dither = np.random.default_rng(0).normal(0.0, CORPUS.dither_lsb / 32768, len(audio))
    return (audio + dither).astype(np.float32)


class Scorer:
    def __init__(self, model_dir: str):
        self.model, self.frontend = load_model(model_dir).eval(), Frontend.load(model_dir)
        self.decoder = GreedyDecoder(self.frontend.tokenizer.tokens)

    @torch.no_grad()
    def __call__(self, audio: np.ndarray) -> str:
        feats = self.frontend.features_of(audio)
        log_probs, lens = self.model(feats[None], torch.tensor([feats.shape[0]]))
        return self.decoder.decode_batch(log_probs, lens)[0]


def rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    return {"wer": round(100 * jiwer.wer(refs, hyps), 2), "cer": round(100 * jiwer.cer(refs, hyps), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cuts", required=True, help="the real-speech test_cuts.jsonl.gz")
    ap.add_argument("--first", type=int, default=None, help="only the first N cuts")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    score = Scorer(args.model)
    cuts = list(load_cuts(args.cuts))[: args.first]
    refs = [score.frontend.normalize(cut.supervisions[0].text) for cut in cuts]
    real = [score(cut.resample(SAMPLE_RATE).load_audio()[0]) for cut in cuts]
    results = {"recording (one person)": rates(refs, real)}
    print(f"recording: {results['recording (one person)']}", flush=True)
    for name, family, voice, seen in VOICES:
        hyps = [score(spoken(family, voice, ref)) for ref in refs]
        results[name] = rates(refs, hyps) | {"heard_in_training": seen}
        print(f"{name}: {results[name]}", flush=True)
    if args.out:
        summary = {"model": args.model, "cuts": args.cuts, "utterances": len(cuts), "decoding": "greedy",
                   "results": results}
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
