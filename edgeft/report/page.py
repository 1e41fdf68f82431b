"""The report as one self-contained HTML page: summary, the figure (PNG embedded as base64) and its tables."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from html import escape
from typing import Any

from edgeft.report.data import Arrival, Evaluation, Report

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1440px;
       padding: 0 1.5em; color: #222; }
h1 { margin-bottom: 0.1em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.meta { color: #666; margin-top: 0; word-break: break-all; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1.2em 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 0.6em 1em; min-width: 9em; background: #fafafa; }
.card b { display: block; font-size: 1.6em; }
.card span { color: #666; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.text { text-align: left; } tr:nth-child(even) td { background: #fcfcfc; }
td.promoted { color: #2e7d32; font-weight: bold; } td.refused { color: #c62828; font-weight: bold; }
td.adopted { color: #6a1b9a; font-weight: bold; } .note { color: #666; font-style: italic; }
table.confusion td { min-width: 2.2em; text-align: center; }
"""


def render_html(report: Report, png: bytes) -> str:
    """The whole page, with ``png`` (the report's figure) embedded."""
    figure = base64.b64encode(png).decode("ascii")
    evaluation = report.evaluation
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgeft report: {escape(report.state)}</title><style>{STYLE}</style></head><body>",
        "<h1>edgeft report</h1>",
        f'<p class="meta">state {escape(report.state)} · bundle {escape(report.bundle)} · written '
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>",
        _cards(report),
        f'<img id="figure" alt="learning curve, arrivals, per-class accuracy and confusion matrix" '
        f'src="data:image/png;base64,{figure}">',
        "<h2>Versions and promotions</h2>",
        _versions_table(report.arrivals),
        "<h2>Per-class accuracy</h2>",
    ]
    if evaluation is None or not evaluation.samples:
        parts.append(f'<p class="note">{escape(report.note)}</p>')
    else:
        parts += [
            f'<p class="note">The current head (version {report.head_version}) on {escape(evaluation.source)}: '
            f"{evaluation.samples} samples, accuracy {evaluation.accuracy:.3f}.</p>",
            _per_class_table(evaluation),
            "<h2>Confusion matrix</h2>",
            '<p class="note">Rows: true class; columns: predicted class; shading: share of the row.</p>',
            _confusion_table(evaluation),
        ]
    if report.continual and report.continual["tasks"]:
        parts += ["<h2>Accuracy matrix</h2>", _task_table(report.continual)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _cards(report: Report) -> str:
    latest = next((a.holdout_accuracy for a in reversed(report.arrivals) if a.holdout_accuracy is not None), None)
    cards = [
        (str(report.version), f"current version (head from {report.head_version})"),
        (str(len(report.arrivals)), f"arrivals, {len(report.refused)} refused"),
        (str(len(report.classes)), "classes learned"),
        (_accuracy(latest), "holdout accuracy (guard)"),
    ]
    if report.evaluation is not None and report.evaluation.samples:
        cards.append((_accuracy(report.evaluation.accuracy), f"accuracy on {report.evaluation.source}"))
    items = "".join(
        f'<div class="card"><b>{escape(value)}</b><span>{escape(label)}</span></div>' for value, label in cards
    )
    return f'<div class="cards">{items}</div>'


VERSION_COLUMNS = (
    "Version",
    "Time (UTC)",
    "Input",
    "Samples",
    "Trained",
    "Held out",
    "Prequential accuracy",
    "Holdout: current → candidate",
    "Verdict",
    "Guard",
    "New classes",
    "Seconds",
)


def _versions_table(arrivals: list[Arrival]) -> str:
    rows = []
    for a in arrivals:
        judged = (
            f"{_accuracy(a.current_accuracy)} → {_accuracy(a.candidate_accuracy)} (n={a.holdout_samples})"
            if a.current_accuracy is not None
            else "–"
        )
        cells = [
            _cell(a.version),
            _cell(_time(a.time)),
            _cell(a.origin or "", "text"),
            _cell(a.samples),
            _cell(a.trained),
            _cell(a.held_out),
            _cell(_accuracy(a.prequential_accuracy)),
            _cell(judged),
            _cell(a.verdict, a.verdict),
            _cell(a.reason, "text"),
            _cell(", ".join(a.new_classes), "text"),
            _cell("–" if a.seconds is None else f"{a.seconds:.1f}"),
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return _table("versions", VERSION_COLUMNS, rows)


def _per_class_table(evaluation: Evaluation) -> str:
    rows = []
    for i, name in enumerate(evaluation.classes):
        confused = evaluation.most_confused(i)
        cells = [
            _cell(name, "text"),
            _cell(evaluation.support[i]),
            _cell(int(evaluation.matrix[i, i])),
            _cell(_accuracy(evaluation.per_class[i])),
            _cell(f"{confused[0]} ({confused[1]})" if confused else "–", "text"),
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return _table("per-class", ("Class", "Samples", "Correct", "Accuracy", "Most often mistaken for"), rows)


def _confusion_table(evaluation: Evaluation) -> str:
    rows = []
    for i, name in enumerate(evaluation.classes):
        total = max(evaluation.support[i], 1)
        cells = [f"<th>{escape(name)}</th>"]
        for count in evaluation.matrix[i]:
            share = int(count) / total
            colour = "#fff" if share > 0.5 else "#222" if count else "#bbb"
            cells.append(f'<td style="background: rgba(25, 103, 210, {share:.2f}); color: {colour}">{int(count)}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return _table("confusion", ("true \\ predicted", *evaluation.classes), rows, css="confusion")


def _task_table(continual: dict[str, Any]) -> str:
    """The tasks' accuracy matrix R[i][j] (head after task i, on task j) with the continual-learning figures."""
    tasks = [f"T{i + 1}: {', '.join(t['classes'])}" for i, t in enumerate(continual["tasks"])]
    matrix = continual["task_matrix"]
    rows = [
        f"<tr><th>after T{i + 1} (version {version})</th>{''.join(_cell(_accuracy(v)) for v in values)}</tr>"
        for i, (version, values) in enumerate(zip(matrix["after_version"], matrix["matrix"], strict=True))
    ]
    figures = (
        f'<p class="note">Average accuracy {_accuracy(continual["average_accuracy"])}, backward transfer '
        f"{_accuracy(continual['backward_transfer'])} (GEM), forgetting {_accuracy(continual['forgetting'])} "
        f"(Avalanche: accuracy right after learning a task minus now), max forgetting "
        f"{_accuracy(continual['max_forgetting'])} (Chaudhry et al. 2018).</p>"
    )
    return _table("accuracy-matrix", ("head \\ task", *tasks), rows) + figures


def _table(name: str, columns: tuple[str, ...], rows: list[str], css: str = "") -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "\n".join(rows)
    return f'<table id="{name}" class="{css}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _cell(value: object, css: str = "") -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<td{attribute}>{escape(str(value))}</td>"


def _accuracy(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _time(text: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS' in UTC (as given if it is not one)."""
    if not text:
        return "–"
    try:
        return datetime.fromisoformat(text).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text
