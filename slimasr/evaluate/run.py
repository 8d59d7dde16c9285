"""``slimasr evaluate``: recognize a manifest with a model and measure quality and cost.

    result = evaluate_model("exp/demo/teacher", "exp/demo/data/test_cuts.jsonl.gz")
    result = evaluate_model("exp/demo/student_onnx/model.int8.onnx", manifest)   # a bundle graph

writes ``MODEL_DIR/metrics.json`` (one flat object with the DESIGN.md keys: ``wer, cer,
sentence_accuracy, num_utterances, params, nonzero_params, macs_per_second_audio, latency_ms_p50,
latency_ms_p90, rtf, model_bytes`` and more, e.g. ``first_word_accuracy``) ``MODEL_DIR/eval_utterances.jsonl`` (every
utterance's normalized reference and hypothesis) and ``MODEL_DIR/eval_worst.json`` (the utterances
with the most errors), and returns the flat object. A bundle from ``slimasr export`` runs on
onnxruntime (``slimasr.evaluate.runners``) and gets the same keys, scored the same way, in its
own folder (``slimasr.evaluate.outputs``: ``metrics.json`` for model.onnx, ``metrics.int8.json``
for model.int8.onnx).

``also=[(DecodeConfig(), "greedy.json")]`` decodes the same network outputs another way too (one
pass of the network for greedy and beam search). ``EvalConfig(latency=False)`` scores without
timing (latency keys null) and ``time_models`` times the models afterwards, in turns, when
nothing else runs.

Results say what they were measured on: ``data`` (a short label: folder/name@content hash),
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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
from slimasr.evaluate.cost import interleaved_latency
from slimasr.evaluate.metrics import ErrorRateStats
from slimasr.evaluate.outputs import METRICS_FILE, UTTERANCES_FILE, WORST_FILE, Outputs, outputs_of
from slimasr.evaluate.runners import OnnxRunner, TorchRunner, load_runner
from slimasr.frontend import Frontend
from slimasr.io import atomic_path, file_sha256, output_lock, read_json, write_json_atomic
from slimasr.progress import progress_bar
from slimasr.data.manifests import transcript

log = logging.getLogger(__name__)

__all__ = ["METRICS_FILE", "UTTERANCES_FILE", "WORST_FILE", "EvalConfig", "evaluate_model",
           "evaluated_on", "is_timed", "network_outputs", "recognize", "time_models"]
# Why evaluation leaves an utterance out of every rate (keys of the result's "excluded").
EXCLUDED_REASONS = (EMPTY_REFERENCE, TOO_SHORT, UNKNOWN_CHARACTERS, BAD_AUDIO)
MIN_LATENCY_SECONDS = 0.1  # shortest timed input: 10 frames, enough for every subsampling front end


@dataclass
class EvalConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # greedy or beam (+ LM)
    max_duration: float = 60.0  # seconds of audio per recognition batch
    max_utterances: int | None = None  # score only the first N utterances (None: all)
    latency_threads: int = 1  # torch/onnxruntime threads while timing batch-1 latency (a device's core)
    latency_seconds: float = 3.0  # utterance length for latency, RTF and MACs
    latency: bool = True  # time batch-1 latency and RTF (False: null, for time_models to fill later)
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


def recognize(model: Callable, frontend: Frontend, cuts: CutSet, decoder,
              max_duration: float, device: torch.device,
              on_bad_audio: Callable[[Problem], None] | None = None,
              max_cuts: int | None = None) -> Iterator[tuple[list, list[str]]]:
    """Yield ``(cuts, hypotheses)`` batch by batch (batches of at most ``max_duration`` s and
    ``max_cuts`` utterances). ``model``: ``(x, x_lens) -> (log_probs, lens)``, a slimasr model
    or an ``OnnxRecognizer``.

    A cut whose audio is unusable (NaN/inf samples, an absurd peak) is left out of its batch and
    handed to ``on_bad_audio`` (its ``BAD_AUDIO`` problem naming the file)."""
    for batch_cuts, log_probs, out_lens in network_outputs(model, frontend, cuts, max_duration, device,
                                                           on_bad_audio, max_cuts):
        yield batch_cuts, decoder.decode_batch(log_probs, out_lens)


def network_outputs(model: Callable, frontend: Frontend, cuts: CutSet, max_duration: float,
                    device: torch.device, on_bad_audio: Callable[[Problem], None] | None = None,
                    max_cuts: int | None = None) -> Iterator[tuple[list, torch.Tensor, torch.Tensor]]:
    """``recognize`` before decoding: ``(cuts, log_probs (N, T, V) float32 on the CPU, lengths)``."""
    sampler = DynamicCutSampler(cuts, max_duration=max_duration, max_cuts=max_cuts, shuffle=False)
    for batch in sampler:
        batch_cuts, audios = _usable(list(batch), on_bad_audio)
        if not batch_cuts:
            continue
        x, x_lens = frontend.batch(audios)
        with torch.inference_mode():
            log_probs, out_lens = model(x.to(device), x_lens.to(device))
        yield batch_cuts, log_probs.float().cpu(), out_lens.cpu()


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
                   json_out: str | Path | None = None, show_progress: bool = True,
                   also: Sequence[tuple[DecodeConfig, str | Path]] = ()) -> dict:
    """Recognize ``manifest`` (lhotse cuts or NeMo JSONL) with the model (a model directory, a
    bundle folder or a bundle's .onnx file); write and return metrics (beside the model when its
    folder is writable; to ``json_out`` when given). ``also``: ``(decoding, json file)`` pairs:
    the same network outputs decoded that way too, each one's metrics written to its file (the
    pipeline's greedy results beside beam search's, for one pass of the network)."""
    config = config or EvalConfig()
    for path in [json_out, *(out for _, out in also)]:
        if path is not None and Path(path).is_dir():
            raise DataError(path, "is a folder; give a file name")  # before any work
    outputs = outputs_of(model_dir)
    _check_model(outputs)
    writable = os.access(outputs.folder, os.W_OK) and not is_shipped(outputs.folder)
    if not writable and json_out is None:
        raise DataError(outputs.folder, "is not writable (or is a model shipped with slimasr), so the "
                                        "metrics cannot go beside the model; pass --json FILE to write "
                                        "them elsewhere")
    with output_lock(outputs.folder, "evaluate") if writable else contextlib.nullcontext():
        return _evaluate(Path(model_dir), outputs, manifest, config, json_out, show_progress, writable,
                         also)


def time_models(models: Sequence[str | Path], also: Sequence[Sequence[str | Path]] = ()) -> list[dict]:
    """Batch-1 latency and RTF of models that ``evaluate_model`` scored with ``latency=False``,
    timed in turns (``cost.interleaved_latency``: drift of the machine moves them all alike, so
    their speed-ups hold) with the threads and input length each one's metrics.json records;
    written into that file and into each of ``also[i]`` (e.g. the greedy results beside it).
    Returns the latency keys of each. Time with nothing else running: that is why it is a step
    of its own."""
    outputs = [outputs_of(m) for m in models]
    for out in outputs:
        _check_model(out)
        if not out.metrics.is_file():
            raise DataError(out.metrics, "not found: evaluate the model before timing it")
    with contextlib.ExitStack() as locks:
        for folder in dict.fromkeys(out.folder for out in outputs):
            locks.enter_context(output_lock(folder, "evaluate"))
        plans = [_timing_of(read_json(out.metrics)) for out in outputs]
        timed: list[dict] = [{} for _ in models]
        for seconds, threads in dict.fromkeys(plans):
            group = [i for i, plan in enumerate(plans) if plan == (seconds, threads)]
            before = torch.get_num_threads()
            torch.set_num_threads(threads)  # the torch models' (a session has its own)
            try:
                calls = [load_runner(models[i], torch.device("cpu")).timed_call(seconds, threads) for i in group]
                for i, latency in zip(group, interleaved_latency(calls, seconds)):
                    timed[i] = latency
            finally:
                torch.set_num_threads(before)
        for i, out in enumerate(outputs):
            for path in [out.metrics, *(also[i] if i < len(also) else ())]:
                write_json_atomic(path, {**read_json(path), **timed[i]})
    return timed


def _timing_of(metrics: dict) -> tuple[float, int]:
    """``(latency_seconds, latency_threads)`` of the settings a metrics.json records."""
    settings = metrics.get("eval_config") or {}
    return (float(settings.get("latency_seconds", EvalConfig.latency_seconds)),
            int(settings.get("latency_threads", EvalConfig.latency_threads)))


def is_timed(model_dir: str | Path) -> bool:
    """Whether the model's metrics.json holds its batch-1 latency (``time_models`` or evaluate)."""
    path = outputs_of(model_dir).metrics
    try:
        return path.is_file() and read_json(path).get("latency_ms_p50") is not None
    except DataError:
        return False


