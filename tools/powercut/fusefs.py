"""The power-cut filesystem: a FUSE mount of the in-memory model (model.py) over a durable image on real disk.

``python -m powercut.fusefs IMAGE MOUNTPOINT --seed S [--cut-after K --report FILE --spare PID]`` loads the real
directory IMAGE (all of it durable), serves it at MOUNTPOINT and blocks. Unmounting it is the power cut: what was not
durable is dropped (model.Model.cut, seeded by S) and IMAGE is replaced by what survived.

With ``--cut-after K`` the power goes out at the K-th mutating operation (``--match TEXT``: the K-th on a path
containing TEXT) (write, truncate, create, mkdir, mknod,
symlink, unlink, rmdir, rename, fsync) of any process but the ``--spare`` ones: that operation reaches the volatile
layer (an fsync does not complete), it is recorded in FILE as JSON, and every later mutating operation fails with
EIO — nothing more reaches the disk. The harness then kills the process and unmounts.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mfusepy
import numpy as np

from powercut.model import FsError, Model

MUTATING = frozenset({"write", "truncate", "create", "mkdir", "mknod", "symlink", "unlink", "rmdir", "rename", "fsync"})


class PowerCutFs(mfusepy.Operations):
    """FUSE operations over a Model; open files are followed by inode, so renames and unlinks do not lose them."""

    use_ns = True
    flag_nullpath_ok = True
    flag_nopath = True

    def __init__(self, model: Model, cut_after: int, report: Path | None, spare: set[int], match: str = "") -> None:
        self.model, self.cut_after, self.report, self.spare, self.match = model, cut_after, report, spare, match
        self.matched = 0
        self.handles: dict[int, tuple[int, str]] = {}  # open file handle -> inode, path it was opened by
        self.counted = 0
        self.dead = False
        self._mutex = threading.Lock()
        self._next_handle = 1

    def _mutate(self, name: str, path: str | None, action: Callable[[], Any]) -> Any:
        """Count a mutating operation, cut the power at the chosen one, refuse everything after it."""
        with self._mutex:
            if self.dead:
                raise FsError(errno.EIO)
            if mfusepy.fuse_get_context()[2] not in self.spare:
                self.counted += 1
                self.matched += self.match in (path or "")
                if self.matched == self.cut_after and self.match in (path or ""):
                    self.dead = True
                    if self.report:
                        self.report.write_text(json.dumps({"op": name, "path": path, "count": self.counted}))
                    if name == "fsync":
                        raise FsError(errno.EIO)
            return action()

    def _handle(self, ino: int, path: str) -> int:
        number, self._next_handle = self._next_handle, self._next_handle + 1
        self.handles[number] = (ino, path)
        return number

    def _ino(self, path: str | None, fh: int | None) -> int:
        if fh:
            return self.handles[fh][0]
        if path is None:
            raise FsError(errno.EBADF)
        return self.model.lookup(path)

    def _path(self, path: str | None, fh: int | None) -> str | None:
        """The path an operation names, or the one its file was opened by (FUSE passes none for open files)."""
        return path or (self.handles[fh][1] if fh in self.handles else None)

    # -- reading --------------------------------------------------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            ino = self._ino(path, fh)
            node = self.model.nodes[ino]
            size = len(node.data) if node.kind == stat.S_IFREG else len(node.target)
            return {
                "st_mode": node.kind | node.mode,
                "st_ino": ino,
                "st_nlink": 2 if node.kind == stat.S_IFDIR else 1,
                "st_size": size,
                "st_mtime": node.mtime_ns,
                "st_ctime": node.mtime_ns,
                "st_atime": node.mtime_ns,
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_blocks": (size + 511) // 512,
            }

    def readdir(self, path: str | None, fh: int) -> list[str]:
        with self._mutex:
            return [".", "..", *self.model.nodes[self._ino(path, fh)].entries]

    def readlink(self, path: str) -> str:
        with self._mutex:
            return self.model.nodes[self.model.lookup(path)].target

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            return bytes(self.model.nodes[self._ino(path, fh)].data[offset : offset + size])

    def open(self, path: str, flags: int) -> int:
        with self._mutex:
            ino = self.model.lookup(path)
        if flags & os.O_TRUNC:
            self._mutate("truncate", path, lambda: self.model.truncate(ino, 0))
        with self._mutex:
            return self._handle(ino, path)

    def opendir(self, path: str) -> int:
        with self._mutex:
            return self._handle(self.model.lookup(path), path)

    def release(self, path: str | None, fh: int) -> int:
        with self._mutex:
            self.handles.pop(fh, None)
        return 0

    releasedir = release

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 19, "f_bavail": 1 << 19}

    # -- writing --------------------------------------------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        ino = self._mutate("create", path, lambda: self.model.create(path, stat.S_IFREG, mode))
        with self._mutex:
            return self._handle(ino, path)

    def mkdir(self, path: str, mode: int) -> int:
        self._mutate("mkdir", path, lambda: self.model.create(path, stat.S_IFDIR, mode))
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
            raise FsError(errno.EPERM)
        self._mutate("mknod", path, lambda: self.model.create(path, stat.S_IFMT(mode), mode))
        return 0

    def symlink(self, target: str, source: str) -> int:
        self._mutate("symlink", target, lambda: self.model.create(target, stat.S_IFLNK, 0o777, source))
        return 0

    def unlink(self, path: str) -> int:
        self._mutate("unlink", path, lambda: self.model.remove(path, directory=False))
        return 0

    def rmdir(self, path: str) -> int:
        self._mutate("rmdir", path, lambda: self.model.remove(path, directory=True))
        return 0

    def rename(self, old: str, new: str) -> int:
        self._mutate("rename", f"{old} -> {new}", lambda: self.model.rename(old, new))
        return 0

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return self._mutate("write", self._path(path, fh), lambda: self.model.write(self.handles[fh][0], offset, data))

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self._mutate("truncate", self._path(path, fh), lambda: self.model.truncate(self._ino(path, fh), length))
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self._mutate("fsync", self._path(path, fh), lambda: self.model.fsync(self.handles[fh][0]))
        return 0

    fsyncdir = fsync

    def flush(self, path: str | None, fh: int) -> int:
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        if path is None:  # fchmod: FUSE passes no handle here; edgeft never uses it
            raise FsError(errno.ENOSYS)
        with self._mutex:
            self.model.nodes[self.model.lookup(path)].mode = stat.S_IMODE(mode)
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        if path is None:  # futimens: as for fchmod
            raise FsError(errno.ENOSYS)
        with self._mutex:
            node = self.model.nodes[self.model.lookup(path)]
            node.mtime_ns = times[1] if times else node.mtime_ns
        return 0


class _Fuse(mfusepy.FUSE):
    """mfusepy's FUSE, but ``ftruncate`` reaches the operations with its file handle (mfusepy 3.1.1 drops it)."""

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        fh = fip.contents.fh if fip else None
        return self.operations.truncate(None if path is None else path.decode(self.encoding, self.errors), length, fh)


