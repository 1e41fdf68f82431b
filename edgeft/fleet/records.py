"""Head parameters and device reports as Flower records (numpy arrays in ArrayRecords, never pickles)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from edgeft.fleet.normaliser import Moments
from edgeft.runtime.trainer import Parameters

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
REPORT = "report"


def to_record(parameters: Parameters) -> ArrayRecord:
    """Head parameters as an ArrayRecord (one Array per parameter name)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in parameters.items()})


def from_record(record: ArrayRecord) -> Parameters:
    """Head parameters from an ArrayRecord."""
    return {name: array.numpy() for name, array in record.items()}


def report_content(classes: list[str], fingerprint: str, parts: Moments) -> RecordDict:
    """A device's report: label map and bundle fingerprint, feature moments, sample count."""
    return RecordDict(
        {
            REPORT: ConfigRecord({"classes": list(classes), "fingerprint": fingerprint}),
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