def is_shipped(folder: Path) -> bool:
    """Whether ``folder`` is a model shipped as package data: read-only, whatever the file
    system says (results written there would be packaged with it)."""
    from slimasr.shipped import SHIPPED_DIR

    return Path(folder).resolve().is_relative_to(SHIPPED_DIR)


def _check_model(outputs: Outputs) -> None:
    """A one-line DataError for a missing or broken model folder or bundle, before any work."""
    from slimasr.models.io import read_model_config
    from slimasr.runtime.bundle import read_bundle

    if outputs.label is None:
        read_model_config(outputs.folder)
    else:
        read_bundle(outputs.folder).model_path(int8=outputs.label == "int8")


@dataclass
class _Decoding:
    """One way of decoding the network's outputs, scored on its own."""
    config: EvalConfig  # the evaluation settings with this decoding
    decoder: Any
    stats: ErrorRateStats
    seconds: float = 0.0  # spent decoding


def _evaluate(model_path: Path, outputs: Outputs, manifest: str | Path, config: EvalConfig,
              json_out: str | Path | None, show_progress: bool, write_folder: bool,
              also: Sequence[tuple[DecodeConfig, str | Path]]) -> dict:
    from slimasr.train.distributed import pick_device

    runner = load_runner(model_path, pick_device(config.device))
    cuts, excluded = _scorable(_cuts(manifest, config), runner)
    lexicon = _words_of(config.lexicon_reference, runner.frontend.normalize)
    intent_of = _intent_classifier(config.intent_reference, runner.frontend.normalize)
    decodings = [_decoding(replace(config, decode=decode), runner, lexicon, intent_of)
                 for decode in [config.decode, *(d for d, _ in also)]]
    start = time.perf_counter()
    audio_seconds = _score_all(runner, cuts, decodings, excluded, config, show_progress)
    network_seconds = time.perf_counter() - start - sum(d.seconds for d in decodings)
    shared = {
        **runner.cost(config.latency_seconds, config.latency_threads, timed=config.latency),
        "runtime": runner.runtime,
        "model_file": outputs.model_file.name,
        "manifest": str(manifest),
        **data_signature(manifest),
        "model_sha256": file_sha256(outputs.model_file),
        "audio_hours": audio_seconds / 3600,
    }
    results = [{**_quality(d.stats, excluded, manifest, warn=i == 0), **shared,
                "decode": d.config.decode.method, "eval_config": _settings(d.config),
                "batch_decode_rtf": (network_seconds + d.seconds) / max(audio_seconds, 1e-9)}
               for i, d in enumerate(decodings)]
    _write_results(outputs, decodings[0].stats, results[0], config, json_out, write_folder)
    for result, (_, path) in zip(results[1:], also):
        write_json_atomic(path, result)
    return results[0]


