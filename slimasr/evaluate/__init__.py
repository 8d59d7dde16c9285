"""Evaluation: recognition quality (error rates, intents) and model cost (size, MACs, latency).

stats = ErrorRateStats()                    # normalizes text with normalize_text
stats.append(ids, hyps, refs); quality = stats.summarize()
cost = cost_report(model, model_dir)        # params, MACs, latency, RTF, bytes, memory
"""

from slimasr.evaluate.cost import (
    cost_report,
    count_macs,
    count_nonzero_params,
    count_params,
    macs_per_second_audio,
    measure_latency,
    model_bytes,
    peak_memory_mb,
)
from slimasr.evaluate.metrics import ErrorRateStats, UtteranceScore, intent_metrics, score_utterance

__all__ = [
    "ErrorRateStats",
    "UtteranceScore",
    "cost_report",
    "count_macs",
    "count_nonzero_params",
    "count_params",
    "intent_metrics",
    "macs_per_second_audio",
    "measure_latency",
    "model_bytes",
    "peak_memory_mb",
    "score_utterance",
]
