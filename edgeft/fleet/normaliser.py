"""One feature normaliser for the whole fleet, pooled from each device's feature moments.

A head standardises its input with a frozen mean and scale (``edgeft.runtime.trainer.feature_normaliser``).
Averaging heads trained in different standardisations would be wrong, so before the first round every device
reports the count, per-feature mean and per-feature variance of its replayed features (never the features), and
the server pools them into exactly what ``feature_normaliser`` would compute on all devices' features together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Sample count, per-feature mean and per-feature (population) variance of one device's features."""

    count: int
    mean: np.ndarray
    var: np.ndarray


def moments(features: np.ndarray) -> Moments:
    """The moments of a feature matrix [N, D] (zeros when N is 0)."""
    if not len(features):
        zeros = np.zeros(features.shape[1], np.float64)
        return Moments(0, zeros, zeros)
    data = features.astype(np.float64)
    return Moments(len(data), data.mean(axis=0), data.var(axis=0))


def pooled_normaliser(parts: list[Moments]) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and shared scale of all parts' features together, as ``feature_normaliser`` defines them.

    None when no part has samples.
    """
    parts = [part for part in parts if part.count]
    total = sum(part.count for part in parts)
    if not total:
        return None
    mean = sum(part.count * part.mean for part in parts) / total
    var = sum(part.count * (part.var + (part.mean - mean) ** 2) for part in parts) / total
    spread = float(var.mean()) if total > 1 else 1.0
    scale = 1.0 / np.sqrt(spread) if spread > 1e-12 else 1.0
    return mean.astype(np.float32), np.full(len(mean), scale, np.float32)