def _decoding(config: EvalConfig, runner: TorchRunner | OnnxRunner, lexicon: list[str] | None,
              intent_of: Callable[[str], str | None] | None) -> _Decoding:
    decoder = make_decoder(runner.frontend.tokenizer.tokens, config.decode, word_sep=runner.word_sep,
                           lexicon=lexicon)
    return _Decoding(config, decoder, ErrorRateStats(normalize=runner.frontend.normalize, intent_of=intent_of))


def _cuts(manifest: str | Path, config: EvalConfig) -> CutSet:
    """The manifest's cuts (the first ``max_utterances``), after checking their audio exists."""
    from slimasr.data.manifests import load_cuts

    cuts = load_cuts(manifest)
    if config.max_utterances is not None:
        cuts = cuts.subset(first=config.max_utterances)
    _check_audio_present(cuts, manifest)
    return cuts


def _score_all(runner: TorchRunner | OnnxRunner, cuts: CutSet, decodings: list[_Decoding],
               excluded: SkipReport, config: EvalConfig, show_progress: bool) -> float:
    """Recognize every cut once and score it into each decoding's stats (bad audio into
    ``excluded``); returns the seconds of audio scored."""
    audio_seconds = 0.0
    with progress_bar(transient=True, disable=not show_progress) as bar:
        task = bar.add_task("recognizing", total=_count(cuts) if show_progress else None)
        for batch_cuts, log_probs, lens in network_outputs(runner.model, runner.frontend, cuts,
                                                           config.max_duration, runner.device,
                                                           on_bad_audio=excluded.add,
                                                           max_cuts=runner.max_cuts):
            ids, refs = [c.id for c in batch_cuts], [transcript(c) for c in batch_cuts]
            intents = [_intent_of_cut(c) for c in batch_cuts]
            for d in decodings:
                start = time.perf_counter()
                hyps = d.decoder.decode_batch(log_probs, lens)
                d.seconds += time.perf_counter() - start
                d.stats.append(ids, hyps, refs, intents if any(i is not None for i in intents) else None)
            audio_seconds += sum(c.duration for c in batch_cuts)
            bar.advance(task, len(batch_cuts))
    return audio_seconds


