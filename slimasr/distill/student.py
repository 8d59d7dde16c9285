"""Creating the student: from a preset/config, or cut down from the teacher.

From the teacher: a copy keeps ``layers`` of its recurrent layers / hidden layers / blocks, spread
evenly over the depth with the first and the last kept, and ``width`` of the units of every
prunable group, choosing the units of largest weight magnitude (L2 over all of the unit's
slices, the ``magnitude`` pruning criterion). Surgery is ``slimasr.prune``'s, so the student is an
ordinary dense model of the same family with narrower widths.
"""

from __future__ import annotations

import copy

from slimasr.models import AcousticModel, build_model
from slimasr.prune.groups import prunable_groups
from slimasr.prune.importance import magnitude_scores
from slimasr.prune.surgery import prune_model, select_layers


def spread_layers(total: int, keep: int) -> list[int]:
    """``keep`` layer indices out of ``total``, evenly spread, first and last kept (keep >= 2)."""
    if keep >= total:
        return list(range(total))
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def depth(model: AcousticModel) -> int:
    """Layers ``select_layers`` chooses from: RNN layers, DNN hidden layers or Conformer blocks."""
    cfg = model.config
    for name in ("rnn_hidden_sizes", "hidden_sizes"):
        if hasattr(cfg, name):
            return len(getattr(cfg, name))
    return int(cfg.num_blocks)


def rounded(n: int, fraction: float, round_to: int, minimum: int) -> int:
    """``fraction`` of ``n`` units rounded to a multiple of ``round_to`` (within [minimum, n])."""
    want = max(round(n * fraction / round_to) * round_to, round_to)
    return max(min(want, n), minimum, 1 if minimum == 0 else minimum)


def student_from_teacher(teacher: AcousticModel, layers: int | None, width: float | None,
                         round_to: int) -> AcousticModel:
    """A new model: the teacher's weights cut to ``layers`` layers and ``width`` of its units."""
    student = copy.deepcopy(teacher).cpu().train()
    for p in student.parameters():
        p.requires_grad_(True)
    if layers is not None and layers < depth(student):
        student = select_layers(student, spread_layers(depth(student), layers))
    if width is not None and width < 1.0:
        keep = {}
        scores = magnitude_scores(student)  # L2 over every weight a unit owns (each once)
        for g in prunable_groups(student):
            n = rounded(g.size, width, round_to, g.min_size)
            order = scores[g.name].argsort(descending=True, stable=True)[:n]
            keep[g.name] = sorted(order.tolist())
        student = prune_model(student, keep)
    return student.train()


def student_from_config(name: str, cfg: object, vocab_size: int) -> AcousticModel:
    return build_model(name, cfg, vocab_size=vocab_size)
