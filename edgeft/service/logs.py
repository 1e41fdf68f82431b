"""Event logs: JSON lines (one object per line: ts, level, event, fields) or short human lines.

To stderr by default, or to a file rotated by size. ``auto`` picks human lines on a terminal, JSON otherwise
(journald, files, pipes).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
EVENT_LEVELS = {
    "started": "debug",
    "quarantined": "warning",
    "refused": "warning",
    "pending": "warning",
    "interrupted": "warning",
    "int8_fallback": "warning",
    "error": "error",
}
FORMATS = ("auto", "json", "text")

EventLog = Callable[..., None]


def _human(event: str, fields: dict[str, Any]) -> str:
    name = fields.get("entry") or fields.get("inbox") or ""
    detail = fields.get("reason") or ""
    if event == "learned":
        detail = f"{fields.get('samples')} samples, version {fields.get('version')}; {detail}"
    return f"edgeft: {event} {name}{': ' + str(detail) if detail else ''}".rstrip()


def event_logger(
    log_format: str = "auto",
    log_file: Path | None = None,
    *,
    level: str = "info",
    max_bytes: int = 10 * 2**20,
    backups: int = 3,
) -> EventLog:
    """A function ``log(event, **fields)`` writing one line per event at or above ``level``."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format '{log_format}'; choose one of {', '.join(FORMATS)}")
    stream_is_tty = log_file is None and sys.stderr.isatty()
    as_json = log_format == "json" or (log_format == "auto" and not stream_is_tty)
    logger = logging.getLogger(f"edgeft.events.{id(object())}")
    logger.propagate = False
    logger.setLevel(LEVELS[level])
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)

    def log(event: str, **fields: Any) -> None:
        name = EVENT_LEVELS.get(event, "info")
        if as_json:
            line = json.dumps(
                {"ts": datetime.now(UTC).isoformat(), "level": name, "event": event, **fields},
                default=str,
            )
        else:
            line = _human(event, fields)
        logger.log(LEVELS[name], line)

    return log
