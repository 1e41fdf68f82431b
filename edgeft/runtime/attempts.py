"""Poison entries: a durable count of each inbox entry's attempts, so a file that kills the learner is set aside.

Before an entry is read, its record in ``INBOX/attempts/`` counts one more unfinished attempt (written atomically:
temp file fsynced, renamed, folder fsynced). An attempt the watch sees end in an error takes itself back off that
count and notes the error (a write error such as a full disk as transient, anything else by its message); a stop
request takes itself back entirely. An attempt whose process died — OOM killer, SIGKILL, power cut — stays counted.
The record goes once the entry was learned, skipped or quarantined.

An entry with a record is a suspect: it waits behind every fresh entry. One whose unfinished attempts reached
``max_attempts``, or that raised the same non-transient error that many times, is poison (``poison_reason``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeft.common.atomic import fsync_directory, write_bytes_atomic

ATTEMPTS_DIR = "attempts"
MAX_ATTEMPTS = 3
KEEP_ERRORS = 10  # errors kept per entry, so also the most attempts ``max_attempts`` may allow
ERROR_CHARS = 300


@dataclass
class Attempts:
    """What happened to one entry (by name and sha256) in attempts that did not finish."""

    name: str
    sha256: str
    unfinished: int = 0  # begun and never ended: the process died while on this entry
    transient: int = 0  # ended by a write error (a full disk, a permission): never makes an entry poison
    errors: list[str] = field(default_factory=list)  # ended by another exception: its type and message

    def to_bytes(self) -> bytes:
        """The record as stored: one JSON object."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    def repeated_error(self) -> tuple[str, int]:
        """The most frequent error and how often it was raised (``("", 0)`` without errors)."""
        return Counter(self.errors).most_common(1)[0] if self.errors else ("", 0)


def poison_reason(path: Path, record: Attempts | None, max_attempts: int) -> str | None:
    """Why ``record`` makes its entry poison (one line naming ``path``), or None while it deserves another try."""
    if record is None:
        return None
    if record.unfinished >= max_attempts:
        return (
            f"{path}: the learner died {record.unfinished} times while processing it (out of memory or killed?); "
            "set aside so the entries behind it are learned"
        )
    error, times = record.repeated_error()
    if times >= max_attempts:
        return f"{path}: the learner failed {times} times on it with the same error: {error}"
    return None


class AttemptLedger:
    """The attempt records of one inbox, one small JSON file per entry in ``INBOX/attempts/``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(exist_ok=True)
        for stale in folder.glob(".*.tmp"):  # temp files of record writes a crash cut short
            stale.unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        return self.folder / f"{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}.json"

    def get(self, name: str, sha256: str | None = None) -> Attempts | None:
        """The record of entry ``name`` (only if it was about the same content, when ``sha256`` is given)."""
        record = self.read(self._path(name))
        if record is None or record.name != name or (sha256 is not None and record.sha256 != sha256):
            return None
        return record

    def records(self) -> list[Attempts]:
        """Every record, in no particular order."""
        found = (self.read(path) for path in self.folder.glob("*.json"))
        return [record for record in found if record is not None]

    @staticmethod
    def read(path: Path) -> Attempts | None:
        """The record stored in ``path``, or None if it is unreadable."""
        try:
            return Attempts(**json.loads(path.read_bytes()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, record: Attempts) -> None:
        """Write ``record`` durably (the ``attempt`` crash point comes just before its rename)."""
        record.errors = record.errors[-KEEP_ERRORS:]
        write_bytes_atomic(self._path(record.name), record.to_bytes(), point="attempt")

    def clear(self, name: str) -> None:
        """Forget entry ``name`` (it was learned, skipped or quarantined), durably."""
        self.clear_all([name])

    def clear_all(self, names: list[str]) -> None:
        """Forget the entries ``names`` (an arrival's, learned), the folder fsynced once for all of them."""
        removed = False
        for name in names:
            path = self._path(name)
            if path.exists():
                path.unlink()
                removed = True
        if removed:
            fsync_directory(self.folder)

    def prune(self, present: set[str]) -> None:
        """Forget records of entries no longer waiting (a crash came between their move and their ``clear``)."""
        for record in self.records():
            if record.name not in present:
                self.clear(record.name)

    def ordered(self, entries: list[Path]) -> list[Path]:
        """``entries`` (oldest first) with suspects — entries with a record — moved behind the fresh ones."""
        suspects = {record.name for record in self.records()}
        return sorted(entries, key=lambda entry: entry.name in suspects)

    @contextmanager
    def attempt(
        self, name: str, sha256: str, *, abandoned: type[BaseException], transient: type[BaseException]
    ) -> Iterator[Attempts]:
        """Count an attempt at ``name`` durably before the body runs; take it back if the body raises.

        ``abandoned`` (a stop request) ends the attempt as if it never began; ``transient`` errors are counted as
        such; any other exception is noted by its message. A process killed inside the body leaves it counted.
        """
        record = self.begin(name, sha256)
        try:
            yield record
        except BaseException as exc:
            self.fail(record, exc, abandoned=abandoned, transient=transient)
            raise

    def begin(self, name: str, sha256: str) -> Attempts:
        """Count one more unfinished attempt at ``name`` durably; end it with ``fail`` or ``clear``."""
        record = self.get(name, sha256) or Attempts(name, sha256)
        record.unfinished += 1
        self.save(record)
        return record

    def fail(
        self, record: Attempts, exc: BaseException, *, abandoned: type[BaseException], transient: type[BaseException]
    ) -> None:
        """End an attempt that ``exc`` cut short, as ``attempt`` says; other BaseExceptions leave it counted."""
        if isinstance(exc, abandoned):
            self.take_back(record)
        elif isinstance(exc, transient):
            record.transient += 1
            self.take_back(record)
        elif isinstance(exc, Exception):
            record.errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:ERROR_CHARS])
            self.take_back(record)

    def take_back(self, record: Attempts) -> None:
        """Take the attempt back (the entry was not tried after all, or its attempt ended in an error noted in it);
        if the record cannot be written (a full disk), forget it rather than let this attempt count as a death
        (deleting needs no space)."""
        record.unfinished -= 1
        try:
            self.save(record)
        except OSError:
            self.clear(record.name)
