"""The parity check: the ONNX graph computes what the PyTorch model computes.

    cases = parity_cases(wrapper, lengths=[37, 160, 523], real=[feats_1, feats_2, feats_3])
    result = check_parity(wrapper, session, cases, atol=1e-4)   # raises ExportCheckFailed

Each case runs through both; on valid frames the log-probs must agree within ``atol`` and the
greedy token sequences must be identical. Cases: every length alone (batch 1), then all of them
as one padded batch (so padding is proven not to leak), for synthetic fbank drawn around the
CMVN mean (``mean + std * N(0, 1)``, seeded) and for real utterances when given.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from slimasr.decode import greedy_decode
from slimasr.errors import DataError
from slimasr.export.graph import ExportWrapper
from slimasr.runtime import run_session

PARITY_SEED = 0  # seed of the synthetic fbank


class ExportCheckFailed(DataError):
    """A check the export runs failed (parity, the int8 WER gate): nothing was published."""


Case = tuple[str, Tensor, Tensor]  # (label, x (N, T, F), x_lens (N,))


def parity_cases(wrapper: ExportWrapper, lengths: Sequence[int], real: Sequence[Tensor] = ()) -> list[Case]:
    """Batch-1 and padded-batch cases: synthetic fbank of ``lengths`` frames, and ``real``
    utterances' raw fbank ``(T_i, F)``."""
    gen = torch.Generator().manual_seed(PARITY_SEED)
    synthetic = [wrapper.mean + wrapper.std * torch.randn(t, wrapper.num_features, generator=gen)
                 for t in lengths]
    return [*_cases("synthetic", synthetic), *_cases("real", list(real))]


def _cases(kind: str, feats: list[Tensor]) -> list[Case]:
    if not feats:
        return []
    cases = [(f"{kind} batch 1, {f.shape[0]} frames", f[None], torch.tensor([f.shape[0]])) for f in feats]
    if len(feats) > 1:
        lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        cases.append((f"{kind} padded batch of {len(feats)}", padded, lens))
    return cases


def check_parity(wrapper: ExportWrapper, session, cases: Sequence[Case], atol: float,
                 where: str | None = None) -> dict:
    """Run every case through ``wrapper`` and the onnxruntime ``session``. Returns
    ``{"parity_max_abs_diff", "parity_tolerance", "parity_cases", "parity_transcripts_equal"}``;
    raises ExportCheckFailed (naming ``where``) past ``atol`` or on any differing transcript."""
    worst, worst_case = 0.0, ""
    for label, x, x_lens in cases:
        diff, same_ids = compare_case(wrapper, session, x, x_lens)
        if diff > worst:
            worst, worst_case = diff, label
        if not same_ids:
            raise ExportCheckFailed(where, f"parity check failed: greedy transcripts differ ({label}; "
                                           f"max |ONNX - PyTorch| {diff:.3g}); nothing published")
    if worst > atol:
        raise ExportCheckFailed(where, f"parity check failed: max |ONNX - PyTorch| on log-probs is "
                                       f"{worst:.3g} > {atol:g} ({worst_case}); nothing published")
    return {"parity_max_abs_diff": worst, "parity_tolerance": atol,
            "parity_cases": [label for label, _, _ in cases], "parity_transcripts_equal": True}


def compare_case(wrapper: ExportWrapper, session, x: Tensor, x_lens: Tensor) -> tuple[float, bool]:
    """(max |ONNX - PyTorch| over valid frames, whether the greedy token ids are identical)."""
    with torch.inference_mode():
        expected, lens = wrapper(x, x_lens)
    got, got_lens = run_session(session, x.numpy(), x_lens.numpy())
    if not np.array_equal(got_lens, lens.numpy()):
        return float("inf"), False
    got = torch.from_numpy(got)
    diffs = [_max_abs(got[i, :n] - expected[i, :n]) for i, n in enumerate(lens.tolist()) if n]
    same = greedy_decode(got, lens) == greedy_decode(expected, lens)
    return (max(diffs) if diffs else 0.0), same


def _max_abs(diff: Tensor) -> float:
    """max |diff|, with NaN counted as infinitely far."""
    return torch.nan_to_num(diff.abs(), nan=float("inf")).max().item()
