"""An inbox directory that new data is dropped into, and what happens to each entry after it was read.

Producers write an entry under a temporary name (starting with ``.`` or ending in ``.tmp``/``.part``) and rename
it when complete, so a half-written file is never read. An entry is a data file (.npz, .csv, .jsonl) or a
folder (``LABEL/*.png`` image folders, or data files). After its arrival is committed it moves to ``done/``;
an entry edgeft cannot use moves to ``quarantine/`` with ``NAME.reason.txt`` beside it (and, for a poison entry,
``NAME.attempts.json``: what its attempts ran into); samples whose labels do not fit the head are written to
``pending/`` (move them back after adopting a bundle with more classes). ``attempts/`` counts the attempts at
entries not yet finished (edgeft/runtime/attempts.py). ``requeue`` moves a quarantined entry back.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from edgeft.bundle import sha256_file
from edgeft.common.atomic import fsync_directory, make_directory, write_atomic, write_bytes_atomic
from edgeft.common.faults import crash_point
from edgeft.errors import DataError
from edgeft.runtime.attempts import ATTEMPTS_DIR, AttemptLedger

DONE_DIR = "done"
QUARANTINE_DIR = "quarantine"
PENDING_DIR = "pending"
RESERVED = frozenset({DONE_DIR, QUARANTINE_DIR, PENDING_DIR, ATTEMPTS_DIR})
REASON_SUFFIX = ".reason.txt"
ATTEMPTS_SUFFIX = ".attempts.json"
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


def is_temporary(name: str) -> bool:
    """Names producers use while still writing."""
    return name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES)


def _refuse_special(path: Path) -> None:
    """Symbolic links (they may point out of the inbox) and pipes, sockets or devices (reading may block forever)."""
    if path.is_symlink():
        raise DataError(f"{path}: is a symbolic link; edgeft reads only regular files in the inbox")
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if not path.is_file() and not path.is_dir():
        raise DataError(f"{path}: is not a regular file or folder (a pipe, socket or device); edgeft does not read it")


def fingerprint(path: Path) -> str:
    """sha256 of a file, or of a folder's relative file names and contents; links and special files are refused."""
    _refuse_special(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        _refuse_special(item)
        if item.is_file():
            digest.update(item.relative_to(path).as_posix().encode() + b"\0" + sha256_file(item).encode() + b"\n")
    return digest.hexdigest()


def pending_name(name: str) -> str:
    """The file samples of entry ``name`` wait in: ``a.npz`` keeps its name, others get ``.npz`` added (``a.csv.npz``)."""
    return name if name.endswith(".npz") else f"{name}.npz"


def write_pending(folder: Path, name: str, x: np.ndarray, y: np.ndarray) -> Path:
    """Atomically write samples (inputs and label names) to ``folder/pending_name(name)``, a data file again."""
    make_directory(folder)
    target = folder / pending_name(name)

    def save(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, x=x, y=np.asarray(y).astype(str))

    write_atomic(target, save)
    return target


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name.N`` for the first N not yet taken."""
    target = folder / name
    number = 1
    while target.exists() or target.is_symlink():
        target = folder / f"{name}.{number}"
        number += 1
    return target


def ready_entries(root: Path) -> list[Path]:
    """Complete entries waiting in the inbox ``root``, oldest first; reads only."""
    entries = []
    for path in root.iterdir():
        if path.name in RESERVED or is_temporary(path.name):
            continue
        try:
            entries.append((path.lstat().st_mtime_ns, path.name, path))
        except FileNotFoundError:  # renamed away meanwhile
            continue
    return [path for _, _, path in sorted(entries)]


class Inbox:
    """The inbox folder and its ``done/``, ``quarantine/``, ``pending/`` and ``attempts/`` subfolders."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"inbox {self.root} does not exist or is not a directory")
        for name in RESERVED:
            make_directory(self.root / name)
            for stale in (self.root / name).glob(".*.tmp"):  # temp files of atomic writes a crash cut short
                stale.unlink(missing_ok=True)
        self.attempts = AttemptLedger(self.root / ATTEMPTS_DIR)

    def ready(self) -> list[Path]:
        """Complete entries waiting to be learned, oldest first."""
        return ready_entries(self.root)

    def done(self, entry: Path) -> None:
        """Move a learned (or already learned) entry to ``done/``."""
        self.done_all([entry])

    def done_all(self, entries: list[Path]) -> None:
        """Move the learned entries of one arrival to ``done/``, the two folders fsynced once for all of them (a
        move a power cut undoes leaves a consumed entry in the inbox: skipped, then moved, next time)."""
        folder = self.root / DONE_DIR
        for entry in entries:
            crash_point("move")
            os.replace(entry, _free_name(folder, entry.name))
        fsync_directory(folder)
        fsync_directory(self.root)

    def quarantine(self, entry: Path, reason: str, attempts: bytes | None = None) -> Path:
        """Write why (and ``attempts``, a poison entry's record) beside the entry's place in ``quarantine/``, then
        move it there.

        Reason first: a crash or a full disk in between leaves the entry in the inbox (quarantined again next time),
        never a quarantined entry without its reason.
        """
        folder = self.root / QUARANTINE_DIR
        target = _free_name(folder, entry.name)
        if attempts is not None:
            write_bytes_atomic(target.with_name(target.name + ATTEMPTS_SUFFIX), attempts)
        write_bytes_atomic(target.with_name(target.name + REASON_SUFFIX), (reason.rstrip() + "\n").encode())
        return self._move(entry, folder, target)

    def keep_pending(self, entry: Path, x: np.ndarray, y: np.ndarray) -> Path:
        """Write samples that cannot be learned yet to ``pending/`` (see pending_name; same name each time: idempotent)."""
        return write_pending(self.root / PENDING_DIR, entry.name, x, y)

    def _move(self, entry: Path, folder: Path, target: Path | None = None) -> Path:
        target = target or _free_name(folder, entry.name)
        crash_point("move")
        os.replace(entry, target)
        fsync_directory(folder)
        fsync_directory(self.root)
        return target


def quarantined(root: Path) -> list[Path]:
    """Entries in ``root/quarantine/`` (not their reason or attempts files), by name; reads only."""
    folder = root / QUARANTINE_DIR
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if not path.name.endswith((REASON_SUFFIX, ATTEMPTS_SUFFIX)) and not is_temporary(path.name)
    )


