"""Benchmark: streaming recognition on one thread — RTF, latency from the end of the audio to the
final text, and latency of the first partial text — for chunks of 80, 160 and 320 ms, PyTorch
(slimasr.streaming), ONNX fp32 and, when the bundle has one, the int8 streaming graph
(slimasr.runtime.streaming on onnxruntime) — and each one's WER on the streamed utterances.

    python bench/streaming.py --model exp/causal_student --data data/smarthome --split test
    python bench/streaming.py --model M --bundle M_onnx --utterances 100 --tag causal_student

Audio arrives in chunk-sized pieces, as from a microphone; every piece is timed (features, model,
greedy decoding). Nothing sleeps: the arrival times are computed, the processing times measured.

- ``rtf``: processing time over audio duration, all utterances together.
- ``final_ms``: from the end of the audio (the last piece arrives) to the final text: processing
  the last piece plus ``finish()`` (the last frames and the last, shorter chunk).
- ``first_partial_ms``: from the moment the model could first emit a token to the moment the
  first non-empty partial text is ready. The model's own alignment gives that moment: the end of
  the output frame of its first non-blank token (the end of its last input frame's hop); the
  partial is ready when the piece that completes it has arrived and been processed. So it
  measures what streaming adds — waiting for the chunk, the fbank window's 15 ms look-ahead and
  the compute — not the time the model needs to hear a word. ``first_partial_audio_s``: the
  same moment on the audio's clock (when the text appears, from the start of the audio).

- ``wer``: greedy WER of the final texts (scored as ``slimasr evaluate`` scores).

Without ``--bundle`` the model is exported into a temporary folder first (``--int8``, its WER gate
scored on the dev split).
Results: bench/results/streaming/<tag>.json. Not a timed test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slimasr.errors import run_script  # noqa: E402
from slimasr.io import write_json_atomic  # noqa: E402
from slimasr.runtime.bundle import STREAMING_INT8_FILE  # noqa: E402
from slimasr.runtime.streaming import OnnxStreamingRecognizer  # noqa: E402
from slimasr.streaming import StreamingRecognizer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "streaming"
CHUNKS_MS = [80, 160, 320]  # the chunk sizes of the issue
THREADS = 1  # one core of a device


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    audios, texts = load_utterances(args)
    bundle = Path(args.bundle) if args.bundle else export_bundle(Path(args.model))
    int8 = (bundle / STREAMING_INT8_FILE).is_file()
    rows = []
    for chunk_ms in args.chunks:
        recognizers = [("pytorch", StreamingRecognizer(args.model, chunk_ms)),
                       ("onnx", OnnxStreamingRecognizer(bundle, chunk_ms, num_threads=THREADS))]
        if int8:
            recognizers.append(("onnx_int8", OnnxStreamingRecognizer(bundle, chunk_ms, num_threads=THREADS,
                                                                     int8=True)))
        for backend, recognizer in recognizers:
            rows.append({"backend": backend, "chunk_ms": chunk_ms, **measure(recognizer, audios, texts)})
            print_row(rows[-1])
    result = {"model": str(Path(args.model).resolve()), "bundle": str(bundle.resolve()),
              "data": args.data, "split": args.split, "utterances": len(audios),
              "audio_seconds": sum(len(a) for a in audios) / 16000, "threads": THREADS,
              "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "torch": torch.__version__, "rows": rows}
    out = RESULTS / f"{args.tag or Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(f"wrote {out}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="causal model directory (unidirectional CRNN)")
    parser.add_argument("--bundle", default=None, help="its bundle (default: export one into a temp folder)")
    parser.add_argument("--data", default=None,
                        help="data directory (default: the data the model was trained on)")
    parser.add_argument("--split", default="test", help="split to stream (default test)")
    parser.add_argument("--utterances", type=int, default=50, help="first N utterances (default 50)")
    parser.add_argument("--chunks", type=int, nargs="+", default=CHUNKS_MS, help="chunk sizes in ms")
    parser.add_argument("--tag", default=None, help="result file name (default: the model folder's name)")
    return parser.parse_args(argv)


def load_utterances(args: argparse.Namespace) -> tuple[list[np.ndarray], list[str]]:
    """The audio and reference transcripts of the first ``--utterances`` of the split."""
    from slimasr.data.manifests import read_split
    from slimasr.models import read_model_config
    from slimasr.data.manifests import transcript

    data = args.data or (read_model_config(args.model).get("provenance") or {}).get("data_dir")
    if data is None:
        sys.exit("error: --data is needed: the model's config.json does not say what it was trained on")
    args.data = str(data)
    cuts = read_split(data, args.split).subset(first=args.utterances)
    return [c.load_audio().reshape(-1).astype(np.float32) for c in cuts], [transcript(c) for c in cuts]


def export_bundle(model: Path) -> Path:
    from slimasr.export import ExportConfig, export_model

    out = Path(tempfile.mkdtemp(prefix="stream_bench_")) / "bundle"
    export_model(model, out, ExportConfig(int8=True))
    return out


def measure(recognizer, audios: list[np.ndarray], texts: list[str]) -> dict:
    """Stream every utterance (after one untimed warm-up); the timings described in the module doc
    and the WER of the final texts against ``texts``."""
    from slimasr.evaluate.metrics import ErrorRateStats
    from slimasr.text import normalize_text

    config = recognizer.frontend.normalizer if hasattr(recognizer, "frontend") else recognizer.bundle.normalizer
    stats = ErrorRateStats(normalize=lambda text: normalize_text(text, config))
    time_utterance(recognizer, audios[0])
    finals, firsts, firsts_audio, busy = [], [], [], 0.0
    for i, (audio, reference) in enumerate(zip(audios, texts)):
        timing = time_utterance(recognizer, audio)
        stats.append([str(i)], [timing["text"]], [reference])
        busy += timing["busy"]
        finals.append(timing["final_ms"])
        if timing["first_partial_ms"] is not None:
            firsts.append(timing["first_partial_ms"])
            firsts_audio.append(timing["first_partial_audio_s"])
    seconds = sum(len(a) for a in audios) / recognizer.sampling_rate
    return {"rtf": busy / seconds, "wer": stats.summarize()["wer"], **summary("final_ms", finals), **summary("first_partial_ms", firsts),
            "first_partial_audio_s_p50": statistics.median(firsts_audio) if firsts_audio else None,
            "utterances_with_text": len(firsts)}


def time_utterance(recognizer, audio: np.ndarray) -> dict:
    """One utterance in chunk_ms pieces: processing times and the two latencies."""
    rate = recognizer.sampling_rate
    piece = round(recognizer.chunk_ms / 1000 * rate)
    stream = recognizer.stream(keep_log_probs=True)
    busy, first_ready, spent = 0.0, None, 0.0
    for start in range(0, len(audio), piece):
        began = time.perf_counter()
        text = stream.accept(audio[start:start + piece])
        spent = time.perf_counter() - began
        busy += spent
        if text and first_ready is None:
            first_ready = min(start + piece, len(audio)) / rate + spent  # arrival + processing
    began = time.perf_counter()
    text = stream.finish()
    spent_finish = time.perf_counter() - began
    busy += spent_finish
    final_ms = 1000 * (spent_finish + spent)  # the last piece arrives with the end of the audio
    if text and first_ready is None:
        first_ready = len(audio) / rate + spent_finish
    first_ms = first_audio = None
    if first_ready is not None:
        first_ms = 1000 * (first_ready - first_token_time(stream, recognizer))
        first_audio = first_ready
    return {"text": text, "busy": busy, "final_ms": final_ms, "first_partial_ms": first_ms,
            "first_partial_audio_s": first_audio}


def first_token_time(stream, recognizer) -> float:
    """Seconds into the audio at which the first non-blank output frame's input ends."""
    frame = int(np.flatnonzero(stream.log_probs.argmax(axis=-1) != 0)[0])
    return (frame + 1) * subsampling(recognizer) * frame_shift(recognizer)


def subsampling(recognizer) -> int:
    model = getattr(recognizer, "model", None)
    return model.subsampling if model is not None else int(recognizer.info["chunk_multiple"])


def frame_shift(recognizer) -> float:
    features = recognizer.frontend.features if hasattr(recognizer, "frontend") else recognizer.bundle.features
    return features.frame_shift


def summary(name: str, values: list[float]) -> dict:
    if not values:
        return {f"{name}_p50": None, f"{name}_p90": None, f"{name}_max": None}
    return {f"{name}_p50": float(np.percentile(values, 50)), f"{name}_p90": float(np.percentile(values, 90)),
            f"{name}_max": float(max(values))}


def print_row(row: dict) -> None:
    def ms(value):
        return "-" if value is None else f"{value:.1f}"

    print(f"{row['backend']:9s} {row['chunk_ms']:4d} ms  WER {row['wer']:.2f}%  RTF {row['rtf']:.4f}  final p50/p90 "
          f"{ms(row['final_ms_p50'])}/{ms(row['final_ms_p90'])} ms  first partial p50/p90 "
          f"{ms(row['first_partial_ms_p50'])}/{ms(row['first_partial_ms_p90'])} ms", flush=True)


if __name__ == "__main__":
    run_script(main)
