"""Multi-label and regression heads on the device: targets, scores, the guard's metric, predictions.

A classification head learns class indices (``edgeft.runtime.labels``); the two other tasks the exporter makes
learn float targets of the head's width, ``[N, outputs]``:

* ``multilabel`` (BCE with logits): each sample has a *set* of label names, learned as a multi-hot row. A label is
  predicted when its sigmoid score reaches that label's threshold (0.5 unless tuned on the holdout, see
  ``tuned_thresholds``). The guard judges on micro-F1 over every (sample, label) decision.
* ``regression`` (MSE or L1): each sample has one number per target name. The guard judges on RMSE for an MSE head
  and on MAE for an L1 head (each loss's own scale).

The label map of these heads is fixed at export: an unknown label name is an error, never a new output.
Reading these labels from files (multi-hot rows, numbers) is ``edgeft.data.targets``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeft.bundle import HeadInfo
from edgeft.common.paired_test import SIGN_TEST_Z, lost_and_won, significantly_worse
from edgeft.data.targets import MULTILABEL, REGRESSION
from edgeft.runtime import guard
from edgeft.runtime.version_record import VersionRecord

DEFAULT_THRESHOLD = 0.5
THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)
MIN_TUNING_POSITIVES = 5  # a label's threshold is tuned only when the holdout holds this many of its positives
OUTPUT_BIAS = "head.bias"  # the new head's final layer bias (edgeft.export.head.BIAS)


@dataclass(frozen=True)
class Targets:
    """Encoded labels of a multi-label or regression arrival: float32 ``[N, outputs]``; every sample fits."""

    values: np.ndarray
    classes: list[str]
    overflow: list[str] = field(default_factory=list)

    @property
    def fits(self) -> np.ndarray:
        """Every sample has a place in the head (the label map is fixed), so all of them fit."""
        return np.ones(len(self.values), bool)


@dataclass(frozen=True)
class TaskDecision:
    """The guard's verdict for a multi-label or regression head, with the holdout metric it was based on."""

    promoted: bool
    reason: str
    holdout_samples: int
    metric: str
    current: float | None
    candidate: float | None

    @property
    def holdout_accuracy(self) -> None:
        """These heads have no accuracy; the metric is in ``current``/``candidate``."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "holdout_samples": self.holdout_samples,
            "metric": self.metric,
            "current_value": self.current,
            "candidate_value": self.candidate,
        }


# --- head outputs and scores --------------------------------------------------------------------------------------


def outputs(head: HeadInfo, logits: np.ndarray, known: int) -> np.ndarray:
    """What the head says for each sample: sigmoid scores per label, or the predicted target values."""
    logits = logits[:, :known]
    if head.task == MULTILABEL:
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def metric_name(head: HeadInfo) -> str:
    """The guard's and ``eval``'s main figure: ``micro_f1`` (higher is better), ``rmse`` or ``mae`` (lower)."""
    if head.task == MULTILABEL:
        return "micro_f1"
    return "rmse" if head.loss == "mse" else "mae"


def thresholds_of(record: VersionRecord | None, classes: list[str]) -> np.ndarray:
    """Per-label decision thresholds recorded with a version (0.5 for labels without one, or without a version)."""
    recorded = (record.thresholds if record else None) or {}
    return np.array([float(recorded.get(name, DEFAULT_THRESHOLD)) for name in classes], np.float64)


def micro_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Micro-averaged F1 over every (sample, label) decision: 2TP / (2TP + FP + FN); 1.0 when nothing is positive."""
    tp = float((predicted & truth).sum())
    wrong = float((predicted != truth).sum())
    return 1.0 if tp + wrong == 0 else 2 * tp / (2 * tp + wrong)


