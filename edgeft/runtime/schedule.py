"""Learning-rate schedules for one update (one arrival): the rate at each optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("constant", "cosine")
WARMUP_FRACTION = 0.1
FINAL_FRACTION = 0.1

Schedule = Callable[[int], float]


def learning_rates(kind: str, base_lr: float, total_steps: int) -> Schedule:
    """The rate at step ``0..total_steps-1`` of one update.

    ``constant``: ``base_lr`` throughout. ``cosine``: linear warm-up from 10% to ``base_lr`` over the first
    10% of the steps, then cosine decay to 10% of ``base_lr`` at the last step.
    """
    if kind == "constant":
        return lambda step: base_lr
    if kind != "cosine":
        raise ValueError(f"unknown learning-rate schedule '{kind}'; choose one of {', '.join(SCHEDULES)}")
    warmup = max(1, int(total_steps * WARMUP_FRACTION))
    decay = max(1, total_steps - warmup - 1)

    def rate(step: int) -> float:
        if step < warmup:
            return base_lr * (FINAL_FRACTION + (1.0 - FINAL_FRACTION) * step / warmup)
        progress = min(1.0, (step - warmup) / decay)
        return base_lr * (FINAL_FRACTION + (1.0 - FINAL_FRACTION) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    return rate
