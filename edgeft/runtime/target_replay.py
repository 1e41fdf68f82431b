"""Latent replay (and the guard's holdout) for multi-label and regression heads: features with float targets.

The buffer holds ``per_class * outputs`` samples in all, the same memory as a classification buffer of that head,
split evenly over its buckets, each a reservoir (every sample offered to a bucket has the same chance to be kept):

* regression: one bucket, plain reservoir sampling over every sample ever seen;
* multi-label: one bucket per label plus one for samples with no label. A sample goes to the bucket of its
  positive label that has been offered the fewest samples so far, so rare labels keep as many samples as common
  ones (balanced per label; a sample with several labels counts for its rarest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeft.data.targets import MULTILABEL
from edgeft.errors import EdgeftError


class TargetBuffer:
    """Reservoir of feature vectors with their float targets ``[N, outputs]``, kept per bucket."""

    def __init__(self, task: str, feature_dim: int, outputs: int, per_class: int) -> None:
        self.task = task
        self.buckets = outputs + 1 if task == MULTILABEL else 1
        self.per_bucket = per_class * outputs // self.buckets
        self.features = np.empty((0, feature_dim), np.float32)
        self.labels = np.empty((0, outputs), np.float32)  # the targets; named like ReplayBuffer's for the adapter
        self.bucket_of = np.empty(0, np.int64)
        self.seen = np.zeros(self.buckets, np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def _bucket(self, target: np.ndarray) -> int:
        if self.task != MULTILABEL:
            return 0
        positive = np.flatnonzero(target > 0.5)
        if not len(positive):
            return self.buckets - 1
        return int(positive[np.argmin(self.seen[positive])])

    def add(self, features: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> None:
        """Offer new samples to their buckets' reservoirs."""
        keep_f, keep_y, keep_b = list(self.features), list(self.labels), list(self.bucket_of)
        slots: dict[int, list[int]] = {}
        for i, bucket in enumerate(self.bucket_of):
            slots.setdefault(int(bucket), []).append(i)
        for feature, target in zip(features, targets, strict=True):
            b = self._bucket(target)
            self.seen[b] += 1
            mine = slots.setdefault(b, [])
            if len(mine) < self.per_bucket:
                mine.append(len(keep_y))
                keep_f.append(feature)
                keep_y.append(target)
                keep_b.append(b)
            else:
                j = int(rng.integers(self.seen[b]))
                if j < self.per_bucket:
                    keep_f[mine[j]], keep_y[mine[j]] = feature, target
        if keep_y:
            self.features = np.asarray(keep_f, np.float32).reshape(len(keep_y), -1)
            self.labels = np.asarray(keep_y, np.float32).reshape(len(keep_y), -1)
            self.bucket_of = np.asarray(keep_b, np.int64)

    def save(self, path: Path) -> None:
        """Write the buffer as a plain .npz (no pickles)."""
        with path.open("wb") as handle:
            np.savez(handle, features=self.features, targets=self.labels, buckets=self.bucket_of, seen=self.seen)

    @classmethod
    def load(cls, path: Path, task: str, feature_dim: int, outputs: int, per_class: int) -> TargetBuffer:
        """Read a buffer written by ``save``; raise EdgeftError if it does not fit this bundle."""
        buffer = cls(task, feature_dim, outputs, per_class)
        try:
            with np.load(path, allow_pickle=False) as data:
                features, targets, buckets, seen = data["features"], data["targets"], data["buckets"], data["seen"]
        except (OSError, ValueError, KeyError) as exc:
            raise EdgeftError(f"{path} is not a valid replay buffer for a {task} head ({type(exc).__name__})") from None
        rows = len(features)
        if (
            features.shape[1:] != (feature_dim,)
            or targets.shape != (rows, outputs)
            or buckets.shape != (rows,)
            or seen.shape != (buffer.buckets,)
        ):
            raise EdgeftError(f"{path} does not match this bundle's features or targets")
        buffer.features, buffer.labels = features.astype(np.float32), targets.astype(np.float32)
        buffer.bucket_of, buffer.seen = buckets.astype(np.int64), seen.astype(np.int64)
        return buffer
