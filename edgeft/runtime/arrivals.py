"""One-shot learning: the files given on the command line (or JSON lines on stdin) as one arrival.

Inputs the journal already holds (same sha256) are skipped unless ``relearn`` is set; samples whose labels do not
fit the head are written to ``STATE/pending/`` and reported, the rest is learned.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft.runtime.adapter import Adapter, LearnResult, Progress
from edgeft.runtime.inbox import PENDING_DIR, fingerprint, write_pending
from edgeft.runtime.limits import TEXT_COST, ArrivalLimits
from edgeft.runtime.sources import Samples, concatenated, read_json_lines, read_path

STDIN = "-"


@dataclass
class Arrival:
    """Samples read from the given inputs, with the journal record of each input."""

    samples: list[Samples] = field(default_factory=list)
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


def read_arrival(
    adapter: Adapter,
    paths: list[str],
    stdin: io.BufferedReader | None,
    relearn: bool,
    limits: ArrivalLimits | None = None,
) -> Arrival:
    """Read every input (``-`` is JSON lines on stdin), skipping those already consumed unless ``relearn``.

    ``limits`` bound the whole arrival (default: the detected memory budget, no sample cap).
    """
    limits = limits or ArrivalLimits.for_reading()
    consumed = {} if relearn else adapter.consumed_inputs()
    arrival = Arrival()
    manifest = adapter.bundle.manifest
    for name in paths:
        if name == STDIN:
            raw = stdin.read() if stdin is not None else b""
            digest = hashlib.sha256(raw).hexdigest()
            limits.charge("stdin", TEXT_COST * len(raw), f"{len(raw)} bytes of text")
            text = io.StringIO(raw.decode("utf-8", errors="replace"))
            found = [read_json_lines(text, "stdin", manifest, True, limits)]
        else:
            found = read_path(name, manifest, need_labels=True, limits=limits)
            digest = fingerprint(Path(name))
        if digest in consumed:
            arrival.skipped.append(f"{name} (already learned in version {consumed[digest]})")
            continue
        arrival.samples.extend(found)
        arrival.inputs.append({"name": name, "sha256": digest, "samples": sum(len(s.x) for s in found)})
    return arrival


def learn_arrival(
    adapter: Adapter, arrival: Arrival, learn_options: dict[str, Any], progress: Progress | None
) -> OneShotResult:
    """Learn an arrival's samples whose labels fit; park the others in ``STATE/pending/``."""
    if not arrival.samples:
        return OneShotResult(None, arrival.skipped, 0, None, [])
    origin = ", ".join(i["name"] for i in arrival.inputs)
    x, y = concatenated(arrival.samples, origin)
    x = adapter.check_inputs(x, origin)  # before any of it is parked as pending
    encoded = adapter.encode(y, origin)
    pending_path = None
    if not encoded.fits.all():
        name = hashlib.sha256(origin.encode()).hexdigest()[:16]
        pending_path = write_pending(adapter.store.root / PENDING_DIR, name, x[~encoded.fits], y[~encoded.fits])
    result = None
    if encoded.fits.any():
        result = adapter.learn(
            x[encoded.fits], y[encoded.fits], origin=origin, inputs=arrival.inputs, progress=progress, **learn_options
        )
    return OneShotResult(result, arrival.skipped, int((~encoded.fits).sum()), pending_path, encoded.overflow)
