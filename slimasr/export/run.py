"""``slimasr export``: a model directory becomes a deployment bundle (``slimasr.runtime.bundle``).

    result = export_model("exp/teacher", "exp/teacher_bundle", ExportConfig(int8=True))

``BUNDLE_DIR`` follows the rules of every writing verb (``slimasr.io``): it is locked while the
export writes it, an earlier bundle there is replaced only with ``overwrite``, and a folder
holding anything else is refused. Steps, all inside a temporary folder in ``BUNDLE_DIR`` whose
files are moved into place only when every check passed, so a failed export publishes nothing:

1. load the model and its front end; fold global CMVN into the graph; export ``model.onnx``;
2. parity: ONNX against PyTorch on synthetic and real inputs (``slimasr.export.parity``);
3. write ``tokens.txt`` (and a sentencepiece model's ``tokenizer.model``) and ``bundle.json``;
4. with ``int8``: quantize (``slimasr.export.quantize``; a causal model's streaming graph too),
   then score fp32 and int8 (the streaming int8 graph streamed) on the dev split (or
   ``wer_manifest``); an int8 WER more than ``max_wer_increase`` above fp32 fails;
5. measure sizes and batch-1 latency, and record everything in ``bundle.json``;
6. publish (``publish``): the bundle's files replace an earlier bundle's, ``bundle.json`` last;
   the earlier graphs' evaluation results go with them; nothing else in the folder is touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from slimasr import __version__
from slimasr.config import check_numbers, config_to_dict
from slimasr.decode import word_separator
from slimasr.errors import ConfigError, DataError
from slimasr.evaluate.outputs import RESULT_NAMES
from slimasr.export.graph import ExportWrapper, export_onnx
from slimasr.export.parity import ExportCheckFailed, check_parity, parity_cases
from slimasr.export.quantize import quantize_int8
from slimasr.export.streaming import write_streaming
from slimasr.frontend import Frontend
from slimasr.io import LOCK_NAME, TMP_PREFIX, atomic_path, file_sha256, output_lock, write_json_atomic
from slimasr.runtime.bundle import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    BUNDLE_NAMES,
    BUNDLE_VERSION,
    INT8_FILE,
    MODEL_FILE,
    STREAMING_FILE,
    STREAMING_INT8_FILE,
    TOKENIZER_MODEL,
    TOKENS_FILE,
    tokens_txt,
)
from slimasr.runtime.recognizer import OnnxRecognizer, measure_session_latency, open_session

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"  # the source model's weights (hashed into bundle.json)
# Feature settings sherpa-onnx's fbank shares with ours (its defaults; ours are lhotse's Kaldi ones)
SHERPA_FEATURES = {"frame_shift": 0.01, "frame_length": 0.025, "denoise": False}


@dataclass
class ExportConfig:
    opset: int = 17  # ONNX opset (17: LayerNormalization is one op; onnxruntime >= 1.14 runs it)
    int8: bool = False  # also write model.int8.onnx (dynamic quantization), gated by dev WER
    # operators whose weights become int8; Conv stays fp32 (slower as int8). Measured: docs/export.md
    int8_op_types: list[str] = field(default_factory=lambda: ["MatMul", "LSTM"])
    int8_per_channel: bool = False  # one scale per output channel: no better once the head is fp32
    int8_keep_head_fp32: bool = True  # output layer in fp32: 1/20 of the log-prob error, +0.2% bytes
    max_wer_increase: float = 0.5  # absolute WER points int8 may add over fp32, else it is refused
    parity_atol: float = 1e-4  # largest |ONNX - PyTorch| allowed on any valid log-prob
    parity_lengths: list[int] = field(
        default_factory=lambda: [37, 160, 523])  # synthetic inputs (frames): each alone, then padded
    parity_utterances: int = 3  # real utterances checked the same way (from the WER manifest, if any)
    wer_manifest: str | None = None  # cuts to score WER on (--calib); None: the training data's dev split
    max_wer_utterances: int | None = None  # score only the first N utterances (None: all)
    # utterances per onnxruntime call while scoring. 1: int8 activations are quantized with scales
    # taken over the whole batch, padding included, so int8 output depends on the batch; a device
    # recognizes one utterance at a time
    wer_batch: int = 1
    latency_seconds: float = 3.0  # utterance length for the batch-1 latency
    latency_threads: int = 1  # threads while timing latency (a device's core)
    # time each graph's batch-1 latency into bundle.json; off where the export may run beside
    # other work (the demo's pipeline: its latency stage times the models alone afterwards)
    latency: bool = True
    # causal models also get model.streaming.onnx; this is the chunk sherpa-onnx feeds it (its
    # metadata T, rounded up to a multiple of the subsampling); slimasr's runner takes any chunk
    streaming_chunk_ms: float = 160.0

    def __post_init__(self) -> None:
        check_numbers("export", self, positive=("opset", "parity_atol", "wer_batch", "latency_seconds",
                                                "latency_threads", "max_wer_utterances",
                                                "streaming_chunk_ms"),
                      non_negative=("max_wer_increase", "parity_utterances"))
        if not self.parity_lengths or min(self.parity_lengths) < 1:
            raise ConfigError("export.parity_lengths needs at least one length, each >= 1 frame")


@dataclass
class Source:
    """The model directory being exported, loaded."""

    path: Path
    config: dict  # its config.json
    wrapper: ExportWrapper  # CMVN + model, eval mode
    frontend: Frontend


def export_model(model_dir: str | Path, out_dir: str | Path, config: ExportConfig | None = None,
                 overwrite: bool = False) -> dict:
    """Export ``model_dir`` to the bundle folder ``out_dir``; returns bundle.json's content."""
    config = config or ExportConfig()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_bundle_out(out_dir, model_dir, overwrite)  # before the lock: an input is never locked
    source = load_source(model_dir)
    if (sparse := stored_sparse(source)) is not None:
        log.info("%s: stored sparse (%.1f%% of its weight matrices' entries are zero); the bundle "
                 "holds them as dense tensors, zeros included (docs/export.md)", model_dir,
                 100 * sparse["zero_share"])
    cuts, manifest = scoring_cuts(source, config)
    if config.int8 and cuts is None:
        raise DataError(model_dir, "--int8 needs utterances to check WER on: its training data has "
                                   "no dev split here; pass --calib MANIFEST")
    with output_lock(out_dir, "export"), staging_dir(out_dir) as tmp:
        check_bundle_out(out_dir, model_dir, overwrite)  # again, as the only writer
        info = write_fp32(source, tmp, config, real_features(source, cuts, config.parity_utterances))
        wer = measure_wers(tmp, cuts, manifest, config)
        info["results"].update(wer)
        if config.int8:
            check_wer_gate(wer, config, model_dir)
        info["results"].update(measure_cost(source, tmp, config))
        write_json_atomic(tmp / BUNDLE_FILE, info)
        publish(tmp, out_dir)
    log.info("wrote %s", out_dir)
    return info


