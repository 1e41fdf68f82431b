"""``edgeft eval``'s text output: the current head's accuracy, the per-version and task accuracy matrices."""

from __future__ import annotations

from typing import Any


def _cell(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def format_evaluation(result: dict[str, Any]) -> str:
    """Lines for a person; ``--json`` has everything (per-class accuracy, confusion matrix)."""
    if "metric" in result:
        return _format_targets(result)
    lines = [f"version {result['version']}: accuracy {_cell(result['accuracy'])} on {result['samples']} samples"]
    tasks = result.get("tasks", [])
    header = "  ".join(f"T{i + 1:<4}" for i in range(len(tasks)))
    if tasks:
        lines.append(
            "tasks (classes in the order they were met): "
            + "; ".join(
                f"T{i + 1} = {', '.join(t['classes'])} (from version {t['first_version']}, {t['samples']} test samples)"
                for i, t in enumerate(tasks)
            )
        )
    if "per_version" in result:
        lines.append(f"version  all    {header}")
        for row in result["per_version"]:
            cells = "  ".join(_cell(v) for v in row["tasks"])
            lines.append(f"{row['version']:>7}  {_cell(row['accuracy'])}  {cells}")
    if "task_matrix" in result:
        lines.append(f"accuracy matrix R[i][j] (head after task i, on task j):  {header}")
        for i, (end, values) in enumerate(
            zip(result["task_matrix"]["after_version"], result["task_matrix"]["matrix"], strict=True)
        ):
            lines.append(f"  after T{i + 1} (version {end})".ljust(58) + "  ".join(_cell(v) for v in values))
        lines.append(
            f"average accuracy {_cell(result['average_accuracy'])}, backward transfer {_cell(result['backward_transfer'])}, "
            f"forgetting {_cell(result['forgetting'])} (Avalanche: accuracy right after learning minus now), "
            f"max forgetting {_cell(result['max_forgetting'])} (Chaudhry et al. 2018)"
        )
    return "\n".join(lines)


def _format_targets(result: dict[str, Any]) -> str:
    """A multi-label head's F1 figures per label, or a regression head's errors per target."""
    metric = result["metric"]
    lines = [
        f"version {result['version']} ({result['task']}): {metric} {result[metric]:.4g} on {result['samples']} samples"
    ]
    if result["task"] == "multilabel":
        lines.append(f"macro_f1 {result['macro_f1']:.3f}, exact match {result['exact_match']:.3f}")
        lines.append("label        f1     precision  recall  threshold  positives")
        for name, row in result["per_label"].items():
            lines.append(
                f"{name[:12]:<12} {_cell(row['f1'])}  {_cell(row['precision'])}      {_cell(row['recall'])}   "
                f"{row['threshold']:.2f}       {row['positives']}"
            )
    else:
        lines.append(f"mae {result['mae']:.4g}, rmse {result['rmse']:.4g}")
        for name, row in result["per_target"].items():
            lines.append(f"  {name}: mae {row['mae']:.4g}, rmse {row['rmse']:.4g}")
    for row in result.get("per_version", []):
        lines.append(f"  version {row['version']:>4}: {metric} {row[metric]:.4g}")
    return "\n".join(lines)
