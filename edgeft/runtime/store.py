"""The state directory of one device: versioned head checkpoints, a current pointer, and a lock.

Layout::

    state/
      lock                      held (flock) by the one process allowed to learn; holds its pid
      CURRENT                   JSON pointer {"version": N}, replaced atomically after a commit
      versions/000007.head.npz  head state: parameters, optimizer state, step count (edgeft.head_state)
      versions/000007.ckpt      only from the ORT trainer: its own checkpoint (keeps ORT's AdamW moments)
      versions/000007.buffers.npz  which segment rows make up this version's replay buffer and holdout
      versions/000007.json      its VersionRecord (edgeft.runtime.version_record): bundle fingerprint, sha256 of
                                each file above, the segments the buffers use (sha256 and rows of each), counts,
                                metrics
      segments/000007.npz       features and labels written once by version 7's commit (edgeft.runtime.replay_store)
      segments/000007.statistics.npz  the class statistics' rows (or a snapshot) version 7's commit added
                                (streaming heads; edgeft.runtime.statistics_log)
      segments/000007.fleet.statistics.npz  a snapshot of the other devices' statistics behind the fleet head
                                version 7 adopted (or the first that kept them after an older edgeft's whole file)

A version is committed by writing its segments (if it adds rows), its files, then its metadata (each atomically; the
segments share one fsync of ``segments/``, then the files and metadata one of ``versions/``), then CURRENT. A crash before CURRENT is replaced leaves the previous version current; leftovers are pruned later.
Pruning, after each commit, removes the versions beyond ``keep`` and then every segment that no committed version
still on disk lists, so a segment is never removed while a version that could be loaded or rolled back to uses it.
States written before segments keep a whole ``replay.npz`` and ``holdout.npz`` per version; they still load.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeft.bundle import sha256_file
from edgeft.common.atomic import fsync_directory, make_directory, write_atomic, write_bytes_atomic
from edgeft.errors import EdgeftError
from edgeft.runtime.version_record import VersionRecord

CURRENT_FILE = "CURRENT"
LOCK_FILE = "lock"
VERSIONS_DIR = "versions"
SEGMENTS_DIR = "segments"
SEGMENT_NAME = re.compile(r"[0-9]{6,}((\.fleet)?\.statistics)?\.npz")
KEEP_VERSIONS = 5


def read_pointer(root: Path) -> int | None:
    """The number CURRENT points at (None before the first commit), or an error when it is corrupt."""
    pointer = root / CURRENT_FILE
    if not pointer.is_file():
        return None
    try:
        return int(json.loads(pointer.read_text())["version"])
    except (ValueError, KeyError, TypeError):
        raise EdgeftError(f'{pointer} is corrupt: expected JSON like {{"version": 3}}') from None


def record_path(root: Path, number: int) -> Path:
    """Where version ``number``'s metadata lies."""
    return root / VERSIONS_DIR / f"{number:06d}.json"


def read_record(root: Path, number: int) -> VersionRecord:
    """Version ``number``'s metadata, without verifying its files; EdgeftError naming the file when it is missing,
    corrupt or of a format this edgeft does not read."""
    path = record_path(root, number)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise EdgeftError(f"state {root}: version {number} has no metadata file {path.name}") from None
    return VersionRecord.from_json(text, str(path))


def read_current_record(root: Path) -> VersionRecord | None:
    """The current version's metadata as committed, read without the lock and without verifying its files (status
    and metrics read it while a learner may be committing); None before the first commit."""
    number = read_pointer(root)
    return None if number is None else read_record(root, number)


def stored_numbers(root: Path) -> list[int]:
    """Numbers of every version whose metadata is on disk (committed or left by a commit that never finished)."""
    return sorted({int(p.name.split(".")[0]) for p in (root / VERSIONS_DIR).glob("[0-9]*.json")})