def check_bundle_out(out_dir: Path, model_dir: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an earlier bundle (or what is left of one: its files and
    their evaluation results only), and an earlier bundle without ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "exists and is not a folder")
    if out_dir.resolve() == model_dir.resolve():
        raise DataError(out_dir, "is the model directory itself; choose another --out folder")
    found = _entries(out_dir)
    if not found:
        return
    if not (out_dir / BUNDLE_FILE).is_file() and not set(found) <= {*BUNDLE_NAMES, *RESULT_NAMES}:
        raise DataError(out_dir, "holds files that are not a slimasr bundle; choose another --out folder")
    if not overwrite:
        raise DataError(out_dir, "already holds a bundle; pass --overwrite to replace it")


def _entries(out_dir: Path) -> list[str]:
    """The names in ``out_dir`` besides the lock and temporary files of a writer."""
    if not out_dir.is_dir():
        return []
    return [p.name for p in out_dir.iterdir() if p.name != LOCK_NAME and not p.name.startswith(TMP_PREFIX)]


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary folder inside ``out_dir`` (same file system: its files move in by rename),
    removed with whatever is left in it."""
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out_dir: Path) -> None:
    """Move the bundle in ``tmp`` into ``out_dir``. bundle.json goes first (a half-replaced bundle
    never reads as complete) and comes back last; an earlier bundle's files that this one lacks
    (an int8 graph) and the evaluation results of its graphs (they describe the old graphs) are
    removed; nothing else in ``out_dir`` is touched."""
    (out_dir / BUNDLE_FILE).unlink(missing_ok=True)
    for name in RESULT_NAMES:
        (out_dir / name).unlink(missing_ok=True)
    for name in BUNDLE_NAMES:
        if name == BUNDLE_FILE:
            continue
        if (tmp / name).is_file():
            os.replace(tmp / name, out_dir / name)
        else:
            (out_dir / name).unlink(missing_ok=True)
    os.replace(tmp / BUNDLE_FILE, out_dir / BUNDLE_FILE)


def load_source(model_dir: Path) -> Source:
    from slimasr.models import load_model, read_model_config

    config = read_model_config(model_dir)
    frontend = Frontend.load(model_dir)
    model = load_model(model_dir)
    if model.config.num_features != frontend.features.num_mel_bins:
        raise DataError(model_dir / "config.json", f"the model takes {model.config.num_features} "
                        f"features, the feature config gives {frontend.features.num_mel_bins}")
    return Source(model_dir, config, ExportWrapper(model, frontend.cmvn), frontend)


# ---------------------------------------------------------------------------------------------
# The fp32 graph, tokens.txt and bundle.json


def write_fp32(source: Source, tmp: Path, config: ExportConfig, real: list[torch.Tensor]) -> dict:
    """Export model.onnx into ``tmp``, check parity, write tokens.txt and a first bundle.json."""
    model_path = tmp / MODEL_FILE
    export_onnx(source.wrapper, model_path, config.opset, onnx_metadata(source))
    cases = parity_cases(source.wrapper, config.parity_lengths, real)
    parity = check_parity(source.wrapper, open_session(model_path), cases, config.parity_atol,
                          where=str(source.path))
    with atomic_path(tmp / TOKENS_FILE) as path:
        path.write_text(tokens_txt(source.frontend.tokenizer.tokens), encoding="utf-8")
    if getattr(source.frontend.tokenizer, "kind", "char") != "char":
        shutil.copyfile(source.path / TOKENIZER_MODEL, tmp / TOKENIZER_MODEL)
    info = bundle_info(source, config)
    info["results"].update(parity)
    info["streaming"] = write_streaming(source, tmp, config, real)  # None unless the model is causal
    info["files"]["model_streaming"] = info["streaming"] and info["streaming"]["file"]
    if config.int8:
        quantize_int8(model_path, tmp / INT8_FILE, config.int8_op_types, config.int8_per_channel,
                      config.int8_keep_head_fp32)
        info["files"]["model_int8"] = INT8_FILE
        if info["streaming"]:
            quantize_int8(tmp / STREAMING_FILE, tmp / STREAMING_INT8_FILE, config.int8_op_types,
                          config.int8_per_channel, config.int8_keep_head_fp32)
            info["files"]["model_streaming_int8"] = info["streaming"]["int8_file"] = STREAMING_INT8_FILE
    write_json_atomic(tmp / BUNDLE_FILE, info)
    return info


def stored_sparse(source: Source) -> dict[str, Any] | None:
    """bundle.json's ``source.sparse``: for a model saved in the compact sparse form, the share of
    zeros among its weight matrices' entries, exported dense (None for a dense model)."""
    if not source.config.get("sparse", False):
        return None
    matrices = [p for p in source.wrapper.model.parameters() if p.dim() > 1]
    zeros = sum(int((p == 0).sum()) for p in matrices)
    return {"zero_share": zeros / max(sum(p.numel() for p in matrices), 1), "exported": "dense"}


