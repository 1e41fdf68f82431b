"""Sufficient statistics of labelled feature vectors: per-class counts and sums, and the second moment.

They are all a closed-form head (streaming LDA, nearest class mean) needs, they are plain sums (so adding the
samples in any order, in one call or many, in one process or several, on one device or a fleet, gives the same
result up to float64 rounding), and their size does not grow with the number of samples. ``moment`` is the full
matrix sum of x xᵀ [D, D] for LDA (``full``), or only its trace, the sum of squared norms, for NCM.
Stored as a plain .npz (no pickles) in float64, so statistics continue across processes exactly; the symmetric
moment as its upper triangle only (``moment_upper``, row by row: half the bytes to write, fsync and hash with
every version). Files that hold the whole matrix (``moment`` [D, D], as written before) still load.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeft.errors import EdgeftError

STATISTICS_FILE = "statistics.npz"
FLEET_STATISTICS_FILE = "fleet_statistics.npz"  # the other devices' statistics, from the last adopted fleet head


@dataclass
class ClassStatistics:
    """``counts`` [K] int64, ``sums`` [K, D] float64, ``moment`` [D, D] (full) or [] (trace only) float64."""

    counts: np.ndarray
    sums: np.ndarray
    moment: np.ndarray

    @classmethod
    def empty(cls, num_classes: int, feature_dim: int, full: bool) -> ClassStatistics:
        """No samples yet, for ``num_classes`` outputs and ``feature_dim`` features."""
        moment = np.zeros((feature_dim, feature_dim) if full else (), np.float64)
        return cls(np.zeros(num_classes, np.int64), np.zeros((num_classes, feature_dim), np.float64), moment)

    @property
    def full(self) -> bool:
        """True when the whole second-moment matrix is kept (LDA), not only its trace (NCM)."""
        return self.moment.ndim == 2

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Count samples ``features`` [N, D] with class indices ``labels`` [N]."""
        x = np.asarray(features, np.float64)
        labels = np.asarray(labels, np.int64)
        self.counts += np.bincount(labels, minlength=len(self.counts))
        np.add.at(self.sums, labels, x)
        self.moment += x.T @ x if self.full else np.einsum("nd,nd->", x, x)

    def rows(self, order: np.ndarray) -> ClassStatistics:
        """The same statistics with class rows taken in ``order`` (row i of the result is row ``order[i]``)."""
        return ClassStatistics(self.counts[order], self.sums[order], self.moment)

    def minus(self, other: ClassStatistics) -> ClassStatistics | None:
        """The statistics of the samples in ``self`` but not in ``other``; None if ``other`` is not a part of it."""
        if self.sums.shape != other.sums.shape or self.full != other.full or (self.counts < other.counts).any():
            return None
        return ClassStatistics(self.counts - other.counts, self.sums - other.sums, self.moment - other.moment)

    def merged(self, other: ClassStatistics) -> ClassStatistics:
        """The statistics of both sample sets together (a trace-only side makes the result trace-only)."""
        if self.sums.shape != other.sums.shape:
            raise EdgeftError(f"statistics of shape {other.sums.shape} cannot join statistics of {self.sums.shape}")
        moment = self.moment + other.moment if self.full == other.full else self.trace() + other.trace()
        return ClassStatistics(self.counts + other.counts, self.sums + other.sums, moment)

    def trace(self) -> np.ndarray:
        """Sum of the squared norms of every sample."""
        return np.asarray(np.trace(self.moment) if self.full else self.moment, np.float64)

    def means(self) -> np.ndarray:
        """Per-class means [K, D] (zero rows for classes without samples)."""
        return self.sums / np.maximum(self.counts, 1)[:, None]

    def within_class_scatter(self) -> np.ndarray:
        """Σ over samples of (x − μ_class)(x − μ_class)ᵀ [D, D], a new array (full statistics only)."""
        if not self.full:
            raise EdgeftError("these statistics keep only the trace of the scatter (nearest class mean), not LDA's")
        seen = self.counts > 0
        sums = self.sums[seen]
        between = (sums / self.counts[seen][:, None]).T @ sums
        return np.subtract(self.moment, between, out=between)  # one D×D array, not two

    def within_class_variance(self) -> float:
        """Mean per-feature within-class variance: trace(scatter) / (samples × features)."""
        seen = self.counts > 0
        between = float(np.einsum("kd,kd->", self.sums[seen], self.sums[seen] / self.counts[seen][:, None]))
        return (float(self.trace()) - between) / max(self.total * self.sums.shape[1], 1)

    def save(self, path: Path) -> None:
        """Write the statistics as an uncompressed .npz (no pickles); a full moment as its upper triangle."""
        moment = {"moment_upper": upper_triangle(self.moment)} if self.full else {"moment": self.moment}
        with path.open("wb") as handle:
            np.savez(handle, counts=self.counts, sums=self.sums, **moment)

    @classmethod
    def load(cls, path: Path | str, num_classes: int, feature_dim: int, data: bytes | None = None) -> ClassStatistics:
        """Read statistics written by ``save`` (from ``path``, or from ``data``, the file's bytes already read);
        raise EdgeftError naming the file if they do not fit this head."""
        try:
            with np.load(io.BytesIO(data) if data is not None else path, allow_pickle=False) as arrays:
                counts, sums = arrays["counts"], arrays["sums"]
                packed = "moment_upper" in arrays
                moment = _upper_moment(arrays["moment_upper"], feature_dim) if packed else arrays["moment"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise EdgeftError(f"{path} is not valid class statistics ({type(exc).__name__}: {exc})") from None
        shapes_ok = (
            counts.shape == (num_classes,)
            and sums.shape == (num_classes, feature_dim)
            and moment.shape in ((), (feature_dim, feature_dim))
        )
        types_ok = counts.dtype == np.int64 and sums.dtype == np.float64 and moment.dtype == np.float64
        if not (shapes_ok and types_ok) or (counts < 0).any():
            raise EdgeftError(
                f"{path} does not match this head: expected counts [{num_classes}] int64, sums "
                f"[{num_classes}, {feature_dim}] float64 and a float64 moment"
            )
        return cls(counts, sums, moment)


def upper_triangle(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle of a square matrix, diagonal included, row by row [D(D+1)/2]."""
    return np.concatenate([matrix[row, row:] for row in range(len(matrix))])


def symmetric_from_upper(packed: np.ndarray, size: int) -> np.ndarray:
    """The symmetric [size, size] matrix whose upper triangle ``packed`` holds (as ``upper_triangle`` writes it)."""
    rows, columns = np.triu_indices(size)
    matrix = np.empty((size, size), packed.dtype)
    matrix[rows, columns] = packed
    matrix[columns, rows] = packed
    return matrix


def _upper_moment(packed: np.ndarray, feature_dim: int) -> np.ndarray:
    """A stored upper triangle as the whole moment, or a ValueError if it does not fit ``feature_dim``."""
    if packed.shape != (feature_dim * (feature_dim + 1) // 2,) or packed.dtype != np.float64:
        raise ValueError(f"moment_upper is {packed.dtype} {list(packed.shape)}, not a float64 upper triangle of "
                         f"[{feature_dim}, {feature_dim}]")  # fmt: skip
    return symmetric_from_upper(packed, feature_dim)
