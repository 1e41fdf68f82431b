"""The filesystem model of the power-cut simulator: what is volatile, what is durable, what a cut keeps.

Every file, directory, symbolic link and named pipe is an inode in memory. Two views of it are kept:

- the **volatile** view, what processes see: every write, truncate, create, rename and unlink applied at once;
- the **durable** view, what a power cut keeps for certain: a file's contents as of its last ``fsync``/
  ``fdatasync``, and a directory's entries as of its last ``fsync``.

Rules (the reference is ext4 ``data=ordered``; where this model is stricter it says so):

1. ``fsync(file)`` makes that file's data (writes and truncates) durable — not its name: a new file's directory
   entry needs ``fsync`` of the directory (POSIX; stricter than ext4, whose fsync commits the whole journal).
2. ``fsync(dir)`` makes every pending create, rename, unlink, mkdir and rmdir touching that directory durable, with
   every earlier pending operation they depend on (one that shares a directory or an inode with them) — not the
   directory's own entry in its parent, and nothing unrelated (stricter than ext4, which commits all of them).
3. A rename is one atomic operation on both directories (as in ext4's journal): it survives whole or not at all.
4. At a cut, un-synced metadata operations survive as a random subset that respects their order where they depend
   on each other (same directory or inode); independent ones persist in any order (stricter than ext4, whose
   journal keeps them in order). An operation whose predecessor in a chain was lost is lost too.
5. At a cut, each file keeps a random prefix of its un-synced writes and truncates, and half of the time the first
   lost write survives torn: a random prefix of its bytes (appended lines come back half there). Without ``fsync`` of the
   file, a file renamed into place can come back empty or short (stricter than ext4, whose ``auto_da_alloc``
   flushes data on a rename over an existing file; ext4 also never shows a torn block inside a write it kept).
6. Modes and modification times are kept as last set (not modelled as volatile).

Not modelled: hard links, extended attributes, ``O_DIRECT``, ``sync_file_range``, and ``sync``/``syncfs`` (not
reachable through FUSE).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = 1


class FsError(OSError):
    """A failed operation, carrying its errno."""

    def __init__(self, number: int) -> None:
        super().__init__(number, os.strerror(number))


@dataclass
class Node:
    """One inode: a file, directory, symbolic link or named pipe."""

    kind: int  # stat.S_IFREG, S_IFDIR, S_IFLNK or S_IFIFO
    mode: int  # permission bits
    data: bytearray = field(default_factory=bytearray)  # file contents as processes see them
    durable: bytes = b""  # file contents as of the last fsync
    pending: list[tuple[str, int, bytes]] = field(
        default_factory=list
    )  # un-synced ("write", off, data) | ("truncate", size, b"")
    entries: dict[str, int] = field(default_factory=dict)  # directory entries as processes see them
    target: str = ""  # symbolic link target
    mtime_ns: int = field(default_factory=time.time_ns)


@dataclass(frozen=True)
class MetaOp:
    """One namespace operation: ``ino`` leaves ``source`` (dir, name) and/or enters ``dest`` (dir, name)."""

    ino: int
    source: tuple[int, str] | None
    dest: tuple[int, str] | None

    @property
    def keys(self) -> frozenset[tuple[str, int]]:
        """What it depends on: the directories it changes and the inode it moves."""
        dirs = {("dir", place[0]) for place in (self.source, self.dest) if place}
        return frozenset(dirs | {("ino", self.ino)})


class Model:
    """A whole filesystem: volatile view, durable view, the pending operations between them."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {ROOT: Node(stat.S_IFDIR, 0o755)}
        self.durable_entries: dict[int, dict[str, int]] = {ROOT: {}}
        self.log: list[MetaOp] = []  # pending (not yet durable) namespace operations, oldest first
        self._next = ROOT + 1

    # -- loading and saving real directories ------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> Model:
        """A model whose every file and entry is durable: the contents of a real directory."""
        model = cls()

        def walk(real: Path, ino: int) -> None:
            for child in sorted(real.iterdir()):
                info = child.lstat()
                node = Node(stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), mtime_ns=info.st_mtime_ns)
                if stat.S_ISREG(info.st_mode):
                    node.data = bytearray(child.read_bytes())
                    node.durable = bytes(node.data)
                elif stat.S_ISLNK(info.st_mode):
                    node.target = os.readlink(child)
                number = model._add(node)
                model.nodes[ino].entries[child.name] = number
                model.durable_entries[ino][child.name] = number
                if stat.S_ISDIR(info.st_mode):
                    walk(child, number)

        walk(directory, ROOT)
        return model

    def save_durable(self, directory: Path) -> None:
        """Write the durable view (what a cut left) into the empty real directory ``directory``."""

        def walk(ino: int, real: Path) -> None:
            for name, number in sorted(self.durable_entries.get(ino, {}).items()):
                node, path = self.nodes[number], real / name
                if node.kind == stat.S_IFDIR:
                    path.mkdir()
                    walk(number, path)
                elif node.kind == stat.S_IFLNK:
                    path.symlink_to(node.target)
                    continue
                elif node.kind == stat.S_IFIFO:
                    os.mkfifo(path)
                else:
                    path.write_bytes(node.durable)
                path.chmod(node.mode)
                os.utime(path, ns=(node.mtime_ns, node.mtime_ns))

        walk(ROOT, directory)

    # -- the volatile view: what processes do -----------------------------------------------------------------------

    def _add(self, node: Node) -> int:
        number, self._next = self._next, self._next + 1
        self.nodes[number] = node
        if node.kind == stat.S_IFDIR:
            self.durable_entries[number] = {}
        return number

    def lookup(self, path: str) -> int:
        """The inode at ``path`` ("/a/b"), following no symbolic links."""
        ino = ROOT
        for part in path.strip("/").split("/"):
            if not part:
                continue
            node = self.nodes[ino]
            if node.kind != stat.S_IFDIR:
                raise FsError(20)  # ENOTDIR
            if part not in node.entries:
                raise FsError(2)  # ENOENT
            ino = node.entries[part]
        return ino

    def _parent(self, path: str) -> tuple[int, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self.lookup(head or "/")
        if self.nodes[parent].kind != stat.S_IFDIR:
            raise FsError(20)
        return parent, name

    def create(self, path: str, kind: int, mode: int, target: str = "") -> int:
        """A new file, directory, symbolic link or pipe at ``path`` (EEXIST if taken)."""
        parent, name = self._parent(path)
        if name in self.nodes[parent].entries:
            raise FsError(17)  # EEXIST
        ino = self._add(Node(kind, stat.S_IMODE(mode), target=target))
        self.nodes[parent].entries[name] = ino
        self.nodes[parent].mtime_ns = time.time_ns()
        self.log.append(MetaOp(ino, None, (parent, name)))
        return ino

    def remove(self, path: str, directory: bool) -> None:
        """unlink (``directory`` False) or rmdir."""
        parent, name = self._parent(path)
        ino = self.lookup(path)
        node = self.nodes[ino]
        if directory and node.kind != stat.S_IFDIR:
            raise FsError(20)
        if not directory and node.kind == stat.S_IFDIR:
            raise FsError(21)  # EISDIR
        if directory and node.entries:
            raise FsError(39)  # ENOTEMPTY
        del self.nodes[parent].entries[name]
        self.nodes[parent].mtime_ns = time.time_ns()
        self.log.append(MetaOp(ino, (parent, name), None))

    def rename(self, old: str, new: str) -> None:
        """Atomically move ``old`` to ``new``, replacing what was there (a file, or an empty directory)."""
        source_dir, source_name = self._parent(old)
        dest_dir, dest_name = self._parent(new)
        ino = self.lookup(old)
        replaced = self.nodes[dest_dir].entries.get(dest_name)
        if replaced == ino:
            return
        if replaced is not None:
            kinds = (self.nodes[ino].kind == stat.S_IFDIR, self.nodes[replaced].kind == stat.S_IFDIR)
            if kinds == (True, False):
                raise FsError(20)
            if kinds == (False, True):
                raise FsError(21)
            if self.nodes[replaced].entries:
                raise FsError(39)
        del self.nodes[source_dir].entries[source_name]
        self.nodes[dest_dir].entries[dest_name] = ino
        now = time.time_ns()
        self.nodes[source_dir].mtime_ns = self.nodes[dest_dir].mtime_ns = now
        self.log.append(MetaOp(ino, (source_dir, source_name), (dest_dir, dest_name)))

    def write(self, ino: int, offset: int, data: bytes) -> int:
        """Write into a file's volatile contents (zero-filling a gap)."""
        node = self.nodes[ino]
        if len(node.data) < offset:
            node.data.extend(bytes(offset - len(node.data)))
        node.data[offset : offset + len(data)] = data
        node.pending.append(("write", offset, bytes(data)))
        node.mtime_ns = time.time_ns()
        return len(data)

    def truncate(self, ino: int, size: int) -> None:
        """Cut or zero-extend a file's volatile contents to ``size`` bytes."""
        node = self.nodes[ino]
        del node.data[size:]
        node.data.extend(bytes(size - len(node.data)))
        node.pending.append(("truncate", size, b""))
        node.mtime_ns = time.time_ns()

    # -- durability -------------------------------------------------------------------------------------------------

    def fsync(self, ino: int) -> None:
        """fsync/fdatasync: a file's contents, or a directory's entries, become durable (rules 1 and 2)."""
        node = self.nodes[ino]
        if node.kind == stat.S_IFREG:
            node.durable, node.pending = bytes(node.data), []
            return
        if node.kind != stat.S_IFDIR:
            return
        chosen = [i for i, op in enumerate(self.log) if ("dir", ino) in op.keys]
        if not chosen:
            return
        keys = set().union(*(self.log[i].keys for i in chosen))
        durable = set(chosen)
        for i in range(max(chosen), -1, -1):  # everything earlier sharing a key with what is made durable
            if i in durable or self.log[i].keys & keys:
                durable.add(i)
                keys |= self.log[i].keys
        for i in sorted(durable):
            self._persist(self.log[i])
        self.log = [op for i, op in enumerate(self.log) if i not in durable]

    def _persist(self, op: MetaOp) -> None:
        if op.source and self.durable_entries[op.source[0]].get(op.source[1]) == op.ino:
            del self.durable_entries[op.source[0]][op.source[1]]
        if op.dest:
            self.durable_entries[op.dest[0]][op.dest[1]] = op.ino

    def cut(self, rng: np.random.Generator) -> dict[str, int]:
        """Power cut: what was not durable is lost, but for what the model lets survive (rules 4 and 5).

        Afterwards the durable view is the whole filesystem. Returns counts of what survived and what was lost.
        """
        counts = {"ops_kept": 0, "ops_lost": 0, "writes_kept": 0, "writes_lost": 0, "torn": 0}
        keep = rng.random()  # how lucky this cut is
        blocked: set[tuple[str, int]] = set()
        for op in self.log:
            if op.keys & blocked or rng.random() >= keep:
                blocked |= op.keys
                counts["ops_lost"] += 1
            else:
                self._persist(op)
                counts["ops_kept"] += 1
        self.log = []
        for node in self.nodes.values():
            if node.pending:
                self._cut_file(node, rng, counts)
        return counts

    @staticmethod
    def _cut_file(node: Node, rng: np.random.Generator, counts: dict[str, int]) -> None:
        kept = int(rng.integers(0, len(node.pending) + 1))
        contents = bytearray(node.durable)
        for number, (kind, where, data) in enumerate(node.pending):
            if number == kept:
                torn = kind == "write" and rng.random() < 0.5
                data = data[: int(rng.integers(1, len(data) + 1))] if torn and data else b""
                if not data:
                    break
                counts["torn"] += 1
            if kind == "truncate":
                del contents[where:]
                contents.extend(bytes(where - len(contents)))
            else:
                if len(contents) < where:
                    contents.extend(bytes(where - len(contents)))
                contents[where : where + len(data)] = data
            if number == kept:
                break
        counts["writes_kept"] += kept
        counts["writes_lost"] += len(node.pending) - kept
        node.durable, node.pending = bytes(contents), []
