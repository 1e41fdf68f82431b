"""The one learn-an-arrival step: frozen features of an arrival in, a committed version out.

Backbone → learner → store: an ``ArrivalEmbedder`` has read, checked and embedded the arrival (the backbone);
``learn_embedded`` parks the samples whose labels do not fit the head and has the ``Adapter`` learn the rest as
one version (replay, trainer and guard), which its store commits with the inputs' journal records. One-shot
``edgeft adapt`` (edgeft/runtime/arrivals.py) calls it; watch mode (edgeft/runtime/watch.py, and through it the
fleet's ingest) parks entry by entry and learns a coalesced arrival with ``learn_fitting``
(edgeft/runtime/coalesce.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeft.runtime.learn_options import LearnOptions

if TYPE_CHECKING:
    from edgeft.runtime.adapter import Adapter, LearnResult, Progress
    from edgeft.runtime.streaming import ArrivalEmbedder

Park = Callable[[np.ndarray, np.ndarray], Path]


@dataclass(frozen=True)
class Learned:
    """What one arrival came to: the learn result (None when no sample fitted) and where unfit samples went."""

    result: LearnResult | None
    parked: Path | None


def learn_embedded(
    adapter: Adapter,
    embedded: ArrivalEmbedder,
    inputs: list[dict[str, Any]],
    options: LearnOptions,
    park: Park,
    progress: Progress | None = None,
) -> Learned:
    """Park ``embedded``'s samples whose labels do not fit (``park(x, label_names)`` writes them and says where),
    then learn the rest as one version whose journal records ``inputs`` (name, sha256, samples)."""
    parked = park(*embedded.unfit_samples()) if embedded.unfit else None
    result = learn_fitting(adapter, embedded.features, embedded.labels, embedded.origin, inputs, options, progress)
    return Learned(result, parked)


def learn_fitting(
    adapter: Adapter,
    features: np.ndarray,
    labels: np.ndarray,
    origin: str,
    inputs: list[dict[str, Any]],
    options: LearnOptions,
    progress: Progress | None = None,
) -> LearnResult | None:
    """Learn features whose labels fit as one version whose journal records ``inputs``; None when there are none."""
    if not len(features):
        return None
    return adapter.learn_features(
        features, labels, origin=origin, inputs=inputs, progress=progress, **options.keywords()
    )
