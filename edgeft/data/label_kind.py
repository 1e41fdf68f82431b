"""One arrival's labels are all class names or all indices: the first batch decides, a later one that differs is
refused (readers' ``concatenated``, the runtime's ``ArrivalEmbedder`` and ``embed_labelled`` all check it here)."""

from __future__ import annotations

import numpy as np

from edgeft.errors import DataError


class OneLabelKind:
    """Checks that every batch of labels from ``origin`` is of the first batch's kind (names or indices)."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._names: bool | None = None

    def check(self, labels: np.ndarray) -> None:
        """Remember the first batch's kind; DataError naming the origin when ``labels`` are of the other kind."""
        names = np.asarray(labels).dtype.kind == "U"
        if self._names is None:
            self._names = names
        elif names != self._names:
            raise DataError(f"{self.origin}: some labels are class names, others indices; use one kind")
