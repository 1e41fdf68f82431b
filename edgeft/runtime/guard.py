"""The promotion guard: a new head becomes current only if it does not do worse on samples it never trained on.

Each arrival gives a fraction of its samples to a holdout (a class-balanced reservoir of features, stored with
the version) instead of training on them; or the device has a fixed holdout set. After training, the candidate
head and the current head are scored on the holdout as it was *before* this arrival, so that mislabelled data
cannot vouch for itself. The candidate is promoted unless its accuracy drops by more than the tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeft.common.paired_test import lost_and_won, significantly_worse

HOLDOUT_FRACTION = 0.1
HOLDOUT_PER_CLASS = 50
TOLERANCE = 0.05
MIN_HOLDOUT = 20


@dataclass(frozen=True)
class GuardPolicy:
    """How the guard decides: holdout share of each arrival, its size per class, tolerance, minimum size."""

    holdout_fraction: float = HOLDOUT_FRACTION
    holdout_per_class: int = HOLDOUT_PER_CLASS
    tolerance: float = TOLERANCE
    min_holdout: int = MIN_HOLDOUT
    enabled: bool = True


@dataclass(frozen=True)
class Decision:
    """The guard's verdict on one candidate head, with the figures it was based on."""

    promoted: bool
    reason: str
    holdout_samples: int
    current_accuracy: float | None
    candidate_accuracy: float | None

    @property
    def holdout_accuracy(self) -> float | None:
        """Holdout accuracy of the head that is current after this decision."""
        return self.candidate_accuracy if self.promoted else self.current_accuracy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def holdout_mask(count: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Which of ``count`` arriving samples go to the holdout (never all of them when more than one arrives)."""
    mask = rng.random(count) < fraction
    if count > 1 and mask.all():
        mask[rng.integers(count)] = False
    return mask


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    return float((probabilities.argmax(axis=1) == labels).mean()) if len(labels) else float("nan")


def correct_among(logits: np.ndarray, labels: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Per sample: is the highest-scoring of the ``allowed`` class indices the label?"""
    return allowed[logits[:, allowed].argmax(axis=1)] == labels


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the labels under ``probabilities`` (labels beyond its columns count as p=1e-7)."""
    if not len(labels):
        return float("nan")
    inside = labels < probabilities.shape[1]
    picked = np.full(len(labels), 1e-7)
    picked[inside] = probabilities[np.flatnonzero(inside), labels[inside]]
    return float(-np.log(np.clip(picked, 1e-7, 1.0)).mean())


def decide(policy: GuardPolicy, current: np.ndarray | None, candidate: np.ndarray | None) -> Decision:
    """Judge per-sample correctness on the holdout (``current``/``candidate``: booleans, one per sample).

    Refuse when the candidate's accuracy falls by more than the tolerance *and* the fall is significant: of the
    samples on which the two heads disagree, the candidate loses clearly more than it wins (a one-sided sign test,
    ``lost - won > 2 * sqrt(lost + won)``). On a small holdout a few unlucky samples then do not block learning,
    while a flood of mislabelled data, which flips many samples the same way, is refused.
    """
    samples = 0 if current is None else len(current)
    if not policy.enabled:
        return Decision(True, "guard disabled", samples, None, None)
    if current is None or candidate is None or samples < policy.min_holdout:
        return Decision(True, f"holdout too small to judge ({samples} < {policy.min_holdout})", samples, None, None)
    now, new = float(current.mean()), float(candidate.mean())
    lost, won = lost_and_won(current, candidate)
    if new >= now - policy.tolerance or not significantly_worse(lost, won):
        return Decision(True, f"holdout accuracy {now:.3f} -> {new:.3f}", samples, now, new)
    return Decision(
        False,
        f"holdout accuracy would fall {now:.3f} -> {new:.3f} ({lost} samples lost, {won} won), more than the "
        f"tolerance {policy.tolerance}",
        samples,
        now,
        new,
    )


def recorded_holdout_accuracy(arrival: dict[str, Any]) -> float | None:
    """From an arrival recorded in version metadata: holdout accuracy of the head that became or stayed current."""
    judged = arrival.get("guard", {})
    return judged.get("candidate_accuracy" if arrival.get("promoted") else "current_accuracy")
