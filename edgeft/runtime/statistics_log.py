"""Append-only storage of class statistics: an arrival writes the rows it adds, not the whole [D, D] moment.

``segments/NNNNNN.statistics.npz`` is written once by version N's commit, durably, before the version that lists
it, and never changed. It is either a snapshot (``ClassStatistics.save``: counts, sums, the moment's upper
triangle) or the rows version N's arrival added to the statistics (``features`` [n, D] float64 and ``labels`` [n]
int64, exactly as ``ClassStatistics.add`` took them). A version's ``statistics.npz`` is then a small index,
``chain``: the names of the segments its statistics are made of, oldest first — a snapshot (none: the statistics
of no samples) and the rows added since, one arrival per segment. Reading them back adds each arrival's rows in
one call, as learning did, so they are bit for bit the statistics learned. The version's metadata lists the
segments (``segments``: sha256 and rows) beside the replay buffer's, so the store's pruning keeps every segment a
version on disk uses, a rollback brings them back with the index it copies, and each is checked against its
sha256 before it is read.

A commit writes its arrival's rows while the rows since the last snapshot stay within half the snapshot's bytes,
and a fresh snapshot otherwise (also when a statistics file of an older edgeft, which holds the whole statistics,
was loaded): bytes written per arrival follow the arrival (16 rows of 1,280 features: 164 KB, not the 6.5 MB
snapshot), reading a version adds at most about D/4 rows to its snapshot. Nearest class mean's statistics (counts,
sums and the trace: smaller than an arrival's rows) stay whole in the version's ``statistics.npz``, as before.

The other devices' statistics behind an adopted fleet head are kept the same way, in segments of their own
(``NNNNNN.fleet.statistics.npz``): the adopting commit writes their snapshot once, and every later version's
``fleet_statistics.npz`` is the index naming it, so a device in a fleet no longer copies 6.5 MB into each version.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.common.npz import read_arrays, save_arrays
from edgeft.errors import EdgeftError
from edgeft.runtime.class_statistics import ClassStatistics
from edgeft.runtime.store import SEGMENTS_DIR, StateStore, Version, segments_of
from edgeft.runtime.version_record import FLEET_SEGMENT_SUFFIX, STATISTICS_SEGMENT_SUFFIX

OWN = STATISTICS_SEGMENT_SUFFIX.removesuffix(".npz")  # the device's own statistics (records: format 2)
FLEET = FLEET_SEGMENT_SUFFIX.removesuffix(".npz")  # the other devices' behind an adopted fleet head (format 3)


@dataclass
class StatisticsLog:
    """The segments behind the loaded version's statistics (``chain``: name -> sha256 and rows, oldest first) and
    the rows added to them since, not yet stored (``pending``). ``log_rows``: rows in the chain after its snapshot;
    ``based`` False: the statistics came from a whole file (an older edgeft's, or nearest class mean's), so the
    next commit of full statistics writes a snapshot. ``suffix``: its segments' (``OWN`` or ``FLEET``)."""

    chain: dict[str, dict[str, Any]] = field(default_factory=dict)
    log_rows: int = 0
    based: bool = True
    pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    suffix: str = OWN

    def added(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Remember rows just added to the statistics (``ClassStatistics.add``'s arguments) for the next commit."""
        self.pending.append((np.asarray(features, np.float64), np.asarray(labels, np.int64)))

    def persist(self, store: StateStore, number: int, statistics: ClassStatistics) -> Callable[[Path], None]:
        """Durably write version ``number``'s segment (the pending rows, or a snapshot of ``statistics``, which must
        include them) and take it into ``chain``; returns the writer of the version's index file."""
        if not statistics.full:  # nearest class mean's K·D + 1 numbers: smaller than rows, kept whole in the version
            self.chain, self.log_rows, self.based, self.pending = {}, 0, False, []
            return statistics.save
        rows = sum(len(labels) for _, labels in self.pending)
        dim = statistics.sums.shape[1]
        snapshot_bytes = statistics.sums.nbytes + dim * (dim + 1) // 2 * 8  # with the moment's upper triangle
        log_bytes = (self.log_rows + rows) * dim * 8
        if not (self.based and len(self.pending) <= 1 and 2 * log_bytes <= snapshot_bytes):
            name, digest = store.write_segment(number, statistics.save, self.suffix)
            self.chain, self.log_rows, self.based = {name: {"sha256": digest, "rows": statistics.total}}, 0, True
        elif self.pending:
            features, labels = self.pending[0]
            name, digest = store.write_segment(
                number, lambda path: save_arrays(path, features=features, labels=labels), self.suffix
            )
            self.chain = {**self.chain, name: {"sha256": digest, "rows": rows}}
            self.log_rows += rows
        self.pending = []
        names = np.array(list(self.chain), dtype=str)
        return lambda path: save_arrays(path, chain=names)

    def listed(self) -> dict[str, dict[str, Any]]:
        """The segments of the chain, as the version's metadata lists them."""
        return dict(self.chain)


def listed_segments(store: StateStore, version: Version, suffix: str = OWN) -> dict[str, dict[str, Any]]:
    """The statistics segments of one kind (``suffix``) that ``version``'s record lists: those its index names, which
    a version that copies the index must list too."""
    pattern = _segment_name(suffix)
    listed = segments_of(version.record, store.versions_dir / f"{version.number:06d}.json")
    return {name: entry for name, entry in listed.items() if pattern.fullmatch(name)}


def _segment_name(suffix: str) -> re.Pattern[str]:
    return re.compile(r"[0-9]{6,}" + re.escape(suffix) + r"\.npz")


def load_statistics(
    store: StateStore,
    version: Version,
    path: Path,
    num_classes: int,
    feature_dim: int,
    full: bool,
    suffix: str = OWN,
) -> tuple[ClassStatistics, StatisticsLog]:
    """The statistics ``version`` holds in ``path`` (its index, or a whole statistics file of an older edgeft) and
    the log to continue them (``full``: statistics with the whole moment, if the chain starts from no samples;
    ``suffix``: ``OWN`` or ``FLEET`` segments); EdgeftError naming the file for anything missing, corrupt or of
    another head."""
    arrays = read_arrays(path.read_bytes(), path, "valid class statistics")
    if "chain" not in arrays:  # a whole statistics file, as edgeft wrote it before the log
        return ClassStatistics.load(path, num_classes, feature_dim), StatisticsLog(based=False, suffix=suffix)
    chain = arrays["chain"]
    segment_name = _segment_name(suffix)
    if chain.ndim != 1 or chain.dtype.kind != "U" or not all(segment_name.fullmatch(n) for n in chain):
        raise EdgeftError(f"{path} is corrupt: its chain is not a list of {suffix[1:].replace('.', ' ')} segment names")
    listed = segments_of(version.record, path)
    statistics, log = ClassStatistics.empty(num_classes, feature_dim, full), StatisticsLog(suffix=suffix)
    for position, name in enumerate(chain.tolist()):
        if name not in listed:
            raise EdgeftError(f"state {store.root}: version {version.number} uses {SEGMENTS_DIR}/{name}, not in "
                              f"{version.number:06d}.json")  # fmt: skip
        segment = store.segment_path(name)
        data = _checked_bytes(store, version, segment, listed[name]["sha256"])
        part = read_arrays(data, segment, "a statistics segment")
        log.chain[name] = listed[name]
        if "features" in part:
            statistics.add(*_rows(part, segment, feature_dim, num_classes))
            log.log_rows += len(part["labels"])
        elif position == 0:
            statistics = ClassStatistics.load(segment, num_classes, feature_dim, data)
        else:
            raise EdgeftError(f"{path} is corrupt: a snapshot ({name}) can only begin its chain")
    return statistics, log


def _rows(part: dict[str, np.ndarray], segment: Path, feature_dim: int, num_classes: int) -> tuple[np.ndarray, ...]:
    features, labels = part["features"], part.get("labels")
    if (
        labels is None
        or features.dtype != np.float64
        or labels.dtype != np.int64
        or features.shape != (len(labels), feature_dim)
        or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes))
    ):
        raise EdgeftError(
            f"{segment} is not a valid statistics segment: expected float64 features [n, {feature_dim}] and int64 "
            f"labels [n] below {num_classes}"
        )
    return features, labels


def _checked_bytes(store: StateStore, version: Version, segment: Path, digest: str) -> bytes:
    try:
        data = segment.read_bytes()
    except FileNotFoundError:
        missing = f"{SEGMENTS_DIR}/{segment.name}"
        raise EdgeftError(f"state {store.root}: version {version.number} is missing {missing}") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise EdgeftError(f"{segment} is corrupt: its sha256 does not match {version.number:06d}.json")
    return data
