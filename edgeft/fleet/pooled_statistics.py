"""Exact federation for closed-form heads: devices' class statistics add up to those of all their samples.

A streaming-LDA or nearest-class-mean head (``edgeft.runtime.slda``) is a function of per-class counts, per-class
feature sums and the features' second moment. Each device sends its own (in the fleet's class order), the server
adds them and writes the head: the same head one device would have learned from every device's samples, whatever
the split, in one round. The normaliser the head folds in is the one ``feature_normaliser`` would fit on all the
samples, computed from the same sums.
"""

from __future__ import annotations

import numpy as np

from edgeft.bundle import Bundle
from edgeft.errors import EdgeftError
from edgeft.runtime.class_statistics import ClassStatistics
from edgeft.runtime.slda import BIAS, WEIGHT, ClosedFormHead
from edgeft.runtime.trainer import Parameters, stored_state

STATISTICS_LEARNERS = ("slda", "ncm")


def to_global_rows(statistics: ClassStatistics, order: np.ndarray) -> ClassStatistics:
    """Statistics in device row order rearranged into the fleet's (``order``: device row -> global row)."""
    return statistics.rows(np.argsort(order))


def pooled(parts: list[ClassStatistics]) -> ClassStatistics:
    """The statistics of every part's samples together."""
    if not parts:
        raise EdgeftError("no device sent class statistics")
    total = parts[0]
    for part in parts[1:]:
        total = total.merged(part)
    return total


def normaliser(statistics: ClassStatistics) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and one shared scale of all the samples, as ``feature_normaliser`` defines them."""
    count = max(statistics.total, 1)
    mean = statistics.sums.sum(axis=0) / count
    spread = (float(statistics.trace()) / count - float(mean @ mean)) / len(mean) if statistics.total > 1 else 1.0
    scale = 1.0 / np.sqrt(spread) if spread > 1e-12 else 1.0
    return mean.astype(np.float32), np.full(len(mean), scale, np.float32)


def global_head(bundle: Bundle, statistics: ClassStatistics, shrinkage: float) -> Parameters:
    """The bundle's head with the normaliser of all samples and the closed-form final layer of ``statistics``
    (streaming LDA when they hold the whole second moment, nearest class mean when only its trace)."""
    head = stored_state(bundle, None).parameters
    mean, scale = normaliser(statistics)
    names = bundle.manifest.head.normaliser
    if names:
        head[names["mean"]], head[names["scale"]] = mean, scale
    else:
        mean, scale = np.zeros_like(mean), np.ones_like(scale)
    learner = ClosedFormHead("slda" if statistics.full else "ncm", shrinkage)
    head[WEIGHT], head[BIAS] = learner.linear_head(statistics, mean, scale)
    return head
