"""Labels of multi-label and regression heads as read from files: float targets ``[N, outputs]``.

A classification head learns class indices; the two other tasks the exporter makes learn float targets of the
head's width. Multi-label: a multi-hot row per sample (a set of label names); regression: one number per target
name. The label map of these heads is fixed at export: an unknown label name is an error, never a new output.
Scores, metrics and the guard's judgement of these heads are the runtime's (``edgeft.runtime.tasks``).
"""

from __future__ import annotations

import numpy as np

from edgeft.bundle import HeadInfo
from edgeft.errors import DataError

MULTILABEL, REGRESSION = "multilabel", "regression"
TASKS = (MULTILABEL, REGRESSION)
LIST_SEPARATOR = ";"  # separates label names (or target values) inside one CSV cell


def is_target_task(head: HeadInfo) -> bool:
    """True for the heads this module serves (float targets rather than class indices)."""
    return head.task in TASKS


def parse_targets(raw: object, head: HeadInfo, classes: list[str], origin: str) -> np.ndarray:
    """Labels as read from a file, as float32 targets ``[N, head outputs]``; DataError naming ``origin`` otherwise.

    Multi-label: a multi-hot array ``[N, len(classes)]`` of 0/1 (any numeric dtype), or one list of label names
    per sample. Regression: numbers ``[N]`` (one target) or ``[N, len(classes)]``, or one number or list of numbers
    per sample.
    """
    if head.task == MULTILABEL:
        return _multi_hot(raw, head.num_outputs, classes, origin)
    return _regression_targets(raw, head.num_outputs, classes, origin)


def _multi_hot(raw: object, outputs: int, classes: list[str], origin: str) -> np.ndarray:
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "biuf":
        if raw.ndim != 2 or raw.shape[1] not in (len(classes), outputs):
            raise DataError(
                f"{origin}: multi-label 'y' has shape {list(raw.shape)}, expected [samples, {len(classes)}] "
                f"(one 0/1 column per label: {', '.join(classes)})"
            )
        values = raw.astype(np.float32)
        if not np.isin(values, (0.0, 1.0)).all():
            raise DataError(f"{origin}: multi-label 'y' holds values other than 0 and 1 (or NaN)")
        if values[:, len(classes) :].any():
            raise DataError(f"{origin}: multi-label 'y' marks outputs beyond the {len(classes)} known labels")
        out = np.zeros((len(values), outputs), np.float32)
        out[:, : len(classes)] = values[:, : len(classes)]
        return out
    rows = list(raw) if isinstance(raw, (list, np.ndarray)) else None
    if rows is None:
        raise DataError(f"{origin}: multi-label labels must be a 0/1 matrix or a list of label names per sample")
    index = {name: i for i, name in enumerate(classes)}
    out = np.zeros((len(rows), outputs), np.float32)
    for number, row in enumerate(rows, start=1):
        names = [row] if isinstance(row, str) else row
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{origin}: sample {number}'s label is not a list of label names")
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DataError(
                f"{origin}: sample {number} has unknown label(s) {unknown[:5]}; this multi-label head knows "
                f"{', '.join(classes)}"
            )
        out[number - 1, [index[n] for n in names]] = 1.0
    return out


def _regression_targets(raw: object, outputs: int, classes: list[str], origin: str) -> np.ndarray:
    try:
        values = np.asarray(raw, dtype=np.float64) if not isinstance(raw, np.ndarray) else raw
    except (ValueError, TypeError):
        raise DataError(f"{origin}: regression targets must be numbers (or lists of {outputs} numbers)") from None
    if values.dtype.kind not in "biuf":
        raise DataError(f"{origin}: regression targets have dtype {values.dtype}; give numbers")
    if values.ndim == 1 and outputs == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[1] != outputs:
        raise DataError(
            f"{origin}: regression targets have shape {list(values.shape)}, expected [samples, {outputs}] "
            f"(targets: {', '.join(classes)})"
        )
    with np.errstate(over="ignore"):
        values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"{origin}: regression targets contain NaN or infinite values")
    return values


def cell_targets(cells: list[str], head: HeadInfo, classes: list[str], origin: str) -> np.ndarray:
    """Targets from a CSV label column: label names (multi-label) or numbers (regression), ``;`` between items."""
    items = [[part.strip() for part in cell.split(LIST_SEPARATOR) if part.strip()] for cell in cells]
    if head.task == MULTILABEL:
        return parse_targets(items, head, classes, origin)
    try:
        numbers = [[float(part) for part in row] for row in items]
    except ValueError:
        raise DataError(f"{origin}: a label cell holds something that is not a number") from None
    if any(len(row) != head.num_outputs for row in numbers):
        bad = next(i for i, row in enumerate(numbers) if len(row) != head.num_outputs)
        raise DataError(
            f"{origin}: line {bad + 2} has {len(numbers[bad])} target values, the head has {head.num_outputs}"
        )
    return parse_targets(np.asarray(numbers, np.float64).reshape(len(numbers), head.num_outputs), head, classes, origin)


def json_label_ok(value: object, head: HeadInfo) -> bool:
    """Whether one JSON line's ``y`` has the kind this task takes (checked fully by ``parse_targets``)."""
    if head.task == MULTILABEL:
        return isinstance(value, (list, str))
    return isinstance(value, (int, float, list)) and not isinstance(value, bool)
