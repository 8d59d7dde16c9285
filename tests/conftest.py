"""Suite-wide settings.

One torch thread per process. On a 2-core machine that is shared (pytest plus the subprocesses some
tests start), two OpenMP threads per process make small RNN kernels spin-wait on each other: a
BiLSTM forward measured 3.8 s with 2 threads under load against 0.019 s with 1. Subprocesses
inherit OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
