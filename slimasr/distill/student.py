"""Creating the student: from a preset/config, or cut down from the teacher.

From the teacher: a copy keeps ``layers`` of its recurrent layers / hidden layers / blocks, spread
evenly over the depth with the first and the last kept, and ``width`` of the units of every
prunable group, choosing the units of largest weight magnitude (L2 over all of the unit's
slices, the ``magnitude`` pruning criterion). Surgery is ``slimasr.prune``'s, so the student is an
ordinary dense model of the same family with narrower widths.

``causal`` (CRNN teachers only) then makes the cut student streamable: each recurrent layer keeps
its forward direction (``fwd``) and drops the backward one, the next layer's input weights and
the output projection keep the columns that read forward outputs (the first ``H`` of
``[forward | backward]``), and the convolutions keep their weights with causal (left-only) time
padding. The result is an ordinary ``crnn`` with ``bidirectional: false, causal: true``.
"""

from __future__ import annotations

import copy
import dataclasses

from slimasr.errors import ConfigError
from slimasr.models import AcousticModel, Crnn, build_model
from slimasr.models.io import plain_state_dict
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
                         round_to: int, causal: bool = False) -> AcousticModel:
    """A new model: the teacher's weights cut to ``layers`` layers and ``width`` of its units;
    ``causal``: then made unidirectional and causal (``causal_crnn``; CRNN teachers only)."""
    if causal and not isinstance(teacher, Crnn):
        family = teacher.arch or type(teacher).__name__
        raise ConfigError(f"student.causal: needs a CRNN teacher (this one is {family}); a causal "
                          "student of another family is trained with student.init=scratch")
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
    if causal:
        student = causal_crnn(student)
    return student.train()


def causal_crnn(model: Crnn) -> Crnn:
    """A unidirectional, causal copy of the CRNN ``model``: each layer's forward LSTM/GRU, the
    forward-output columns of the next layer's input weights and of ``head.weight``, the
    subsampling convs and norms as they are (causal padding changes no weight shape). A model
    that is already unidirectional only gets causal convs (the same weights)."""
    cfg = model.config
    new_cfg = dataclasses.replace(copy.deepcopy(cfg), bidirectional=False, causal=True)
    new = build_model(model.arch, new_cfg, vocab_size=model.vocab_size)
    sizes = cfg.rnn_hidden_sizes
    state = {}
    for key, value in plain_state_dict(model).items():
        parts = key.split(".")
        if parts[0] == "rnns":
            layer, direction, name = int(parts[1]), parts[2], parts[3]
            if direction == "bwd":
                continue  # the backward direction is dropped
            if name.startswith("weight_ih") and layer > 0:
                value = value[:, :sizes[layer - 1]]  # columns reading the forward outputs
        elif key == "head.weight":
            value = value[:, :sizes[-1]]
        state[key] = value.detach().clone()
    new.load_state_dict(state, strict=True)
    param = next(model.parameters())
    return new.to(device=param.device, dtype=param.dtype).train(model.training)


def student_from_config(name: str, cfg: object, vocab_size: int) -> AcousticModel:
    return build_model(name, cfg, vocab_size=vocab_size)
