"""Crash points for the crash-safety tests; inert unless ``EDGEFT_CRASH_AT`` or ``EDGEFT_CRASH_READING`` is set.

``EDGEFT_CRASH_AT=POINT:N`` makes the process SIGKILL itself the N-th time (``:N`` omitted: the first) it reaches
POINT, so a test can kill a real process at an exact moment:

- ``tick``: a progress tick of feature extraction or training (watch mode),
- ``rename``: an atomic write's temp file is complete and durable, just before it replaces its target
  (replay segment, checkpoint, buffer index, version metadata, CURRENT, pending samples, quarantine reasons),
- ``append``: just before a line block is appended to journal.jsonl or metrics.jsonl,
- ``move``: just before an inbox entry is moved to ``done/`` or ``quarantine/``,
- ``attempt``: an inbox entry's attempt record is durable in its temp file, just before it replaces the old one.

``EDGEFT_CRASH_READING=NAME`` makes the process SIGKILL itself every time it starts reading the inbox entry NAME,
as a file that brings the learner down would (a poison entry: tests/test_poison.py).

Used by tests/test_crash.py and tools/torture.py; never set on a device.
"""

from __future__ import annotations

import os
import signal

ENV = "EDGEFT_CRASH_AT"
POINTS = ("tick", "rename", "append", "move", "attempt")
READING_ENV = "EDGEFT_CRASH_READING"

_point, _, _count = os.environ.get(ENV, "").partition(":")
_left = {_point: int(_count or 1)} if _point else {}


def crash_point(name: str) -> None:
    """SIGKILL this process if ``EDGEFT_CRASH_AT`` names ``name`` and this is the chosen arrival at it."""
    if name in _left:
        _left[name] -= 1
        if _left[name] == 0:
            os.kill(os.getpid(), signal.SIGKILL)


def crash_reading(entry: str) -> None:
    """SIGKILL this process if ``EDGEFT_CRASH_READING`` names the inbox entry it is about to read."""
    if entry == os.environ.get(READING_ENV):
        os.kill(os.getpid(), signal.SIGKILL)
