"""Is one predictor clearly worse than another on the same samples? A one-sided sign test over the samples they
disagree on, used by the runtime's guard and by the exporter's int8 check alike."""

from __future__ import annotations

import numpy as np

SIGN_TEST_Z = 2.0


def lost_and_won(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """Per-sample correctness of two predictors: (samples only ``before`` gets right, samples only ``after`` does)."""
    return int((before & ~after).sum()), int((~before & after).sum())


def significantly_worse(lost: int, won: int) -> bool:
    """One-sided sign test over the samples two predictors disagree on: the second loses clearly more than it wins."""
    return bool(lost - won > SIGN_TEST_Z * np.sqrt(lost + won))
