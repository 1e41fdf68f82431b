"""The training loop both trainers share: shuffled mini-batches for some epochs, one optimizer step per batch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeft.runtime.replay import Rows
from edgeft.runtime.schedule import Schedule

BLOCK_ROWS = 512  # feature rows gathered at once: 2.5 MiB for 1,280 features, whatever the training set's size


class EpochTrainer:
    """``fit`` for a trainer that defines ``step(features, labels, lr) -> loss`` and the dtype its labels take."""

    label_dtype: type = np.int64

    def step(self, features: np.ndarray, labels: np.ndarray, lr: float) -> float:
        raise NotImplementedError

    def fit(
        self,
        features: np.ndarray | Rows,
        labels: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        schedule: Schedule,
        seed: int,
        progress: Callable[[int], None] | None = None,
    ) -> float:
        """Train on shuffled mini-batches for ``epochs``, the learning rate of step k being ``schedule(k)``;
        returns the mean loss of the last epoch."""
        rng = np.random.default_rng(seed)
        labels = labels.astype(self.label_dtype)
        last_epoch_loss = float("nan")
        count = 0
        block = max(batch_size, BLOCK_ROWS // batch_size * batch_size)
        for _ in range(epochs):
            order = rng.permutation(len(features))
            total = 0.0
            for first in range(0, len(order), block):
                rows = features[order[first : first + block]]  # one gather for many batches (numpy calls add up)
                for start in range(0, len(rows), batch_size):
                    batch = rows[start : start + batch_size]
                    y = labels[order[first + start : first + start + len(batch)]]
                    total += self.step(batch, y, schedule(count)) * len(batch)
                    count += 1
            last_epoch_loss = total / max(len(order), 1)
            if progress:
                progress(1)
        return last_epoch_loss
