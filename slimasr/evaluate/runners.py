"""What ``evaluate`` runs: a PyTorch model directory, or an exported bundle on onnxruntime.

    runner = load_runner("exp/student_onnx/model.int8.onnx", device)   # OnnxRunner
    log_probs, lens = runner.model(x, x_lens)     # x: (N, T, F) as runner.frontend makes it
    runner.output_frames(300)                     # output frames for 300 input frames
    runner.cost(seconds=3.0, threads=1)           # the cost keys of metrics.json
    runner.latency(seconds=3.0, threads=1)        # only its batch-1 latency keys
    runner.timed_call(seconds=3.0, threads=1)()   # one batch-1 forward pass (cost.interleaved_latency)

Both give the same metrics.json keys. A bundle's cost keys: ``params`` from bundle.json's source
model (else counted over model.onnx's float initializers), ``macs_per_second_audio`` from
bundle.json's source (null when the export did not record it), ``model_bytes`` the .onnx file's
size, latency and RTF of the onnxruntime session at batch 1, ``nonzero_params`` and
``peak_memory_mb`` null (not measured for onnxruntime).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from slimasr.decode import word_separator
from slimasr.errors import DataError
from slimasr.evaluate.cost import LATENCY_KEYS, cost_report, example_input, measure_latency
from slimasr.frontend import Frontend
from slimasr.runtime.bundle import MODEL_FILE, TOKENIZER_MODEL, is_bundle
from slimasr.runtime.recognizer import (
    FRAMES_PER_SECOND,
    OnnxRecognizer,
    TokenList,
    measure_session_latency,
    open_session,
    run_session,
)


class TorchRunner:
    """A model directory in PyTorch, recognizing batches of up to ``max_duration`` seconds."""

    runtime = "pytorch"
    max_cuts = None  # utterances per batch: no limit beyond the duration

    def __init__(self, model_dir: str | Path, device: torch.device):
        from slimasr.models import load_model

        self.folder = Path(model_dir)
        self.device = device
        self.model = load_model(model_dir).to(device).eval()
        self.frontend = Frontend.load(model_dir)
        self.word_sep = word_separator(self.frontend.tokenizer.kind)

    def output_frames(self, num_frames: int) -> int:
        return int(self.model.output_lengths(torch.tensor([num_frames], dtype=torch.int64))[0])

    def cost(self, seconds: float, threads: int, timed: bool = True) -> dict[str, Any]:
        return cost_report(self.model.cpu(), self.folder, seconds=seconds, threads=threads,
                           feat_dim=self.model.config.num_features, timed=timed)

    def latency(self, seconds: float, threads: int) -> dict[str, float]:
        return measure_latency(self.model.cpu(), seconds, threads, feat_dim=self.model.config.num_features)

    def timed_call(self, seconds: float, threads: int) -> Callable[[], Any]:
        """One batch-1 forward pass on ``seconds`` of random features, on the CPU (torch's thread
        count is the caller's to set)."""
        model = self.model.cpu().eval()
        x, x_lens = example_input(model, seconds, self.model.config.num_features)

        def call() -> None:
            with torch.inference_mode():
                model(x, x_lens)

        return call


class OnnxRunner:
    """A bundle graph on onnxruntime (CPU), one utterance per call: dynamic int8 quantization
    takes its scales over the whole batch, padding included, so batching would change an int8
    model's output; a device recognizes one utterance at a time too."""

    runtime = "onnxruntime"
    max_cuts = 1

    def __init__(self, path: str | Path):
        self.device = torch.device("cpu")
        self.model = OnnxRecognizer(path, num_threads=torch.get_num_threads())
        self.frontend = self.model.frontend  # no CMVN: the graph holds it
        if isinstance(self.frontend.tokenizer, TokenList):
            raise DataError(self.model.bundle.path, f"a {self.model.bundle.kind} bundle without "
                            f"{TOKENIZER_MODEL}, which scoring needs to apply evaluate's exclusion "
                            "rules; export the model again")
        self.word_sep = self.model.bundle.word_separator

    def output_frames(self, num_frames: int) -> int:
        return int(self.model.output_lengths([num_frames])[0])

    def cost(self, seconds: float, threads: int, timed: bool = True) -> dict[str, Any]:
        bundle, path = self.model.bundle, self.model.model_path
        source = bundle.info.get("source") or {}
        return {
            "params": source.get("params") or onnx_params(bundle.path / MODEL_FILE),
            "nonzero_params": None,
            "macs_per_second_audio": source.get("macs_per_second_audio"),
            **(self.latency(seconds, threads) if timed else dict.fromkeys(LATENCY_KEYS)),
            "model_bytes": path.stat().st_size,
            "peak_memory_mb": None,
        }

    def latency(self, seconds: float, threads: int) -> dict[str, float]:
        return measure_session_latency(open_session(self.model.model_path, threads), self.feat_dim, seconds)

    def timed_call(self, seconds: float, threads: int) -> Callable[[], Any]:
        """One batch-1 call of a session with ``threads`` threads on ``seconds`` of random features."""
        session = open_session(self.model.model_path, threads)
        frames = int(round(seconds * FRAMES_PER_SECOND))
        x = np.random.default_rng(0).standard_normal((1, frames, self.feat_dim)).astype(np.float32)
        x_lens = np.array([frames], dtype=np.int64)
        return lambda: run_session(session, x, x_lens)

    @property
    def feat_dim(self) -> int:
        bundle = self.model.bundle
        return int(bundle.info.get("feature_dim") or bundle.features.num_mel_bins)


def load_runner(path: str | Path, device: torch.device) -> TorchRunner | OnnxRunner:
    """An ``OnnxRunner`` for a bundle folder or one of its .onnx files, else a ``TorchRunner``."""
    return OnnxRunner(path) if is_bundle(path) else TorchRunner(path, device)


def onnx_params(model_path: str | Path) -> int:
    """Number of values in an ONNX graph's floating-point initializers (its weights; CMVN folded
    into the graph counts too)."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    graph = onnx.load(str(model_path)).graph
    return sum(math.prod(t.dims) for t in graph.initializer if t.data_type in floats)