def _write_results(outputs: Outputs, stats: ErrorRateStats, result: dict, config: EvalConfig,
                   json_out: str | Path | None, write_folder: bool) -> None:
    """metrics, utterances and worst list beside the model (when its folder is writable), and
    the metrics to ``json_out`` (when given)."""
    if write_folder:
        _write_utterances(outputs.utterances, stats.utterances())
        write_json_atomic(outputs.worst, stats.worst(config.worst))
        write_json_atomic(outputs.metrics, result)
    else:
        log.warning("%s is not writable: the metrics are written to %s only", outputs.folder, json_out)
    if json_out is not None:
        write_json_atomic(json_out, result)


def _scorable(cuts: CutSet, runner: TorchRunner | OnnxRunner) -> tuple[CutSet, SkipReport]:
    """The cuts that can be scored (lazily filtered) and the report that counts the others as
    the filtered set is read: empty reference, no character the model knows, audio too short
    for its reference (``slimasr.data.validate.CutCheck`` with ``scoring``)."""
    frontend = runner.frontend
    return filter_cuts(cuts, frontend.tokenizer, frontend.normalize, runner.output_frames,
                       frontend.features.frame_shift, scoring=True)


def _quality(stats: ErrorRateStats, excluded: SkipReport, manifest: str | Path, warn: bool = True) -> dict:
    """The quality metrics of the scored utterances, with ``excluded`` holding a count for each
    of ``EXCLUDED_REASONS``; says in one warning line what was left out (``warn``). Nothing
    scored is a DataError: a WER of nothing is no result."""
    for reason, count in excluded.counts.items():
        stats.exclude(reason, count)
    quality = stats.summarize()
    quality["excluded"] = {reason: stats.excluded.get(reason, 0) for reason in EXCLUDED_REASONS}
    if excluded.skipped and warn:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(excluded.counts.items()))
        log.warning("warning: %s: %d of %d utterances not scored (%s); see \"excluded\" in the "
                    "metrics", manifest, excluded.skipped, excluded.checked, reasons)
        for message in excluded.examples:
            log.warning("  %s", message)
    if not stats.scores:
        raise DataError(manifest, f"no utterance can be scored ({excluded.summary()})")
    return quality


def data_signature(manifest: str | Path) -> dict:
    """What identifies the evaluation data: ``data`` (a short label for tables: the manifest's
    folder/name and the start of its content's sha256, decompressed, so a corpus synthesized again
    with the same cuts gets the same label), ``data_path`` (resolved) and ``data_sha256`` (of the
    manifest's bytes: results stay valid only for the very file)."""
    identity = data_identity(manifest)
    path = Path(identity["data_path"])
    try:
        content = file_sha256(path, decompressed=True)
    except (OSError, EOFError):  # not gzip after all: its reader says so; the label takes the bytes
        content = identity["data_sha256"]
    return {"data": f"{path.parent.name}/{path.name}@{content[:8]}", **identity}


def data_identity(manifest: str | Path) -> dict:
    """What stored results must match to be this manifest's: its resolved ``data_path`` and the
    ``data_sha256`` of its bytes."""
    path = Path(manifest).resolve()
    return {"data_path": str(path), "data_sha256": file_sha256(path)}


def evaluated_on(model_dir: str | Path, manifest: str | Path, config: EvalConfig) -> bool:
    """Whether the model's metrics (``model_dir/metrics.json``; a bundle graph's, for a bundle)
    hold results of this manifest (same path and bytes) measured with these settings on the
    model's current weights: only then may a caller reuse them."""
    outputs = outputs_of(model_dir)
    path = outputs.metrics
    if not path.is_file() or not Path(manifest).is_file():
        return False
    try:
        metrics = read_json(path)
    except DataError:
        return False
    weights = outputs.model_file
    signature = {**data_identity(manifest),
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
