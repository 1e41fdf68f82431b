"""Every version of a state directory (``edgeft history``, ``Adapter.history()``), read without the lock.

The rows come from ``metrics.jsonl`` (append-only, so pruned versions stay listed) and, for versions a crash kept
out of that log, from the retained versions' metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeft.errors import EdgeftError
from edgeft.runtime.guard import recorded_holdout_accuracy
from edgeft.runtime.history import METRICS_FILE, metrics_row, read_lines
from edgeft.runtime.rollback import head_source
from edgeft.runtime.store import CURRENT_FILE, Version, read_pointer, read_record, stored_numbers
from edgeft.runtime.tasks import recorded_figures


def _origin(row: dict[str, Any]) -> str:
    rollback = row.get("rollback")
    if rollback:
        return f"rollback to {rollback['to']}"
    return str(row.get("origin", "?"))


def _summary(row: dict[str, Any], retained: set[int], current: int) -> dict[str, Any]:
    promoted = bool(row.get("promoted"))
    guard = row.get("guard", {})
    return {
        "version": int(row["version"]),
        "time": row.get("time"),
        "origin": _origin(row),
        "kind": "rollback" if row.get("rollback") else "adopt" if row.get("adopted") else "arrival",
        "samples": int(row.get("samples", 0)),
        "prequential_accuracy": row.get("prequential", {}).get("accuracy"),
        "holdout_accuracy": recorded_holdout_accuracy(row),
        **recorded_figures(row),  # a multi-label or regression head's metric instead of accuracy
        "promoted": promoted,
        "reason": row.get("reason") or guard.get("reason", ""),
        "head_version": row.get("head_version"),
        "head_source": head_source(row),
        "retained": int(row["version"]) in retained,
        "current": int(row["version"]) == current,
        **({"rollback": row["rollback"]} if row.get("rollback") else {}),
        **({"drift": row["drift"]} if row.get("drift") else {}),
    }


def collect_history(state: str | Path) -> list[dict[str, Any]]:
    """One summary per version, oldest first: time, origin, samples, accuracies, verdict, retained or pruned."""
    root = Path(state)
    current = read_pointer(root)
    if current is None:
        raise EdgeftError(f"{root} has no committed version (no {CURRENT_FILE} file); learn something first")
    rows = {int(row["version"]): row for row in read_lines(root / METRICS_FILE) if "version" in row}
    retained = set()
    for number in stored_numbers(root):
        if number > current:
            continue  # written by a commit that never reached CURRENT
        retained.add(number)
        if number not in rows:
            rows[number] = metrics_row(Version(number, {}, read_record(root, number)))
    return [_summary(rows[n], retained, current) for n in sorted(rows) if n <= current]
