"""The pipeline's deployment stages: export a bundle, decode it with sherpa-onnx, stream with it.

    - {stage: export, name: student_onnx, model: student}            # EXPERIMENT/student_onnx/
    - {stage: sherpa, name: student_sherpa, bundle: student_onnx}    # EXPERIMENT/student_sherpa/metrics.json
    - {stage: stream, name: student_stream, bundle: student_onnx}    # EXPERIMENT/student_stream/metrics.json

The sherpa and stream stages each write a ``metrics.json`` that ``report`` shows as a row (WER,
and for streaming its RTF and the latency from the end of the audio to the final text).
Registered into ``slimasr.pipeline.STAGES`` when that module is imported.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from slimasr.io import file_sha256, read_json, write_json_atomic
from slimasr.pipeline import Stage, _data_of, register_stage

log = logging.getLogger(__name__)

METRICS = "metrics.json"  # what the sherpa and stream stages write into their folder
SHERPA_MISSING = "skipped: sherpa_onnx is not installed (pip install sherpa-onnx)"  # the row's note


@dataclass
class ExportStage:
    name: str = "student_onnx"  # bundle folder under the experiment
    model: str = "student"  # the model stage to export
    data: str = "data"  # corpus stage whose dev split gates int8 (and checks parity)
    int8: bool = True  # also write the int8 graphs (gated by dev WER: ExportConfig.max_wer_increase)
    config: dict = field(default_factory=dict)  # other ExportConfig fields


@dataclass
class SherpaStage:
    name: str = "student_sherpa"  # results folder under the experiment
    bundle: str = "student_onnx"  # the export stage whose bundle sherpa-onnx decodes
    data: str = "data"  # name of the corpus stage
    split: str = "test"  # which split of the corpus
    int8: bool = True  # decode the bundle's model.int8.onnx (False: model.onnx)
    max_utterances: int | None = None  # decode only the first N utterances (None: all)


@dataclass
class StreamStage:
    name: str = "student_stream"  # results folder under the experiment
    bundle: str = "student_onnx"  # the export stage whose bundle streams (a causal model's)
    data: str = "data"  # name of the corpus stage
    split: str = "test"  # which split of the corpus
    utterances: int = 3  # first N utterances, each shown live (partial text as it changes)
    chunk_ms: float = 160.0  # audio per piece, as a microphone would deliver it
    int8: bool = True  # stream with model.streaming.int8.onnx (False: model.streaming.onnx)


def _bundle_done(stage: Stage, exp: Path) -> bool:
    return (exp / stage.spec.name / "bundle.json").is_file()


@register_stage("export", ExportStage, _bundle_done)
def _run_export(stage: Stage, exp: Path) -> None:
    from slimasr.config import from_dict
    from slimasr.export import ExportConfig, export_model
    from slimasr.pipeline import _model_dir

    spec: ExportStage = stage.spec
    manifest = _data_of(exp, spec.data) / "dev_cuts.jsonl.gz"
    fields = {"int8": spec.int8, "wer_manifest": str(manifest), **spec.config}
    export_model(_model_dir(exp, spec.model), exp / spec.name, from_dict(ExportConfig, fields, "config"),
                 overwrite=True)  # the folder is this stage's own (claim_folder)


def _results_done(stage: Stage, exp: Path) -> bool:
    """Its metrics.json describes the bundle graph as it is now (not one exported before)."""
    path = exp / stage.spec.name / METRICS
    if not path.is_file():
        return False
    graph = _graph(exp, stage.spec)
    return read_json(path).get("model_sha256") == (file_sha256(graph) if graph.is_file() else None)


def _graph(exp: Path, spec: Any) -> Path:
    """The bundle graph a sherpa or stream stage runs."""
    from slimasr.runtime.bundle import INT8_FILE, MODEL_FILE, STREAMING_FILE, STREAMING_INT8_FILE

    names = {"sherpa": (MODEL_FILE, INT8_FILE), "stream": (STREAMING_FILE, STREAMING_INT8_FILE)}
    kind = "stream" if isinstance(spec, StreamStage) else "sherpa"
    return exp / spec.bundle / names[kind][int(spec.int8)]


def _write_results(exp: Path, spec: Any, results: dict) -> None:
    from slimasr.evaluate.run import data_signature

    manifest = _data_of(exp, spec.data) / f"{spec.split}_cuts.jsonl.gz"
    graph = _graph(exp, spec)
    out = exp / spec.name
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / METRICS, {**results, "model_file": graph.name,
                                      "model_sha256": file_sha256(graph), **data_signature(manifest)})


@register_stage("sherpa", SherpaStage, _results_done)
def _run_sherpa(stage: Stage, exp: Path) -> None:
    spec: SherpaStage = stage.spec
    label = f"sherpa-onnx offline CTC, greedy, {_graph(exp, spec).name}"
    try:
        import sherpa_onnx  # noqa: F401
    except ImportError:
        log.warning("warning: %s: %s", spec.name, SHERPA_MISSING)
        _write_results(exp, spec, {"note": SHERPA_MISSING})
        return
    _write_results(exp, spec, {"note": label, **sherpa_wer(exp, spec)})


def sherpa_wer(exp: Path, spec: SherpaStage) -> dict:
    """The stage's split through ``sherpa_offline_wer``."""
    from slimasr.data.manifests import read_split

    cuts = read_split(_data_of(exp, spec.data), spec.split)
    if spec.max_utterances is not None:
        cuts = cuts.subset(first=spec.max_utterances)
    return sherpa_offline_wer(exp / spec.bundle, cuts, spec.int8)


