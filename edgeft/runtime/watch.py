"""Watch mode: learn every entry dropped into an inbox, one committed arrival each, until told to stop.

Exactly once: an entry's sha256 goes into the committed version's metadata (and from there the journal) in the
same atomic step as the head it produced; the entry moves to ``done/`` only afterwards. After a crash, an entry
still in the inbox whose sha256 the journal holds is moved to ``done/`` without being learned again.
SIGTERM/SIGINT abandon the arrival in progress (nothing of it is committed; it stays in the inbox) and stop.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import DataError
from edgeft.runtime.adapter import Adapter, LearnResult
from edgeft.runtime.faults import crash_point
from edgeft.runtime.inbox import Inbox, fingerprint
from edgeft.runtime.sources import concatenated, read_path

Event = Callable[..., None]
MAX_BACKOFF_SECONDS = 60.0


class Interrupted(Exception):
    """A stop was requested while an arrival was being learned."""


@dataclass
class StopFlag:
    """Set by SIGTERM/SIGINT; checked between arrivals and at every progress tick inside one."""

    requested: bool = False
    signal_name: str = ""

    def install(self) -> None:
        """Route SIGTERM and SIGINT to this flag."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def check(self, _done: int = 0) -> None:
        """A progress callback: raise Interrupted once a stop was requested."""
        crash_point("tick")
        if self.requested:
            raise Interrupted(self.signal_name)


@dataclass
class WatchSummary:
    """What a watch run did."""

    learned: int = 0
    refused: int = 0
    skipped: int = 0
    quarantined: int = 0
    pending_samples: int = 0
    errors: int = 0
    versions: list[int] = field(default_factory=list)


def _read_entry(entry: Path, adapter: Adapter) -> tuple[np.ndarray, np.ndarray]:
    """An entry's inputs (checked against the bundle) and labels; every problem is a DataError naming a file."""
    try:
        samples = read_path(entry, adapter.bundle.manifest, need_labels=True)
    except OSError as exc:
        raise DataError(f"{entry}: cannot be read ({exc.strerror or exc})") from None
    x, y = concatenated(samples, str(entry))
    return adapter.check_inputs(x, str(entry)), y


def _fingerprint(entry: Path) -> str:
    """The entry's sha256; an unreadable entry is a DataError (quarantined, not retried forever)."""
    try:
        return fingerprint(entry)
    except OSError as exc:
        raise DataError(f"{entry}: cannot be read ({exc.strerror or exc})") from None


def learn_entry(
    adapter: Adapter,
    inbox: Inbox,
    entry: Path,
    consumed: dict[str, int],
    summary: WatchSummary,
    emit: Event,
    learn_options: dict[str, Any],
    stop: StopFlag,
) -> LearnResult | None:
    """Learn one inbox entry (or skip, quarantine or park it); DataError never escapes, other errors do."""
    try:
        digest = _fingerprint(entry)
        if digest in consumed:
            inbox.done(entry)
            summary.skipped += 1
            emit("skipped", entry=entry.name, reason=f"already learned in version {consumed[digest]}")
            return None
        x, y = _read_entry(entry, adapter)
        encoded = adapter.encode(y, str(entry))
        if not encoded.fits.all():
            parked = inbox.keep_pending(entry, x[~encoded.fits], y[~encoded.fits])
            summary.pending_samples += int((~encoded.fits).sum())
            emit(
                "pending",
                entry=entry.name,
                samples=int((~encoded.fits).sum()),
                labels=encoded.overflow,
                path=str(parked),
                reason=f"labels {encoded.overflow[:5]} do not fit the head's {adapter.capacity} outputs",
            )
        if not encoded.fits.any():
            inbox.done(entry)
            return None
        inputs = [{"name": entry.name, "sha256": digest, "samples": int(len(x))}]
        result = adapter.learn(
            x[encoded.fits], y[encoded.fits], origin=str(entry), inputs=inputs, progress=stop.check, **learn_options
        )
    except DataError as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the file name or message holds
        if entry.exists() or entry.is_symlink():
            inbox.quarantine(entry, reason)
        summary.quarantined += 1
        emit("quarantined", entry=entry.name, reason=reason)
        return None
    consumed[digest] = result.version  # before the move: if moving fails, a retry skips the entry
    inbox.done(entry)
    summary.versions.append(result.version)
    if result.promoted:
        summary.learned += 1
    else:
        summary.refused += 1
    emit(
        "learned" if result.promoted else "refused",
        entry=entry.name,
        samples=result.samples,
        version=result.version,
        promoted=result.promoted,
        reason=result.reason,
        prequential_accuracy=result.prequential_accuracy,
        holdout_accuracy=result.holdout_accuracy,
        new_classes=result.new_classes,
        loss=result.loss,
    )
    return result


def watch(
    adapter: Adapter,
    inbox: Inbox,
    *,
    emit: Event,
    stop: StopFlag,
    poll_seconds: float = 1.0,
    once: bool = False,
    learn_options: dict[str, Any] | None = None,
    on_idle: Callable[[], None] | None = None,
) -> WatchSummary:
    """Learn inbox entries as they come until ``stop`` is set (or, with ``once``, until the inbox is empty).

    Write errors (a full disk, say) do not stop the loop: nothing was committed, the entry stays in the inbox and
    is retried with growing back-off.
    """
    summary = WatchSummary()
    consumed = adapter.consumed_inputs()
    emit("watching", inbox=str(inbox.root), version=adapter.version, classes=len(adapter.classes))
    backoff = poll_seconds
    while not stop.requested:
        failed = False
        for entry in inbox.ready():
            if stop.requested:
                break
            try:
                learn_entry(adapter, inbox, entry, consumed, summary, emit, learn_options or {}, stop)
            except Interrupted:
                emit("interrupted", entry=entry.name, reason="stop requested; nothing of this entry was committed")
                break
            except OSError as exc:
                summary.errors += 1
                failed = True
                emit("error", entry=entry.name, reason=f"{exc}; will retry in {backoff:.0f} s")
                break
        if once:
            break
        if on_idle:
            on_idle()
        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS) if failed else poll_seconds
        _sleep(backoff, stop)
    emit("stopped", signal=stop.signal_name or None, version=adapter.version)
    return summary


def _sleep(seconds: float, stop: StopFlag) -> None:
    deadline = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(min(0.1, deadline - time.monotonic()))
