"""Embed an arrival as it is read: batch by batch into a feature buffer, so memory follows the features, not the data.

Each batch is checked once (shape, dtype, finite values) and embedded once; samples whose labels do not fit the
head are kept aside, raw, to be parked in ``pending/``. Nothing is learned here: a batch that fails raises a
DataError naming its file, and the caller learns nothing of the arrival, so a file bad in its last sample is
refused whole. What stays in memory is the features (``4 * feature_dim`` bytes a sample) and the labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeft.data.label_kind import OneLabelKind
from edgeft.data.limits import ArrivalLimits
from edgeft.data.readers import Samples, stream_path
from edgeft.data.targets import is_target_task
from edgeft.errors import DataError
from edgeft.runtime.labels import encode_growing, label_names

if TYPE_CHECKING:
    from edgeft.data.limits import ArrivalLimits
    from edgeft.runtime.adapter import Adapter

Progress = Callable[[int], None]


class FeatureBuffer:
    """Rows of features appended in place; the array grows by half its size when full."""

    def __init__(self, dim: int) -> None:
        self._data = np.empty((0, dim), np.float32)
        self.size = 0

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` more rows in one allocation (what a source declares it holds)."""
        if self.size + rows > len(self._data):
            grown = np.empty((self.size + rows, self._data.shape[1]), np.float32)
            grown[: self.size] = self._data[: self.size]
            self._data = grown

    def append(self, rows: np.ndarray) -> None:
        """Copy ``rows`` to the end."""
        end = self.size + len(rows)
        if end > len(self._data):
            grown = np.empty((max(end, len(self._data) * 3 // 2, 256), self._data.shape[1]), np.float32)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : end] = rows
        self.size = end

    def array(self) -> np.ndarray:
        """The rows appended so far (a view)."""
        return self._data[: self.size]


class ArrivalEmbedder:
    """Accumulates the features and labels of one arrival's batches (see the module docstring); ``adapter`` gives
    the label map, the head's capacity, the input check and the backbone. ``classes`` (default: the adapter's) is the
    label map new names grow from: that of the entries read before this one into the same coalesced arrival."""

    def __init__(
        self, adapter: Adapter, origin: str, limits: ArrivalLimits | None = None, classes: list[str] | None = None
    ) -> None:
        self._adapter = adapter
        self._limits = limits  # charged for the raw inputs of samples held back for pending/
        self.origin = origin
        self._classes = list(adapter.classes)
        self._grown = list(self._classes if classes is None else classes)  # new names continue ``classes``
        self._targets = is_target_task(adapter.bundle.manifest.head)
        self._features = FeatureBuffer(adapter.bundle.manifest.head.feature_dim)
        self._labels: list[np.ndarray] = []
        self._unfit_x: list[np.ndarray] = []
        self._unfit_y: list[np.ndarray] = []
        self.overflow: list[str] = []
        self._shape: tuple[int, ...] | None = None
        self._label_kind = OneLabelKind(origin)
        self.received = 0
        self._reserved_for: str | None = None

    def add(self, batches: Iterable[Samples], progress: Progress | None = None) -> int:
        """Check, encode and embed every batch; returns how many samples they held."""
        before = self.received
        for batch in batches:
            self._add(batch, progress)
        return self.received - before

    def _add(self, batch: Samples, progress: Progress | None) -> None:
        if batch.y is None:
            raise DataError(f"{batch.origin}: no labels")
        y = np.asarray(batch.y)
        self._label_kind.check(y)
        if self._shape is None:
            self._shape = batch.x.shape[1:]
        elif batch.x.shape[1:] != self._shape:
            shapes = sorted(map(list, {self._shape, batch.x.shape[1:]}))
            raise DataError(f"{self.origin}: inputs of different shapes {shapes}; use one shape")
        if batch.total is not None and batch.origin != self._reserved_for:
            self._features.reserve(batch.total)  # the whole source at once: no growing, no spare rows
            self._reserved_for = batch.origin
        x = self._adapter.check_inputs(batch.x, batch.origin)
        if self._targets:  # multi-label or regression: float targets, checked when read; no label map to grow
            self._features.append(self._adapter.embed_checked(x, progress))
            self._labels.append(y)
            self.received += len(x)
            return
        text = label_names(y, self._classes, batch.origin).astype(str)
        encoded = encode_growing(text, self._grown, self._adapter.capacity, batch.origin)
        self._grown = encoded.classes
        self.overflow += [name for name in encoded.overflow if name not in self.overflow]
        fits = encoded.fits
        if not fits.all():
            unfit = x[~fits]
            if self._limits is not None:  # raw inputs, not features: they wait in memory until the file is read
                self._limits.charge(
                    batch.origin, unfit.nbytes, f"{len(unfit)} samples of labels the head has no room for"
                )
            self._unfit_x.append(unfit)
            self._unfit_y.append(text[~fits])
            x, y = x[fits], y[fits]
        if len(x):
            self._features.append(self._adapter.embed_checked(x, progress))
            self._labels.append(y)
        self.received += len(fits)

    @property
    def features(self) -> np.ndarray:
        """Features of the samples whose labels fit, in arrival order."""
        return self._features.array()

    @property
    def labels(self) -> np.ndarray:
        """Labels (as given: names or indices) of the samples whose labels fit."""
        return np.concatenate(self._labels) if self._labels else np.empty(0, np.int64)

    @property
    def classes(self) -> list[str]:
        """The label map after the names read so far took their outputs."""
        return list(self._grown)

    @property
    def unfit(self) -> int:
        """How many samples have labels beyond the head's capacity."""
        return sum(len(y) for y in self._unfit_y)

    def unfit_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and label names of the samples whose labels do not fit (for ``pending/``)."""
        return np.concatenate(self._unfit_x), np.concatenate(self._unfit_y)


def embed_labelled(adapter: Adapter, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of labelled data at ``path`` (test data), read and embedded a batch at a time: memory
    follows the features (and labels), not the inputs. DataError if label kinds mix or reading fails."""
    features = FeatureBuffer(adapter.bundle.manifest.head.feature_dim)
    labels: list[np.ndarray] = []
    kind = OneLabelKind(str(path))
    for batch in stream_path(path, adapter.bundle.manifest, True, ArrivalLimits.for_reading()):
        y = np.asarray(batch.y)
        kind.check(y)
        features.append(adapter.embed(batch.x, batch.origin))
        labels.append(y)
    return features.array(), np.concatenate(labels) if labels else np.empty(0, np.int64)
