"""What one arrival may cost: memory within the budget and a number of samples (time), checked before reading.

Readers charge each file before they unpack it — a .npz member by the size its zip entry and .npy header declare,
a CSV or JSON-lines file by its size, an image by the sample it becomes — so an arrival that would not fit is
refused up front with its figures (a DataError: quarantined, never found out by the OOM killer).
"""

from __future__ import annotations

from edgeft.common.budget import MemoryBudget, detect_budget, format_size
from edgeft.errors import DataError

ARRAY_CEILING = 2**31  # no array over 2 GiB whatever the budget (the fixed cap before there were budgets)
COPIES = 3  # inputs exist up to three times while an arrival is read, checked (as float32) and split
TEXT_COST = 16  # CSV and JSON lines: bytes of parsed Python objects per byte of text
MAX_ARRIVAL_SAMPLES = 100_000
COALESCE_SAMPLES = 1024  # watch mode: inbox entries waiting together are learned as one arrival of about this many


class OverBudget(DataError):
    """A file refused because the memory an arrival may use now has no room for it (what the process already holds
    counts: a file refused while other entries of a coalesced arrival are held may fit on its own)."""


class ArrivalLimits:
    """The memory and samples one arrival may still take; ``charge`` and ``count`` refuse what goes beyond."""

    def __init__(self, budget: MemoryBudget, max_samples: int | None = MAX_ARRIVAL_SAMPLES) -> None:
        self.budget = budget
        self.allowance = budget.arrival_bytes()
        self.max_samples = max_samples or None
        self.charged = 0
        self.samples = 0

    @classmethod
    def for_reading(cls) -> ArrivalLimits:
        """Limits for reading data outside learning (predict, evaluation): the detected budget, no sample cap."""
        return cls(detect_budget(), None)

    @property
    def array_bytes(self) -> int:
        """The most one array may unpack to."""
        return min(ARRAY_CEILING, self.allowance // COPIES)

    def why_array_bytes(self) -> str:
        """Where ``array_bytes`` comes from, for refusals."""
        if self.array_bytes == ARRAY_CEILING:
            return "edgeft's ceiling for one array"
        return (
            f"1/{COPIES} of the {format_size(self.allowance)} free for an arrival within the memory budget, "
            f"{self.budget.describe()}; a decompression bomb?"
        )

    def charge(self, origin: str, cost: int, what: str) -> None:
        """Account ``cost`` bytes for ``what`` of ``origin``; DataError when the arrival would exceed its share."""
        self.charged += cost
        if self.charged > self.allowance:
            raise OverBudget(
                f"{origin}: {what} needs about {format_size(cost)} to learn, more than edgeft reads within its memory "
                f"budget ({format_size(self.allowance)} free for an arrival of {self.budget.describe()}); a "
                "decompression bomb? Split the data into smaller files or raise --memory-budget"
            )

    def count(self, origin: str, samples: int) -> None:
        """Account ``samples``; DataError when the arrival would hold more than ``max_samples``."""
        self.samples += samples
        if self.max_samples is not None and self.samples > self.max_samples:
            raise DataError(
                f"{origin}: {self.samples} samples, more than one arrival may hold ({self.max_samples}, "
                "--max-arrival-samples); split the data into smaller files"
            )
