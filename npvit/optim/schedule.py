"""Learning-rate schedules: constant (the Keras example) or linear warmup followed by cosine decay.

    warmup:  lr(t) = base * (t + 1) / warmup_steps                       for t < warmup_steps
    cosine:  lr(t) = base * (1 + cos(pi * progress)) / 2,  progress = (t - warmup) / (total - warmup)

t counts optimizer steps from 0; the schedule is a pure function of t, so a resumed run continues it exactly.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def learning_rate(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0,
                  schedule: str = "constant", min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}: expected one of {SCHEDULES}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