def sherpa_offline_wer(bundle_dir: Path, cuts: Any, int8: bool) -> dict:
    """WER and CER of sherpa-onnx's offline CTC recognizer (``from_zipformer_ctc``: it feeds the
    graph ``x, x_lens`` and reads ``log_probs``) on ``cuts``, greedy, scored as ``evaluate``
    scores. Also what bench/deploy.py measures."""
    import sherpa_onnx

    from slimasr.evaluate.metrics import ErrorRateStats
    from slimasr.runtime.bundle import read_bundle
    from slimasr.text import normalize_text
    from slimasr.data.manifests import transcript

    bundle = read_bundle(bundle_dir)
    recognizer = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(bundle.model_path(int8)), tokens=str(bundle.path / "tokens.txt"), num_threads=1,
        sample_rate=bundle.features.sampling_rate, feature_dim=bundle.features.num_mel_bins,
        decoding_method="greedy_search")
    stats = ErrorRateStats(normalize=lambda text: normalize_text(text, bundle.normalizer))
    for cut in cuts:
        stream = recognizer.create_stream()
        stream.accept_waveform(bundle.features.sampling_rate, cut.load_audio().reshape(-1))
        recognizer.decode_stream(stream)
        stats.append([cut.id], [" ".join(stream.result.text.split())], [transcript(cut)])
    summary = stats.summarize()
    return {"wer": summary["wer"], "cer": summary["cer"], "num_utterances": summary["num_utterances"],
            "decode": "greedy", "runtime": "sherpa-onnx"}


@register_stage("stream", StreamStage, _results_done)
def _run_stream(stage: Stage, exp: Path) -> None:
    from slimasr.runtime.streaming import OnnxStreamingRecognizer

    spec: StreamStage = stage.spec
    recognizer = OnnxStreamingRecognizer(exp / spec.bundle, spec.chunk_ms, num_threads=1, int8=spec.int8)
    label = f"streaming, {spec.chunk_ms:g} ms chunks, {_graph(exp, spec).name}"
    _write_results(exp, spec, {"note": label, **stream_utterances(recognizer, _utterances(exp, spec))})


def _utterances(exp: Path, spec: StreamStage) -> list[tuple[str, Any, str]]:
    """``(cut id, float32 samples, reference)`` of the split's first ``spec.utterances``."""
    import numpy as np

    from slimasr.data.manifests import read_split
    from slimasr.data.manifests import transcript

    cuts = read_split(_data_of(exp, spec.data), spec.split).subset(first=spec.utterances)
    return [(c.id, c.load_audio().reshape(-1).astype(np.float32), transcript(c)) for c in cuts]


def stream_utterances(recognizer: Any, utterances: list[tuple[str, Any, str]],
                      out: TextIO | None = None) -> dict:
    """Stream each utterance in ``recognizer.chunk_ms`` pieces, its partial text shown live
    (``PartialPrinter``) and timed as bench/streaming.py times it: ``rtf`` (processing time over
    audio time, all utterances) and ``final_ms`` (from the end of the audio, when the last piece
    arrives, to the final text: that piece plus ``finish()``); greedy WER of the final texts."""
    from slimasr.evaluate.metrics import ErrorRateStats
    from slimasr.streaming.console import PartialPrinter
    from slimasr.text import normalize_text

    printer = PartialPrinter(sys.stdout if out is None else out)
    stats = ErrorRateStats(normalize=lambda text: normalize_text(text, recognizer.bundle.normalizer))
    busy, finals, seconds, texts = 0.0, [], 0.0, []
    for cut_id, audio, reference in utterances:
        text, spent, final_ms = _stream_one(recognizer, audio, printer)
        printer.final(cut_id, text)
        stats.append([cut_id], [text], [reference])
        busy, seconds = busy + spent, seconds + len(audio) / recognizer.sampling_rate
        finals.append(final_ms)
        texts.append({"id": cut_id, "reference": reference, "text": text})
    summary = stats.summarize()
    return {"wer": summary["wer"], "num_utterances": len(utterances), "rtf": busy / seconds,
            "final_ms_p50": statistics.median(finals), "final_ms_max": max(finals),
            "chunk_ms": recognizer.chunk_ms, "decode": "greedy", "runtime": "onnxruntime streaming",
            "transcripts": texts}


def _stream_one(recognizer: Any, audio: Any, printer: Any) -> tuple[str, float, float]:
    """One utterance: ``(final text, seconds spent processing, final-result latency in ms)``."""
    piece = max(1, round(recognizer.chunk_ms / 1000 * recognizer.sampling_rate))
    stream, busy, last = recognizer.stream(), 0.0, 0.0
    for start in range(0, len(audio), piece):
        began = time.perf_counter()
        text = stream.accept(audio[start:start + piece])
        last = time.perf_counter() - began
        busy += last
        printer.partial(text)
    began = time.perf_counter()
    text = stream.finish()
    finish = time.perf_counter() - began
    return text, busy + finish, 1000 * (last + finish)
