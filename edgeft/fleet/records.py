"""Head parameters and device reports as Flower records (numpy arrays in ArrayRecords, never pickles)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from edgeft.errors import EdgeftError
from edgeft.fleet.normaliser import Moments
from edgeft.fleet.policy import ClassScores
from edgeft.runtime.class_statistics import ClassStatistics
from edgeft.runtime.trainer import Parameters

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
REPORT = "report"
SCORES = "scores"
PREVIOUS_SCORES = "previous-scores"
STATISTICS = "statistics"


def to_record(parameters: Parameters) -> ArrayRecord:
    """Head parameters as an ArrayRecord (one Array per parameter name)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in parameters.items()})


def from_record(record: ArrayRecord) -> Parameters:
    """Head parameters from an ArrayRecord."""
    return {name: array.numpy() for name, array in record.items()}


def report_content(
    classes: list[str], fingerprint: str, parts: Moments, head_learner: str = "sgd", fleet_policy: str = "guard"
) -> RecordDict:
    """A device's report: label map, bundle fingerprint, head learner and fleet policy, feature moments, samples."""
    report = {"classes": list(classes), "fingerprint": fingerprint, "head-learner": head_learner}
    return RecordDict(
        {
            REPORT: ConfigRecord({**report, "fleet-policy": fleet_policy}),
            ARRAYS: ArrayRecord({"mean": Array(parts.mean), "var": Array(parts.var)}),
            METRICS: MetricRecord({"num-examples": parts.count}),
        }
    )


def read_report(content: RecordDict) -> tuple[list[str], str, Moments]:
    """The label map, bundle fingerprint and feature moments of a device's report."""
    report = content.config_records[REPORT]
    arrays = content.array_records[ARRAYS]
    count = int(content.metric_records[METRICS]["num-examples"])
    return (
        list(report["classes"]),
        str(report["fingerprint"]),
        Moments(count, arrays["mean"].numpy(), arrays["var"].numpy()),
    )


def reported_learner(content: RecordDict) -> str:
    """The head learner a device's report names (``sgd`` for devices that do not say)."""
    return str(content.config_records[REPORT].get("head-learner", "sgd"))


def reported_policy(content: RecordDict) -> str:
    """The fleet policy a device's report names (``guard`` for devices that do not say)."""
    return str(content.config_records[REPORT].get("fleet-policy", "guard"))


def scores_record(scores: ClassScores) -> ArrayRecord:
    """Per-class holdout counts as an ArrayRecord (int64)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(getattr(scores, name))) for name in ("correct", "total")})


def read_scores(record: ArrayRecord, num_classes: int, origin: str) -> ClassScores:
    """Per-class holdout counts from an ArrayRecord, or a clear error naming ``origin`` if they do not fit."""
    try:
        correct, total = (record[name].numpy() for name in ("correct", "total"))
    except KeyError as exc:
        raise EdgeftError(f"{origin}: its holdout scores lack {exc}") from None
    shapes = correct.shape == total.shape == (num_classes,) and correct.dtype == total.dtype == np.int64
    if not shapes or (correct < 0).any() or (correct > total).any():
        raise EdgeftError(f"{origin}: its holdout scores do not fit this bundle's {num_classes} outputs")
    return ClassScores(correct, total)


def statistics_record(statistics: ClassStatistics) -> ArrayRecord:
    """Class statistics as an ArrayRecord (counts int64, sums and moment float64)."""
    parts = {"counts": statistics.counts, "sums": statistics.sums, "moment": statistics.moment}
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in parts.items()})


def read_statistics(record: ArrayRecord, num_classes: int, feature_dim: int, origin: str) -> ClassStatistics:
    """Class statistics from a device's ArrayRecord, or a clear error naming ``origin`` if they do not fit."""
    try:
        counts, sums, moment = (record[name].numpy() for name in ("counts", "sums", "moment"))
    except KeyError as exc:
        raise EdgeftError(f"{origin}: its class statistics lack {exc}") from None
    fits = (
        counts.shape == (num_classes,)
        and counts.dtype == np.int64
        and sums.shape == (num_classes, feature_dim)
        and sums.dtype == np.float64
        and moment.dtype == np.float64
        and moment.shape in ((), (feature_dim, feature_dim))
    )
    if not fits or (counts < 0).any() or not (np.isfinite(sums).all() and np.isfinite(moment).all()):
        raise EdgeftError(
            f"{origin}: its class statistics do not fit this bundle's head ({num_classes} x {feature_dim})"
        )
    return ClassStatistics(counts, sums, moment)