def onnx_metadata(source: Source) -> dict[str, str]:
    """metadata_props of model.onnx. ``model_type``: sherpa-onnx's name for this I/O contract
    (lets it detect the model without being told)."""
    model = source.wrapper.model
    return {"model_type": "zipformer2_ctc", "producer": f"slimasr {__version__}",
            "architecture": model.arch, "vocab_size": str(model.vocab_size),
            "subsampling_factor": str(model.subsampling), "feature_dim": str(model.config.num_features),
            "cmvn_folded": "1", "blank_id": "0"}


def bundle_info(source: Source, config: ExportConfig) -> dict[str, Any]:
    """bundle.json before measurements (docs/export.md lists every key)."""
    from slimasr.evaluate.cost import macs_per_second_audio

    model, frontend = source.wrapper.model, source.frontend
    kind = getattr(frontend.tokenizer, "kind", "char")
    features = config_to_dict(frontend.features)
    sherpa = all(features.get(k) == v for k, v in SHERPA_FEATURES.items())
    feat_dim = model.config.num_features
    return {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "slimasr_version": __version__,
        "files": {"model": MODEL_FILE, "model_int8": None, "tokens": TOKENS_FILE,
                  "tokenizer_model": None if kind == "char" else TOKENIZER_MODEL,
                  "model_streaming": None, "model_streaming_int8": None},
        "source": {"model_dir": str(source.path.resolve()), "architecture": model.arch,
                   "weights_sha256": file_sha256(source.path / WEIGHTS_FILE),
                   "params": sum(p.numel() for p in model.parameters()),
                   "macs_per_second_audio": macs_per_second_audio(model, feat_dim, config.latency_seconds),
                   "sparse": stored_sparse(source)},
        "graph": {"inputs": {"x": ["N", "T", model.config.num_features], "x_lens": ["N"]},
                  "outputs": {"log_probs": ["N", "T_out", model.vocab_size], "log_probs_len": ["N"]},
                  "opset": config.opset, "cmvn_folded": frontend.cmvn is not None},
        "vocabulary": {"kind": kind, "tokens": list(frontend.tokenizer.tokens), "blank_id": 0,
                       "word_separator": word_separator(kind)},
        "features": features, "feature_dim": model.config.num_features,
        "normalizer": config_to_dict(frontend.normalizer),
        "subsampling_factor": model.subsampling,
        "sherpa_onnx": {"compatible": sherpa, "sample_rate": frontend.features.sampling_rate,
                        "feature_dim": model.config.num_features},
        "int8": ({"op_types": list(config.int8_op_types), "per_channel": config.int8_per_channel,
                  "keep_head_fp32": config.int8_keep_head_fp32} if config.int8 else None),
        "streaming": None,  # model.streaming.onnx's entry (slimasr.export.streaming), causal models only
        "results": {},
    }


