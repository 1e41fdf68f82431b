"""A coalesced arrival: inbox entries that wait together, learned as one (one training pass, one guard decision, one
committed version whose journal records every entry).

Each entry is read into its own ``ArrivalEmbedder``, so an entry found bad in any sample is dropped whole while the
others stay; its label map continues the one of the entries read before it, so new class names take the head's free
outputs in the order a one-by-one learner would give them, and samples of a name with no output left wait in
``pending/`` as they would then. Entries join while the arrival holds fewer than ``cap`` samples (the last one may
take it past); ``cap`` 0 or 1 makes every entry an arrival of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeft.data.targets import is_target_task
from edgeft.runtime.labels import label_names

if TYPE_CHECKING:
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.attempts import Attempts
    from edgeft.runtime.streaming import ArrivalEmbedder


@dataclass
class Member:
    """One entry of a coalesced arrival, read whole (its attempt stays counted until the arrival is committed)."""

    entry: Path
    sha256: str
    embedded: ArrivalEmbedder


class Coalesced:
    """The entries gathered for one arrival, and the attempts still open for them (see the module docstring)."""

    def __init__(self, adapter: Adapter, cap: int) -> None:
        self._adapter = adapter
        self.cap = cap
        self.members: list[Member] = []
        self.open: list[Attempts] = []  # the members' attempts and that of the entry being read

    @property
    def samples(self) -> int:
        """Samples read so far (parked ones included)."""
        return sum(member.embedded.received for member in self.members)

    @property
    def full(self) -> bool:
        """Whether no further entry may join."""
        return bool(self.members) and (self.cap <= 1 or self.samples >= self.cap)

    @property
    def classes(self) -> list[str]:
        """The label map the next entry's new names grow from."""
        return self.members[-1].embedded.classes if self.members else self._adapter.classes

    def holds(self, sha256: str) -> bool:
        """Whether an entry with this content was already gathered (a copy waits until this arrival is committed)."""
        return any(member.sha256 == sha256 for member in self.members)

    @property
    def names(self) -> list[str]:
        """The members' entry names, in the order they were read."""
        return [member.entry.name for member in self.members]

    @property
    def origin(self) -> str:
        """Every member's name (history shows which entries a version learned)."""
        return ", ".join(self.names)

    def inputs(self) -> list[dict[str, Any]]:
        """The journal records of the members: name, sha256 and samples received (parked ones included)."""
        return [{"name": m.entry.name, "sha256": m.sha256, "samples": m.embedded.received} for m in self.members]

    def features(self) -> np.ndarray:
        """Features of every member's samples that fit, in order (a single member's without a copy)."""
        if len(self.members) == 1:
            return self.members[0].embedded.features
        return np.concatenate([member.embedded.features for member in self.members])

    def labels(self) -> np.ndarray:
        """Their labels: a single member's as given; of several, class names (or a task's float targets), since
        members may give names or indices."""
        if len(self.members) == 1:
            return self.members[0].embedded.labels
        if is_target_task(self._adapter.bundle.manifest.head):
            parts = [self._adapter.encode(m.embedded.labels, m.entry.name).values for m in self.members]
            return np.concatenate(parts)
        classes = self._adapter.classes
        return np.concatenate([label_names(m.embedded.labels, classes, m.entry.name).astype(str) for m in self.members])
