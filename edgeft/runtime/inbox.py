"""An inbox directory that new data is dropped into, and what happens to each entry after it was read.

Producers write an entry under a temporary name (starting with ``.`` or ending in ``.tmp``/``.part``) and rename
it when complete, so a half-written file is never read. An entry is a data file (.npz, .csv, .jsonl) or a
folder (``LABEL/*.png`` image folders, or data files). After its arrival is committed it moves to ``done/``;
an entry edgeft cannot use moves to ``quarantine/`` with ``NAME.reason.txt`` beside it; samples whose labels do
not fit the head are written to ``pending/`` (move them back after adopting a bundle with more classes).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from edgeft.bundle import sha256_file
from edgeft.errors import DataError
from edgeft.runtime.atomic import fsync_directory, make_directory, write_atomic, write_bytes_atomic
from edgeft.runtime.faults import crash_point

DONE_DIR = "done"
QUARANTINE_DIR = "quarantine"
PENDING_DIR = "pending"
RESERVED = frozenset({DONE_DIR, QUARANTINE_DIR, PENDING_DIR})
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


def is_temporary(name: str) -> bool:
    """Names producers use while still writing."""
    return name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES)


def _refuse_special(path: Path) -> None:
    """Symbolic links (they may point out of the inbox) and pipes, sockets or devices (reading may block forever)."""
    if path.is_symlink():
        raise DataError(f"{path}: is a symbolic link; edgeft reads only regular files in the inbox")
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


class Inbox:
    """The inbox folder and its ``done/``, ``quarantine/`` and ``pending/`` subfolders."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"inbox {self.root} does not exist or is not a directory")
        for name in RESERVED:
            make_directory(self.root / name)
            for stale in (self.root / name).glob(".*.tmp"):  # temp files of atomic writes a crash cut short
                stale.unlink(missing_ok=True)

    def ready(self) -> list[Path]:
        """Complete entries waiting to be learned, oldest first."""
        entries = []
        for path in self.root.iterdir():
            if path.name in RESERVED or is_temporary(path.name):
                continue
            try:
                entries.append((path.lstat().st_mtime_ns, path.name, path))
            except FileNotFoundError:  # renamed away meanwhile
                continue
        return [path for _, _, path in sorted(entries)]

    def done(self, entry: Path) -> Path:
        """Move a learned entry to ``done/``."""
        return self._move(entry, self.root / DONE_DIR)

    def quarantine(self, entry: Path, reason: str) -> Path:
        """Write why beside the entry's place in ``quarantine/``, then move it there.

        Reason first: a crash or a full disk in between leaves the entry in the inbox (quarantined again next time),
        never a quarantined entry without its reason.
        """
        folder = self.root / QUARANTINE_DIR
        target = _free_name(folder, entry.name)
        write_bytes_atomic(target.with_name(target.name + ".reason.txt"), (reason.rstrip() + "\n").encode())
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
