"""``slimasr evaluate``: recognize a manifest with a model and measure quality and cost.

    result = evaluate_model("exp/demo/teacher", "exp/demo/data/test_cuts.jsonl.gz")

writes ``MODEL_DIR/metrics.json`` (one flat object with the DESIGN.md keys: ``wer, cer,
sentence_accuracy, num_utterances, params, nonzero_params, macs_per_second_audio, latency_ms_p50,
latency_ms_p90, rtf, model_bytes`` and more) ``MODEL_DIR/eval_utterances.jsonl`` (every
utterance's normalized reference and hypothesis) and ``MODEL_DIR/eval_worst.json`` (the utterances
with the most errors), and returns the flat object.

Results say what they were measured on: ``data`` (a short label: folder/name@hash),
``data_path`` (the manifest's resolved path), ``data_sha256`` (of its bytes) and ``eval_config``
(the settings), so nothing that reads metrics.json takes another data set's or another decoder's
results for its own (``evaluated_on``). The model folder is locked while evaluate writes it; a
model folder that is not writable is left alone when ``json_out`` is given (the results go only
there) and refused, before any work, when it is not.

Intents: when the manifest's supervisions carry an ``intent`` (the embedded corpus does) and
``intent_reference`` names a manifest of labelled training sentences, each hypothesis gets the
intent of the closest training sentence (character edit distance, rapidfuzz) — a simple
nearest-neighbour understanding step that shows whether errors change what the user asked for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from lhotse import CutSet
from lhotse.dataset import DynamicCutSampler

from slimasr.config import check_numbers, config_to_dict
from slimasr.data.validate import (
    BAD_AUDIO,
    EMPTY_REFERENCE,
    TOO_SHORT,
    UNKNOWN_CHARACTERS,
    Problem,
    SkipReport,
    cut_audio_problem,
    filter_cuts,
)
from slimasr.decode import DecodeConfig, corpus_vocabulary, make_decoder
from slimasr.errors import ConfigError, DataError
from slimasr.evaluate.cost import cost_report
from slimasr.evaluate.metrics import ErrorRateStats
from slimasr.frontend import Frontend
from slimasr.io import atomic_path, file_sha256, output_lock, read_json, write_json_atomic
from slimasr.models.io import WEIGHTS_NAME  # what model_sha256 in metrics.json hashes
from slimasr.progress import progress_bar
from slimasr.train.prepare import transcript

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
# Why evaluation leaves an utterance out of every rate (keys of the result's "excluded").
EXCLUDED_REASONS = (EMPTY_REFERENCE, TOO_SHORT, UNKNOWN_CHARACTERS, BAD_AUDIO)
UTTERANCES_FILE = "eval_utterances.jsonl"
WORST_FILE = "eval_worst.json"
MIN_LATENCY_SECONDS = 0.1  # shortest timed input: 10 frames, enough for every subsampling front end


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

    def __post_init__(self) -> None:
        check_numbers("evaluate", self, positive=("max_duration", "max_utterances", "latency_threads"),
                      non_negative=("worst",))
        if not self.latency_seconds >= MIN_LATENCY_SECONDS:
            raise ConfigError(f"evaluate.latency_seconds must be >= {MIN_LATENCY_SECONDS}, "
                              f"got {self.latency_seconds}")


def recognize(model: torch.nn.Module, frontend: Frontend, cuts: CutSet, decoder,
              max_duration: float, device: torch.device,
              on_bad_audio: Callable[[Problem], None] | None = None) -> Iterator[tuple[list, list[str]]]:
    """Yield ``(cuts, hypotheses)`` batch by batch (batches of at most ``max_duration`` s).

    A cut whose audio is unusable (NaN/inf samples, an absurd peak) is left out of its batch and
    handed to ``on_bad_audio`` (its ``BAD_AUDIO`` problem naming the file)."""
    sampler = DynamicCutSampler(cuts, max_duration=max_duration, shuffle=False)
    for batch in sampler:
        batch_cuts, audios = _usable(list(batch), on_bad_audio)
        if not batch_cuts:
            continue
        x, x_lens = frontend.batch(audios)
        with torch.inference_mode():
            log_probs, out_lens = model(x.to(device), x_lens.to(device))
        yield batch_cuts, decoder.decode_batch(log_probs.float().cpu(), out_lens.cpu())


def _usable(cuts: list, on_bad_audio: Callable[[Problem], None] | None) -> tuple[list, list]:
    """The cuts whose audio is usable and their ``(S,)`` samples; the others go to ``on_bad_audio``."""
    kept, audios = [], []
    for cut in cuts:
        audio = cut.load_audio().reshape(-1)
        if problem := cut_audio_problem(cut, audio):
            if on_bad_audio is not None:
                on_bad_audio(problem)
            continue
        kept.append(cut)
        audios.append(audio)
    return kept, audios


def evaluate_model(model_dir: str | Path, manifest: str | Path, config: EvalConfig | None = None,
                   json_out: str | Path | None = None, show_progress: bool = True) -> dict:
    """Recognize ``manifest`` (lhotse cuts or NeMo JSONL) with the model; write and return metrics
    (beside the model when its folder is writable; to ``json_out`` when given)."""
    from slimasr.models.io import read_model_config

    config = config or EvalConfig()
    model_dir = Path(model_dir)
    read_model_config(model_dir)  # one-line error for a missing or broken model folder
    writable = os.access(model_dir, os.W_OK)
    if not writable and json_out is None:
        raise DataError(model_dir, "is not writable, so the metrics cannot go beside the model; "
                                   "pass --json FILE to write them elsewhere")
    with output_lock(model_dir, "evaluate") if writable else contextlib.nullcontext():
        return _evaluate(model_dir, manifest, config, json_out, show_progress, writable)


def _evaluate(model_dir: Path, manifest: str | Path, config: EvalConfig, json_out: str | Path | None,
              show_progress: bool, write_model_dir: bool) -> dict:
    from slimasr.data.manifests import load_cuts
    from slimasr.models import load_model
    from slimasr.train.distributed import pick_device

    device = pick_device(config.device)
    model = load_model(model_dir).to(device).eval()
    frontend = Frontend.load(model_dir)
    cuts = load_cuts(manifest)
    if config.max_utterances is not None:
        cuts = cuts.subset(first=config.max_utterances)
    _check_audio_present(cuts, manifest)
    cuts, excluded = _scorable(cuts, model, frontend)
    lexicon = _words_of(config.lexicon_reference, frontend.normalize)
    decoder = make_decoder(frontend.tokenizer.tokens, config.decode, lexicon=lexicon)
    stats = ErrorRateStats(normalize=frontend.normalize,
                           intent_of=_intent_classifier(config.intent_reference, frontend.normalize))
    start, audio_seconds = time.perf_counter(), 0.0
    with progress_bar(transient=True, disable=not show_progress) as bar:
        task = bar.add_task("recognizing", total=_count(cuts) if show_progress else None)
        for batch_cuts, hyps in recognize(model, frontend, cuts, decoder, config.max_duration, device,
                                          on_bad_audio=excluded.add):
            refs = [transcript(c) for c in batch_cuts]
            intents = [_intent_of_cut(c) for c in batch_cuts]
            stats.append([c.id for c in batch_cuts], hyps, refs,
                         intents if any(i is not None for i in intents) else None)
            audio_seconds += sum(c.duration for c in batch_cuts)
            bar.advance(task, len(batch_cuts))
    decode_seconds = time.perf_counter() - start
    result = {
        **_quality(stats, excluded, manifest),
        **cost_report(model.cpu(), model_dir, seconds=config.latency_seconds, threads=config.latency_threads,
                      feat_dim=model.config.num_features),
        "decode": config.decode.method,
        "manifest": str(manifest),
        **data_signature(manifest),
        "eval_config": _settings(config),
        "model_sha256": file_sha256(model_dir / WEIGHTS_NAME),
        "audio_hours": audio_seconds / 3600,
        "batch_decode_rtf": decode_seconds / max(audio_seconds, 1e-9),
    }
    if write_model_dir:
        _write_utterances(model_dir / UTTERANCES_FILE, stats.utterances())
        write_json_atomic(model_dir / WORST_FILE, stats.worst(config.worst))
        write_json_atomic(model_dir / METRICS_FILE, result)
    else:
        log.warning("%s is not writable: the metrics are written to %s only", model_dir, json_out)
    if json_out is not None:
        write_json_atomic(json_out, result)
    return result


def _scorable(cuts: CutSet, model: torch.nn.Module, frontend: Frontend) -> tuple[CutSet, SkipReport]:
    """The cuts that can be scored (lazily filtered) and the report that counts the others as
    the filtered set is read: empty reference, no character the model knows, audio too short
    for its reference (``slimasr.data.validate.CutCheck`` with ``scoring``)."""

    def frames_after_subsampling(num: int) -> int:
        return int(model.output_lengths(torch.tensor([num], dtype=torch.int64))[0])

    return filter_cuts(cuts, frontend.tokenizer, frontend.normalize, frames_after_subsampling,
                       frontend.features.frame_shift, scoring=True)


def _quality(stats: ErrorRateStats, excluded: SkipReport, manifest: str | Path) -> dict:
    """The quality metrics of the scored utterances, with ``excluded`` holding a count for each
    of ``EXCLUDED_REASONS``; says in one warning line what was left out. Nothing scored is a
    DataError: a WER of nothing is no result."""
    for reason, count in excluded.counts.items():
        stats.exclude(reason, count)
    quality = stats.summarize()
    quality["excluded"] = {reason: stats.excluded.get(reason, 0) for reason in EXCLUDED_REASONS}
    if excluded.skipped:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(excluded.counts.items()))
        log.warning("warning: %s: %d of %d utterances not scored (%s); see \"excluded\" in the "
                    "metrics", manifest, excluded.skipped, excluded.checked, reasons)
        for message in excluded.examples:
            log.warning("  %s", message)
    if not stats.scores:
        raise DataError(manifest, f"no utterance can be scored ({excluded.summary()})")
    return quality


def data_signature(manifest: str | Path) -> dict:
    """What identifies the evaluation data: ``data`` (a short label for tables), ``data_path``
    (resolved) and ``data_sha256`` (of the manifest's bytes)."""
    path = Path(manifest).resolve()
    sha = file_sha256(path)
    return {"data": f"{path.parent.name}/{path.name}@{sha[:8]}", "data_path": str(path),
            "data_sha256": sha}


def evaluated_on(model_dir: str | Path, manifest: str | Path, config: EvalConfig) -> bool:
    """Whether ``model_dir/metrics.json`` holds results of this manifest (same path and bytes)
    measured with these settings on the model's current weights: only then may a caller reuse
    them."""
    path = Path(model_dir) / METRICS_FILE
    if not path.is_file() or not Path(manifest).is_file():
        return False
    try:
        metrics = read_json(path)
    except DataError:
        return False
    weights = Path(model_dir) / WEIGHTS_NAME
    signature = {**data_signature(manifest),
                 "model_sha256": file_sha256(weights) if weights.is_file() else None}
    return (isinstance(metrics, dict) and metrics.get("eval_config") == _settings(config)
            and all(metrics.get(k) == signature[k] for k in ("data_path", "data_sha256",
                                                              "model_sha256")))


def _settings(config: EvalConfig) -> dict:
    """The settings as metrics.json holds them (JSON types: tuples become lists)."""
    return json.loads(json.dumps(config_to_dict(config)))


def _check_audio_present(cuts: CutSet, manifest: str | Path) -> None:
    """DataError naming the first audio file of ``cuts`` that does not exist (and how many are
    missing), before recognition starts rather than as lhotse's chained tracebacks midway."""
    files = dict.fromkeys(s.source for c in cuts if getattr(c, "recording", None) is not None
                          for s in c.recording.sources if s.type == "file")  # manifest order
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(missing[0], f"audio file not found ({len(missing)} of {len(files)} listed in "
                                    f"{manifest} are missing). A manifest holds absolute audio paths "
                                    f"(or paths relative to its own folder): if the corpus or its "
                                    f"audio moved, recreate or re-import it where it now is")


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
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
