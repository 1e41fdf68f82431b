"""``LearnOptions``: how arrivals are trained, for every caller (one-shot adapt, watch mode, fleet rounds)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgeft.bundle import Defaults
from edgeft.errors import EdgeftError


@dataclass(frozen=True)
class LearnOptions:
    """Epochs over new + replayed features, batch size, base learning rate and seed; None: the bundle's default."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None

    def resolved(self, defaults: Defaults) -> LearnOptions:
        """Every option set, from ``defaults`` (the bundle's) where this one leaves it None; EdgeftError if invalid."""
        options = LearnOptions(
            epochs=defaults.epochs if self.epochs is None else self.epochs,
            batch_size=defaults.batch_size if self.batch_size is None else self.batch_size,
            lr=defaults.lr if self.lr is None else self.lr,
            seed=defaults.seed if self.seed is None else self.seed,
        )
        if options.epochs < 1 or options.batch_size < 1 or not options.lr > 0:
            raise EdgeftError(
                f"epochs and batch size must be at least 1 and lr positive "
                f"(got {self.epochs}, {self.batch_size}, {self.lr})"
            )
        return options

    def keywords(self) -> dict[str, Any]:
        """The options as keyword arguments of ``Adapter.learn`` / ``learn_features`` (None: the default)."""
        return asdict(self)
