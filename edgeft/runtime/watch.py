"""Watch mode: learn every entry dropped into an inbox until told to stop; entries that wait together are coalesced
into one arrival (one training pass, one guard decision, one committed version; edgeft/runtime/coalesce.py).

Exactly once: the sha256 of every entry of an arrival goes into the committed version's metadata (and from there
the journal) in the same atomic step as the head it produced; the entries move to ``done/`` only afterwards. After
a crash, an entry still in the inbox whose sha256 the journal holds is moved to ``done/`` without being learned
again; one whose arrival was not committed is learned again (alone: it is a suspect now).
SIGTERM/SIGINT abandon the arrival in progress (nothing of it is committed; it stays in the inbox) and stop.

No entry can stop the queue: each entry is read within the memory budget and sample cap (``EntryPolicy``; too
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

from edgeft.common.budget import MemoryBudget, detect_budget
from edgeft.common.faults import crash_point, crash_reading
from edgeft.data.limits import COALESCE_SAMPLES, MAX_ARRIVAL_SAMPLES, ArrivalLimits, OverBudget
from edgeft.data.readers import stream_path
from edgeft.errors import DataError
from edgeft.runtime.adapter import Adapter, LearnResult
from edgeft.runtime.attempts import MAX_ATTEMPTS, poison_reason
from edgeft.runtime.coalesce import Coalesced, Member
from edgeft.runtime.consumed import ConsumedInputs
from edgeft.runtime.inbox import Inbox, fingerprint
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.pipeline import learn_fitting
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
    """What one entry may cost (memory budget, samples), how many attempts it gets before it is poison, and up to
    how many samples entries waiting together are coalesced into one arrival (0: none)."""

    budget: MemoryBudget = field(default_factory=detect_budget)
    max_samples: int | None = MAX_ARRIVAL_SAMPLES
    max_attempts: int = MAX_ATTEMPTS
    coalesce: int = COALESCE_SAMPLES

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


def learn_next(
    adapter: Adapter,
    inbox: Inbox,
    queue: list[Path],
    consumed: ConsumedInputs,
    summary: WatchSummary,
    emit: Event,
    options: LearnOptions,
    stop: StopFlag,
    policy: EntryPolicy | None = None,
) -> LearnResult | None:
    """Take entries off the front of ``queue`` and learn them as one arrival; a bad entry is quarantined (only one
    that the learner refuses inside a coalesced arrival escapes, as any other error does).

    Entries already learned are skipped, poison and bad ones quarantined, each on its own; the others join the
    arrival (edgeft/runtime/coalesce.py) while it holds fewer than ``policy.coalesce`` samples. A suspect (an entry
    tried before) is learned alone. Each entry's attempt is counted in the inbox's attempt records before it is
    read and stays counted until the arrival is committed; an error while the arrival is read or learned ends the
    attempts of all its entries (a stop request takes them back) and leaves them in the inbox, where each is
    tried alone next time. An entry left in the queue waits for the next call.
    """
    policy = policy or EntryPolicy()
    group = Coalesced(adapter, policy.coalesce)
    try:
        while queue and not group.full and not stop.requested:
            if not _gather(adapter, inbox, queue, group, consumed, summary, emit, stop, policy):
                break
        if not group.members:
            return None
        try:
            result = learn_fitting(
                adapter, group.features(), group.labels(), group.origin, group.inputs(), options, stop.check
            )
        except DataError as exc:
            if len(group.members) > 1:
                raise  # whose? each entry is tried alone next time
            group.open.clear()
            _quarantine(inbox, group.members[0].entry, exc, summary, emit)
            return None
    except BaseException as exc:
        for record in group.open:
            inbox.attempts.fail(record, exc, abandoned=Interrupted, transient=OSError)
        raise
    _finish(inbox, group, result, consumed, summary, emit)
    return result


def _gather(
    adapter: Adapter,
    inbox: Inbox,
    queue: list[Path],
    group: Coalesced,
    consumed: ConsumedInputs,
    summary: WatchSummary,
    emit: Event,
    stop: StopFlag,
    policy: EntryPolicy,
) -> bool:
    """Skip, quarantine or read ``queue[0]`` (taking it off the queue) or leave it for the next arrival; whether
    another entry may join the arrival."""
    entry = queue.pop(0)
    attempt = None
    try:
        digest = _fingerprint(entry)
        record = inbox.attempts.get(entry.name, digest)
        if group.holds(digest) or (record is not None and group.members and digest not in consumed):
            queue.insert(0, entry)  # a copy of a member (skipped once this arrival is committed), or a suspect
            return False
        if digest in consumed:
            inbox.done(entry)
            inbox.attempts.clear(entry.name)
            summary.skipped += 1
            emit("skipped", entry=entry.name, reason=f"already learned in version {consumed[digest]}")
            return True
        if _quarantine_poison(inbox, entry, digest, summary, emit, policy.max_attempts):
            return True
        attempt = inbox.attempts.begin(entry.name, digest)
        group.open.append(attempt)
        crash_reading(entry.name)
        embedded = _read(adapter, inbox, entry, group.classes, summary, emit, stop, policy.limits())
        group.members.append(Member(entry, digest, embedded))
        return record is None  # a suspect is learned alone
    except DataError as exc:
        if attempt is not None:
            group.open.remove(attempt)
        if isinstance(exc, OverBudget) and group.members and attempt is not None:
            inbox.attempts.take_back(attempt)
            queue.insert(0, entry)  # it may fit once the others' features are gone: tried alone next
            return False
        _quarantine(inbox, entry, exc, summary, emit)
        return True


def _quarantine(inbox: Inbox, entry: Path, exc: DataError, summary: WatchSummary, emit: Event) -> None:
    """Move a bad entry to ``quarantine/`` with the error as its reason and forget its attempts."""
    reason = " ".join(str(exc).split())  # one line, whatever the file name or message holds
    if entry.exists() or entry.is_symlink():
        inbox.quarantine(entry, reason)
    inbox.attempts.clear(entry.name)
    summary.quarantined += 1
    emit("quarantined", entry=entry.name, reason=reason)


def _finish(
    inbox: Inbox,
    group: Coalesced,
    result: LearnResult | None,
    consumed: ConsumedInputs,
    summary: WatchSummary,
    emit: Event,
) -> None:
    """After the commit: record the members as consumed, move them to ``done/``, forget their attempts, say so."""
    if result is not None:  # before the moves: if moving fails, a retry skips the entries
        consumed.update({member.sha256: result.version for member in group.members})
    inbox.done_all([member.entry for member in group.members])
    inbox.attempts.clear_all(group.names)
    if result is None:
        return
    summary.versions.append(result.version)
    for member in group.members:
        if result.promoted:
            summary.learned += 1
        else:
            summary.refused += 1
        emit(
            "learned" if result.promoted else "refused",
            entry=member.entry.name,
            samples=member.embedded.received,
            version=result.version,
            promoted=result.promoted,
            reason=result.reason,
            prequential_accuracy=result.prequential_accuracy,
            holdout_accuracy=result.holdout_accuracy,
            new_classes=result.new_classes,
            loss=result.loss,
            **(
                {"arrival_entries": len(group.members), "arrival_samples": result.samples}
                if len(group.members) > 1
                else {}
            ),
        )


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


def _read(
    adapter: Adapter,
    inbox: Inbox,
    entry: Path,
    classes: list[str],
    summary: WatchSummary,
    emit: Event,
    stop: StopFlag,
    limits: ArrivalLimits,
) -> ArrivalEmbedder:
    """Read and embed an entry whose attempt is counted, its new label names continuing ``classes``; park its
    samples whose labels do not fit.

    The entry is streamed: read, checked and embedded batch by batch; its unfit samples are parked only once all
    of it was read, so an entry bad anywhere is quarantined whole with nothing of it learned or parked.
    """
    embedded = ArrivalEmbedder(adapter, str(entry), limits, classes)
    embedded.add(stream_path(entry, adapter.bundle.manifest, need_labels=True, limits=limits), stop.check)
    if embedded.unfit:
        parked = inbox.keep_pending(entry, *embedded.unfit_samples())
        summary.pending_samples += embedded.unfit
        emit(
            "pending",
            entry=entry.name,
            samples=embedded.unfit,
            labels=embedded.overflow,
            path=str(parked),
            reason=f"labels {embedded.overflow[:5]} do not fit the head's {adapter.capacity} outputs",
        )
    return embedded


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
    """Learn inbox entries as they come, those waiting together coalesced into arrivals of up to about
    ``policy.coalesce`` samples (``learn_next``), until ``stop`` is set (or, with ``once``, the inbox is empty).

    Write errors (a full disk, say) do not stop the loop: nothing was committed, the arrival's entries stay in the
    inbox and are retried with growing back-off, behind the entries that were not tried yet. Any other error is
    logged and the next entry taken; an entry failing the same way ``policy.max_attempts`` times is quarantined.
    """
    policy = policy or EntryPolicy()
    summary = WatchSummary()
    consumed = adapter.consumed_inputs()
    inbox.attempts.prune({entry.name for entry in inbox.ready()})
    emit("watching", inbox=str(inbox.root), version=adapter.version, classes=len(adapter.classes))
    backoff = poll_seconds
    while not stop.requested:
        failed = False
        queue = inbox.attempts.ordered(inbox.ready())
        while queue and not stop.requested:
            taken = list(queue)
            try:
                learn_next(adapter, inbox, queue, consumed, summary, emit, options or LearnOptions(), stop, policy)
            except Interrupted:
                emit("interrupted", entry=_names(taken, queue), reason="stop requested; nothing of it was committed")
                break
            except OSError as exc:
                summary.errors += 1
                failed = True
                emit("error", entry=_names(taken, queue), reason=f"{exc}; will retry in {backoff:.0f} s")
                break
            except Exception as exc:  # a bug or a resource the entry exhausts (MemoryError): counted against it
                summary.errors += 1
                failed = True
                emit(
                    "error",
                    entry=_names(taken, queue),
                    reason=f"{type(exc).__name__}: {exc}; the next entry goes first",
                )
        if once:
            break
        if on_idle:
            on_idle()
        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS) if failed else poll_seconds
        _sleep(backoff, stop)
    emit("stopped", signal=stop.signal_name or None, version=adapter.version)
    return summary


def _names(taken: list[Path], left: list[Path]) -> str:
    """The names of the entries an arrival that failed had taken off the queue."""
    return ", ".join(entry.name for entry in taken[: len(taken) - len(left)])


def _sleep(seconds: float, stop: StopFlag) -> None:
    deadline = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(min(0.1, deadline - time.monotonic()))
