"""``VersionRecord``: what a committed state version records about itself (``versions/NNNNNN.json``), typed.

Only the state store (edgeft.runtime.store) reads and writes these files; everything else gets records from it.
The JSON carries ``format_version``; files written before it had one are format 1 (the same layout). Format 2 is
format 1 whose ``segments`` may also list class statistics segments (``NNNNNN.statistics.npz``,
edgeft.runtime.statistics_log), which an edgeft that reads only format 1 would take for corrupt replay segments: a
record lists them only as format 2, so such an edgeft says it is too old instead. Format 3 is format 2 whose
``segments`` may also list fleet statistics segments (``NNNNNN.fleet.statistics.npz``: the other devices' statistics
behind an adopted fleet head), for the same reason. A record is written in the oldest format that holds it (one
without such segments as format 1, which every edgeft reads). Fields an early edgeft wrote and this one no longer knows
(``samples_seen``, ``last_update``) are kept in ``extra`` as read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from edgeft.errors import EdgeftError

RECORD_FORMAT_VERSION = 3  # the newest format this edgeft writes; it reads every format up to it
STATISTICS_SEGMENT_SUFFIX = ".statistics.npz"  # segments only a format 2 record may list
FLEET_SEGMENT_SUFFIX = ".fleet.statistics.npz"  # segments only a format 3 record may list
_OPTIONAL = ("created", "classes", "head_version", "head_source", "drift", "thresholds", "segments")


@dataclass(frozen=True)
class VersionRecord:
    """One version's metadata. ``arrival`` is what the arrival that made it did (origin, inputs, guard verdict,
    prequential figures...; free-form, read by the logs); ``sha256`` maps each of the version's file kinds to its
    digest; ``segments`` maps the replay segments its buffers use to their sha256 and rows (None: a state written
    before segments). None in ``created``, ``classes``, ``head_version``, ``head_source``, ``drift`` or
    ``thresholds`` means the file did not record it. Treat the mappings as read-only."""

    version: int
    parent: int | None
    bundle: str
    sha256: dict[str, str]
    created: str | None = None
    classes: list[str] | None = None
    class_counts: dict[str, int] = field(default_factory=dict)
    samples_accepted: int = 0
    samples_received: int = 0
    head_version: int | None = None
    head_source: int | None = None
    updates: dict[str, int] = field(default_factory=dict)
    drift: dict[str, Any] | None = None
    thresholds: dict[str, float] | None = None
    segments: dict[str, dict[str, Any]] | None = None
    arrival: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def trained_head(self) -> int:
        """The version that trained this version's head (0: the bundle's initial head)."""
        return int(self.head_source if self.head_source is not None else self.head_version or 0)

    @property
    def is_rollback(self) -> bool:
        return "rollback" in self.arrival

    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON object on disk (without ``format_version``); unrecorded optional fields absent."""
        data: dict[str, Any] = dict(self.extra)
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "extra" and not (item.name in _OPTIONAL and value is None):
                data[item.name] = value
        return data

    @property
    def format_version(self) -> int:
        """The oldest format that can hold this record: 3 when it lists fleet statistics segments, 2 when it lists
        class statistics segments, else 1."""
        names = list(self.segments or {})
        if any(name.endswith(FLEET_SEGMENT_SUFFIX) for name in names):
            return 3
        return 2 if any(name.endswith(STATISTICS_SEGMENT_SUFFIX) for name in names) else 1

    def to_json(self) -> str:
        """Stable JSON with its format version, as the store writes it."""
        return json.dumps({**self.to_dict(), "format_version": self.format_version}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, origin: str) -> VersionRecord:
        """A record from its JSON object; EdgeftError naming ``origin`` when it is not valid version metadata."""
        if not isinstance(data, dict):
            raise EdgeftError(f"{origin} is corrupt: not valid version metadata")
        data = dict(data)
        version = data.pop("format_version", 1)
        if not _is_int(version) or not 1 <= version <= RECORD_FORMAT_VERSION:
            raise EdgeftError(
                f"{origin}: version metadata format {version!r}; this edgeft reads formats 1 to "
                f"{RECORD_FORMAT_VERSION} (written by a newer edgeft? upgrade it)"
            )
        known = {item.name for item in fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in known}
        extra = {key: value for key, value in data.items() if key not in known}
        try:
            record = cls(**values, extra=extra)
        except TypeError:
            raise EdgeftError(f"{origin} is corrupt: not valid version metadata") from None
        if not _well_typed(record):
            raise EdgeftError(f"{origin} is corrupt: not valid version metadata")
        return record

    @classmethod
    def from_json(cls, text: str | bytes, origin: str) -> VersionRecord:
        """A record from ``to_json``'s output (or a file written before format versions); EdgeftError naming
        ``origin`` for bad JSON, a format this edgeft does not read, or fields of the wrong type."""
        try:
            data = json.loads(text)
        except ValueError:
            raise EdgeftError(f"{origin} is corrupt: not valid version metadata") from None
        return cls.from_dict(data, origin)


def _well_typed(record: VersionRecord) -> bool:
    """The fields the store and the learner rely on have the JSON types they expect (``segments`` are checked by
    edgeft.runtime.store.segments_of, with their own message)."""
    return (
        _is_int(record.version)
        and (record.parent is None or _is_int(record.parent))
        and isinstance(record.bundle, str)
        and isinstance(record.sha256, dict)
        and all(isinstance(v, str) for v in record.sha256.values())
        and (record.classes is None or isinstance(record.classes, list))
        and isinstance(record.class_counts, dict)
        and _is_int(record.samples_accepted)
        and _is_int(record.samples_received)
        and all(n is None or _is_int(n) for n in (record.head_version, record.head_source))
        and all(isinstance(m, dict) for m in (record.updates, record.arrival))
        and all(m is None or isinstance(m, dict) for m in (record.drift, record.thresholds))
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
