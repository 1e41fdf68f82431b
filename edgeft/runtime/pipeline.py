"""The one learn-an-arrival step: frozen features of an arrival in, a committed version out.

Backbone → learner → store: an ``ArrivalEmbedder`` has read, checked and embedded the arrival (the backbone);
``learn_embedded`` parks the samples whose labels do not fit the head and has the ``Adapter`` learn the rest as
one version (replay, trainer and guard), which its store commits with the inputs' journal records. One-shot
``edgeft adapt`` (edgeft/runtime/arrivals.py) and watch mode (edgeft/runtime/watch.py, and through it the fleet's
ingest) both call it.
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
    if not len(embedded.features):
        return Learned(None, parked)
    result = adapter.learn_features(
        embedded.features,
        embedded.labels,
        origin=embedded.origin,
        inputs=inputs,
        progress=progress,
        **options.keywords(),
    )
    return Learned(result, parked)
