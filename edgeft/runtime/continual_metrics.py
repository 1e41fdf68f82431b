"""Continual-learning metrics of an accuracy matrix, by their standard definitions.

``R[i][j]`` is the accuracy on task ``j`` of the head right after task ``i`` was learned (T tasks; entries may be
None where that head is no longer on disk):

- average accuracy (GEM, Lopez-Paz & Ranzato 2017): mean over j of ``R[T-1][j]``;
- backward transfer (GEM): mean over j < T-1 of ``R[T-1][j] - R[j][j]``;
- forgetting (Avalanche's ``StreamForgetting``): mean over j < T-1 of ``R[j][j] - R[T-1][j]``, the accuracy on a
  task right after it was learned minus now (so it equals -BWT when every entry is known);
- max forgetting (Chaudhry et al. 2018, "Riemannian Walk"): mean over j < T-1 of ``max_{j<=l<T-1} R[l][j] - R[T-1][j]``
  (rows before task j was learned are left out: there a head cannot know task j's classes).
"""

from __future__ import annotations

Matrix = list[list[float | None]]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(matrix: Matrix) -> dict[str, float | None]:
    """Average accuracy, backward transfer, forgetting and max forgetting of a square accuracy matrix (None
    where the entries a figure needs are missing, or with fewer than two tasks for the transfer figures)."""
    tasks = len(matrix)
    if tasks == 0:
        return {"average_accuracy": None, "backward_transfer": None, "forgetting": None, "max_forgetting": None}
    last = matrix[-1]
    final = [v for v in last if v is not None]
    average = _mean(final) if len(final) == tasks else None
    pairs = [(matrix[j][j], last[j]) for j in range(tasks - 1)]
    known = all(a is not None and b is not None for a, b in pairs)
    bwt = _mean([b - a for a, b in pairs]) if known else None  # type: ignore[operator]
    forgetting = _mean([a - b for a, b in pairs]) if known else None  # type: ignore[operator]
    peaks = []
    for j in range(tasks - 1):
        seen = [matrix[row][j] for row in range(j, tasks - 1) if matrix[row][j] is not None]
        if not seen or last[j] is None:
            peaks = None
            break
        peaks.append(max(seen) - last[j])
    return {
        "average_accuracy": average,
        "backward_transfer": bwt if tasks > 1 else None,
        "forgetting": forgetting if tasks > 1 else None,
        "max_forgetting": _mean(peaks) if peaks else None,
    }
