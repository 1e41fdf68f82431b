"""Watch mode as a service: events go to the log, to systemd (status, watchdog) and to the metrics textfile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeft.runtime.adapter import Adapter
from edgeft.runtime.inbox import Inbox
from edgeft.runtime.int8_check import describe as describe_int8
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.watch import EntryPolicy, StopFlag, WatchSummary, watch
from edgeft.service.logs import EventLog
from edgeft.service.metrics import write_textfile
from edgeft.service.notify import Notifier

UPDATE_EVENTS = frozenset({"learned", "refused", "skipped", "quarantined", "pending"})
VERSION_EVENTS = frozenset({"learned", "refused"})  # one per entry of the arrival that committed the version


class WatchdogStop(StopFlag):
    """A stop flag whose progress checks also feed systemd's watchdog, so a long arrival is not taken for a hang."""

    def __init__(self, notifier: Notifier) -> None:
        super().__init__()
        self._notifier = notifier

    def check(self, _done: int = 0) -> None:
        self._notifier.watchdog()
        super().check(_done)


def log_start(log: EventLog, adapter: Adapter, entries: EntryPolicy) -> None:
    """The ``started`` event with what this watch runs with; for an int8 bundle, the self-check's verdict on this CPU
    (``int8_checked``, or ``int8_fallback`` as a warning)."""
    log(
        "started",
        bundle=str(adapter.bundle.path),
        state=str(adapter.store.root),
        provider=adapter.placement.name,
        guard=adapter.policy.__dict__,
        memory_budget=entries.budget.describe(),
        max_arrival_samples=entries.max_samples,
        max_attempts=entries.max_attempts,
        coalesce=entries.coalesce,
        backbone=adapter.backbone_path.name,
        int8_check=adapter.int8_check,
    )
    if adapter.int8_check is not None:
        event = "int8_checked" if adapter.int8_check["ok"] else "int8_fallback"
        log(event, reason=describe_int8(adapter.int8_check), **adapter.int8_check)


def run_watch(
    adapter: Adapter,
    inbox_dir: Path,
    *,
    log: EventLog,
    notifier: Notifier,
    metrics_file: Path | None,
    once: bool,
    poll_seconds: float,
    options: LearnOptions,
    policy: EntryPolicy | None = None,
) -> WatchSummary:
    """Run the watch loop until SIGTERM/SIGINT (or, with ``once``, until the inbox is empty)."""
    inbox = Inbox(inbox_dir)
    stop = WatchdogStop(notifier)
    stop.install()

    def publish_metrics() -> None:
        if metrics_file is not None:
            write_textfile(metrics_file, adapter.store.root, inbox.root)

    published_version: int | None = None

    def emit(event: str, **fields: Any) -> None:
        nonlocal published_version
        log(event, **fields)
        if event == "watching":
            publish_metrics()
            notifier.ready(f"watching {inbox.root}; version {adapter.version}")
        elif event in UPDATE_EVENTS:
            # once per version: the entries of a coalesced arrival were all moved before its first event
            if event not in VERSION_EVENTS or fields.get("version") != published_version:
                publish_metrics()
            if event in VERSION_EVENTS:
                published_version = fields.get("version")
            notifier.status(f"{event} {fields.get('entry', '')}; version {adapter.version}")
        elif event in ("interrupted", "stopped"):
            notifier.stopping(f"stopping; version {adapter.version}")
            return
        notifier.watchdog()

    return watch(
        adapter,
        inbox,
        emit=emit,
        stop=stop,
        poll_seconds=poll_seconds,
        once=once,
        options=options,
        on_idle=notifier.watchdog,
        policy=policy,
    )
