"""Learning-rate schedules: linear warm-up, then cosine decay, inverse square root (Noam), or flat.

The learning rate is a pure function of the optimizer step, so a schedule's whole state is the
step count and the total it decays over (``LrSchedule.state_dict``); resuming sets both back.

    schedule = LrSchedule("cosine", peak_lr=1e-3, warmup_steps=300, total_steps=6000)
    schedule.apply(optimizer, step)       # before optimizer.step(): lr for the step about to run
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

SCHEDULES = ("cosine", "inverse_sqrt", "constant")


def lr_at(step: int, kind: str, peak_lr: float, warmup_steps: int, total_steps: int,
          min_lr_ratio: float, time_fraction: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based: the number of steps already taken).

    - warm-up: ``peak_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``;
    - cosine: from ``peak_lr`` down to ``peak_lr * min_lr_ratio`` at ``total_steps``, flat after.
      ``time_fraction`` (share of a wall-clock budget used, 0 without one) can move it further:
      the decay follows whichever of steps and clock is ahead, so a time-limited run still ends
      at the floor;
    - inverse_sqrt: ``peak_lr * sqrt(warmup_steps / (step + 1))`` (Noam, continuous at warm-up);
    - constant: ``peak_lr``.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r} (known: {', '.join(SCHEDULES)})")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return peak_lr
    if kind == "inverse_sqrt":
        return peak_lr * math.sqrt(max(warmup_steps, 1) / (step + 1))
    span = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, time_fraction), 1.0)
    floor = peak_lr * min_lr_ratio
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class LrSchedule:
    """A schedule with its parameters; ``apply`` writes the step's lr into every param group."""

    kind: str  # "cosine", "inverse_sqrt" or "constant"
    peak_lr: float  # lr after warm-up
    warmup_steps: int  # linear warm-up length
    total_steps: int  # where cosine reaches its floor (unused by the others)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of peak_lr

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r} (known: {', '.join(SCHEDULES)})")

    def lr(self, step: int, time_fraction: float = 0.0) -> float:
        return lr_at(step, self.kind, self.peak_lr, self.warmup_steps, self.total_steps,
                     self.min_lr_ratio, time_fraction)

    def apply(self, optimizer: torch.optim.Optimizer, step: int, time_fraction: float = 0.0) -> float:
        """Set the lr of optimizer step ``step`` (steps taken so far); returns it."""
        lr = self.lr(step, time_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Take the saved parameters (a resumed run keeps the schedule it started with)."""
        for key, value in state.items():
            setattr(self, key, value)
