"""``edgeft history``'s text output."""

from __future__ import annotations

from typing import Any


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_history(rows: list[dict[str, Any]]) -> str:
    """A table for a person: one line per version; ``*`` marks the current one, ``-`` pruned ones."""
    lines = ["   version  time                 origin                        samples  preq   holdout  verdict"]
    for row in rows:
        mark = "*" if row["current"] else " " if row["retained"] else "-"
        verdict = "promoted" if row["promoted"] else "refused"
        if row["reason"] and not row["promoted"] or row["kind"] == "rollback":
            verdict += f" ({row['reason']})"
        origin = row["origin"] if len(row["origin"]) <= 28 else "..." + row["origin"][-25:]
        prequential, holdout = (row.get(f"{k}_metric", row[f"{k}_accuracy"]) for k in ("prequential", "holdout"))
        lines.append(
            f"{mark} {row['version']:>8}  {str(row['time'])[:19]:<19}  {origin:<28}  {row['samples']:>7}  "
            f"{_figure(prequential):<5}  {_figure(holdout):<7}  {verdict}"
        )
    metrics = {row["metric"] for row in rows if "metric" in row}
    if metrics:
        lines.append(f"(preq and holdout: {', '.join(sorted(metrics))}, not accuracy)")
    lines.append("(* current, - pruned: no longer on disk, cannot be rolled back to)")
    return "\n".join(lines)
