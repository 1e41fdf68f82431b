"""Append-only JSON-lines logs of a state directory: the input journal and the per-arrival metrics.

The authoritative record of an arrival is its committed version's metadata (written atomically with the head).
These logs are derived from it: appended after each commit and caught up from the retained versions when a
state directory is opened, so a crash between a commit and an append loses no line and writes none twice.

    journal.jsonl   one line per consumed input: version, name, sha256, samples, status (learned / rejected)
    metrics.jsonl   one line per arrival: prequential accuracy and loss, holdout figures, promotion, counts
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeft.common.atomic import fsync_directory
from edgeft.common.faults import crash_point
from edgeft.runtime.consumed import ConsumedInputs
from edgeft.runtime.store import StateStore, Version

JOURNAL_FILE = "journal.jsonl"
METRICS_FILE = "metrics.jsonl"
_TAIL_BYTES = 1 << 16


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """Every well-formed JSON object line of ``path`` (a torn last line from a crash is skipped)."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        for raw in handle:
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


def append_lines(path: Path, rows: list[dict[str, Any]], sync_directory: bool = True) -> None:
    """Append rows durably (a new file's entry too, unless ``sync_directory`` is False: the caller knows it is
    durable already); a torn last line left by a crash is closed off first."""
    if not rows:
        return
    data = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
    crash_point("append")
    with path.open("ab+") as handle:
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                data = b"\n" + data
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if sync_directory:  # the file may be new (or made by a process killed before this)
        fsync_directory(path.parent)


def last_version(path: Path) -> tuple[int, int]:
    """The highest ``version`` among the last lines of ``path`` and how many lines it has there ((0, 0) if none)."""
    if not path.exists():
        return 0, 0
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        tail = handle.read().splitlines()
    versions = []
    for raw in tail:
        try:
            versions.append(int(json.loads(raw)["version"]))
        except (ValueError, KeyError, TypeError):
            continue
    newest = max(versions, default=0)
    return newest, versions.count(newest)


def journal_rows(version: Version) -> list[dict[str, Any]]:
    """Journal lines for the inputs a version consumed (or, for a rollback, the inputs whose learning it undid)."""
    arrival = version.record.arrival
    status = "learned" if arrival.get("promoted", True) else "rejected"
    undone = arrival.get("rollback", {}).get("undone_inputs", [])  # still consumed: a rollback undoes, never forgets
    rows = [(status, item) for item in arrival.get("inputs", [])]
    rows += [("rolled_back", {**item, "learned_in": item["version"]}) for item in undone]
    return [
        {**item, "time": version.record.created, "version": version.number, "status": state} for state, item in rows
    ]


def metrics_row(version: Version) -> dict[str, Any]:
    """The metrics line of one version's arrival."""
    record = version.record
    arrival = {k: v for k, v in record.arrival.items() if k != "inputs"}
    return {
        "time": record.created,
        "version": version.number,
        "head_version": version.number if record.head_version is None else record.head_version,
        "samples_accepted": record.samples_accepted,
        "class_counts": record.class_counts,
        **arrival,
    }


class History:
    """The journal and metrics logs of one state directory."""

    def __init__(self, root: Path) -> None:
        self.journal = root / JOURNAL_FILE
        self.metrics = root / METRICS_FILE
        self._durable: set[Path] = set()  # logs whose directory entry this process made durable

    def _append(self, path: Path, rows: list[dict[str, Any]]) -> None:
        """``append_lines``, fsyncing the directory only the first time this process appends to ``path``."""
        append_lines(path, rows, sync_directory=bool(rows) and path not in self._durable)
        if rows:
            self._durable.add(path)

    def record(self, version: Version) -> None:
        """Append a freshly committed version's lines."""
        self._append(self.journal, journal_rows(version))
        self._append(self.metrics, [metrics_row(version)])

    def catch_up(self, store: StateStore) -> None:
        """Append the lines of retained versions newer than the logs (after a crash between commit and append)."""
        for path, rows in ((self.journal, journal_rows), (self.metrics, lambda v: [metrics_row(v)])):
            done, written = last_version(path)
            for number in store.retained():
                if number > done:
                    self._append(path, rows(store.load(number)))
                elif number == done:  # a crash may have torn this version's lines part-way
                    self._append(path, rows(store.load(number))[written:])

    def consumed(self) -> ConsumedInputs:
        """sha256 -> version of every input the journal says was consumed."""
        return ConsumedInputs(
            (row["sha256"], int(row["version"])) for row in read_lines(self.journal) if "sha256" in row
        )
