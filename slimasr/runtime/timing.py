"""Latency statistics, and the machine they were measured on (latency means little without it).
Shared by the runtime (onnxruntime sessions) and ``slimasr.evaluate.cost`` (PyTorch models)."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np


def latency_stats(timings: Sequence[float], seconds: float) -> dict[str, float | str]:
    """``{"latency_ms_p50", "latency_ms_p90", "rtf", "latency_cpu"}`` of wall times (s) of
    ``seconds`` of audio (``latency_cpu``: the processor they were timed on)."""
    p50, p90 = (1000.0 * float(np.percentile(timings, q)) for q in (50, 90))
    return {"latency_ms_p50": p50, "latency_ms_p90": p90, "rtf": p50 / 1000.0 / seconds,
            "latency_cpu": cpu_name()}


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """``"AMD EPYC (2 cores)"``: the processor's model name (Linux ``/proc/cpuinfo``, else
    ``platform``) and the logical cores this process may use."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                model = " ".join(value.split())
                break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores)"
