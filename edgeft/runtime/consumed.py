"""The inputs a state directory has consumed (its journal's sha256s), held compactly for the skip check.

A device that learns for years consumes many inputs: 500,000 journal lines held as a dict of hex sha256 to version
cost a watch process 92 MiB for as long as it runs. ``ConsumedInputs`` keeps the raw digests in one sorted array
and their versions in another (40 bytes an input: 20 MB for those 500,000), plus a small dict of the ones added
since, merged into the arrays once it holds ``MERGE_EVERY``.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

DIGEST_BYTES = 32  # sha256
MERGE_EVERY = 4096


class ConsumedInputs(Mapping[str, int]):
    """sha256 (hex) -> the version that consumed it; a later pair for the same digest replaces the earlier one."""

    def __init__(self, pairs: Iterable[tuple[str, int]] = ()) -> None:
        self._digests = np.empty(0, f"S{DIGEST_BYTES}")  # sorted raw digests (numpy drops trailing NULs on read)
        self._versions = np.empty(0, np.int64)
        self._recent: dict[bytes, int] = {}  # added since the last merge
        self._odd: dict[str, int] = {}  # a "sha256" that is not 64 hex digits (never written by edgeft)
        self._merge(*self._collected(pairs))  # no other reference: the collected buffers go as soon as sorted

    def _collected(self, pairs: Iterable[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
        """The pairs' raw digests and versions as arrays over growing buffers (no Python object per pair)."""
        raw, versions = bytearray(), array("q")
        for digest, version in pairs:
            key = _raw(digest)
            if key is None:
                self._odd[digest] = version
            else:
                raw += key
                versions.append(version)
        if not raw:  # (older numpy refuses an empty buffer)
            return np.empty(0, f"S{DIGEST_BYTES}"), np.empty(0, np.int64)
        return np.frombuffer(raw, f"S{DIGEST_BYTES}"), np.frombuffer(versions, np.int64)

    def update(self, pairs: Mapping[str, int]) -> None:
        """Record more consumed inputs (a commit's)."""
        for digest, version in pairs.items():
            key = _raw(digest)
            if key is None:
                self._odd[digest] = version
            else:
                self._recent[key] = version
        if len(self._recent) >= MERGE_EVERY:
            recent, self._recent = self._recent, {}
            self._merge(np.array(list(recent), f"S{DIGEST_BYTES}"), np.array(list(recent.values()), np.int64))

    def _merge(self, digests: np.ndarray, versions: np.ndarray) -> None:
        """Fold ``digests`` (with ``versions``, later than the arrays') into the sorted arrays, the last pair of a
        digest winning. Each step rebinds its inputs, so a buffer is freed as soon as it has been copied."""
        if len(self._digests):
            digests, versions = np.concatenate([self._digests, digests]), np.concatenate([self._versions, versions])
        order = np.argsort(digests, kind="stable")  # equal digests keep their order: the last is the latest
        digests, versions = digests[order], versions[order]
        del order
        repeated = digests[1:] == digests[:-1]
        if repeated.any():
            keep = np.append(~repeated, True)
            digests, versions = digests[keep], versions[keep]
        self._digests, self._versions = digests, versions

    def __getitem__(self, digest: str) -> int:
        key = _raw(digest)
        if key is None:
            return self._odd[digest]
        if key in self._recent:
            return self._recent[key]
        at = int(np.searchsorted(self._digests, key))
        if at < len(self._digests) and self._digests[at].ljust(DIGEST_BYTES, b"\0") == key:
            return int(self._versions[at])
        raise KeyError(digest)

    def __iter__(self) -> Iterator[str]:
        for key in self._digests.tolist():
            padded = key.ljust(DIGEST_BYTES, b"\0")
            if padded not in self._recent:
                yield padded.hex()
        yield from (key.hex() for key in self._recent)
        yield from self._odd

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _raw(digest: str) -> bytes | None:
    """The 32 bytes of a sha256 in lowercase hex (as edgeft writes it), or None for any other key, which must then
    be kept as it is (its hex would read back in lowercase, without spaces)."""
    if len(digest) != 2 * DIGEST_BYTES or digest != digest.lower():
        return None
    try:
        key = bytes.fromhex(digest)
    except ValueError:
        return None
    return key if len(key) == DIGEST_BYTES else None
