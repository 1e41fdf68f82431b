"""``evaluate``: accuracy of a state directory's heads on labelled test data, read without the lock.

The current head gets its accuracy, per-class accuracy and confusion matrix. ``per_version`` scores every
retained version's head; ``tasks`` splits the test data into tasks by the order its classes were met (the
classes first learned by the same version form one task) and builds the square accuracy matrix with the
continual-learning metrics of :mod:`edgeft.runtime.continual_metrics`. A test sample whose class a head does not
know counts as wrong for that head (class-incremental scoring). A multi-label head is scored by micro-F1 (and
macro-F1, per-label precision/recall/F1), a regression head by MAE and RMSE (per target); ``per_version`` gives
each retained version's figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeft.data.readers import Samples, concatenated
from edgeft.errors import DataError, EdgeftError
from edgeft.runtime import tasks as target_tasks
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.continual_metrics import summarise
from edgeft.runtime.history import METRICS_FILE, read_lines
from edgeft.runtime.labels import label_names
from edgeft.runtime.store import Version
from edgeft.runtime.streaming import embed_labelled
from edgeft.runtime.trainer import HeadPredictor, stored_state


def _predicted(predictor: HeadPredictor, adapter: Adapter, version: Version, features: np.ndarray) -> np.ndarray:
    """Class names one version's head predicts (``""`` everywhere for a head that knows no class yet)."""
    classes = list(version.record.classes or [])
    if not classes:
        return np.full(len(features), "", dtype=object)
    parameters = stored_state(adapter.bundle, version.files).parameters
    best = predictor.probabilities(features, parameters, len(classes)).argmax(axis=1)
    return np.array(classes, dtype=object)[best]