def score(head: HeadInfo, scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> float:
    """The task's metric of head outputs ``scores`` against ``targets`` (both ``[N, known]``)."""
    if head.task == MULTILABEL:
        return micro_f1(scores >= thresholds, targets > 0.5)
    errors = scores - targets
    if head.loss == "mse":
        return float(np.sqrt(np.mean(errors**2)))
    return float(np.mean(np.abs(errors)))


def report(head: HeadInfo, scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, classes: list[str]) -> dict:
    """``edgeft eval``'s figures: micro/macro F1 and per-label precision, recall, F1; or MAE, RMSE per target."""
    if head.task == MULTILABEL:
        predicted, truth = scores >= thresholds, targets > 0.5
        per_label = {}
        for j, name in enumerate(classes):
            p, t = predicted[:, j], truth[:, j]
            tp = int((p & t).sum())
            per_label[name] = {
                "positives": int(t.sum()),
                "predicted": int(p.sum()),
                "precision": tp / int(p.sum()) if p.any() else None,
                "recall": tp / int(t.sum()) if t.any() else None,
                "f1": micro_f1(p, t),
                "threshold": float(thresholds[j]),
            }
        return {
            "micro_f1": micro_f1(predicted, truth),
            "macro_f1": float(np.mean([row["f1"] for row in per_label.values()])),
            "exact_match": float((predicted == truth).all(axis=1).mean()),
            "per_label": per_label,
        }
    errors = scores - targets
    return {
        "mae": float(np.mean(np.abs(errors))),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "per_target": {
            name: {"mae": float(np.mean(np.abs(errors[:, j]))), "rmse": float(np.sqrt(np.mean(errors[:, j] ** 2)))}
            for j, name in enumerate(classes)
        },
    }


# --- the guard ----------------------------------------------------------------------------------------------------


def judge(
    head: HeadInfo,
    policy: guard.GuardPolicy,
    current: np.ndarray,
    candidate: np.ndarray,
    targets: np.ndarray,
    thresholds: np.ndarray,
) -> TaskDecision:
    """Compare the current and candidate heads' outputs on the holdout ``targets``.

    Multi-label: refuse when micro-F1 falls by more than the tolerance and, over the (sample, label) decisions the
    two heads disagree on, the candidate loses significantly more than it wins (the sign test of ``guard.decide``).
    Regression: refuse when the error (RMSE or MAE) rises by more than the tolerance *relative* to the current
    error and the rise is significant: a paired test on the per-sample differences of error (squared error for
    RMSE, absolute for MAE), whose mean must exceed ``SIGN_TEST_Z`` standard errors. It weighs how much worse
    each sample got, which a sign test ignores: on a 50-sample holdout a head 65% worse can still win a third of
    the samples by a little.
    """
    metric = metric_name(head)
    samples = len(targets)
    if not policy.enabled:
        return TaskDecision(True, "guard disabled", samples, metric, None, None)
    if samples < policy.min_holdout:
        return TaskDecision(
            True, f"holdout too small to judge ({samples} < {policy.min_holdout})", samples, metric, None, None
        )
    now, new = (score(head, s, targets, thresholds) for s in (current, candidate))
    if head.task == MULTILABEL:
        truth = targets > 0.5
        lost, won = lost_and_won(
            ((current >= thresholds) == truth).ravel(), ((candidate >= thresholds) == truth).ravel()
        )
        worse = new < now - policy.tolerance
        bound = f"more than the tolerance {policy.tolerance}"
        significant = significantly_worse(lost, won)
        evidence = f"{lost} lost, {won} won"
    else:
        power = 2 if head.loss == "mse" else 1
        rise = (np.abs(candidate - targets) ** power).sum(axis=1) - (np.abs(current - targets) ** power).sum(axis=1)
        error = float(rise.std(ddof=1) / np.sqrt(samples))
        worse = new > now * (1 + policy.tolerance)
        bound = f"more than the tolerance ({policy.tolerance:.0%} of the current error)"
        significant = bool(rise.mean() > SIGN_TEST_Z * error)
        evidence = f"per-sample error rise {rise.mean():.3g} ± {error:.2g}"
    if not worse or not significant:
        return TaskDecision(True, f"holdout {metric} {now:.4g} -> {new:.4g}", samples, metric, now, new)
    return TaskDecision(
        False, f"holdout {metric} would go {now:.4g} -> {new:.4g} ({evidence}), {bound}", samples, metric, now, new
    )


def tuned_thresholds(scores: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Per label, the threshold on a 0.05 grid that maximises that label's F1 on the holdout (ties: the one nearest
    0.5); labels with fewer than ``MIN_TUNING_POSITIVES`` positives keep 0.5."""
    truth = targets > 0.5
    chosen = {}
    for j, name in enumerate(classes):
        if truth[:, j].sum() < MIN_TUNING_POSITIVES:
            chosen[name] = DEFAULT_THRESHOLD
            continue
        f1 = [micro_f1(scores[:, j] >= t, truth[:, j]) for t in THRESHOLD_GRID]
        best = max(f1)
        candidates = [float(t) for t, f in zip(THRESHOLD_GRID, f1, strict=True) if f == best]
        chosen[name] = min(candidates, key=lambda t: abs(t - DEFAULT_THRESHOLD))
    return chosen


def prequential(head: HeadInfo, scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    """The task's metric of the current head on an arrival before learning it (no accuracy for these tasks)."""
    return {
        "samples": len(targets),
        "accuracy": None,
        "loss": None,
        "known_accuracy": None,
        "metric": metric_name(head),
        "value": score(head, scores, targets, thresholds),
    }


def centred_output(head: HeadInfo, parameters: dict[str, np.ndarray], targets: np.ndarray) -> dict | None:
    """A regression head's parameters with its output bias at the targets' centre (mean for MSE, median for L1),
    or None for a head without a new output layer. Done once, with the feature normaliser, before the first
    training: targets far from zero (a price, a digit's value) need no learning rate tuned to their scale."""
    if head.task != REGRESSION or not head.normaliser or OUTPUT_BIAS not in head.trainable or not len(targets):
        return None
    centre = np.median(targets, axis=0) if head.loss == "l1" else targets.mean(axis=0)
    bias = parameters[OUTPUT_BIAS].copy()
    bias[: len(centre)] = centre
    return {**parameters, OUTPUT_BIAS: bias.astype(np.float32)}


def recorded_figures(arrival: dict[str, Any]) -> dict[str, Any]:
    """From an arrival recorded in version metadata (or metrics.jsonl): the task's metric, its prequential value,
    and its holdout value for the head that became or stayed current; empty for a classifier's arrival."""
    metric = arrival.get("prequential", {}).get("metric") or arrival.get("guard", {}).get("metric")
    if not metric:
        return {}
    judged = arrival.get("guard", {})
    return {
        "metric": metric,
        "prequential_metric": arrival.get("prequential", {}).get("value"),
        "holdout_metric": judged.get("candidate_value" if arrival.get("promoted") else "current_value"),
    }


def label_counts(head: HeadInfo, targets: np.ndarray, classes: list[str]) -> dict[str, int]:
    """Per label, the positives in ``targets`` (multi-label); per target, the samples that gave it (regression)."""
    if head.task == MULTILABEL:
        return {name: int((targets[:, j] > 0.5).sum()) for j, name in enumerate(classes)}
    return {name: len(targets) for name in classes}


# --- prediction ---------------------------------------------------------------------------------------------------


def prediction(head: HeadInfo, row: np.ndarray, thresholds: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """One sample's prediction: the label set and every label's score, or the target values by name."""
    if head.task == MULTILABEL:
        return {
            "labels": [name for name, s, t in zip(classes, row, thresholds, strict=True) if s >= t],
            "scores": {name: float(s) for name, s in zip(classes, row, strict=True)},
        }
    return {"values": {name: float(v) for name, v in zip(classes, row, strict=True)}}


def prediction_text(result: dict[str, Any]) -> str:
    """One prediction as a line of text."""
    if "labels" in result:
        shown = "  ".join(f"{name} {s:.3f}" for name, s in result["scores"].items())
        return f"{{{', '.join(result['labels'])}}}  {shown}"
    return "  ".join(f"{name} {v:.4g}" for name, v in result["values"].items())
