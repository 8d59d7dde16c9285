"""Would sparse kernels speed up a sparse LSTM at batch 1? One LSTM direction of the shipped
teacher's shape (640 -> 320, 75 frames = 3 s at x4), one thread: the fused nn.LSTM (dense, and
with the pruned weights squashed) against the only way to use torch's CSR kernels in it — the
input projection as one CSR matmul over all frames and the recurrence stepped in Python (W_hh
dense, or CSR too), checked equal to the fused kernel. Medians of 60 timings after 10 warm-ups.

    python bench/sparse_lstm_probe.py bench/results/sparsity/sparse_lstm_probe.json
"""
import json
import statistics
import sys
import time

import torch
torch.set_num_threads(1)
torch.manual_seed(0)
T, I, H = 75, 640, 320
x = torch.randn(T, 1, I)

def timeit(fn, runs=60, warm=10):
    for _ in range(warm): fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter(); fn(); ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)

def prune(w, s):
    k = int(s * w.numel())
    thr = w.abs().flatten().kthvalue(k).values if k else -1
    return torch.where(w.abs() > thr, w, torch.zeros(()))

rows = []
lstm = torch.nn.LSTM(I, H).eval()
with torch.no_grad():
    dense = timeit(lambda: lstm(x))
    for s in (0.5, 0.8, 0.9, 0.95):
        w_ih = prune(lstm.weight_ih_l0.detach(), s); w_hh = prune(lstm.weight_hh_l0.detach(), s)
        b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
        csr_ih, csr_hh = w_ih.to_sparse_csr(), w_hh.to_sparse_csr()
        x2 = x[:, 0, :]
        def step_path(sparse_hh):
            gx = (csr_ih @ x2.T).T + b          # (T, 4H)
            h = torch.zeros(H); c = torch.zeros(H)
            out = []
            for t in range(T):
                g = gx[t] + ((csr_hh @ h[:, None])[:, 0] if sparse_hh else w_hh @ h)
                i, f, gg, o = g.chunk(4)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
                h = torch.sigmoid(o) * torch.tanh(c)
                out.append(h)
            return torch.stack(out)
        # correctness against the fused kernel with the same pruned weights
        ref = torch.nn.LSTM(I, H).eval()
        ref.weight_ih_l0.copy_(w_ih); ref.weight_hh_l0.copy_(w_hh); ref.bias_ih_l0.copy_(lstm.bias_ih_l0); ref.bias_hh_l0.copy_(lstm.bias_hh_l0)
        err = float((ref(x)[0][:, 0] - step_path(False)).abs().max())
        rows.append({"sparsity": s, "fused_dense_ms": dense, "fused_squashed_ms": timeit(lambda: ref(x)),
                     "csr_ih_python_steps_dense_hh_ms": timeit(lambda: step_path(False)),
                     "csr_ih_python_steps_csr_hh_ms": timeit(lambda: step_path(True)),
                     "dense_ih_only_ms": timeit(lambda: x2 @ w_ih.T), "csr_ih_only_ms": timeit(lambda: (csr_ih @ x2.T).T),
                     "max_abs_diff": err})
        print(json.dumps(rows[-1]))
with open(sys.argv[1], "w") as f:
    json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)
