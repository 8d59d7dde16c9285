"""Would sparse kernels speed up a sparse LSTM at batch 1? One LSTM direction of the shipped
teacher's shape (640 -> 320, 75 frames = 3 s at x4), one thread: the fused nn.LSTM (dense, and
with the pruned weights squashed) against the only way to use torch's CSR kernels in it — the
input projection as one CSR matmul over all frames and the recurrence stepped in Python (W_hh
dense, or CSR too), checked equal to the fused kernel. Medians of 60 timings after 10 warm-ups.

    python bench/sparse_lstm_probe.py bench/results/sparsity/sparse_lstm_probe.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Callable

import torch

FRAMES, INPUT, HIDDEN = 75, 640, 320
SPARSITIES = (0.5, 0.8, 0.9, 0.95)


def median_ms(fn: Callable[[], object], runs: int = 60, warm: int = 10) -> float:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def magnitude_pruned(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``w`` with its ``sparsity`` share of smallest-magnitude entries zeroed."""
    k = int(sparsity * w.numel())
    threshold = w.abs().flatten().kthvalue(k).values if k else -1
    return torch.where(w.abs() > threshold, w, torch.zeros(()))


def stepped_lstm(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One LSTM direction over ``x`` (T, I): the input projection for all frames at once, then the
    recurrence a frame at a time. ``w_ih`` and ``w_hh`` may be dense or sparse CSR."""
    gates_x = (w_ih @ x.T).T + bias  # (T, 4H)
    h, c = torch.zeros(HIDDEN), torch.zeros(HIDDEN)
    out = []
    for t in range(x.shape[0]):
        i, f, g, o = (gates_x[t] + (w_hh @ h[:, None])[:, 0]).chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out)


def measure(lstm: torch.nn.LSTM, x: torch.Tensor, dense_ms: float, sparsity: float) -> dict:
    w_ih = magnitude_pruned(lstm.weight_ih_l0.detach(), sparsity)
    w_hh = magnitude_pruned(lstm.weight_hh_l0.detach(), sparsity)
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    csr_ih, csr_hh = w_ih.to_sparse_csr(), w_hh.to_sparse_csr()
    frames = x[:, 0, :]
    squashed = torch.nn.LSTM(INPUT, HIDDEN).eval()  # the fused kernel with the same pruned weights
    squashed.weight_ih_l0.copy_(w_ih)
    squashed.weight_hh_l0.copy_(w_hh)
    squashed.bias_ih_l0.copy_(lstm.bias_ih_l0)
    squashed.bias_hh_l0.copy_(lstm.bias_hh_l0)
    error = float((squashed(x)[0][:, 0] - stepped_lstm(frames, csr_ih, w_hh, bias)).abs().max())
    return {"sparsity": sparsity, "fused_dense_ms": dense_ms,
            "fused_squashed_ms": median_ms(lambda: squashed(x)),
            "csr_ih_python_steps_dense_hh_ms": median_ms(lambda: stepped_lstm(frames, csr_ih, w_hh, bias)),
            "csr_ih_python_steps_csr_hh_ms": median_ms(lambda: stepped_lstm(frames, csr_ih, csr_hh, bias)),
            "dense_ih_only_ms": median_ms(lambda: frames @ w_ih.T),
            "csr_ih_only_ms": median_ms(lambda: (csr_ih @ frames.T).T),
            "max_abs_diff": error}


def main(out_path: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(FRAMES, 1, INPUT)
    lstm = torch.nn.LSTM(INPUT, HIDDEN).eval()
    rows = []
    with torch.no_grad():
        dense_ms = median_ms(lambda: lstm(x))
        for sparsity in SPARSITIES:
            rows.append(measure(lstm, x, dense_ms, sparsity))
            print(json.dumps(rows[-1]), flush=True)
    with open(out_path, "w") as f:
        json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
