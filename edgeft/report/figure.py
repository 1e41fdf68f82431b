"""The report's figure: learning curve, arrivals and promotions, per-class accuracy and confusion matrix, as a PNG.

matplotlib is an optional extra (``pip install 'edgeft[report]'``), imported only when a figure is drawn; the
figure is drawn on its own Agg canvas (no pyplot, no global backend state).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.report.data import Evaluation, Report

MISSING = "edgeft report needs matplotlib, an optional extra: pip install 'edgeft[report]'"
SIZE_INCHES = (14.0, 10.0)
DPI = 100
PREQUENTIAL = "#1f77b4"
HOLDOUT = "#00897b"
PROMOTED = "#43a047"
REFUSED = "#d32f2f"
ADOPTED = "#8e24aa"
EVALUATED = "#f9a825"
VERDICT_COLOURS = {"promoted": PROMOTED, "refused": REFUSED, "adopted": ADOPTED}
MAX_ANNOTATED_CLASSES = 20
TICK_CHARS = 16


def require_matplotlib() -> None:
    """Fail with the install advice when matplotlib is not importable."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EdgeftError(MISSING) from None


def render_png(report: Report) -> bytes:
    """The report as one PNG figure of four panels (1400 × 1000 pixels)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    rows = 3 if report.continual else 2
    size = (SIZE_INCHES[0], SIZE_INCHES[1] * rows / 2)
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    grid = figure.add_gridspec(rows, 2, width_ratios=[1.3, 1.0], height_ratios=[1.0, 1.15, 1.15][:rows])
    _learning_curve(figure.add_subplot(grid[0, 0]), report)
    _arrivals(figure.add_subplot(grid[0, 1]), report)
    _per_class(figure.add_subplot(grid[1, 0]), report.evaluation, report.note)
    _confusion(figure, figure.add_subplot(grid[1, 1]), report.evaluation, report.note)
    if report.continual:
        _task_matrix(figure, figure.add_subplot(grid[2, 0]), report.continual)
        _version_matrix(figure, figure.add_subplot(grid[2, 1]), report.continual)
    figure.suptitle(
        f"edgeft report: {report.state} at version {report.version} (head from version {report.head_version}), "
        f"{len(report.classes)} classes, {len(report.arrivals)} arrivals, {len(report.refused)} refused",
        fontsize=14,
        fontweight="bold",
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _learning_curve(ax: Any, report: Report) -> None:
    from matplotlib.ticker import MaxNLocator

    prequential = [(a.version, a.prequential_accuracy) for a in report.arrivals if a.prequential_accuracy is not None]
    holdout = [(a.version, a.holdout_accuracy) for a in report.arrivals if a.holdout_accuracy is not None]
    if prequential:
        ax.plot(
            *zip(*prequential, strict=True), "o-", color=PREQUENTIAL, label="prequential (predicted before learning)"
        )
    if holdout:
        ax.plot(*zip(*holdout, strict=True), "s-", color=HOLDOUT, label="holdout, current head (guard)")
    for i, refused in enumerate(report.refused):
        ax.axvspan(refused.version - 0.4, refused.version + 0.4, color=REFUSED, alpha=0.08, lw=0)
        ax.text(refused.version, 1.035, "refused", ha="center", color=REFUSED, fontsize=8, fontweight="bold")
        if refused.candidate_accuracy is not None and refused.current_accuracy is not None:
            ax.plot([refused.version] * 2, [refused.current_accuracy, refused.candidate_accuracy], ":", color=REFUSED)
            ax.plot(
                refused.version,
                refused.candidate_accuracy,
                "x",
                color=REFUSED,
                markersize=11,
                markeredgewidth=2.5,
                label="refused candidate head" if i == 0 else None,
            )
    for arrival in report.arrivals:
        if arrival.new_classes:
            ax.text(arrival.version, 0.02, _new(arrival.new_classes), ha="center", fontsize=7, color="dimgray")
    if report.evaluation is not None and report.evaluation.samples:
        ax.plot(
            report.version,
            report.evaluation.accuracy,
            "*",
            color=EVALUATED,
            markersize=16,
            markeredgecolor="black",
            label=f"current head on {_short(report.evaluation.source, 40)}",
        )
    ax.set(title="Learning curve", xlabel="version (one per arrival)", ylabel="accuracy", ylim=(0.0, 1.08))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, fontsize=8, frameon=False)


def _arrivals(ax: Any, report: Report) -> None:
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    versions = [a.version for a in report.arrivals]
    colours = [VERDICT_COLOURS[a.verdict] for a in report.arrivals]
    trained = [a.trained for a in report.arrivals]
    held = [a.held_out for a in report.arrivals]
    ax.bar(versions, trained, color=colours, edgecolor="black", linewidth=0.5)
    ax.bar(versions, held, bottom=trained, color=colours, alpha=0.45, hatch="//", edgecolor="black", linewidth=0.5)
    top = max([t + h for t, h in zip(trained, held, strict=True)] + [1])
    for arrival in report.arrivals:
        label = "adopted" if arrival.adopted else _new(arrival.new_classes)
        if label:
            ax.text(arrival.version, arrival.trained + arrival.held_out + top * 0.02, label, ha="center", fontsize=7)
    ax.set(title="Arrivals and promotions", xlabel="version", ylabel="samples", ylim=(0, top * 1.4))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=colour, label=verdict) for verdict, colour in VERDICT_COLOURS.items()]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="held out (never trained on)"))
    ax.legend(handles=handles, loc="upper center", ncols=2, fontsize=8, framealpha=0.9)


def _per_class(ax: Any, evaluation: Evaluation | None, note: str) -> None:
    from matplotlib import colormaps

    if evaluation is None or not evaluation.samples:
        _nothing(ax, "Per-class accuracy", note)
        return
    names = [_name(name) for name in evaluation.classes]
    scores = [score if score is not None else 0.0 for score in evaluation.per_class]
    colours = colormaps["RdYlGn"](np.clip(scores, 0.0, 1.0) * 0.8 + 0.1)
    rows = np.arange(len(names))
    ax.barh(rows, scores, color=colours, edgecolor="black", linewidth=0.5)
    for row, score, support in zip(rows, evaluation.per_class, evaluation.support, strict=True):
        text = "no samples" if score is None else f"{score:.2f}  (n={support})"
        ax.text((score or 0.0) + 0.01, row, text, va="center", fontsize=8)
    ax.axvline(
        evaluation.accuracy, color="black", linestyle="--", linewidth=1, label=f"overall {evaluation.accuracy:.3f}"
    )
    ax.set_yticks(rows, names)
    ax.invert_yaxis()
    ax.set(title=f"Per-class accuracy ({_short(evaluation.source, 50)})", xlabel="accuracy", xlim=(0.0, 1.18))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def _confusion(figure: Any, ax: Any, evaluation: Evaluation | None, note: str) -> None:
    if evaluation is None or not evaluation.samples:
        _nothing(ax, "Confusion matrix", note)
        return
    matrix = evaluation.matrix
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    names = [_name(name) for name in evaluation.classes]
    ticks = np.arange(len(names))
    tilt = len(names) > 4 and max(len(name) for name in names) > 2
    ax.set_xticks(ticks, names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(ticks, names)
    if len(names) <= MAX_ANNOTATED_CLASSES:
        for (true, guess), count in np.ndenumerate(matrix):
            if count:
                colour = "white" if shares[true, guess] > 0.5 else "black"
                ax.text(guess, true, str(count), ha="center", va="center", fontsize=8, color=colour)
    ax.set(
        title=f"Confusion matrix ({evaluation.samples} samples, accuracy {evaluation.accuracy:.3f})",
        xlabel="predicted class",
        ylabel="true class",
    )


def _heatmap(figure: Any, ax: Any, values: list[list[float | None]], rows: list[str], columns: list[str]) -> None:
    """Accuracies as a colour grid (grey where unknown), each cell annotated."""
    grid = np.array([[np.nan if v is None else v for v in row] for row in values], float)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0.0, vmax=1.0)
    ax.set_facecolor("lightgray")
    figure.colorbar(image, ax=ax, shrink=0.8, label="accuracy")
    ax.set_xticks(np.arange(len(columns)), columns)
    ax.set_yticks(np.arange(len(rows)), rows)
    if grid.size <= MAX_ANNOTATED_CLASSES**2:
        for (row, column), value in np.ndenumerate(grid):
            ax.text(column, row, "-" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8)


def _task_labels(continual: dict[str, Any]) -> list[str]:
    return [f"T{i + 1}: {_short(', '.join(t['classes']), 14)}" for i, t in enumerate(continual["tasks"])]


def _task_matrix(figure: Any, ax: Any, continual: dict[str, Any]) -> None:
    tasks = _task_labels(continual)
    if not tasks:
        _nothing(ax, "Accuracy matrix", "no test sample belongs to a class the state has learned")
        return
    after = [f"after T{i + 1} (v{v})" for i, v in enumerate(continual["task_matrix"]["after_version"])]
    _heatmap(figure, ax, continual["task_matrix"]["matrix"], after, tasks)
    figures = ", ".join(
        f"{label} {continual[key]:.3f}"
        for key, label in (("average_accuracy", "ACC"), ("backward_transfer", "BWT"), ("forgetting", "forgetting"))
        if continual[key] is not None
    )
    ax.set(title=f"Accuracy matrix over tasks ({figures})", xlabel="task (classes in the order met)", ylabel="head")


def _version_matrix(figure: Any, ax: Any, continual: dict[str, Any]) -> None:
    rows = continual["per_version"]
    columns = ["all", *(f"T{i + 1}" for i in range(len(continual["tasks"])))]
    values = [[row["accuracy"], *row["tasks"]] for row in rows]
    _heatmap(figure, ax, values, [f"v{row['version']}" for row in rows], columns)
    ax.set(title="Accuracy of each retained version's head", xlabel="test data", ylabel="version")


def _nothing(ax: Any, title: str, note: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, fontsize=10, color="dimgray")
    ax.set_axis_off()


def _new(classes: list[str]) -> str:
    """A short '+a, b' label for new classes."""
    if not classes:
        return ""
    shown = ", ".join(_name(c, 10) for c in classes[:3])
    return f"+{shown}" + (f" +{len(classes) - 3}" if len(classes) > 3 else "")


def _name(text: str, chars: int = TICK_CHARS) -> str:
    """A class name cut to ``chars`` characters."""
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _short(text: str, chars: int) -> str:
    """A path-like text cut to its last ``chars`` characters."""
    return text if len(text) <= chars else "…" + text[-(chars - 1) :]
