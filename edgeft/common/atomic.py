"""Crash-safe file writes: temp file in the same directory, fsync, os.replace, fsync the directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgeft.common.faults import crash_point
from edgeft.errors import EdgeftError


class WriteError(EdgeftError, OSError):
    """A file could not be written (a full disk, a file size limit, no permission); the old file stays."""


def fsync_directory(directory: Path) -> None:
    """Make a rename or creation inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(path: Path) -> None:
    """Create ``path`` and its missing parents durably: each one's entry is fsynced in its parent (as is ``path``'s,
    in case an earlier process created it and died before doing so). A power cut then never loses the directory
    that durable files were written into.
    """
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        fsync_directory(directory.parent)
    if not missing:
        fsync_directory(path.parent)


def fsync_file(path: Path) -> None:
    """Flush a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and ``root``), deepest first."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            fsync_directory(path)
        elif path.is_file():
            fsync_file(path)
    fsync_directory(root)


def write_atomic(path: Path, write: Callable[[Path], None], point: str = "rename", sync_directory: bool = True) -> None:
    """Let ``write`` fill a temp file beside ``path``, make it durable, then atomically put it in place.

    A crash at any moment leaves either the old ``path`` or the new one, never a torn file. A failed write
    raises WriteError naming ``path`` and leaves the old file in place. ``point`` names the crash point just
    before the rename (edgeft/common/faults.py). With ``sync_directory`` False the rename is not yet durable: the
    caller fsyncs the directory once after several writes, before anything that depends on them.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        fsync_file(tmp)
        crash_point(point)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"{path}: cannot write it ({exc.strerror or exc}); the previous file stays") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_directory:
        fsync_directory(path.parent)


SHARED_FILE_MODE = 0o644  # files other users read: metrics for node_exporter, reports


def write_bytes_atomic(
    path: Path, data: bytes, mode: int | None = None, point: str = "rename", sync_directory: bool = True
) -> None:
    """Atomically replace ``path`` with ``data``; with ``mode``, the file gets those permissions (else 0600);
    ``sync_directory`` as for ``write_atomic``."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        if mode is not None:
            tmp.chmod(mode)

    write_atomic(path, write, point, sync_directory)