def requeue(root: Path, name: str, new_name: str | None = None) -> Path:
    """Move ``root/quarantine/NAME`` back into the inbox (as ``new_name``) for a fresh set of attempts.

    Safe while a watch runs. The entry moves first, its reason and attempts files go after: a crash in between
    leaves a stale reason, never an entry in quarantine without one.
    """
    folder = root / QUARANTINE_DIR
    source = folder / name
    if name in ("", ".", "..") or "/" in name or name.endswith((REASON_SUFFIX, ATTEMPTS_SUFFIX)):
        raise DataError(f"'{name}' is not the name of an entry in {folder}")
    if not (source.exists() or source.is_symlink()):
        listed = ", ".join(p.name for p in quarantined(root)) or "none"
        raise DataError(f"{source} does not exist (quarantined entries: {listed})")
    target = root / (new_name or name)
    if new_name is not None and (new_name in RESERVED or "/" in new_name or is_temporary(new_name)):
        raise DataError(f"'{new_name}' cannot name an inbox entry (reserved, temporary or a path)")
    if target.exists() or target.is_symlink():
        raise DataError(f"{target} exists; requeue under another name with --as")
    os.replace(source, target)
    fsync_directory(root)
    for suffix in (REASON_SUFFIX, ATTEMPTS_SUFFIX):
        folder.joinpath(name + suffix).unlink(missing_ok=True)
    fsync_directory(folder)
    return target
