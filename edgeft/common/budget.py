"""The memory budget: how much memory this process may use, and how much of it one arrival may take.

The budget is, in this order: an explicit one (``--memory-budget``, the config file or
``EDGEFT_ADAPT_MEMORY_BUDGET``); else the tightest limit the system puts on this process — its cgroup's memory
limit (cgroup v2 ``memory.max``, what systemd's ``MemoryMax=`` sets, or v1 ``memory.limit_in_bytes``, the smallest
up the hierarchy) and its address-space limit (``RLIMIT_AS``, what ``prlimit --as`` sets); else half of
``MemAvailable``. An arrival may use what is left of the budget after what the process already holds and a reserve
for training and committing (``arrival_bytes``).
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path

RESERVE = 0.1  # share of the budget kept for training, the guard and the commit after an arrival was read
AVAILABLE_SHARE = 0.5  # without a limit, the share of MemAvailable edgeft allows itself
UNLIMITED = 1 << 62  # cgroup v1 reports "no limit" as a number near 2**63
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``1500000000``, ``800M``, ``1.5G`` or ``1.5GiB`` (K, M, G, T are powers of 1024)."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"'{text}' is not a size (examples: 1500M, 1.5G, 2000000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_size(size: int) -> str:
    """``1.5 GiB``, ``800.0 MiB``: sizes in messages."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


@dataclass(frozen=True)
class MemoryBudget:
    """How many bytes this process may use, where that figure came from, and whether it counts virtual memory."""

    bytes: int
    source: str
    virtual: bool = False  # RLIMIT_AS limits the address space (VmSize), every other source resident memory

    def in_use(self) -> int:
        """What this process holds now, counted the way the budget's limit counts it."""
        return _status_bytes("VmSize" if self.virtual else "VmRSS")

    def arrival_bytes(self) -> int:
        """What reading, checking and embedding one arrival may take now (never negative)."""
        return max(0, int(self.bytes * (1 - RESERVE)) - self.in_use())

    def describe(self) -> str:
        """``1.5 GiB (cgroup memory.max)``."""
        return f"{format_size(self.bytes)} ({self.source})"


def _status_bytes(field: str) -> int:
    """A ``kB`` figure of /proc/self/status in bytes (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _read_limit(path: Path) -> int | None:
    """A cgroup limit file's value; None for ``max``, a v1 "unlimited" figure, or a missing file."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) >= UNLIMITED:
        return None
    return int(text)


def cgroup_limit(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The smallest memory limit of this process's cgroup and its ancestors (v2 or v1), or None."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and not controllers:  # cgroup v2 (unified), mounted at root or root/unified
            for mount in (root, root / "unified"):
                candidates += [d / "memory.max" for d in _ancestors(mount, relative)]
        elif "memory" in controllers.split(","):
            candidates += [d / "memory.limit_in_bytes" for d in _ancestors(root / "memory", relative)]
    limits = [limit for limit in map(_read_limit, candidates) if limit is not None]
    return min(limits, default=None)


def _ancestors(mount: Path, relative: str) -> list[Path]:
    """``mount/a/b``, ``mount/a``, ``mount`` for the cgroup ``/a/b``."""
    parts = [p for p in relative.split("/") if p]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def address_space_limit() -> int | None:
    """The soft RLIMIT_AS (``prlimit --as``), or None when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def detect_budget(explicit: str | None = None) -> MemoryBudget:
    """The budget: ``explicit`` (a size, or ``auto``), else the cgroup or address-space limit, else MemAvailable."""
    if explicit and explicit.strip().lower() != "auto":
        return MemoryBudget(parse_size(explicit), "--memory-budget")
    found = []
    cgroup = cgroup_limit()
    if cgroup is not None:
        found.append(MemoryBudget(cgroup, "cgroup memory limit"))
    address_space = address_space_limit()
    if address_space is not None:
        found.append(MemoryBudget(address_space, "address-space limit RLIMIT_AS", virtual=True))
    if found:
        return min(found, key=lambda budget: budget.bytes - budget.in_use())
    available = _meminfo_available()
    return MemoryBudget(int(available * AVAILABLE_SHARE) + _status_bytes("VmRSS"), "half of MemAvailable")


def _meminfo_available() -> int:
    """MemAvailable of /proc/meminfo in bytes; the physical memory where that is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
