"""``edgeft status``: what a device's state directory says, summarised for a person (or as JSON)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeft.errors import EdgeftError
from edgeft.runtime.adapter import REJECTED_DIR
from edgeft.runtime.guard import recorded_holdout_accuracy
from edgeft.runtime.history import METRICS_FILE, read_lines
from edgeft.runtime.inbox import PENDING_DIR
from edgeft.runtime.int8_check import describe, read_checks
from edgeft.runtime.store import lock_holder, read_current_record
from edgeft.runtime.tasks import recorded_figures
from edgeft.service.queue import collect_inbox, counts

RECENT = 5


def _learner(state: Path) -> dict[str, Any]:
    """Whether the process that last took the writer lock is still running."""
    pid = lock_holder(state)
    if pid is None:
        return {"pid": None, "running": False}
    try:
        os.kill(pid, 0)
        running = True
    except ProcessLookupError:
        running = False
    except PermissionError:  # alive, owned by another user (e.g. the service account)
        running = True
    return {"pid": pid, "running": running}


def collect_status(state: Path, inbox: Path | None = None) -> dict[str, Any]:
    """A summary of the state directory (and, given, the inbox's entry counts): versions, classes, counts, the
    last arrival, recent accuracy."""
    queue = {"inbox": {"path": str(inbox), **counts(collect_inbox(inbox))}} if inbox is not None else {}
    try:
        record = read_current_record(state)
    except OSError as exc:
        raise EdgeftError(f"state {state} is unreadable ({type(exc).__name__}: {exc})") from None
    if record is None:
        if not state.is_dir():
            raise EdgeftError(f"state {state} does not exist")
        return {
            "state": str(state),
            "version": 0,
            "learner": _learner(state),
            "int8_checks": read_checks(state),
            **queue,
        }
    recent = list(read_lines(state / METRICS_FILE))[-RECENT:]
    arrival = record.arrival
    return {
        "state": str(state),
        "version": record.version,
        "head_version": record.head_version,
        "created": record.created,
        "classes": record.classes or [],
        "class_counts": record.class_counts,
        "samples_received": record.samples_received,
        "samples_accepted": record.samples_accepted,
        "updates": record.updates,
        "last_arrival": {
            "origin": arrival.get("origin"),
            "samples": arrival.get("samples"),
            "promoted": arrival.get("promoted"),
            "reason": arrival.get("guard", {}).get("reason"),
            "prequential_accuracy": arrival.get("prequential", {}).get("accuracy"),
            "holdout_accuracy": recorded_holdout_accuracy(arrival),
            "drift": arrival.get("drift"),
            **recorded_figures(arrival),
        },
        "drift_alarms": (record.drift or {}).get("alarms", 0),
        "recent_prequential_accuracy": [r.get("prequential", {}).get("accuracy") for r in recent],
        "pending_files": len(list((state / PENDING_DIR).glob("*.npz"))),
        "rejected_heads": len(list((state / REJECTED_DIR).glob("*.head.npz"))),
        "learner": _learner(state),
        "int8_checks": read_checks(state),
        **queue,
    }


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _drift(signal: dict[str, Any] | None, alarms: int) -> str:
    """The last arrival's Page-Hinkley statistic and whether it raised an alarm, and the alarms so far."""
    if signal is None:
        return f"not measured on the last arrival; {alarms} alarms so far"
    now = "ALARM: the world changed" if signal["detected"] else "no alarm"
    threshold = f", alarm above {signal['threshold']:g}" if "threshold" in signal else ""  # older records: none
    return f"Page-Hinkley {signal['statistic']:.3f} on the last arrival ({now}{threshold}); {alarms} alarms so far"


def _inbox_line(status: dict[str, Any]) -> list[str]:
    queue = status.get("inbox")
    if queue is None:
        return []
    return [
        f"inbox       {queue['path']}: {queue['waiting']} waiting, {queue['retrying']} retrying, "
        f"{queue['quarantined']} quarantined ({queue['poison']} as poison)"
    ]


def _int8_lines(status: dict[str, Any]) -> list[str]:
    return [f"int8        {describe(result)}" for result in status.get("int8_checks", [])]


def _figures_line(last: dict[str, Any]) -> str:
    """The last arrival's prequential and holdout figures: accuracy, or a multi-label/regression head's metric."""
    if "metric" in last:
        return (
            f"{last['metric']:<11} prequential {_figure(last['prequential_metric'])}, "
            f"holdout {_figure(last['holdout_metric'])}"
        )
    return (
        f"accuracy    prequential {_figure(last['prequential_accuracy'])}, holdout {_figure(last['holdout_accuracy'])}"
    )


def format_status(status: dict[str, Any]) -> str:
    """The summary as a few aligned lines."""
    learner = status["learner"]
    running = f"running (pid {learner['pid']})" if learner["running"] else "not running"
    if not status.get("version"):
        lines = [f"state       {status['state']}", "version     0 (nothing learned yet)", f"learner     {running}"]
        return "\n".join(lines + _int8_lines(status) + _inbox_line(status))
    last = status["last_arrival"]
    verdict = "promoted" if last["promoted"] else f"refused: {last['reason']}"
    updates = status["updates"]
    recent = " ".join(_figure(a) for a in status["recent_prequential_accuracy"])
    return "\n".join(
        [
            f"state       {status['state']}",
            f"version     {status['version']} (head from version {status['head_version']}), {status['created']}",
            f"classes     {len(status['classes'])}: {', '.join(status['classes'])}",
            f"samples     {status['samples_received']} received, {status['samples_accepted']} accepted",
            f"updates     {updates.get('promoted', 0)} promoted, {updates.get('refused', 0)} refused, "
            f"{updates.get('rollbacks', 0)} rollbacks",
            f"last        {last['origin']}: {last['samples']} samples, {verdict}",
            _figures_line(last),
            f"recent      prequential accuracy of the last arrivals: {recent}",
            f"drift       {_drift(last['drift'], status['drift_alarms'])}",
            f"kept        {status['pending_files']} pending files, {status['rejected_heads']} refused heads",
            f"learner     {running}",
            *_int8_lines(status),
            *_inbox_line(status),
        ]
    )
