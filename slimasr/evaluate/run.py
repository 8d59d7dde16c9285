"""``slimasr evaluate``: recognize a manifest with a model and measure quality and cost.

    result = evaluate_model("exp/demo/teacher", "exp/demo/data/test_cuts.jsonl.gz")

writes ``MODEL_DIR/metrics.json`` (one flat object with the DESIGN.md keys: ``wer, cer,
sentence_accuracy, num_utterances, params, nonzero_params, macs_per_second_audio, latency_ms_p50,
latency_ms_p90, rtf, model_bytes`` and more) ``MODEL_DIR/eval_utterances.jsonl`` (every
utterance's normalized reference and hypothesis) and ``MODEL_DIR/eval_worst.json`` (the utterances
with the most errors), and returns the flat object.

Intents: when the manifest's supervisions carry an ``intent`` (the embedded corpus does) and
``intent_reference`` names a manifest of labelled training sentences, each hypothesis gets the
intent of the closest training sentence (character edit distance, rapidfuzz) — a simple
nearest-neighbour understanding step that shows whether errors change what the user asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicCutSampler

from slimasr.decode import DecodeConfig, corpus_vocabulary, make_decoder
from slimasr.evaluate.cost import cost_report
from slimasr.evaluate.metrics import ErrorRateStats
from slimasr.frontend import Frontend
from slimasr.io import atomic_path, write_json_atomic
from slimasr.progress import progress_bar
from slimasr.train.prepare import transcript

METRICS_FILE = "metrics.json"
UTTERANCES_FILE = "eval_utterances.jsonl"
WORST_FILE = "eval_worst.json"


@dataclass
class EvalConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # greedy or beam (+ LM)
    max_duration: float = 60.0  # seconds of audio per recognition batch
    max_utterances: int | None = None  # score only the first N utterances (None: all)
    latency_threads: int = 1  # torch threads while timing batch-1 latency (a device's core)
    latency_seconds: float = 3.0  # utterance length for latency, RTF and MACs
    worst: int = 10  # worst utterances listed in the result
    intent_reference: str | None = None  # labelled manifest for intent scoring (None: no intents)
    lexicon_reference: str | None = None  # manifest whose words form the beam-search lexicon
    device: str = "auto"  # "auto" (CUDA when present) or a torch device


def recognize(model: torch.nn.Module, frontend: Frontend, cuts: CutSet, decoder,
              max_duration: float, device: torch.device) -> Iterator[tuple[list, list[str]]]:
    """Yield ``(cuts, hypotheses)`` batch by batch (batches of at most ``max_duration`` s)."""
    sampler = DynamicCutSampler(cuts, max_duration=max_duration, shuffle=False)
    for batch in sampler:
        batch_cuts = list(batch)
        audios = [c.load_audio().reshape(-1) for c in batch_cuts]
        x, x_lens = frontend.batch(audios)
        with torch.inference_mode():
            log_probs, out_lens = model(x.to(device), x_lens.to(device))
        yield batch_cuts, decoder.decode_batch(log_probs.float().cpu(), out_lens.cpu())


def evaluate_model(model_dir: str | Path, manifest: str | Path, config: EvalConfig | None = None,
                   json_out: str | Path | None = None, show_progress: bool = True) -> dict:
    """Recognize ``manifest`` (lhotse cuts or NeMo JSONL) with the model; write and return metrics."""
    from slimasr.data.manifests import load_cuts
    from slimasr.models import load_model
    from slimasr.train.distributed import pick_device

    config = config or EvalConfig()
    model_dir = Path(model_dir)
    device = pick_device(config.device)
    model = load_model(model_dir).to(device).eval()
    frontend = Frontend.load(model_dir)
    cuts = load_cuts(manifest)
    if config.max_utterances is not None:
        cuts = cuts.subset(first=config.max_utterances)
    lexicon = _words_of(config.lexicon_reference, frontend.normalize)
    decoder = make_decoder(frontend.tokenizer.tokens, config.decode, lexicon=lexicon)
    stats = ErrorRateStats(normalize=frontend.normalize,
                           intent_of=_intent_classifier(config.intent_reference, frontend.normalize))
    start, audio_seconds = time.perf_counter(), 0.0
    with progress_bar(transient=True, disable=not show_progress) as bar:
        task = bar.add_task("recognizing", total=_count(cuts) if show_progress else None)
        for batch_cuts, hyps in recognize(model, frontend, cuts, decoder, config.max_duration, device):
            refs = [transcript(c) for c in batch_cuts]
            intents = [_intent_of_cut(c) for c in batch_cuts]
            stats.append([c.id for c in batch_cuts], hyps, refs,
                         intents if any(i is not None for i in intents) else None)
            audio_seconds += sum(c.duration for c in batch_cuts)
            bar.advance(task, len(batch_cuts))
    decode_seconds = time.perf_counter() - start
    result = {
        **stats.summarize(),
        **cost_report(model.cpu(), model_dir, seconds=config.latency_seconds, threads=config.latency_threads),
        "decode": config.decode.method,
        "manifest": str(manifest),
        "audio_hours": audio_seconds / 3600,
        "batch_decode_rtf": decode_seconds / max(audio_seconds, 1e-9),
    }
    _write_utterances(model_dir / UTTERANCES_FILE, stats.utterances())
    write_json_atomic(model_dir / WORST_FILE, stats.worst(config.worst))
    write_json_atomic(model_dir / METRICS_FILE, result)
    if json_out is not None:
        write_json_atomic(json_out, result)
    return result


def _count(cuts: CutSet) -> int | None:
    try:
        return len(cuts)
    except (TypeError, NotImplementedError):
        return None


def _intent_of_cut(cut) -> str | None:
    for s in cut.supervisions:
        if s.custom and s.custom.get("intent"):
            return s.custom["intent"]
    return None


def _words_of(manifest: str | None, normalize: Callable[[str], str]) -> list[str] | None:
    if manifest is None:
        return None
    from slimasr.data.manifests import load_cuts

    return corpus_vocabulary(normalize(s.text or "") for c in load_cuts(manifest) for s in c.supervisions)


def _intent_classifier(manifest: str | None, normalize: Callable[[str], str]):
    """Nearest labelled sentence's intent (rapidfuzz edit distance), or None without a reference."""
    if manifest is None:
        return None
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    from slimasr.data.manifests import load_cuts

    labelled: dict[str, str] = {}
    for cut in load_cuts(manifest):
        intent = _intent_of_cut(cut)
        if intent is not None:
            labelled.setdefault(normalize(transcript(cut)), intent)
    sentences = list(labelled)

    def intent_of(text: str) -> str | None:
        if not sentences:
            return None
        best = process.extractOne(text, sentences, scorer=Levenshtein.distance)
        return labelled[best[0]]

    return intent_of


def _write_utterances(path: Path, rows: list[dict]) -> None:
    import json

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
