"""The report's data, computed from plain rows and arrays: arrivals over time, the guard's verdicts, a confusion matrix.

Nothing here reads files, runs a model or draws: ``collect`` feeds it, ``figure`` and ``page`` present it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Arrival:
    """One version's arrival as ``metrics.jsonl`` records it (an adopted fleet head is an arrival of 0 samples)."""

    version: int
    time: str | None
    origin: str | None
    samples: int
    trained: int
    held_out: int
    prequential_accuracy: float | None
    current_accuracy: float | None
    candidate_accuracy: float | None
    holdout_samples: int
    promoted: bool
    adopted: bool
    reason: str
    new_classes: list[str]
    head_version: int
    seconds: float | None

    @property
    def verdict(self) -> str:
        """``promoted``, ``adopted`` or ``refused``."""
        if not self.promoted:
            return "refused"
        return "adopted" if self.adopted else "promoted"

    @property
    def holdout_accuracy(self) -> float | None:
        """The guard's holdout accuracy of the head that is current after this arrival (None: not judged)."""
        return self.candidate_accuracy if self.promoted else self.current_accuracy


def arrivals(rows: Iterable[dict[str, Any]]) -> list[Arrival]:
    """Arrivals from metrics rows, one per version (a repeated version keeps its last row), oldest first."""
    by_version: dict[int, Arrival] = {}
    for row in rows:
        if "version" not in row:
            continue
        verdict = row.get("guard") or {}
        prequential = row.get("prequential") or {}
        by_version[int(row["version"])] = Arrival(
            version=int(row["version"]),
            time=row.get("time"),
            origin=row.get("origin"),
            samples=int(row.get("samples", 0)),
            trained=int(row.get("trained", 0)),
            held_out=int(row.get("held_out", 0)),
            prequential_accuracy=prequential.get("accuracy"),
            current_accuracy=verdict.get("current_accuracy"),
            candidate_accuracy=verdict.get("candidate_accuracy"),
            holdout_samples=int(verdict.get("holdout_samples", 0)),
            promoted=bool(row.get("promoted", True)),
            adopted=bool(row.get("adopted", False)),
            reason=str(verdict.get("reason", "")),
            new_classes=list(row.get("new_classes", [])),
            head_version=int(row.get("head_version", row["version"])),
            seconds=row.get("seconds"),
        )
    return [by_version[v] for v in sorted(by_version)]


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Counts [true class, predicted class] of ``classes`` × ``classes``."""
    flat = np.asarray(labels, np.int64) * classes + np.asarray(predicted, np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


@dataclass(frozen=True)
class Evaluation:
    """The current head's predictions on labelled samples, as a confusion matrix over the known classes."""

    source: str
    classes: list[str]
    matrix: np.ndarray

    @property
    def samples(self) -> int:
        return int(self.matrix.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.matrix) / self.samples) if self.samples else float("nan")

    @property
    def support(self) -> list[int]:
        """Samples of each true class."""
        return [int(n) for n in self.matrix.sum(axis=1)]

    @property
    def per_class(self) -> list[float | None]:
        """Accuracy (recall) of each class; None for a class without samples."""
        return [float(self.matrix[i, i] / n) if n else None for i, n in enumerate(self.support)]

    def most_confused(self, index: int) -> tuple[str, int] | None:
        """The class most often predicted for true class ``index`` other than itself, and how often (None: never)."""
        row = self.matrix[index].copy()
        row[index] = 0
        other = int(row.argmax())
        return (self.classes[other], int(row[other])) if row[other] else None


@dataclass(frozen=True)
class Report:
    """Everything a report shows about one state directory."""

    bundle: str
    state: str
    version: int
    head_version: int
    classes: list[str]
    arrivals: list[Arrival]
    evaluation: Evaluation | None
    note: str
    continual: dict[str, Any] | None = None  # edgeft eval's tasks and per-version result on the --eval data

    @property
    def refused(self) -> list[Arrival]:
        return [a for a in self.arrivals if not a.promoted]
