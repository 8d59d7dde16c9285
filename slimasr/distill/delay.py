"""Choosing ``loss.kd_delay`` on dev (Delayed KD for causal, streaming students).

A unidirectional CTC model emits its spikes later than a bidirectional teacher. The delay is
measured, not guessed: run the teacher and a causal student of the shape to be distilled (e.g.
the same student trained from scratch, or after a short plain-KD run) over dev cuts, and take the
shift d at which the student's spikes best coincide with the teacher's (``losses.spike_delay``:
frames where the teacher's argmax is a token and the student's argmax d frames later is the same
token). Both run on their own front end, and the teacher's posteriors are resampled to the
student's frame rate first.

    d, counts = dev_kd_delay("exp/teacher", "exp/causal_scratch", "data/smarthome", max_delay=8)

``spike_lag`` measures the same on any split: on test, the latency a delayed student's tokens
really have (bench/causal_students.py reports it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from slimasr.data.manifests import read_split
from slimasr.distill.losses import align_log_probs, spike_delay
from slimasr.frontend import Frontend
from slimasr.models import load_model


def dev_kd_delay(teacher_dir: str | Path, student_dir: str | Path, data_dir: str | Path,
                 max_delay: int = 8, max_cuts: int = 200, batch_size: int = 16
                 ) -> tuple[int, list[int]]:
    """(best d, agreement per d in [0, max_delay]) over the first ``max_cuts`` dev cuts of
    ``data_dir``; the student's frames are the unit of d."""
    return spike_lag(teacher_dir, student_dir, data_dir, "dev", max_delay, max_cuts, batch_size)


@torch.no_grad()
def spike_lag(teacher_dir: str | Path, student_dir: str | Path, data_dir: str | Path, split: str,
              max_delay: int = 8, max_cuts: int = 200, batch_size: int = 16) -> tuple[int, list[int]]:
    """How many (student) frames a causal student's spikes come after the teacher's on the first
    ``max_cuts`` cuts of ``split``: (the d of most agreement, agreement per d in [0, max_delay]).
    On test it is the emission latency a student trained with ``kd_delay`` actually has."""
    teacher, student = load_model(teacher_dir).eval(), load_model(student_dir).eval()
    t_front, s_front = Frontend.load(teacher_dir), Frontend.load(student_dir)
    cuts = list(read_split(data_dir, split).subset(first=max_cuts))
    counts = [0] * (max_delay + 1)
    for start in range(0, len(cuts), batch_size):
        audios = [c.resample(16000).load_audio()[0] for c in cuts[start:start + batch_size]]
        t_logp, t_lens = teacher(*t_front.batch(audios))
        s_logp, s_lens = student(*s_front.batch(audios))
        t_logp = align_log_probs(t_logp.float(), t_lens, s_lens, s_logp.shape[1])
        counts = [a + b for a, b in zip(counts, spike_delay(t_logp, s_logp, s_lens, max_delay)[1])]
    return max(range(len(counts)), key=lambda d: (counts[d], -d)), counts
