"""A device's fleet policy: when to adopt a global head that the promotion guard judged on the device's own holdout.

* ``guard`` (default): the guard decides, as for any arrival: adopt unless the head's accuracy on the device's own
  holdout (its own classes) falls by more than the tolerance, significantly.
* ``overall``: adopt when the head is at least as accurate as the device's current head over *every* class the
  fleet has a holdout for, class-balanced, even if it is worse on the device's own classes. The global head's
  per-class holdout accuracy is measured by all devices together (each sends per-class correct and total counts
  for its own holdout, nothing else); the current head is scored on the device's own holdout, and counts 0 on
  the classes it never learned (it cannot predict them) — unless it is the previous global head, adopted and
  unchanged since: then the fleet's counts for that head score it, on every class.
* ``always``: adopt every global head with finite weights, whatever the guard says (its verdict is still logged).

Every adoption's metrics line records the policy, the guard's own verdict and the figures the policy used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgeft.runtime.guard import Decision

FLEET_POLICIES = ("guard", "overall", "always")


@dataclass(frozen=True)
class ClassScores:
    """Per-class holdout counts of one head: samples predicted right and samples seen, one entry per class row."""

    correct: np.ndarray
    total: np.ndarray

    def plus(self, other: ClassScores) -> ClassScores:
        """The counts of both holdouts together."""
        return ClassScores(self.correct + other.correct, self.total + other.total)


def class_scores(labels: np.ndarray, right: np.ndarray, rows: int) -> ClassScores:
    """Per-class counts from holdout labels (row indices) and per-sample correctness."""
    total = np.bincount(labels, minlength=rows).astype(np.int64)
    correct = np.bincount(labels, weights=right.astype(np.float64), minlength=rows).astype(np.int64)
    return ClassScores(correct, total)


def overall_accuracies(fleet: ClassScores, own: ClassScores, learned: np.ndarray) -> tuple[float, float, int]:
    """(global head, current head) class-balanced accuracy over the classes the fleet's holdouts hold, and how many.

    ``fleet``: the global head's counts summed over the devices; ``own``: the current head's on this device's
    holdout; ``learned``: per class row, has this device learned it. A class this device learned but holds no
    holdout of cannot be scored for its current head, so it is left out of both figures.
    """
    judged = (fleet.total > 0) & ~(learned & (own.total == 0))
    if not judged.any():
        return float("nan"), float("nan"), 0
    candidate = fleet.correct[judged] / fleet.total[judged]
    current = np.where(learned[judged], own.correct[judged] / np.maximum(own.total[judged], 1), 0.0)
    return float(candidate.mean()), float(current.mean()), int(judged.sum())


def decide(
    policy: str,
    guarded: Decision,
    finite: bool,
    fleet: ClassScores | None = None,
    own: ClassScores | None = None,
    learned: np.ndarray | None = None,
) -> tuple[Decision, dict[str, Any]]:
    """The final verdict on a global head under ``policy``, and the record of how it was reached."""
    record: dict[str, Any] = {"policy": policy, "guard_promoted": guarded.promoted}
    if not finite:
        return guarded, {**record, "decided_by": "guard", "note": "the global head has non-finite weights"}
    if policy == "always":
        return replace(guarded, promoted=True, reason=f"fleet policy always (guard: {guarded.reason})"), {
            **record,
            "decided_by": "always",
        }
    if policy == "overall":
        if fleet is None or own is None or learned is None:
            note = "no fleet-wide scores came with the head; the guard decided"
            return guarded, {**record, "decided_by": "guard", "note": note}
        candidate, current, classes = overall_accuracies(fleet, own, learned)
        record.update(
            {"decided_by": "overall", "classes": classes, "candidate_overall": candidate, "current_overall": current}
        )
        if not classes:
            return guarded, {**record, "decided_by": "guard", "note": "no class could be scored fleet-wide"}
        promoted = candidate >= current
        verb = "adopted" if promoted else "refused"
        reason = (
            f"fleet policy overall {verb}: class-balanced accuracy over {classes} classes {current:.3f} -> "
            f"{candidate:.3f} (guard: {guarded.reason})"
        )
        return replace(guarded, promoted=promoted, reason=reason), record
    return guarded, {**record, "decided_by": "guard"}
