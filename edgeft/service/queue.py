"""What an inbox holds, read without touching it: for ``edgeft inbox list``, ``edgeft status`` and the metrics.

Entries waiting (never tried), retrying (tried before without finishing: how often the learner died on them, the
errors they raised; they wait behind the fresh ones), quarantined (with the reason; ``poison`` when they were set
aside for killing or failing the learner), and the files of samples waiting in ``pending/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeft.errors import EdgeftError
from edgeft.runtime.attempts import ATTEMPTS_DIR, AttemptLedger
from edgeft.runtime.inbox import ATTEMPTS_SUFFIX, PENDING_DIR, REASON_SUFFIX, quarantined, ready_entries


def _reason(entry: Path) -> str:
    path = entry.with_name(entry.name + REASON_SUFFIX)
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "(no reason file)"


def collect_inbox(root: Path) -> dict[str, Any]:
    """The inbox's entries by state, in the order the watch takes them."""
    if not root.is_dir():
        raise EdgeftError(f"inbox {root} does not exist or is not a directory")
    records = {}
    for path in sorted((root / ATTEMPTS_DIR).glob("*.json")):
        record = AttemptLedger.read(path)
        if record is not None:
            records[record.name] = record
    waiting, retrying = [], []
    for entry in ready_entries(root):
        record = records.get(entry.name)
        if record is None:
            waiting.append({"name": entry.name})
        else:
            retrying.append(
                {
                    "name": entry.name,
                    "died": record.unfinished,
                    "transient_errors": record.transient,
                    "errors": record.errors,
                }
            )
    return {
        "inbox": str(root),
        "waiting": waiting,
        "retrying": retrying,
        "quarantined": [
            {
                "name": entry.name,
                "reason": _reason(entry),
                "poison": entry.with_name(entry.name + ATTEMPTS_SUFFIX).exists(),
            }
            for entry in quarantined(root)
        ],
        "pending_files": len(list((root / PENDING_DIR).glob("*.npz"))),
    }


def counts(listing: dict[str, Any]) -> dict[str, int]:
    """How many entries wait, retry, are quarantined, and of those were set aside as poison."""
    return {
        "waiting": len(listing["waiting"]),
        "retrying": len(listing["retrying"]),
        "quarantined": len(listing["quarantined"]),
        "poison": sum(item["poison"] for item in listing["quarantined"]),
    }


def format_inbox(listing: dict[str, Any]) -> str:
    """The listing as lines for a person."""
    numbers = counts(listing)
    lines = [
        f"inbox {listing['inbox']}: {numbers['waiting']} waiting, {numbers['retrying']} retrying, "
        f"{numbers['quarantined']} quarantined ({numbers['poison']} as poison), "
        f"{listing['pending_files']} pending sample files"
    ]
    lines += [f"waiting     {item['name']}" for item in listing["waiting"]]
    for item in listing["retrying"]:
        last = f"; last error: {item['errors'][-1]}" if item["errors"] else ""
        lines.append(
            f"retrying    {item['name']}: the learner died {item['died']} times on it, "
            f"{len(item['errors'])} errors, {item['transient_errors']} write errors{last}"
        )
    for item in listing["quarantined"]:
        lines.append(f"quarantined {item['name']}{' (poison)' if item['poison'] else ''}: {item['reason']}")
    return "\n".join(lines)
