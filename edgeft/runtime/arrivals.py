"""One-shot learning: the files given on the command line (or JSON lines on stdin) as one arrival.

Inputs the journal already holds (same sha256) are skipped unless ``relearn`` is set; samples whose labels do not
fit the head are written to ``STATE/pending/`` and reported, the rest is learned. Every input is streamed (read,
checked and embedded a batch at a time; edgeft/runtime/streaming.py); stdin is spooled to an unnamed file in the
state directory first, hashed on the way, so it can be skipped before it is embedded; the spool stops with a DataError
before it would leave the state's filesystem too full for commits (spool_allowance).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edgeft.common.budget import format_size
from edgeft.data.limits import ArrivalLimits
from edgeft.data.readers import Samples, json_line_batches, stream_path
from edgeft.errors import DataError
from edgeft.runtime.adapter import Adapter, LearnResult, Progress
from edgeft.runtime.consumed import ConsumedInputs
from edgeft.runtime.inbox import PENDING_DIR, fingerprint, write_pending
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.pipeline import learn_embedded
from edgeft.runtime.streaming import ArrivalEmbedder

STDIN = "-"
SPOOL_CHUNK = 1 << 20
SPOOL_RESERVE_BYTES = 64 << 20  # stdin is spooled only while the state's filesystem keeps this much free ...
SPOOL_RESERVE_SHARE = 0.05  # ... or this share of its size, whichever is more


@dataclass
class Arrival:
    """The embedded samples of the given inputs (None when every input was skipped), with each input's journal
    record."""

    embedded: ArrivalEmbedder | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OneShotResult:
    """The learn result (None if nothing was new), skipped inputs, and samples parked as pending."""

    result: LearnResult | None
    skipped: list[str]
    pending: int
    pending_path: Path | None
    overflow: list[str]


def spool_allowance(folder: Path) -> int:
    """Bytes of stdin that may be spooled in ``folder``: its filesystem's free space less SPOOL_RESERVE_BYTES or
    SPOOL_RESERVE_SHARE of its size, whichever is more, so that commits to the state still find room."""
    usage = shutil.disk_usage(folder)
    return max(0, usage.free - max(SPOOL_RESERVE_BYTES, int(usage.total * SPOOL_RESERVE_SHARE)))


def spool(stdin: IO[bytes] | None, spool: IO[bytes], allowance: int) -> str:
    """Copy ``stdin`` to ``spool`` a chunk at a time and rewind it; the sha256 of what was copied. DataError once
    more than ``allowance`` bytes came (spool_allowance): nothing of it is learned."""
    digest = hashlib.sha256()
    copied = 0
    while stdin is not None and (chunk := stdin.read(SPOOL_CHUNK)):
        copied += len(chunk)
        if copied > allowance:
            raise DataError(
                f"stdin: more than {format_size(allowance)}, as much as edgeft spools to disk while leaving room "
                "for the state's commits; write the data to files and pass them with --data, or free disk space"
            )
        digest.update(chunk)
        spool.write(chunk)
    spool.seek(0)
    return digest.hexdigest()


def read_arrival(
    adapter: Adapter,
    paths: list[str],
    stdin: io.BufferedReader | None,
    relearn: bool,
    limits: ArrivalLimits | None = None,
    progress: Progress | None = None,
) -> Arrival:
    """Read and embed every input (``-`` is JSON lines on stdin), skipping those already consumed unless ``relearn``.

    ``limits`` bound the whole arrival (default: the detected memory budget, no sample cap).
    """
    limits = limits or ArrivalLimits.for_reading()
    consumed = ConsumedInputs() if relearn else adapter.consumed_inputs()
    arrival = Arrival()
    manifest = adapter.bundle.manifest

    def embed(name: str, digest: str, batches: Callable[[], Iterator[Samples]]) -> None:
        if digest in consumed:
            arrival.skipped.append(f"{name} (already learned in version {consumed[digest]})")
            return
        arrival.embedded = arrival.embedded or ArrivalEmbedder(adapter, ", ".join(paths), limits)
        received = arrival.embedded.add(batches(), progress)
        arrival.inputs.append({"name": name, "sha256": digest, "samples": received})

    for name in paths:
        if name != STDIN:
            embed(name, fingerprint(Path(name)), lambda n=name: stream_path(n, manifest, True, limits))
            continue
        with tempfile.TemporaryFile(dir=adapter.store.root) as spooled:  # unnamed: nothing left behind
            digest = spool(stdin, spooled, spool_allowance(adapter.store.root))
            lines = io.TextIOWrapper(spooled, encoding="utf-8", errors="replace")
            embed(name, digest, lambda t=lines: json_line_batches(t, "stdin", manifest, True, limits, manifest))
    if arrival.embedded is not None:
        arrival.embedded.origin = ", ".join(i["name"] for i in arrival.inputs)
    return arrival


def learn_arrival(
    adapter: Adapter, arrival: Arrival, options: LearnOptions, progress: Progress | None
) -> OneShotResult:
    """Learn an arrival's samples whose labels fit; park the others in ``STATE/pending/``."""
    embedded = arrival.embedded
    if embedded is None:
        return OneShotResult(None, arrival.skipped, 0, None, [])
    pending_dir, name = adapter.store.root / PENDING_DIR, hashlib.sha256(embedded.origin.encode()).hexdigest()[:16]
    learned = learn_embedded(
        adapter, embedded, arrival.inputs, options, lambda x, y: write_pending(pending_dir, name, x, y), progress
    )
    return OneShotResult(learned.result, arrival.skipped, embedded.unfit, learned.parked, embedded.overflow)