def _accuracy(predicted: np.ndarray, names: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    if mask is not None:
        predicted, names = predicted[mask], names[mask]
    return float((predicted == names).mean()) if len(names) else None


def _per_class(predicted: np.ndarray, names: np.ndarray, classes: list[str]) -> dict[str, Any]:
    rows = sorted(set(names.tolist()), key=lambda n: (n not in classes, classes.index(n) if n in classes else n))
    per_class = {
        name: {"samples": int((names == name).sum()), "accuracy": _accuracy(predicted, names, names == name)}
        for name in rows
    }
    columns = classes
    confusion = [[int(((names == t) & (predicted == p)).sum()) for p in columns] for t in rows]
    return {"per_class": per_class, "confusion": {"true": rows, "predicted": columns, "counts": confusion}}


def first_learned(adapter: Adapter) -> dict[str, int]:
    """Class name -> the version whose promoted arrival first brought samples of it (from metrics.jsonl and the
    retained versions, so pruned versions still count)."""
    counts = {int(row["version"]): row.get("class_counts", {}) for row in read_lines(adapter.store.root / METRICS_FILE)}
    for number in adapter.store.retained():
        counts.setdefault(number, adapter.store.load(number).record.class_counts)
    first: dict[str, int] = {}
    for number in sorted(counts):
        for name, count in counts[number].items():
            if count > 0:
                first.setdefault(name, number)
    return first


def held_out_metric(adapter: Adapter, held_out: list[Samples]) -> float | None:
    """The task's metric (accuracy, micro-F1, MAE or RMSE) of the current head on labelled held-out data (None
    without any)."""
    if not held_out:
        return None
    if len(held_out) > 1 and adapter.metric != "accuracy":  # micro-F1 and RMSE do not average over files
        x, y = concatenated(held_out, ", ".join(s.origin for s in held_out))
        return adapter.score(x, y, "held-out data")
    correct = sum(adapter.score(s.x, s.y, s.origin) * len(s.x) for s in held_out)
    return correct / sum(len(s.x) for s in held_out)


def evaluate(
    adapter: Adapter,
    x: np.ndarray,
    y: np.ndarray,
    *,
    per_version: bool = False,
    tasks: bool = False,
    origin: str = "test",
) -> dict[str, Any]:
    """Score the state's heads on labelled raw inputs ``x``/``y`` (names or indices of the current classes)."""
    _current(adapter)
    _check_sizes(len(x), len(y), origin)  # before the backbone runs
    features = adapter.embed(x, origin)
    return evaluate_features(adapter, features, y, per_version=per_version, tasks=tasks, origin=origin)


def evaluate_path(
    adapter: Adapter, path: str | Path, *, per_version: bool = False, tasks: bool = False
) -> dict[str, Any]:
    """``evaluate`` on the labelled test data at ``path`` (any format adapt reads), read and embedded a batch at a
    time, so a test set larger than memory can be scored."""
    _current(adapter)
    features, y = embed_labelled(adapter, path)
    return evaluate_features(adapter, features, y, per_version=per_version, tasks=tasks, origin=str(path))


def _check_sizes(samples: int, labels: int, origin: str) -> None:
    if samples != labels:
        raise DataError(f"{origin}: {samples} samples but {labels} labels; give exactly one label per sample")
    if samples == 0:
        raise DataError(f"{origin}: no samples to evaluate on")


def _current(adapter: Adapter) -> Version:
    current = adapter.store.current()
    if current is None:
        raise EdgeftError(f"state {adapter.store.root} has no committed version; learn something first")
    return current


def evaluate_features(
    adapter: Adapter,
    features: np.ndarray,
    y: np.ndarray,
    *,
    per_version: bool = False,
    tasks: bool = False,
    origin: str = "test",
) -> dict[str, Any]:
    """``evaluate`` on the backbone's ``features`` of the test inputs."""
    current = _current(adapter)
    _check_sizes(len(features), len(y), origin)
    if adapter.metric != "accuracy":
        return _evaluate_targets(adapter, current, features, y, per_version=per_version, tasks=tasks, origin=origin)
    names = label_names(np.asarray(y), adapter.classes, origin).astype(object)
    predictor = HeadPredictor(adapter.bundle, adapter.placement, None)
    predicted = _predicted(predictor, adapter, current, features)
    result: dict[str, Any] = {
        "version": current.number,
        "samples": len(names),
        "accuracy": _accuracy(predicted, names),
        **_per_class(predicted, names, adapter.classes),
    }
    if not (per_version or tasks):
        return result
    first = first_learned(adapter)
    groups: dict[int, list[str]] = {}
    for name in adapter.classes:
        if name in first:
            groups.setdefault(first[name], []).append(name)
    starts = sorted(groups)
    task_masks = [np.isin(names, groups[start]) for start in starts]
    task_list = [
        {"first_version": s, "classes": groups[s], "samples": int(m.sum())}
        for s, m in zip(starts, task_masks, strict=True)
    ]
    retained = adapter.store.retained()
    scores: dict[int, list[float | None]] = {}

    def row(number: int) -> list[float | None] | None:
        if number not in retained:
            return None
        if number not in scores:
            guess = (
                predicted
                if number == current.number
                else _predicted(predictor, adapter, adapter.store.load(number), features)
            )
            scores[number] = [_accuracy(guess, names)] + [_accuracy(guess, names, m) for m in task_masks]
        return scores[number]

    result["tasks"] = task_list
    result["unassigned_samples"] = int(len(names) - sum(m.sum() for m in task_masks))
    if per_version:
        result["per_version"] = [
            {"version": n, "accuracy": row(n)[0], "tasks": row(n)[1:]}
            for n in retained  # type: ignore[index]
        ]
    if tasks:
        ends = [start - 1 for start in starts[1:]] + [current.number]
        matrix = []
        for end in ends:
            scored = row(end)
            matrix.append(scored[1:] if scored is not None else [None] * len(starts))
        result["task_matrix"] = {"after_version": ends, "matrix": matrix}
        result.update(summarise(matrix))
    return result


def _evaluate_targets(
    adapter: Adapter,
    current: Version,
    features: np.ndarray,
    y: np.ndarray,
    *,
    per_version: bool,
    tasks: bool,
    origin: str,
) -> dict[str, Any]:
    """``evaluate`` for a multi-label or regression head: its metric, per label or target, and per version."""
    if tasks:
        raise EdgeftError(
            f"--tasks splits test data by the order classes were met; a {adapter.task} head has no classes to split by"
        )
    head, classes = adapter.bundle.manifest.head, adapter.classes
    targets = adapter.encode(y, origin).values[:, : len(classes)]
    predictor = HeadPredictor(adapter.bundle, adapter.placement, None)

    def scores(version: Version) -> np.ndarray:
        logits = predictor.logits(features, stored_state(adapter.bundle, version.files).parameters)
        return target_tasks.outputs(head, logits, len(classes))

    metric = target_tasks.metric_name(head)
    result: dict[str, Any] = {
        "version": current.number,
        "samples": len(targets),
        "task": head.task,
        "metric": metric,
        **target_tasks.report(head, scores(current), targets, adapter.thresholds, classes),
    }
    if per_version:
        result["per_version"] = []
        for number in adapter.store.retained():
            version = current if number == current.number else adapter.store.load(number)
            value = target_tasks.score(
                head, scores(version), targets, target_tasks.thresholds_of(version.record, classes)
            )
            result["per_version"].append({"version": number, metric: value})
    return result