# ---------------------------------------------------------------------------------------------
# Utterances: parity inputs and WER


def scoring_cuts(source: Source, config: ExportConfig) -> tuple[Any, str | None]:
    """(cuts, manifest name) to score WER on: ``wer_manifest``, else the dev split of the data the
    model was trained on (config.json's provenance), else (None, None)."""
    from slimasr.data.manifests import load_cuts, split_path

    if config.wer_manifest:
        cuts = load_cuts(config.wer_manifest)
        manifest = config.wer_manifest
    else:
        data_dir = (source.config.get("provenance") or {}).get("data_dir")
        dev = split_path(data_dir, "dev") if data_dir else None
        if dev is None or not dev.is_file():
            return None, None
        cuts, manifest = load_cuts(dev), str(dev)
    if config.max_wer_utterances is not None:
        cuts = cuts.subset(first=config.max_wer_utterances)
    return cuts, manifest


def real_features(source: Source, cuts: Any, count: int) -> list[torch.Tensor]:
    """Raw fbank ``(T, F)`` of the first ``count`` utterances (none without cuts)."""
    from slimasr.data.features import compute_fbank

    if cuts is None or count == 0:
        return []
    return [compute_fbank(c.load_audio().reshape(-1), source.frontend.features)
            for c in cuts.subset(first=count)]


def measure_wers(bundle_dir: Path, cuts: Any, manifest: str | None, config: ExportConfig) -> dict:
    """Greedy WER of model.onnx (and model.int8.onnx, and model.streaming.int8.onnx streamed in
    ``streaming_chunk_ms`` chunks) on ``cuts``; nulls without cuts. The fp32 streaming graph needs no
    score: its parity check holds it to model.onnx's log-probs."""
    result = {"wer_manifest": manifest, "wer_utterances": 0, "wer_fp32": None, "wer_int8": None,
              "wer_streaming_int8": None}
    if cuts is None:
        return result
    recognizer = OnnxRecognizer(bundle_dir / MODEL_FILE)
    result["wer_fp32"], result["wer_utterances"] = score(recognizer, cuts, config.wer_batch)
    if config.int8:
        result["wer_int8"] = score(OnnxRecognizer(bundle_dir / INT8_FILE), cuts, config.wer_batch)[0]
    if (bundle_dir / STREAMING_INT8_FILE).is_file():
        from slimasr.runtime.streaming import OnnxStreamingRecognizer

        streaming = OnnxStreamingRecognizer(bundle_dir, config.streaming_chunk_ms, int8=True)
        result["wer_streaming_int8"] = score(streaming, cuts, 1, recognizer.frontend.normalize)[0]
    return result


