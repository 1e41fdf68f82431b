"""Latent replay (and the guard's holdout) for multi-label and regression heads: features with float targets.

The buffer holds ``per_class * outputs`` samples in all, the same memory as a classification buffer of that head,
split evenly over its buckets, each a reservoir (every sample offered to a bucket has the same chance to be kept):

* regression: one bucket, plain reservoir sampling over every sample ever seen;
* multi-label: one bucket per label plus one for samples with no label. A sample goes to the bucket of its
  positive label that has been offered the fewest samples so far, so rare labels keep as many samples as common
  ones (balanced per label; a sample with several labels counts for its rarest).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeft.data.targets import MULTILABEL
from edgeft.errors import EdgeftError
from edgeft.runtime.replay import NOT_STORED, grown, no_rows_stored, offer, slots_of


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
        self.stored = no_rows_stored(0)

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
        size = len(self.labels)
        assigned: list[int] = []  # each sample's bucket, chosen as it is offered (it depends on what came before)

        def buckets() -> Iterator[int]:
            for target in targets:
                assigned.append(self._bucket(target))
                yield assigned[-1]

        taken, new = offer(slots_of(self.bucket_of), size, buckets(), self.seen, self.per_bucket, rng)
        limit = self.per_bucket * self.buckets
        self.features, self.labels = grown(self.features, new, limit), grown(self.labels, new, limit)
        self.bucket_of, self.stored = grown(self.bucket_of, new, limit), grown(self.stored, new, limit)
        rows, sources = np.fromiter(taken, np.int64, len(taken)), np.fromiter(taken.values(), np.int64, len(taken))
        self.features[rows] = features[sources]
        self.labels[rows] = targets[sources]
        self.bucket_of[rows] = np.asarray(assigned, np.int64)[sources]
        self.stored[rows] = NOT_STORED

    def bookkeeping(self) -> dict[str, np.ndarray]:
        """What the buffer holds besides its rows: each row's bucket, how many samples each bucket was offered."""
        return {"buckets": self.bucket_of, "seen": self.seen}

    def restore(
        self,
        features: np.ndarray,
        targets: np.ndarray,
        bookkeeping: dict[str, np.ndarray],
        stored: np.ndarray,
        origin: str,
    ) -> None:
        """Take rows and bookkeeping read from ``origin``; raise EdgeftError if they do not fit this bundle."""
        buckets, seen = bookkeeping["buckets"], bookkeeping["seen"]
        rows = len(features)
        if (
            features.shape[1:] != self.features.shape[1:]
            or targets.shape != (rows, self.labels.shape[1])
            or buckets.shape != (rows,)
            or seen.shape != self.seen.shape
        ):
            raise EdgeftError(f"{origin} does not match this bundle's features or targets")
        self.features, self.labels = features.astype(np.float32), targets.astype(np.float32)
        self.bucket_of, self.seen, self.stored = (
            buckets.astype(np.int64),
            seen.astype(np.int64),
            stored.astype(np.int64),
        )

    def load_file(self, path: Path) -> None:
        """Fill the buffer from a whole-buffer file (``replay.npz``/``holdout.npz`` of states written before
        segments); its rows count as not yet stored."""
        try:
            with np.load(path, allow_pickle=False) as data:
                features, targets, buckets, seen = data["features"], data["targets"], data["buckets"], data["seen"]
        except (OSError, ValueError, KeyError) as exc:
            raise EdgeftError(
                f"{path} is not a valid replay buffer for a {self.task} head ({type(exc).__name__})"
            ) from None
        bookkeeping = {"buckets": buckets, "seen": seen}
        self.restore(features, targets, bookkeeping, no_rows_stored(len(features)), str(path))
