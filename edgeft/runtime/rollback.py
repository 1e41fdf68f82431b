"""Rollback: make an earlier version's head current again, as a new version (history stays append-only).

A version's ``head_source`` is the version that trained its head: its own number when an arrival (or a fleet
round) was promoted, its parent's when the guard refused, the target's when it is a rollback. Rolling back to
version N copies N's head and the index of its replay buffer and holdout (edgeft.runtime.replay_store: the
segments it lists stay) into a new version whose ``head_source`` is N's. The inputs
learned since stay consumed in the journal (status ``rolled_back``): a rollback never makes them learnable again
by accident; ``adapt --relearn`` learns them again on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeft.errors import EdgeftError
from edgeft.runtime.store import StateStore, Version

ROLLBACK_ORIGIN = "rollback"


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback will commit: the target version, its head's source and the arrivals it undoes."""

    target: Version
    head_source: int
    undone_versions: list[int]
    undone_inputs: list[dict[str, Any]]


def head_source(row: dict[str, Any]) -> int:
    """The version that trained a metrics row's head (0: the bundle's initial head); a record's ``trained_head``."""
    return int(row.get("head_source", row.get("head_version", 0)))


def plan(store: StateStore, current: Version, number: int | None) -> RollbackPlan:
    """Choose the target (``number``, or by default the newest retained promoted head older than the current
    head) and list the arrivals whose learning it undoes; a clear error when there is nothing to roll back to."""
    now = current.record.trained_head
    if number is None:
        candidates = [
            n for n in store.retained() if n < now and store.load(n).record.trained_head == n and n != current.number
        ]
        if not candidates:
            raise EdgeftError(
                f"state {store.root}: no earlier promoted head is retained to roll back to (current head from version "
                f"{now}; retained versions {store.retained()})"
            )
        number = candidates[-1]
    target = store.retained_version(number)
    source = target.record.trained_head
    if source == 0:
        raise EdgeftError(
            f"state {store.root}: version {number} still had the bundle's initial head; to start over, use a new "
            "--state directory"
        )
    if source == now:
        raise EdgeftError(
            f"state {store.root}: version {number}'s head (trained at version {source}) is already current"
        )
    later = [store.load(n) for n in store.retained() if number < n <= current.number]
    records = [(v.number, v.record) for v in later]
    already = {item["sha256"] for _, r in records if r.is_rollback for item in r.arrival["rollback"]["undone_inputs"]}
    undone = [(n, r) for n, r in records if r.arrival.get("promoted") and not r.is_rollback and r.trained_head == n]
    inputs = [
        {**item, "version": n}
        for n, r in undone
        for item in r.arrival.get("inputs", [])
        if item.get("sha256") not in already
    ]
    return RollbackPlan(target, source, [n for n, _ in undone], inputs)


def rollback_meta(parent: Version, chosen: RollbackPlan, created: str) -> dict[str, Any]:
    """The rollback version's record fields: the target's label map and counts, the parent's cumulative counters."""
    previous, target = parent.record, chosen.target.record
    updates = {"promoted": 0, "refused": 0, "rollbacks": 0, **previous.updates}
    updates["rollbacks"] += 1
    number = parent.number + 1
    return {
        **({"drift": previous.drift} if previous.drift is not None else {}),
        **({"thresholds": target.thresholds} if target.thresholds is not None else {}),  # tuned with the head
        **({"segments": target.segments} if target.segments is not None else {}),  # its buffers' rows
        "updates": updates,
        "created": created,
        "classes": list(target.classes or []),
        "class_counts": dict(target.class_counts),
        "samples_accepted": previous.samples_accepted,
        "samples_received": previous.samples_received,
        "head_version": number,
        "head_source": chosen.head_source,
        "arrival": {
            "origin": ROLLBACK_ORIGIN,
            "inputs": [],
            "samples": 0,
            "promoted": True,
            "reason": f"rolled back to version {chosen.target.number} (head trained at version {chosen.head_source})",
            "new_classes": [],
            "rollback": {
                "to": chosen.target.number,
                "from": parent.number,
                "head_source": chosen.head_source,
                "undone_versions": chosen.undone_versions,
                "undone_inputs": chosen.undone_inputs,
            },
        },
    }
