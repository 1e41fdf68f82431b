"""Append-only storage of the replay buffer and the guard's holdout: a sample's features are written once.

``segments/NNNNNN.npz`` holds the features and labels (``features``, ``labels``) of the buffered rows version N's
commit had not yet stored: the samples its arrival added, plus the rows it merged (below). A segment is written
once, durably, before the version that lists it, and never changed. A version's ``buffers.npz`` says which row of
which segment each buffered sample is (``replay_segment``, ``replay_row``, and the buffer's bookkeeping:
``replay_seen``, a target buffer's ``replay_buckets``; ``holdout_*`` alike), and its metadata lists every segment
it uses with its sha256 and row count (``segments``), checked before a segment is read. An arrival therefore writes
what it adds (and an index of 8 bytes per buffered sample), not the whole buffer; a rollback copies the index.

Merging keeps the segments few and mostly alive: a commit rewrites, into its own segment, the rows still buffered
from (a) the newest segments, newest first, while each holds no more buffered rows than the commit writes so far
(a binary counter: segment sizes grow geometrically, so a buffer of B rows spans O(log B) segments), and (b) any
segment most of whose rows the reservoirs have since replaced. Each row is rewritten O(log B) times at most by (a),
and (b) rewrites no more rows than were replaced, so bytes written stay proportional to what arrives.

Segments no committed version lists are removed by the store's pruning, after the commit: a crash before it leaves
a stray segment, never a version listing one that is missing. States written before segments (a whole
``replay.npz`` and ``holdout.npz`` per version) still load; their next commit writes the buffers into a segment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.common.npz import read_arrays, save_arrays
from edgeft.errors import EdgeftError
from edgeft.runtime.replay import NOT_STORED, ReplayBuffer
from edgeft.runtime.store import SEGMENTS_DIR, StateStore, Version, segments_of
from edgeft.runtime.target_replay import TargetBuffer

BUFFERS_FILE = "buffers.npz"
WHOLE_BUFFER_FILES = ("replay.npz", "holdout.npz")  # states written before segments: one whole file per buffer
BUFFER_KINDS = (BUFFERS_FILE, *WHOLE_BUFFER_FILES)
Buffer = ReplayBuffer | TargetBuffer


def segment_name(number: int) -> str:
    return f"{number:06d}.npz"


def persist(
    store: StateStore, number: int, buffers: dict[str, Buffer], parent: Version | None
) -> tuple[Callable[[Path], None], dict[str, dict[str, Any]]]:
    """Write the rows of ``buffers`` (by name) that no segment holds yet, with the rows merged, into the segment of
    version ``number``; mark them stored there. Returns the writer of the version's ``buffers.npz`` and the
    ``segments`` its metadata lists. ``parent``: the version the buffers were loaded from (None at first)."""
    known = segments_of(parent.record, store.versions_dir / f"{parent.number:06d}.json") if parent else {}
    stored = np.concatenate([b.stored[:, 0] for b in buffers.values()])
    live = dict(zip(*np.unique(stored[stored != NOT_STORED], return_counts=True), strict=True))
    writing = int((stored == NOT_STORED).sum())
    merged = set()
    for segment in sorted(live, reverse=True):  # (a) the newest, while no larger than what is written so far
        if live[segment] > writing:
            break
        merged.add(segment)
        writing += int(live[segment])
    merged |= {s for s in live if 2 * live[s] < known[segment_name(int(s))]["rows"]}  # (b) mostly replaced
    pending = {name: np.isin(b.stored[:, 0], [NOT_STORED, *merged]) for name, b in buffers.items()}
    listed = {segment_name(int(s)): known[segment_name(int(s))] for s in live if s not in merged}
    rows = sum(int(p.sum()) for p in pending.values())
    if rows:
        features = np.concatenate([b.features[pending[name]] for name, b in buffers.items()])
        labels = np.concatenate([b.labels[pending[name]] for name, b in buffers.items()])
        name, digest = store.write_segment(number, lambda path: save_arrays(path, features=features, labels=labels))
        listed[name] = {"sha256": digest, "rows": rows}
        at = 0
        for buffer_name, buffer in buffers.items():
            count = int(pending[buffer_name].sum())
            buffer.stored[pending[buffer_name]] = np.stack([np.full(count, number), np.arange(at, at + count)], axis=1)
            at += count
    index: dict[str, np.ndarray] = {}
    for buffer_name, buffer in buffers.items():
        index[f"{buffer_name}_segment"] = buffer.stored[:, 0].astype(np.int32)
        index[f"{buffer_name}_row"] = buffer.stored[:, 1].astype(np.int32)
        index.update({f"{buffer_name}_{key}": value for key, value in buffer.bookkeeping().items()})
    return (lambda path: save_arrays(path, **index)), listed


def load(store: StateStore, version: Version | None, buffers: dict[str, Buffer]) -> None:
    """Fill the empty ``buffers`` (by name: ``replay``, ``holdout``) with their rows in ``version``: from its index
    and segments (each checked against its sha256 first), or from a state's whole-buffer files."""
    if version is None:
        return
    if BUFFERS_FILE not in version.files:
        for name, buffer in buffers.items():
            if f"{name}.npz" in version.files:
                buffer.load_file(version.files[f"{name}.npz"])
        return
    index_path = version.files[BUFFERS_FILE]
    index = read_arrays(index_path.read_bytes(), index_path, "a version's buffer index")
    listed = segments_of(version.record, index_path)
    wanted = {f"{name}_{key}" for name, b in buffers.items() for key in ("segment", "row", *b.bookkeeping())}
    if not wanted <= set(index):
        raise EdgeftError(f"{index_path} is corrupt: it lacks {sorted(wanted - set(index))}")
    segments = {
        number: _segment(store, version, segment_name(number), listed)
        for name in buffers
        for number in np.unique(index[f"{name}_segment"]).tolist()
    }
    for name, buffer in buffers.items():
        where = np.stack([index[f"{name}_segment"], index[f"{name}_row"]], axis=1).astype(np.int64)
        features = np.empty((len(where), *buffer.features.shape[1:]), np.float32)
        labels = np.empty((len(where), *buffer.labels.shape[1:]), buffer.labels.dtype)
        for number, (segment_features, segment_labels, path) in segments.items():
            mine = where[:, 0] == number
            if not mine.any():
                continue
            rows = where[mine, 1]
            if rows.min() < 0 or rows.max() >= len(segment_features):
                raise EdgeftError(f"{index_path} is corrupt: it refers to rows {path.name} does not have")
            if segment_features.shape[1:] != features.shape[1:] or segment_labels.shape[1:] != labels.shape[1:]:
                raise EdgeftError(f"{path} does not match this bundle's features or classes")
            features[mine], labels[mine] = segment_features[rows], segment_labels[rows]
        bookkeeping = {key: index[f"{name}_{key}"] for key in buffer.bookkeeping()}
        buffer.restore(features, labels, bookkeeping, where, str(index_path))


def _segment(
    store: StateStore, version: Version, name: str, listed: dict[str, dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray, Path]:
    """A segment's features and labels, after its sha256 was checked against the version's metadata."""
    meta_name = f"{version.number:06d}.json"
    if name not in listed:
        raise EdgeftError(
            f"state {store.root}: version {version.number} uses {SEGMENTS_DIR}/{name}, not in {meta_name}"
        )
    path = store.segment_path(name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EdgeftError(f"state {store.root}: version {version.number} is missing {SEGMENTS_DIR}/{name}") from None
    if hashlib.sha256(data).hexdigest() != listed[name]["sha256"]:
        raise EdgeftError(f"{path} is corrupt: its sha256 does not match {meta_name}")
    arrays = read_arrays(data, path, "a replay segment")
    features, labels = arrays.get("features"), arrays.get("labels")
    if features is None or labels is None or features.ndim != 2 or len(labels) != len(features):
        raise EdgeftError(f"{path} is not a valid replay segment (features and labels of as many rows)")
    return features, labels, path
