"""Latent replay: a class-balanced reservoir of backbone features, stored with each head version.

Every update trains on the new samples together with the buffer's, so the head keeps what earlier arrivals
taught it; replay never reruns the backbone. An arrival rehearses at most ``REPLAY_PER_NEW`` buffered samples per
new one (``training_set``), so a trickle of small arrivals costs what they hold, not the buffer's size each time.
Each class keeps at most ``per_class`` samples, chosen by reservoir sampling over every sample of that class ever
seen (each has the same chance to be kept).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgeft.errors import EdgeftError

REPLAY_PER_NEW = 16


NOT_STORED = -1  # a buffered row not yet written to a segment (edgeft.runtime.replay_store)


def no_rows_stored(count: int) -> np.ndarray:
    """Where ``count`` rows are stored: ``(segment, row)`` per row, all not yet stored."""
    return np.full((count, 2), NOT_STORED, np.int64)


def offer(
    slots: dict[int, list[int]],
    size: int,
    groups: Iterable[int],
    seen: np.ndarray,
    per_group: int,
    rng: np.random.Generator,
) -> tuple[dict[int, int], int]:
    """Reservoir sampling per group over a buffer of ``size`` rows (``slots``: each group's rows): which buffer row
    each kept new sample takes (rows from ``size`` on are new ones), and how many new rows there are. ``groups`` is
    each new sample's group, read in order after the previous sample was counted in ``seen``."""
    taken: dict[int, int] = {}
    grown = 0
    for i, group in enumerate(groups):
        seen[group] += 1
        mine = slots.setdefault(group, [])
        if len(mine) < per_group:
            mine.append(size + grown)
            taken[size + grown] = i
            grown += 1
        else:
            j = int(rng.integers(seen[group]))
            if j < per_group:
                taken[mine[j]] = i
    return taken, grown


def grown(array: np.ndarray, rows: int, limit: int | None = None) -> np.ndarray:
    """``array`` with ``rows`` more (uninitialised) rows; itself when none.

    The rows come from room reserved behind ``array`` when it is a prefix of a larger array ``grown`` made;
    otherwise the rows so far move into a new array with room for twice as many (at most ``limit`` rows in all), so
    a buffer that grows by a few rows an arrival is copied O(log size) times, not with every arrival (issue 19).
    """
    if not rows:
        return array
    size = len(array) + rows
    room = array.base
    if (
        isinstance(room, np.ndarray)
        and _ROOMS.get(id(room)) is room  # never the room of an array someone else made
        and room.shape[1:] == array.shape[1:]
        and room.dtype == array.dtype
        and len(room) >= size
        and room.ctypes.data == array.ctypes.data
        and room.flags.c_contiguous
    ):
        return room[:size]
    reserve = 2 * len(array) if limit is None else min(2 * len(array), limit)
    room = np.empty((max(size, reserve), *array.shape[1:]), array.dtype)
    room[: len(array)] = array
    _ROOMS[id(room)] = room
    return room[:size]


_ROOMS: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()  # the arrays ``grown`` made


def slots_of(groups: np.ndarray) -> dict[int, list[int]]:
    """Each group's buffer rows, in row order."""
    slots: dict[int, list[int]] = {}
    for i, group in enumerate(groups.tolist()):
        slots.setdefault(int(group), []).append(i)
    return slots


class ReplayBuffer:
    """Up to ``per_class`` feature vectors per class, with how many of each class were seen, and where each row is
    stored (``stored``: segment and row, ``NOT_STORED`` for rows added since the buffer was last committed)."""

    def __init__(self, feature_dim: int, num_classes: int, per_class: int) -> None:
        self.per_class = per_class
        self.features = np.empty((0, feature_dim), np.float32)
        self.labels = np.empty(0, np.int64)
        self.seen = np.zeros(num_classes, np.int64)
        self.stored = no_rows_stored(0)

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, features: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
        """Offer new samples to each class's reservoir."""
        size = len(self.labels)
        taken, new = offer(slots_of(self.labels), size, (int(c) for c in labels), self.seen, self.per_class, rng)
        limit = self.per_class * len(self.seen)
        self.features, self.labels = grown(self.features, new, limit), grown(self.labels, new, limit)
        self.stored = grown(self.stored, new, limit)
        rows, sources = np.fromiter(taken, np.int64, len(taken)), np.fromiter(taken.values(), np.int64, len(taken))
        self.features[rows] = features[sources]
        self.labels[rows] = labels[sources]
        self.stored[rows] = NOT_STORED

    def bookkeeping(self) -> dict[str, np.ndarray]:
        """What the buffer holds besides its rows: how many samples of each class it was offered."""
        return {"seen": self.seen}

    def restore(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        bookkeeping: dict[str, np.ndarray],
        stored: np.ndarray,
        origin: str,
    ) -> None:
        """Take rows and bookkeeping read from ``origin``; raise EdgeftError if they do not fit this bundle."""
        seen = bookkeeping["seen"]
        rows = len(features)
        if features.shape[1:] != self.features.shape[1:] or labels.shape != (rows,) or seen.shape != self.seen.shape:
            raise EdgeftError(f"{origin} does not match this bundle's features or classes")
        self.features, self.labels = features.astype(np.float32), labels.astype(np.int64)
        self.seen, self.stored = seen.astype(np.int64), stored.astype(np.int64)

    def load_file(self, path: Path) -> None:
        """Fill the buffer from a whole-buffer file (``replay.npz``/``holdout.npz`` of states written before
        segments); its rows count as not yet stored."""
        try:
            with np.load(path, allow_pickle=False) as data:
                features, labels, seen = data["features"], data["labels"], data["seen"]
        except (OSError, ValueError, KeyError) as exc:
            raise EdgeftError(f"{path} is not a valid replay buffer ({type(exc).__name__})") from None
        if labels.shape != (len(features),):
            raise EdgeftError(f"{path} does not match this bundle's features or classes")
        self.restore(features, labels, {"seen": seen}, no_rows_stored(len(labels)), str(path))


class Rows:
    """Rows of the arrays ``sources`` stacked end to end, picked by ``positions`` and read only when indexed: a
    training set that holds 8 bytes a row rather than a copy of the arrival's features (issue 19)."""

    def __init__(self, sources: list[np.ndarray], positions: np.ndarray) -> None:
        self._sources = sources
        self._starts = np.cumsum([0, *(len(source) for source in sources)])
        self._positions = positions
        self.shape = (len(positions), *sources[0].shape[1:])

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index: np.ndarray | slice) -> np.ndarray:
        """The rows at ``index`` (positions or a slice), gathered as float32."""
        positions = self._positions[index]
        rows = np.empty((len(positions), *self.shape[1:]), np.float32)
        which = np.searchsorted(self._starts, positions, side="right") - 1
        for k, source in enumerate(self._sources):
            mine = which == k
            if mine.any():
                rows[mine] = source[positions[mine] - self._starts[k]]
        return rows


