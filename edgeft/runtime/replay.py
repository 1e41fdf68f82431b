"""Latent replay: a class-balanced reservoir of backbone features, stored with each head version.

Every update trains on the new samples together with the buffer's, so the head keeps what earlier arrivals
taught it; replay never reruns the backbone. An arrival rehearses at most ``REPLAY_PER_NEW`` buffered samples per
new one (``training_set``), so a trickle of small arrivals costs what they hold, not the buffer's size each time.
Each class keeps at most ``per_class`` samples, chosen by reservoir sampling over every sample of that class ever
seen (each has the same chance to be kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeft.errors import EdgeftError

REPLAY_PER_NEW = 16


class ReplayBuffer:
    """Up to ``per_class`` feature vectors per class, with how many of each class were seen."""

    def __init__(self, feature_dim: int, num_classes: int, per_class: int) -> None:
        self.per_class = per_class
        self.features = np.empty((0, feature_dim), np.float32)
        self.labels = np.empty(0, np.int64)
        self.seen = np.zeros(num_classes, np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, features: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
        """Offer new samples to each class's reservoir."""
        keep_f, keep_y = list(self.features), list(self.labels)
        slots: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels):
            slots.setdefault(int(label), []).append(i)
        for feature, label in zip(features, labels, strict=True):
            c = int(label)
            self.seen[c] += 1
            mine = slots.setdefault(c, [])
            if len(mine) < self.per_class:
                mine.append(len(keep_y))
                keep_f.append(feature)
                keep_y.append(c)
            else:
                j = int(rng.integers(self.seen[c]))
                if j < self.per_class:
                    keep_f[mine[j]] = feature
        if keep_y:
            self.features = np.asarray(keep_f, np.float32).reshape(len(keep_y), -1)
            self.labels = np.asarray(keep_y, np.int64)

    def save(self, path: Path) -> None:
        """Write the buffer as a plain .npz (no pickles)."""
        with path.open("wb") as handle:
            np.savez(handle, features=self.features, labels=self.labels, seen=self.seen)

    @classmethod
    def load(cls, path: Path, feature_dim: int, num_classes: int, per_class: int) -> ReplayBuffer:
        """Read a buffer written by ``save``; raise EdgeftError if it does not fit this bundle."""
        buffer = cls(feature_dim, num_classes, per_class)
        try:
            with np.load(path, allow_pickle=False) as data:
                features, labels, seen = data["features"], data["labels"], data["seen"]
        except (OSError, ValueError, KeyError) as exc:
            raise EdgeftError(f"{path} is not a valid replay buffer ({type(exc).__name__})") from None
        if features.shape[1:] != (feature_dim,) or len(labels) != len(features) or seen.shape != (num_classes,):
            raise EdgeftError(f"{path} does not match this bundle's features or classes")
        buffer.features, buffer.labels, buffer.seen = features.astype(np.float32), labels.astype(np.int64), seen
        return buffer


def training_set(
    features: np.ndarray,
    labels: np.ndarray,
    keep: np.ndarray,
    buffer: ReplayBuffer,
    epochs: int,
    rng: np.random.Generator,
    per_new: int | None = REPLAY_PER_NEW,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """What one arrival trains on: its samples ``features[keep]`` (the first rows) with buffered ones, how many
    passes to make over the set, and how many buffered samples each epoch rehearses.

    When the buffer holds at most ``per_new`` samples per new one (or ``per_new`` is None): the new samples and the
    whole buffer, ``epochs`` passes. Else one pass over ``epochs`` rounds, each the new samples and a fresh draw of
    ``per_new`` buffered samples per new one (uniform without replacement; the buffer is class-balanced, so is the
    draw in expectation): the same number of steps as ``epochs`` over that many, rehearsing more of the buffer.
    """
    new = int(keep.sum())
    if per_new is None or len(buffer) <= per_new * new:
        draws, passes = [np.arange(len(buffer))], epochs
    else:
        draws, passes = [np.sort(rng.choice(len(buffer), per_new * new, replace=False)) for _ in range(epochs)], 1
    size = len(draws) * new + sum(len(d) for d in draws)
    x = np.empty((size, features.shape[1]), np.float32)
    y = np.empty((size, *labels.shape[1:]), labels.dtype)  # class indices, or a task's float targets
    at = 0
    for draw in draws:
        np.compress(keep, features.astype(np.float32, copy=False), axis=0, out=x[at : at + new])
        y[at : at + new] = labels[keep]
        x[at + new : at + new + len(draw)] = buffer.features[draw]
        y[at + new : at + new + len(draw)] = buffer.labels[draw]
        at += new + len(draw)
    return x, y, passes, len(draws[0])
