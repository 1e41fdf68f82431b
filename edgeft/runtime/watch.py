"""Watch mode: learn every entry dropped into an inbox, one committed arrival each, until told to stop.

Exactly once: an entry's sha256 goes into the committed version's metadata (and from there the journal) in the
same atomic step as the head it produced; the entry moves to ``done/`` only afterwards. After a crash, an entry
still in the inbox whose sha256 the journal holds is moved to ``done/`` without being learned again.
SIGTERM/SIGINT abandon the arrival in progress (nothing of it is committed; it stays in the inbox) and stop.

No entry can stop the queue: each arrival is read within the memory budget and sample cap (``EntryPolicy``; too
much is refused up front and quarantined), every attempt is counted durably before the entry is read, entries tried
before wait behind fresh ones, and one that killed the learner or failed the same way ``max_attempts`` times is
quarantined as poison (edgeft/runtime/attempts.py).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeft.common.budget import MemoryBudget, detect_budget
from edgeft.common.faults import crash_point, crash_reading
from edgeft.data.limits import MAX_ARRIVAL_SAMPLES, ArrivalLimits
from edgeft.data.readers import stream_path
from edgeft.errors import DataError
from edgeft.runtime.adapter import Adapter, LearnResult
from edgeft.runtime.attempts import MAX_ATTEMPTS, poison_reason
from edgeft.runtime.inbox import Inbox, fingerprint
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.pipeline import learn_embedded
from edgeft.runtime.streaming import ArrivalEmbedder

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


@dataclass(frozen=True)
class EntryPolicy:
    """What one entry may cost (memory budget, samples) and how many attempts it gets before it is poison."""

    budget: MemoryBudget = field(default_factory=detect_budget)
    max_samples: int | None = MAX_ARRIVAL_SAMPLES
    max_attempts: int = MAX_ATTEMPTS

    def limits(self) -> ArrivalLimits:
        """Fresh limits for one arrival, from what the process holds now."""
        return ArrivalLimits(self.budget, self.max_samples)


@dataclass
class WatchSummary:
    """What a watch run did."""

    learned: int = 0
    refused: int = 0
    skipped: int = 0
    quarantined: int = 0
    poisoned: int = 0
    pending_samples: int = 0
    errors: int = 0
    versions: list[int] = field(default_factory=list)


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
    options: LearnOptions,
    stop: StopFlag,
    policy: EntryPolicy | None = None,
) -> LearnResult | None:
    """Learn one inbox entry (or skip, quarantine or park it); DataError never escapes, other errors do.

    The attempt is counted in the inbox's attempt records before the entry is read; an entry that is poison by
    those records is quarantined without being read again.
    """
    policy = policy or EntryPolicy()
    try:
        digest = _fingerprint(entry)
        if digest in consumed:
            inbox.done(entry)
            inbox.attempts.clear(entry.name)
            summary.skipped += 1
            emit("skipped", entry=entry.name, reason=f"already learned in version {consumed[digest]}")
            return None
        if _quarantine_poison(inbox, entry, digest, summary, emit, policy.max_attempts):
            return None
        with inbox.attempts.attempt(entry.name, digest, abandoned=Interrupted, transient=OSError):
            crash_reading(entry.name)
            result = _learn(adapter, inbox, entry, digest, summary, emit, options, stop, policy.limits())
    except DataError as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the file name or message holds
        if entry.exists() or entry.is_symlink():
            inbox.quarantine(entry, reason)
        inbox.attempts.clear(entry.name)
        summary.quarantined += 1
        emit("quarantined", entry=entry.name, reason=reason)
        return None
    if result is not None:
        consumed[digest] = result.version  # before the move: if moving fails, a retry skips the entry
    inbox.done(entry)
    inbox.attempts.clear(entry.name)
    if result is None:
        return None
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


def _quarantine_poison(
    inbox: Inbox, entry: Path, digest: str, summary: WatchSummary, emit: Event, max_attempts: int
) -> bool:
    """Quarantine ``entry`` if its attempt record makes it poison; whether it did."""
    record = inbox.attempts.get(entry.name, digest)
    reason = poison_reason(entry, record, max_attempts)
    if record is None or reason is None:
        return False
    inbox.quarantine(entry, reason, record.to_bytes())
    inbox.attempts.clear(entry.name)
    summary.quarantined += 1
    summary.poisoned += 1
    emit(
        "quarantined",
        entry=entry.name,
        reason=reason,
        poison=True,
        died=record.unfinished,
        errors=len(record.errors),
    )
    return True


def _learn(
    adapter: Adapter,
    inbox: Inbox,
    entry: Path,
    digest: str,
    summary: WatchSummary,
    emit: Event,
    options: LearnOptions,
    stop: StopFlag,
    limits: ArrivalLimits,
) -> LearnResult | None:
    """Read and learn an entry whose attempt is counted; None when none of its labels fit (all parked).

    The entry is streamed: read, checked and embedded batch by batch; it is learned (and its unfit samples parked)
    only once all of it was read, so an entry bad anywhere is quarantined whole.
    """
    embedded = ArrivalEmbedder(adapter, str(entry), limits)
    received = embedded.add(stream_path(entry, adapter.bundle.manifest, need_labels=True, limits=limits), stop.check)

    def park(x: np.ndarray, y: np.ndarray) -> Path:
        parked = inbox.keep_pending(entry, x, y)
        summary.pending_samples += embedded.unfit
        emit(
            "pending",
            entry=entry.name,
            samples=embedded.unfit,
            labels=embedded.overflow,
            path=str(parked),
            reason=f"labels {embedded.overflow[:5]} do not fit the head's {adapter.capacity} outputs",
        )
        return parked

    inputs = [{"name": entry.name, "sha256": digest, "samples": received}]
    return learn_embedded(adapter, embedded, inputs, options, park, stop.check).result


def watch(
    adapter: Adapter,
    inbox: Inbox,
    *,
    emit: Event,
    stop: StopFlag,
    poll_seconds: float = 1.0,
    once: bool = False,
    options: LearnOptions | None = None,
    on_idle: Callable[[], None] | None = None,
    policy: EntryPolicy | None = None,
) -> WatchSummary:
    """Learn inbox entries as they come until ``stop`` is set (or, with ``once``, until the inbox is empty).

    Write errors (a full disk, say) do not stop the loop: nothing was committed, the entry stays in the inbox and
    is retried with growing back-off, behind the entries that were not tried yet. Any other error is logged and
    the next entry taken; an entry failing the same way ``policy.max_attempts`` times is quarantined.
    """
    policy = policy or EntryPolicy()
    summary = WatchSummary()
    consumed = adapter.consumed_inputs()
    inbox.attempts.prune({entry.name for entry in inbox.ready()})
    emit("watching", inbox=str(inbox.root), version=adapter.version, classes=len(adapter.classes))
    backoff = poll_seconds
    while not stop.requested:
        failed = False
        for entry in inbox.attempts.ordered(inbox.ready()):
            if stop.requested:
                break
            try:
                learn_entry(adapter, inbox, entry, consumed, summary, emit, options or LearnOptions(), stop, policy)
            except Interrupted:
                emit("interrupted", entry=entry.name, reason="stop requested; nothing of this entry was committed")
                break
            except OSError as exc:
                summary.errors += 1
                failed = True
                emit("error", entry=entry.name, reason=f"{exc}; will retry in {backoff:.0f} s")
                break
            except Exception as exc:  # a bug or a resource the entry exhausts (MemoryError): counted against it
                summary.errors += 1
                failed = True
                emit("error", entry=entry.name, reason=f"{type(exc).__name__}: {exc}; the next entry goes first")
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
