"""Which int8 backbone ``--keep-float auto`` ships: the fastest, on the export machine, of those that agree.

The float-prefix search (float_prefix.search_calibrations) scores (calibration, float prefix) pairs by how well
their features agree with the float ones and holds its choice to a target cosine. Every pair it tried that reaches
that target is as good by agreement; fewer float layers is only a proxy for speed (on EfficientNet-Lite0, 2 float
layers ran faster than none: BENCHMARKS.md). So the search's own choice and up to MAX_CANDIDATES - 1 other
agreeing pairs (fewest float layers first) are timed against the float backbone (int8_speed.measure_candidates),
and the fastest by CPU time wins; within SPEED_TIE of the fastest, the earlier in that order (the search's choice
first). A pair below the target is never chosen, however fast.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

MAX_CANDIDATES = 3
SPEED_TIE = 0.10  # relative: within 10% of the fastest counts as equally fast (two timed exports here: 1.79x vs 2.04x)
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Contender:
    """One int8 backbone that may be shipped: its held-out mean cosine to the float features and its measured
    speed (int8 over float samples per CPU second, median of rounds)."""

    name: str
    mean_cosine: float
    speed: float


def contenders(scores: dict[K, float], preferred: K, goal: float, order: Sequence[K]) -> list[K]:
    """The keys to time: ``preferred`` (the search's choice), then the other keys of ``scores`` (every pair tried)
    reaching ``goal`` in ``order``'s order, at most MAX_CANDIDATES in all."""
    others = [key for key in order if key != preferred and key in scores and scores[key] >= goal]
    return [preferred, *others][:MAX_CANDIDATES]


def choose(candidates: Sequence[Contender], goal: float) -> tuple[int, str]:
    """The index of the candidate to ship and why: the fastest of those whose mean cosine reaches ``goal``, the
    first of them (in the order given: the preferred one first) within SPEED_TIE of it. ValueError when none
    reaches ``goal``."""
    agreeing = [i for i, c in enumerate(candidates) if c.mean_cosine >= goal]
    if not agreeing:
        raise ValueError(f"no candidate reaches mean cosine {goal}")
    fastest = max(candidates[i].speed for i in agreeing)
    winner = next(i for i in agreeing if candidates[i].speed >= fastest * (1.0 - SPEED_TIE))
    chosen = candidates[winner]
    below = [candidates[i].name for i in range(len(candidates)) if i not in agreeing]
    missed = f"; {', '.join(below)} below it" if below else ""
    if len(agreeing) == 1:
        why = f"the only candidate reaching mean cosine {goal:.4f}{missed}"
    elif chosen.speed == fastest:
        why = f"the fastest of {len(agreeing)} candidates reaching mean cosine {goal:.4f}{missed}"
    else:
        why = (
            f"within {SPEED_TIE:.0%} of the fastest ({fastest}x) of {len(agreeing)} candidates reaching mean cosine "
            f"{goal:.4f}, and first in the order (fewest float layers, MinMax first){missed}"
        )
    return winner, f"{chosen.name}, {chosen.speed}x the float backbone by CPU time: {why}"
