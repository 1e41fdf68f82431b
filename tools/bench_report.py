"""Pure helpers of ``tools/bench.py``: medians over rounds, ratios within rounds, the goals, markdown tables."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

Result = dict[str, float | int | str]
LABELS = {
    "inference": "the limit: onnxruntime inference of the backbone",
    "edgeft": "edgeft adapt (Adapter.learn per arrival, defaults)",
    "edgeft-small": "edgeft adapt, arrivals of 16 (replay pre-filled)",
    "ort-whole": "ORT training over the whole graph, base frozen",
    "torch": "PyTorch: no_grad backbone + AdamW head",
}


@dataclass(frozen=True)
class Goal:
    """``metric(numerator) / metric(denominator)`` compared with ``bound`` (``>=`` or ``<=``)."""

    text: str
    metric: str
    numerator: str
    denominator: str | None
    op: str
    bound: float

    def met(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound


GOALS = (
    Goal("adapt ≥ 0.9× inference throughput", "samples_per_s", "edgeft", "inference", ">=", 0.9),
    Goal("adapt ≥ 3× whole-graph ORT training", "samples_per_s", "edgeft", "ort-whole", ">=", 3.0),
    Goal("adapt ≥ 4× PyTorch", "samples_per_s", "edgeft", "torch", ">=", 4.0),
    Goal("adapt peak RSS ≤ 1.2× inference", "peak_rss_mb", "edgeft", "inference", "<=", 1.2),
    Goal("adapt peak RSS ≤ 0.6× PyTorch", "peak_rss_mb", "edgeft", "torch", "<=", 0.6),
)


def median(values: Iterable[float]) -> float:
    """Median, NaN for no values."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def medians(runs: list[Result], metric: str) -> dict[str, float]:
    """Median of ``metric`` per contender over all rounds."""
    names = sorted({str(r["contender"]) for r in runs})
    return {n: median(float(r[metric]) for r in runs if r["contender"] == n and metric in r) for n in names}


def round_ratios(runs: list[Result], metric: str, numerator: str, denominator: str) -> list[float]:
    """``metric`` ratio of two contenders within each round that ran both."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        by_round.setdefault(int(r["round"]), {})[str(r["contender"])] = float(r[metric])
    return [m[numerator] / m[denominator] for m in by_round.values() if numerator in m and denominator in m]


def goal_rows(runs: list[Result]) -> list[tuple[str, float, bool]]:
    """(goal, median of per-round ratios, met) for each ratio goal that this run can judge."""
    rows = []
    for goal in GOALS:
        assert goal.denominator is not None
        ratios = round_ratios(runs, goal.metric, goal.numerator, goal.denominator)
        if ratios:
            value = median(ratios)
            rows.append((goal.text, value, goal.met(value)))
    return rows


def contender_table(runs: list[Result], order: Iterable[str]) -> list[str]:
    """Markdown rows: contender, samples/s (median, min–max), ratio to the limit, CPU time, peak RSS, rounds."""
    rate, rss, cpu = medians(runs, "samples_per_s"), medians(runs, "peak_rss_mb"), medians(runs, "cpu_ms_per_sample")
    lines = [
        "| contender | samples/s (median) | min–max | × the limit (per round) | CPU ms/sample | peak RSS MiB | rounds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in order:
        mine = [float(r["samples_per_s"]) for r in runs if r["contender"] == name]
        if not mine:
            continue
        ratio = median(round_ratios(runs, "samples_per_s", name, "inference")) if "inference" in rate else float("nan")
        lines.append(
            f"| {LABELS.get(name, name)} | {rate[name]:.1f} | {min(mine):.1f}–{max(mine):.1f} | "
            f"{ratio:.2f} | {cpu.get(name, float('nan')):.1f} | {rss[name]:.0f} | {len(mine)} |"
        )
    return lines
