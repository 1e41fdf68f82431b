"""Prometheus metrics in the text exposition format, written atomically for node_exporter's textfile collector.

Figures come from the state directory (the current version's metadata carries cumulative counts) and, in watch
mode, the inbox's quarantine folder, so they survive restarts.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from edgeft.common.atomic import SHARED_FILE_MODE, make_directory, write_bytes_atomic
from edgeft.runtime.guard import recorded_holdout_accuracy
from edgeft.runtime.inbox import QUARANTINE_DIR
from edgeft.runtime.store import read_current_record
from edgeft.runtime.tasks import recorded_figures
from edgeft.runtime.version_record import VersionRecord
from edgeft.service.queue import collect_inbox, counts

Sample = tuple[str, str, str, list[tuple[str, float]]]  # name, type, help, [(labels, value)]


def collect(state: Path, inbox: Path | None = None) -> list[Sample]:
    """The metric families for one state directory (and its inbox)."""
    # before the first commit: version 0, nothing counted
    record = read_current_record(state) or VersionRecord(version=0, parent=None, bundle="", sha256={})
    arrival = record.arrival
    updates = record.updates
    holdout = recorded_holdout_accuracy(arrival)
    created = record.created
    families: list[Sample] = [
        ("edgeft_version", "gauge", "Current committed state version.", [("", record.version)]),
        ("edgeft_head_version", "gauge", "Version whose head is current.", [("", record.head_version or 0)]),
        ("edgeft_classes", "gauge", "Classes the head has learned.", [("", len(record.classes or []))]),
        (
            "edgeft_samples_received_total",
            "counter",
            "Labelled samples received.",
            [("", record.samples_received)],
        ),
        (
            "edgeft_samples_accepted_total",
            "counter",
            "Samples of promoted arrivals (trained or held out).",
            [("", record.samples_accepted)],
        ),
        (
            "edgeft_updates_total",
            "counter",
            "Arrivals learned, by the guard's verdict.",
            [('result="promoted"', updates.get("promoted", 0)), ('result="refused"', updates.get("refused", 0))],
        ),
        (
            "edgeft_rollbacks_total",
            "counter",
            "Rollbacks: an earlier head made current again.",
            [("", updates.get("rollbacks", 0))],
        ),
    ]
    if inbox is not None:
        quarantined = len(list((inbox / QUARANTINE_DIR).glob("*.reason.txt")))
        families.append(("edgeft_quarantined_files", "gauge", "Files in the inbox's quarantine.", [("", quarantined)]))
        queue = counts(collect_inbox(inbox))
        families += [
            (
                "edgeft_inbox_entries",
                "gauge",
                "Inbox entries waiting: never tried, or retrying after attempts that did not finish.",
                [('state="waiting"', queue["waiting"]), ('state="retrying"', queue["retrying"])],
            ),
            (
                "edgeft_poisoned_files",
                "gauge",
                "Quarantined files set aside for killing or failing the learner again and again.",
                [("", queue["poison"])],
            ),
        ]
    if holdout is not None:
        families.append(("edgeft_holdout_accuracy", "gauge", "Holdout accuracy of the current head.", [("", holdout)]))
    prequential = arrival.get("prequential", {}).get("accuracy")
    if prequential is not None:
        families.append(
            (
                "edgeft_prequential_accuracy",
                "gauge",
                "Accuracy on the last arrival before learning it.",
                [("", prequential)],
            )
        )
    figures = recorded_figures(arrival)  # a multi-label or regression head's metric
    if figures:
        label = f'metric="{figures["metric"]}"'
        for kind, what in (("prequential", "on the last arrival before learning it"), ("holdout", "on the holdout")):
            if figures[f"{kind}_metric"] is not None:
                families.append(
                    (
                        f"edgeft_{kind}_metric",
                        "gauge",
                        f"The task's metric (micro_f1, rmse or mae) {what}.",
                        [(label, figures[f"{kind}_metric"])],
                    )
                )
    families.append(
        (
            "edgeft_drift_alarms_total",
            "counter",
            "Page-Hinkley drift alarms on the prequential error of arrivals (classes already known).",
            [("", (record.drift or {}).get("alarms", 0))],
        )
    )
    signal = arrival.get("drift")
    if signal:
        families += [
            (
                "edgeft_drift_statistic",
                "gauge",
                "Page-Hinkley statistic after the last arrival (an alarm above 0.5).",
                [("", signal["statistic"])],
            ),
            (
                "edgeft_drift_detected",
                "gauge",
                "1 if the last arrival raised a drift alarm.",
                [("", signal["detected"])],
            ),
        ]
    if created:
        stamp = datetime.fromisoformat(created).timestamp()
        families.append(("edgeft_last_update_timestamp_seconds", "gauge", "Time of the last commit.", [("", stamp)]))
    if arrival.get("seconds") is not None:
        families.append(
            (
                "edgeft_update_duration_seconds",
                "gauge",
                "Wall time of the last arrival's update.",
                [("", arrival["seconds"])],
            )
        )
    return families


def render(families: list[Sample]) -> str:
    """Prometheus text exposition format."""
    lines = []
    for name, kind, text, samples in families:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [
            f"{name}{{{labels}}} {float(value)!r}" if labels else f"{name} {float(value)!r}"
            for labels, value in samples
        ]
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, state: Path, inbox: Path | None = None) -> None:
    """Write the metrics atomically (node_exporter must never read half a file), readable by other users."""
    make_directory(path.parent)
    write_bytes_atomic(path, render(collect(state, inbox)).encode(), mode=SHARED_FILE_MODE)