def training_set(
    features: np.ndarray,
    labels: np.ndarray,
    keep: np.ndarray,
    buffer: ReplayBuffer,
    epochs: int,
    rng: np.random.Generator,
    per_new: int | None = REPLAY_PER_NEW,
) -> tuple[Rows, np.ndarray, int, int]:
    """What one arrival trains on: its samples ``features[keep]`` (the first rows) with buffered ones, how many
    passes to make over the set, and how many buffered samples each epoch rehearses. The features are read from
    the arrival and the buffer as batches are drawn (``Rows``), not copied.

    When the buffer holds at most ``per_new`` samples per new one (or ``per_new`` is None): the new samples and the
    whole buffer, ``epochs`` passes. Else one pass over ``epochs`` rounds, each the new samples and a fresh draw of
    ``per_new`` buffered samples per new one (uniform without replacement; the buffer is class-balanced, so is the
    draw in expectation): the same number of steps as ``epochs`` over that many, rehearsing more of the buffer.
    """
    new = np.flatnonzero(keep)
    if per_new is None or len(buffer) <= per_new * len(new):
        draws, passes = [np.arange(len(buffer))], epochs
    else:
        draws, passes = [np.sort(rng.choice(len(buffer), per_new * len(new), replace=False)) for _ in range(epochs)], 1
    positions = np.concatenate([np.concatenate([new, len(features) + draw]) for draw in draws])
    y = np.concatenate([np.concatenate([labels[keep], buffer.labels[draw]]) for draw in draws])
    return Rows([features, buffer.features], positions), y.astype(labels.dtype, copy=False), passes, len(draws[0])