def serve(
    image: Path, mountpoint: Path, seed: int, cut_after: int, report: Path | None, spare: set[int], match: str = ""
) -> dict:
    """Mount IMAGE at MOUNTPOINT until unmounted, then cut the power and write what survived back to IMAGE."""
    model = Model.load(image)
    operations = PowerCutFs(model, cut_after, report, spare | {os.getpid()}, match)
    try:
        _Fuse(operations, str(mountpoint), foreground=True, nothreads=True, hard_remove=True, fsname="powercut")
    except RuntimeError as exc:  # ended by SIGTERM after a lazy unmount: libfuse's own unmount then fails
        print(f"powercut: the FUSE loop ended with status {exc}; cutting the power all the same", file=sys.stderr)
    counts = {**model.cut(np.random.default_rng(seed)), "ops": operations.counted}
    fresh = image.with_name(image.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    model.save_durable(fresh)
    old = image.with_name(image.name + ".old")
    image.rename(old)
    fresh.rename(image)
    shutil.rmtree(old)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cut-after", type=int, default=0, help="cut the power at this mutating operation (0: never)")
    parser.add_argument("--match", default="", help="count only operations on paths containing this")
    parser.add_argument("--report", type=Path, help="where to record the operation the power went out at")
    parser.add_argument("--spare", type=int, action="append", default=[], help="a pid whose operations never count")
    parser.add_argument("--counts", type=Path, help="write what the cut kept and lost here (JSON)")
    args = parser.parse_args()
    counts = serve(args.image, args.mountpoint, args.seed, args.cut_after, args.report, set(args.spare), args.match)
    if args.counts:
        args.counts.write_text(json.dumps(counts))


if __name__ == "__main__":
    main()