def lock_holder(root: Path) -> int | None:
    """The pid the lock file names: the last process that took the writer lock (None if none ever did)."""
    lock = root / LOCK_FILE
    text = lock.read_text().strip() if lock.is_file() else ""
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class Version:
    """One committed head: its number, its files by kind (``head.npz``, ``buffers.npz``, ...) and its record."""

    number: int
    files: dict[str, Path]
    record: VersionRecord

    @property
    def meta(self) -> dict[str, Any]:
        """The record as the JSON object on disk (a copy; for callers that want plain data)."""
        return self.record.to_dict()


class StateStore:
    """Reads and commits versions in one state directory bound to one bundle."""

    def __init__(self, root: str | Path, bundle_fingerprint: str, keep: int = KEEP_VERSIONS) -> None:
        if keep < 1:
            raise EdgeftError(f"keep at least 1 version (got {keep})")
        self.root = Path(root)
        self._fingerprint = bundle_fingerprint
        self.keep = keep
        self._lock_fd: int | None = None
        self._segments_ready = False
        self._segments_unsynced = False  # segments written whose entries the next commit makes durable
        if self.root.exists() and not self.root.is_dir():
            raise EdgeftError(f"state path {self.root} exists and is not a directory")

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR

    @property
    def segments_dir(self) -> Path:
        return self.root / SEGMENTS_DIR

    def _path(self, number: int, kind: str) -> Path:
        return self.versions_dir / f"{number:06d}.{kind}"

    def segment_path(self, name: str) -> Path:
        """Where the segment ``name`` (listed in a version's ``segments``) lies."""
        return self.segments_dir / name

    def write_segment(self, number: int, write: Callable[[Path], None], suffix: str = "") -> tuple[str, str]:
        """Write the segment of the version ``number`` is about to commit (``suffix`` ".statistics": its class
        statistics', ".fleet.statistics": the fleet's, edgeft.runtime.statistics_log); its name and sha256. Its contents are durable at once, its
        entry in segments/ when ``commit`` makes them all durable with one fsync, before any version lists them.

        Requires the lock. Until a committed version lists it, it is garbage the next commit's pruning removes.
        """
        if self._lock_fd is None:
            raise RuntimeError("write_segment() needs acquire() first")
        if not self._segments_ready:  # once a process: its entry durable even if an earlier process made it
            make_directory(self.segments_dir)
            self._segments_ready = True
        name = f"{number:06d}{suffix}.npz"
        write_atomic(self.segment_path(name), write, sync_directory=False)
        self._segments_unsynced = True
        return name, sha256_file(self.segment_path(name))

    def current(self) -> Version | None:
        """The committed current version, verified, or None for a fresh state directory."""
        number = read_pointer(self.root)
        return None if number is None else self._load(number)

    def retained(self) -> list[int]:
        """Numbers of the committed versions still on disk, oldest first (at most the current one)."""
        current = self.current()
        if current is None:
            return []
        return [n for n in stored_numbers(self.root) if n <= current.number]

    def load(self, number: int) -> Version:
        """One committed version, verified against its metadata's sha256."""
        return self._load(number)

    def retained_version(self, number: int) -> Version:
        """A committed version that is still on disk, or an error saying it was pruned (or never existed)."""
        retained = self.retained()
        if number not in retained:
            newest = retained[-1] if retained else 0
            why = "does not exist yet" if number > newest or number < 1 else "was pruned"
            kept = f"{retained[0]}..{newest}" if retained else "none"
            raise EdgeftError(
                f"state {self.root}: version {number} {why} (retained: {kept}; keep more with --keep-versions)"
            )
        return self._load(number)

    def _load(self, number: int) -> Version:
        record = read_record(self.root, number)
        meta_path = record_path(self.root, number)
        if record.bundle != self._fingerprint:
            raise EdgeftError(f"state {self.root} belongs to another bundle; use a new --state directory for this one")
        files = {kind: self._path(number, kind) for kind in record.sha256}
        for kind, path in files.items():
            if not path.is_file():
                raise EdgeftError(f"state {self.root}: version {number} is missing {path.name}")
            if sha256_file(path) != record.sha256[kind]:
                raise EdgeftError(f"{path} is corrupt: its sha256 does not match {meta_path.name}")
        for name in segments_of(record, meta_path):  # hashed when read (edgeft.runtime.replay_store)
            if not self.segment_path(name).is_file():
                raise EdgeftError(f"state {self.root}: version {number} is missing {SEGMENTS_DIR}/{name}")
        return Version(number, files, record)

    def acquire(self) -> None:
        """Take the writer lock, or fail naming the process that holds it. Released on exit or crash."""
        if self._lock_fd is not None:
            return
        make_directory(self.versions_dir)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EdgeftError(f"state {self.root} is in use by another edgeft process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        """Give the writer lock back."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def commit(
        self, writers: dict[str, Callable[[Path], None]], meta: dict[str, Any], parent: Version | None
    ) -> Version:
        """Write a new version's files (kind -> writer) and its record atomically, then make it current.

        Requires the lock. ``writers`` must include the head (``head.npz``); ``meta`` holds the record's fields but
        those the store fills in (version, parent, bundle, sha256); ``parent`` is the current version (None at first).
        """
        if self._lock_fd is None:
            raise RuntimeError("commit() needs acquire() first")
        current = parent
        number = (current.number if current else 0) + 1
        files = {kind: self._path(number, kind) for kind in writers}
        for kind, write in writers.items():  # new names no committed version lists: one directory fsync below
            write_atomic(files[kind], write, sync_directory=False)
        full_meta = {
            **meta,
            "version": number,
            "parent": current.number if current else None,
            "bundle": self._fingerprint,
            "sha256": {kind: sha256_file(path) for kind, path in files.items()},
        }
        record = VersionRecord.from_dict(full_meta, f"version {number} of state {self.root}")
        write_bytes_atomic(self._path(number, "json"), record.to_json().encode(), sync_directory=False)
        if self._segments_unsynced:  # every segment written since the last commit, before a version lists them
            fsync_directory(self.segments_dir)
            self._segments_unsynced = False
        fsync_directory(self.versions_dir)  # the version's files and metadata durable before CURRENT names them
        write_bytes_atomic(self.root / CURRENT_FILE, json.dumps({"version": number}).encode())
        self._prune(number)
        return Version(number, files, record)

    def _prune(self, newest: int) -> None:
        # Metadata first: a crash part-way never leaves a version that looks committed but lacks its files.
        removed = False
        for path in sorted(self.versions_dir.iterdir(), key=lambda p: not p.name.endswith(".json")):
            stem = path.name.split(".")[0]
            old = stem.isdigit() and int(stem) <= newest - self.keep
            if _stale_tmp(path) or old:
                path.unlink(missing_ok=True)
                removed = True
        if removed:  # the versions' removal durable before their segments' (else a power cut could bring back a
            fsync_directory(self.versions_dir)  # version whose segment is gone)
        self._prune_segments(newest)

    def _prune_segments(self, newest: int) -> None:
        """Remove segments no committed version on disk lists (written by a commit that crashed, or only listed by
        pruned versions); if any metadata cannot be read, remove none."""
        if not self.segments_dir.is_dir():
            return
        listed: set[str] = set()
        for number in stored_numbers(self.root):
            if number > newest:
                continue
            try:
                listed.update(segments_of(read_record(self.root, number), record_path(self.root, number)))
            except (OSError, EdgeftError):
                return
        for path in self.segments_dir.iterdir():
            if _stale_tmp(path) or path.name not in listed:
                path.unlink(missing_ok=True)


def _stale_tmp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def segments_of(record: VersionRecord, meta_path: Path) -> dict[str, dict[str, Any]]:
    """The segments a version's record lists (name -> sha256 and rows); none in states written before them."""
    segments = {} if record.segments is None else record.segments
    if not isinstance(segments, dict) or not all(
        SEGMENT_NAME.fullmatch(name)
        and isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("rows"), int)
        for name, entry in segments.items()
    ):
        raise EdgeftError(f"{meta_path} is corrupt: its segments are not a mapping of name to sha256 and rows")
    return segments
