"""Model cost: parameters, size on disk, multiply-accumulates, latency and memory at batch 1.

    cost_report(model, model_dir)  # {"params", "nonzero_params", "macs_per_second_audio",
                                   #  "latency_ms_p50", "latency_ms_p90", "rtf", "model_bytes",
                                   #  "peak_memory_mb"}

Every measurement feeds the model what it sees in use: one utterance of ``seconds`` of audio as
``x: (1, T, feat_dim)`` with ``T = seconds * FRAMES_PER_SECOND`` (10 ms fbank frames), on the
device its parameters live on (CPU or CUDA).

- MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2: matrix products,
  convolutions, attention; element-wise ops are not counted). oneDNN and cuDNN are switched off
  while counting: their fused LSTM/GRU kernels are invisible to the counter (an LSTM would count
  as 0), while the plain kernels decompose into counted matrix products.
- Latency is wall-clock time of ``model(x, x_lens)`` under ``torch.inference_mode()``, after
  warm-up, with ``threads`` intra-op threads (restored afterwards); RTF = p50 latency / duration.
- Peak memory is tensor memory during one forward pass: the weights plus the largest amount of
  intermediate tensors alive at once. On CUDA it is ``torch.cuda.max_memory_allocated``; on CPU it
  is tracked per operator (RSS and tracemalloc cannot see the torch allocator's reuse). The
  Python/torch runtime itself (a few hundred MB) is not included.
"""

from __future__ import annotations

import time
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from slimasr.runtime.timing import latency_stats

FRAMES_PER_SECOND = 100  # 10 ms feature frames
FEAT_DIM = 80  # fbank bins the models take
AUDIO_SECONDS = 3.0  # a typical short command
MODEL_FILE = "model.safetensors"
MB = 2**20


# ---------------------------------------------------------------------------------------------
# Parameters and size


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared ones once)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Number of parameters that are not exactly zero (what unstructured pruning removes)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def model_bytes(source: str | Path | Mapping[str, torch.Tensor]) -> int:
    """Size of the weights file: ``MODEL_DIR`` (its model.safetensors), a file path, or a state
    dict (the size it would have as safetensors)."""
    if isinstance(source, Mapping):
        from safetensors.torch import save  # noqa: PLC0415

        return len(save({k: v.detach().cpu().clone().contiguous() for k, v in source.items()}))
    path = Path(source)
    return (path / MODEL_FILE if path.is_dir() else path).stat().st_size


# ---------------------------------------------------------------------------------------------
# MACs


def example_input(
    model: nn.Module, seconds: float = AUDIO_SECONDS, feat_dim: int = FEAT_DIM
) -> tuple[torch.Tensor, torch.Tensor]:
    """One utterance of random features on the model's device: ``x: (1, T, F)``, ``x_lens: (1,)``
    with ``T = seconds * FRAMES_PER_SECOND``."""
    frames = int(round(seconds * FRAMES_PER_SECOND))
    device = _device_of(model)
    x = torch.randn(1, frames, feat_dim, device=device)
    return x, torch.tensor([frames], dtype=torch.int64, device=device)


@contextmanager
def countable_kernels() -> Iterator[None]:
    """Switch off oneDNN and cuDNN so that RNNs run as matrix products the flop counter sees."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TF32.*")  # mkldnn.flags warns on every call
        with torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(enabled=False):
            yield


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one ``model(*inputs)`` call."""
    counter = FlopCounterMode(display=False)
    with countable_kernels(), torch.inference_mode(), counter:
        model(*inputs)
    return counter.get_total_flops() // 2


def macs_per_second_audio(
    model: nn.Module, feat_dim: int = FEAT_DIM, seconds: float = AUDIO_SECONDS
) -> float:
    """MACs to recognize one second of audio, measured on ``seconds`` of it at batch 1."""
    was_training = model.training
    model.eval()
    try:
        return count_macs(model, *example_input(model, seconds, feat_dim)) / seconds
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Latency and memory


LATENCY_KEYS = ("latency_ms_p50", "latency_ms_p90", "rtf", "latency_cpu")  # measure_latency's


