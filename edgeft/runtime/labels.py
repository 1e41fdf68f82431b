"""The label map of one device: class names in head-output order, growing into the head's reserved outputs.

A bundle names its initial classes and may reserve more head outputs (``edgeft export --max-classes``).
A label name the device has not seen before takes the next free output; the map is stored with every
committed version. Integer labels are indices of known classes; a larger integer is a new class's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeft.errors import DataError


@dataclass(frozen=True)
class EncodedLabels:
    """Class indices of the labels that fit (``-1`` where a label is beyond the head's capacity)."""

    indices: np.ndarray
    classes: list[str]
    overflow: list[str]

    @property
    def fits(self) -> np.ndarray:
        """Mask of the samples whose label has an output in the head."""
        return self.indices >= 0


def label_names(y: np.ndarray, classes: list[str], origin: str) -> np.ndarray:
    """Labels as strings: names as given, integer indices of known classes as their names."""
    if np.issubdtype(y.dtype, np.integer):
        if (y < 0).any():
            raise DataError(f"{origin}: label index {int(y[y < 0][0])} is negative")
        return np.array([classes[v] if v < len(classes) else str(v) for v in y.tolist()], dtype=object)
    if y.dtype.kind not in "US":
        raise DataError(f"{origin}: labels have dtype {y.dtype}; use class names or integer indices")
    names = y.astype(str)
    if any(not name.strip() for name in names.tolist()):
        raise DataError(f"{origin}: some labels are empty strings")
    return names


def encode_growing(y: np.ndarray, classes: list[str], capacity: int, origin: str) -> EncodedLabels:
    """Map labels to head outputs, giving new names the next free outputs (in order of first appearance)."""
    names = label_names(np.asarray(y), classes, origin)
    grown = list(classes)
    index = {name: i for i, name in enumerate(grown)}
    overflow: list[str] = []
    indices = np.empty(len(names), np.int64)
    for i, name in enumerate(names.tolist()):
        if name not in index:
            if len(grown) < capacity:
                index[name] = len(grown)
                grown.append(name)
            elif name not in overflow:
                overflow.append(name)
        indices[i] = index.get(name, -1)
    return EncodedLabels(indices, grown, overflow)


def encode_known(y: np.ndarray, classes: list[str], origin: str) -> np.ndarray:
    """Map labels to indices of known classes only; raise DataError naming unknown ones."""
    encoded = encode_growing(y, classes, len(classes), origin)
    if encoded.overflow:
        raise DataError(f"{origin}: unknown label(s) {encoded.overflow[:5]}; the known classes are {classes}")
    return encoded.indices
