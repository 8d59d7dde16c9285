"""Sparsity while training: the gradual schedule, kept masks and regularizers, configured by the
recipe's ``sparsity:`` section and run by the training loop after every optimizer step.

    sparsity:
      gradual: {final: 0.8, start_step: 200, span_steps: 2000, every_steps: 100}
      regularize: {kind: group-lasso, strength: 0.05, warmup_steps: 200}
      keep_masks: false        # true: the zeros the model starts with stay zero (pruned fine-tuning)

``step_callbacks(recipe.sparsity, model)`` attaches the masks at once (before the optimizer and
any checkpoint are loaded, so a resumed run finds its masks' entries in the checkpoint) and
returns objects with ``after_step(trainer)``, called after every optimizer step, and
``summary()``, merged into training.json. ``slimasr.train.loop`` knows nothing else about them.

Gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune"): after the optimizer steps
t = t0, t0 + dt, ..., t0 + n dt, the smallest weights (magnitude) of the selected tensors are
masked up to

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3

(steps count from 1, so with t0 = 0 the first pruning is at step dt). Masks only grow: a weight
once masked is zero and goes first. Each pruning forgets the best validation so far, so the saved
"best" model is chosen among validations at the sparsity reached (an earlier, denser one would
always win).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from slimasr.config import check_numbers
from slimasr.errors import ConfigError
from slimasr.prune.regularize import RegularizeConfig, Regularizer
from slimasr.prune.unstructured import (
    UnstructuredConfig,
    apply_masks_,
    mask_zeros_,
    masks_of,
    rezero_,
    select_tensors,
    sparsify_,
    sparsity_report,
    tensor_of,
)


@dataclass
class GradualConfig:
    """Zhu & Gupta's cubic schedule of unstructured (magnitude) pruning during training."""

    final: float = 0.0  # s_f: sparsity at the end of the schedule (0: no gradual pruning)
    initial: float = 0.0  # s_i: sparsity of the first pruning, at start_step
    start_step: int = 0  # t0: optimizer step of the first pruning
    span_steps: int | None = None  # n dt: steps from t0 to s_f (None: see end_share)
    # With span_steps None, s_f is reached at this share of the run's scheduled steps (the lr
    # schedule's length), leaving the rest to recover at the final sparsity.
    end_share: float = 0.75
    every_steps: int = 100  # dt: optimizer steps between prunings
    scope: Literal["layer", "global"] = "layer"  # s_t of every tensor, or of all together
    include: list[str] = field(default_factory=lambda: ["*"])  # state_dict name patterns pruned
    exclude: list[str] = field(default_factory=list)  # patterns kept dense
    biases: bool = False  # also the biases of the selected layers

    def __post_init__(self) -> None:
        check_numbers("sparsity.gradual", self, fractions=("final", "initial", "end_share"),
                      non_negative=("start_step",), positive=("span_steps", "every_steps"))
        if self.final >= 1.0 or self.initial > self.final:
            raise ConfigError(f"sparsity.gradual: need 0 <= initial <= final < 1, got initial "
                              f"{self.initial}, final {self.final}")


@dataclass
class SparsityConfig:
    """The recipe's ``sparsity:`` section (train, distill, prune's fine-tuning)."""

    gradual: GradualConfig = field(default_factory=GradualConfig)  # prune while training
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)  # a sparsity penalty
    # Mask the exact zeros the model starts with, so they stay zero (fine-tuning a model pruned
    # without structure; ``slimasr prune --method unstructured`` sets it).
    keep_masks: bool = False

    @property
    def active(self) -> bool:
        """Whether the run makes weights exactly zero (its model is then saved compactly)."""
        return self.gradual.final > 0 or self.keep_masks or self.regularize.kind != "none"


def cubic_sparsity(step: int, initial: float, final: float, start: int, span: int) -> float:
    """Zhu & Gupta's s_t at optimizer step ``step``: ``initial`` up to ``start``, ``final`` from
    ``start + span`` on, the cubic in between."""
    progress = min(max((step - start) / span, 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def is_pruning_step(step: int, start: int, span: int, every: int) -> bool:
    """Whether the schedule prunes after optimizer step ``step``: t0 + k dt, and t0 + n dt."""
    return start <= step <= start + span and ((step - start) % every == 0 or step == start + span)


class GradualPruner:
    """Attaches a mask to every selected tensor (over its zeros) and raises the masks' sparsity
    along the cubic schedule; a training callback."""

    def __init__(self, cfg: GradualConfig, model: nn.Module):
        self.cfg, self.model = cfg, model
        self.names = select_tensors(model, cfg.include, cfg.exclude, cfg.biases)
        if not self.names:
            raise ConfigError(f"sparsity.gradual.include: no prunable weight matches {cfg.include}")
        apply_masks_(model, {n: tensor_of(model, n).detach() != 0 for n in self.names})
        self.last_target: float | None = None

    def span(self, trainer: Any) -> int:
        """n dt: given, or up to ``end_share`` of the run's scheduled steps (at least 1)."""
        if self.cfg.span_steps is not None:
            return self.cfg.span_steps
        return max(int(self.cfg.end_share * trainer.schedule.total_steps) - self.cfg.start_step, 1)

    def after_step(self, trainer: Any) -> None:
        cfg, step, span = self.cfg, trainer.state.step, self.span(trainer)
        if not is_pruning_step(step, cfg.start_step, span, cfg.every_steps):
            return
        target = cubic_sparsity(step, cfg.initial, cfg.final, cfg.start_step, span)
        before = self._masked()
        sparsify_(self.model, UnstructuredConfig(sparsity=target, scope=cfg.scope, include=cfg.include,
                                                 exclude=cfg.exclude, biases=cfg.biases),
                  optimizer=trainer.optimizer)
        self.last_target = target
        if self._masked() > before:  # the best validation so far was of a denser model
            trainer.state.best_wer, trainer.state.bad_epochs = None, 0

    def _masked(self) -> int:
        return sum(int((~m).sum()) for m in masks_of(self.model).values())

    def summary(self) -> dict:
        report = sparsity_report(self.model, self.names)
        return {"gradual": {"last_target": self.last_target, "final": self.cfg.final,
                            "reached": report["pruned_sparsity"]}}


class KeptMasks:
    """Masks over the zeros the model starts with; re-zeroes under them after every step."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.masks = mask_zeros_(model)

    def after_step(self, trainer: Any) -> None:
        rezero_(self.model)

    def summary(self) -> dict:
        return {"kept_masks": len(self.masks)}


def step_callbacks(cfg: SparsityConfig, model: nn.Module) -> list:
    """The training callbacks of a recipe's ``sparsity`` section (none when it is all default).
    Masks are attached to ``model`` here."""
    callbacks: list = []
    if cfg.keep_masks:
        callbacks.append(KeptMasks(model))
    if cfg.gradual.final > 0:
        callbacks.append(GradualPruner(cfg.gradual, model))
    if cfg.regularize.kind != "none":
        callbacks.append(Regularizer(cfg.regularize, model))
    if callbacks:
        callbacks.append(SparsitySummary(model))
    return callbacks


class SparsitySummary:
    """training.json's ``sparsity``: per-layer and overall counts of the last weights."""

    def __init__(self, model: nn.Module):
        self.model = model

    def after_step(self, trainer: Any) -> None:
        pass

    def summary(self) -> dict:
        return {"sparsity": sparsity_report(self.model)}


__all__ = ["GradualConfig", "GradualPruner", "KeptMasks", "SparsityConfig", "SparsitySummary",
           "cubic_sparsity", "is_pruning_step", "step_callbacks"]