def score(recognizer: Any, cuts: Any, batch: int, normalize: Any = None) -> tuple[float, int]:
    """(WER in percent, utterances) of greedy transcripts, scored as ``slimasr evaluate`` scores.
    ``recognizer``: an OnnxRecognizer (``transcribe_batch``) or a streaming one (``transcribe``,
    ``batch`` 1, with the bundle's ``normalize``)."""
    from slimasr.evaluate.metrics import ErrorRateStats
    from slimasr.data.manifests import transcript

    stats = ErrorRateStats(normalize=normalize or recognizer.frontend.normalize)
    for group in _batches(cuts, batch):
        audio = [c.load_audio().reshape(-1) for c in group]
        hyps = (recognizer.transcribe_batch(audio) if hasattr(recognizer, "transcribe_batch")
                else [recognizer.transcribe(a) for a in audio])
        stats.append([c.id for c in group], hyps, [transcript(c) for c in group])
    summary = stats.summarize()
    return summary["wer"], summary["num_utterances"]


def _batches(cuts: Any, size: int):
    group = []
    for cut in cuts:
        group.append(cut)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def check_wer_gate(wer: dict, config: ExportConfig, model_dir: Path) -> None:
    """ExportCheckFailed when the WER of an int8 graph (offline, or streaming) exceeds fp32 WER by
    more than ``max_wer_increase``."""
    for key, what in (("wer_int8", "int8"), ("wer_streaming_int8", "streaming int8")):
        if wer[key] is None:
            continue
        rise = wer[key] - wer["wer_fp32"]
        if rise > config.max_wer_increase:
            raise ExportCheckFailed(
                model_dir, f"{what} WER {wer[key]:.2f}% is {rise:.2f} above fp32 {wer['wer_fp32']:.2f}% "
                           f"on {wer['wer_utterances']} utterances of {wer['wer_manifest']} (allowed: "
                           f"{config.max_wer_increase:g}); nothing published: export without --int8, or "
                           "quantize fewer operators (int8_op_types=...)")


# ---------------------------------------------------------------------------------------------
# Size and latency


def measure_cost(source: Source, bundle_dir: Path, config: ExportConfig) -> dict:
    """Bytes on disk and batch-1 latency (p50/p90 ms) of PyTorch, ONNX fp32 and ONNX int8
    (bytes only, latency settings null, with ``config.latency`` off)."""
    from slimasr.evaluate.cost import measure_latency

    seconds, threads = config.latency_seconds, config.latency_threads
    result: dict[str, Any] = {"latency_seconds": seconds if config.latency else None,
                              "latency_threads": threads if config.latency else None,
                              "bytes_pytorch": (source.path / WEIGHTS_FILE).stat().st_size}
    if not config.latency:
        return {**result, **{f"bytes_{label}": (bundle_dir / name).stat().st_size
                             for label, name in (("fp32", MODEL_FILE), ("int8", INT8_FILE))
                             if (bundle_dir / name).is_file()}}
    torch_latency = measure_latency(source.wrapper, seconds, threads, feat_dim=source.wrapper.num_features)
    result.update({**_suffixed(torch_latency, "pytorch"), "latency_cpu": torch_latency["latency_cpu"]})
    for label, name in (("fp32", MODEL_FILE), ("int8", INT8_FILE)):
        path = bundle_dir / name
        if path.is_file():
            result[f"bytes_{label}"] = path.stat().st_size
            session = open_session(path, threads)
            latency = measure_session_latency(session, source.wrapper.num_features, seconds)
            result.update(_suffixed(latency, label))
    return result


def _suffixed(latency: dict, label: str) -> dict:
    return {f"{key}_{label}": value for key, value in latency.items()
            if key not in ("rtf", "latency_cpu")}