def measure_latency(
    model: nn.Module,
    seconds: float = AUDIO_SECONDS,
    threads: int = 1,
    warmup: int = 5,
    runs: int = 30,
    feat_dim: int = FEAT_DIM,
) -> dict[str, float]:
    """Batch-1 latency of ``seconds`` of audio: ``latency_stats``'s keys."""
    x, x_lens = example_input(model, seconds, feat_dim)
    timings = []
    old_threads = torch.get_num_threads()
    was_training = model.training
    model.eval()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for i in range(warmup + runs):
                _synchronize(x.device)
                start = time.perf_counter()
                model(x, x_lens)
                _synchronize(x.device)
                if i >= warmup:
                    timings.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return latency_stats(timings, seconds)


def interleaved_latency(calls: Sequence[Callable[[], Any]], seconds: float, warmup: int = 5,
                        runs: int = 30) -> list[dict[str, float]]:
    """Batch-1 latency of several models timed in turns, one call of each per round (the first
    ``warmup`` rounds not counted): a machine that slows down or speeds up while they are timed
    moves every model alike, so their ratios (the report's speed-ups) hold. ``calls``: one
    forward pass each on ``seconds`` of audio; ``latency_stats`` of each, in their order."""
    timings: list[list[float]] = [[] for _ in calls]
    for i in range(warmup + runs):
        for call, times in zip(calls, timings):
            start = time.perf_counter()
            call()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return [latency_stats(times, seconds) for times in timings]


def peak_memory_mb(
    model: nn.Module, seconds: float = AUDIO_SECONDS, feat_dim: int = FEAT_DIM
) -> float:
    """Peak tensor memory (weights + live intermediates) of one batch-1 forward pass, in MiB."""
    x, x_lens = example_input(model, seconds, feat_dim)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
                torch.cuda.reset_peak_memory_stats(x.device)
                model(x, x_lens)
                return torch.cuda.max_memory_allocated(x.device) / MB
            resident = [*model.parameters(), *model.buffers(), x, x_lens]
            tracker = _LiveTensorBytes(resident)
            with tracker:
                model(x, x_lens)
            return (_storage_bytes(resident) + tracker.peak) / MB
    finally:
        model.train(was_training)


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created by operators and still alive; keeps the peak.

    Storages are keyed by data pointer and counted once however many views share them; a
    storage is released when the last tensor seen using it is garbage-collected. Storages that
    existed before (weights, inputs) are never counted, even through views."""

    def __init__(self, resident: list[torch.Tensor]):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._users: dict[int, list[int]] = {}  # data_ptr -> [bytes, number of live tensors]
        self._resident = {t.untyped_storage().data_ptr() for t in resident}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or ptr in self._resident:
            return
        entry = self._users.get(ptr)
        if entry is None:
            entry = self._users[ptr] = [size, 0]
            self.live += size
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self._users.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._users[ptr]


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Everything at once


def cost_report(
    model: nn.Module,
    model_dir: str | Path | None = None,
    seconds: float = AUDIO_SECONDS,
    threads: int = 1,
    feat_dim: int = FEAT_DIM,
    timed: bool = True,
) -> dict[str, float | int | None]:
    """The cost keys of ``evaluate --json``: params, nonzero_params, macs_per_second_audio,
    latency_ms_p50, latency_ms_p90, rtf, latency_cpu, model_bytes, peak_memory_mb.
    ``model_bytes`` is the size of ``model_dir``'s model.safetensors, or of the state dict as
    safetensors. ``timed`` False: the latency keys are None (timed later, with nothing running
    beside: ``LATENCY_KEYS``)."""
    return {
        "params": count_params(model),
        "nonzero_params": count_nonzero_params(model),
        "macs_per_second_audio": macs_per_second_audio(model, feat_dim, seconds),
        **(measure_latency(model, seconds, threads, feat_dim=feat_dim) if timed
           else dict.fromkeys(LATENCY_KEYS)),
        "model_bytes": model_bytes(model_dir if model_dir is not None else model.state_dict()),
        "peak_memory_mb": peak_memory_mb(model, seconds, feat_dim),
    }
