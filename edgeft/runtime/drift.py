"""Drift signal: a Page-Hinkley test on the prequential error of each arrival (Page 1954; Gama et al. 2013).

The value fed per arrival is the error rate of the current head on that arrival's samples of classes it already
knew, measured before learning them (a new class is not drift: the head could not know it). With ``x_t`` that
error, ``mean_t`` its running mean since the last alarm, the test keeps ``m_t = sum(x_i - mean_i - delta)`` and
its minimum ``M_t``; the statistic ``PH_t = m_t - M_t`` grows while the error stays above its past level, and an
alarm is raised when it exceeds ``threshold``, after which the test restarts. The detector's state travels in
every version's metadata (``drift``), so it survives restarts and is committed atomically with the head. The
constants are ``PageHinkley``'s (``edgeft adapt --drift-delta/--drift-threshold/--drift-min-arrivals``); each
arrival's signal records the ones it was judged by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DELTA = 0.05  # error-rate rise per arrival tolerated as noise
THRESHOLD = 0.5  # PH statistic that raises an alarm
MIN_ARRIVALS = 2  # arrivals since the last restart before an alarm may be raised

State = dict[str, Any]


@dataclass(frozen=True)
class PageHinkley:
    """The test's constants: ``delta``, the rise of the error rate per arrival taken for noise (lower: more
    sensitive); ``threshold``, the statistic that raises an alarm (lower: sooner, more false alarms);
    ``min_arrivals``, arrivals since the last restart before an alarm may be raised."""

    delta: float = DELTA
    threshold: float = THRESHOLD
    min_arrivals: int = MIN_ARRIVALS

    def __post_init__(self) -> None:
        if not 0 <= self.delta < 1:
            raise ValueError(f"drift delta must be in [0, 1) (an error-rate rise), not {self.delta}")
        if not self.threshold > 0:
            raise ValueError(f"drift threshold must be above 0, not {self.threshold}")
        if self.min_arrivals < 1:
            raise ValueError(f"drift min-arrivals must be at least 1, not {self.min_arrivals}")


def fresh(alarms: int = 0) -> State:
    """A restarted detector that has seen no arrival (``alarms`` so far kept)."""
    return {"arrivals": 0, "mean": 0.0, "cumulative": 0.0, "minimum": 0.0, "alarms": alarms}


def update(
    state: State | None, accuracy: float | None, test: PageHinkley = PageHinkley()
) -> tuple[State, dict[str, Any] | None]:
    """Feed one arrival's prequential accuracy on known classes; returns the new state and the arrival's signal
    (``statistic``, ``detected``, ``error``, and ``test``'s ``delta`` and ``threshold``), or the unchanged state and
    None when there was nothing to judge."""
    state = dict(state) if state else fresh()
    if accuracy is None:
        return state, None
    error = 1.0 - float(accuracy)
    arrivals = int(state["arrivals"]) + 1
    mean = float(state["mean"]) + (error - float(state["mean"])) / arrivals
    cumulative = float(state["cumulative"]) + error - mean - test.delta
    minimum = min(float(state["minimum"]), cumulative)
    statistic = cumulative - minimum
    detected = arrivals >= test.min_arrivals and statistic > test.threshold
    signal = {
        "test": "page-hinkley",
        "error": error,
        "statistic": statistic,
        "detected": detected,
        "delta": test.delta,
        "threshold": test.threshold,
    }
    if detected:
        return fresh(int(state["alarms"]) + 1), signal
    return {
        "arrivals": arrivals,
        "mean": mean,
        "cumulative": cumulative,
        "minimum": minimum,
        "alarms": int(state["alarms"]),
    }, signal
