"""A device's part in fleet rounds, without Flower: report, train from a global head, adopt a global head.

Raw inputs and features never leave the device: a report holds the label map and feature moments, training
returns head parameters and a sample count. The device's local data is its state's latent replay buffer, which
new arrivals (entries of an optional inbox folder, learned first as usual) join before each round's training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.errors import EdgeftError
from edgeft.fleet.alignment import device_view, row_order, to_device, to_global
from edgeft.fleet.normaliser import Moments, moments
from edgeft.fleet.policy import FLEET_POLICIES, ClassScores, class_scores, decide
from edgeft.fleet.pooled_statistics import to_global_rows
from edgeft.runtime.adapter import Adapter, LearnResult
from edgeft.runtime.class_statistics import ClassStatistics
from edgeft.runtime.guard import Decision
from edgeft.runtime.inbox import Inbox
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.replay import ReplayBuffer
from edgeft.runtime.schedule import learning_rates
from edgeft.runtime.slda import closed_form_head
from edgeft.runtime.trainer import Parameters, open_trainer, steps_per_fit
from edgeft.runtime.watch import StopFlag, watch

ORIGIN_PREFIX = "fleet global head "


@dataclass(frozen=True)
class Report:
    """What a device tells the server before the first round: its label map and feature moments."""

    classes: list[str]
    fingerprint: str
    moments: Moments
    head_learner: str = "sgd"
    fleet_policy: str = "guard"


@dataclass(frozen=True)
class TrainOutcome:
    """A locally trained head in the fleet's row order, how many samples trained it, and its last epoch's loss."""

    parameters: Parameters
    samples: int
    loss: float


def adopted_version(meta: dict[str, Any]) -> int | None:
    """The global head version a device version adopted (None if it was not an adoption)."""
    origin = meta.get("arrival", {}).get("origin", "")
    return int(origin[len(ORIGIN_PREFIX) :]) if origin.startswith(ORIGIN_PREFIX) else None


class FleetDevice:
    """One device's ``Adapter`` (and optional inbox folder of new arrivals) seen from the fleet."""

    def __init__(
        self,
        adapter: Adapter,
        inbox: str | Path | None = None,
        threads: int | None = None,
        fleet_policy: str = "guard",
    ) -> None:
        if fleet_policy not in FLEET_POLICIES:
            raise EdgeftError(f"unknown fleet policy '{fleet_policy}'; choose one of {', '.join(FLEET_POLICIES)}")
        self.adapter = adapter
        self.inbox = Inbox(inbox) if inbox else None
        self.threads = threads
        self.fleet_policy = fleet_policy

    def ingest(self) -> dict[str, int]:
        """Learn every entry waiting in the inbox (coalesced into guarded versions); count what happened to them."""
        if self.inbox is None:
            return {"learned": 0, "refused": 0, "quarantined": 0}
        summary = watch(self.adapter, self.inbox, emit=_quiet, stop=StopFlag(), once=True)
        return {"learned": summary.learned, "refused": summary.refused, "quarantined": summary.quarantined}

    def report(self) -> Report:
        """Ingest new arrivals, then the label map and the moments of the replayed features."""
        self.ingest()
        features = self.replay().features
        return Report(
            self.adapter.classes,
            self.adapter.bundle.fingerprint,
            moments(features),
            self.adapter.head_learner,
            self.fleet_policy,
        )

    def _holds_global_head(self, version: int) -> bool:
        """Is the current head global head ``version``, adopted and unchanged since?"""
        meta = self.adapter.meta
        return adopted_version(meta) == version and meta.get("head_version") == self.adapter.version

    def replay(self) -> ReplayBuffer:
        """The current version's latent replay buffer (empty before anything was learned)."""
        return self.adapter.replay_buffer()

    def train(self, global_head: Parameters, global_classes: list[str], options: LearnOptions) -> TrainOutcome:
        """Train a copy of the global head on the replay buffer (nothing is committed); ingest arrivals first.
        ``options`` left None take the bundle's defaults."""
        options = options.resolved(self.adapter.bundle.manifest.defaults)
        replay = self.replay()
        if not len(replay):
            raise EdgeftError(
                f"device state {self.adapter.store.root} has learned nothing yet; it has no data to share"
            )
        order = row_order(self.adapter.classes, global_classes, self.adapter.capacity)
        bundle = self.adapter.bundle
        trainer = open_trainer(bundle, None, self.adapter.placement, self.adapter.trainer_kind)
        try:
            trainer.set_parameters(to_device(global_head, order))
        except ValueError as exc:
            raise EdgeftError(f"the fleet's head does not fit bundle {bundle.path}: {exc}") from None
        rng = np.random.default_rng(options.seed)
        features, labels = replay.features, replay.labels  # a class-balanced reservoir already; fit shuffles
        schedule = learning_rates(
            "constant", options.lr, steps_per_fit(len(labels), options.epochs, options.batch_size)
        )
        loss = trainer.fit(
            features,
            labels,
            epochs=options.epochs,
            batch_size=options.batch_size,
            schedule=schedule,
            seed=int(rng.integers(2**31)),
        )
        return TrainOutcome(to_global(trainer.parameters(), order), len(replay), loss)

    def statistics(self, global_classes: list[str]) -> ClassStatistics:
        """This device's class statistics in the fleet's row order: those it keeps (``slda``/``ncm``/``slda+sgd``),
        else (``sgd`` on a linear head) the full LDA statistics of its replay buffer's samples."""
        own = self.adapter.class_statistics()
        if own is None:
            try:
                closed_form_head(self.adapter.bundle, "slda")
            except EdgeftError as exc:
                raise EdgeftError(f"the fleet's statistics strategy cannot use this device: {exc}") from None
            head = self.adapter.bundle.manifest.head
            replay = self.replay()
            own = ClassStatistics.empty(self.adapter.capacity, head.feature_dim, full=True)
            own.add(replay.features, replay.labels)
        return to_global_rows(own, row_order(self.adapter.classes, global_classes, self.adapter.capacity))

    def score(self, global_head: Parameters, global_classes: list[str]) -> ClassScores:
        """Per-class holdout counts of a global head choosing among all the fleet's classes, in the fleet's rows."""
        order = row_order(self.adapter.classes, global_classes, self.adapter.capacity)
        view = device_view(self.adapter.classes, global_classes)
        labels, right = self.adapter.holdout_correct(to_device(global_head, order), view, np.arange(len(view)))
        return _to_global_scores(class_scores(labels, right, self.adapter.capacity), order)

    def adopt(
        self,
        global_head: Parameters,
        global_classes: list[str],
        version: int,
        total: ClassStatistics | None = None,
        fleet_scores: ClassScores | None = None,
        previous: tuple[int, ClassScores] | None = None,
    ) -> LearnResult:
        """Make global head ``version`` current if this device's fleet policy agrees (committed and logged either way).

        ``total`` (statistics rounds): every device's statistics together, this device's included; the device keeps
        the others' part, so its later arrivals rewrite the head from the whole fleet's statistics and its own.
        ``fleet_scores``: the global head's per-class holdout counts summed over the fleet (``overall`` policy);
        ``previous``: the previous global head's version and fleet-wide counts, which score the current head when it
        is that head (it then knows classes this device never saw).
        """
        order = row_order(self.adapter.classes, global_classes, self.adapter.capacity)
        view = device_view(self.adapter.classes, global_classes)
        own = self.adapter.class_statistics()
        others = total.rows(order).minus(own) if total is not None and own is not None else None
        own_scores = learned = None
        scored_by = "device"
        if self.fleet_policy == "overall" and fleet_scores is not None:
            if previous is not None and self._holds_global_head(previous[0]):
                own_scores, learned, scored_by = previous[1], np.ones(self.adapter.capacity, bool), "fleet"
            else:
                labels, right = self.adapter.holdout_correct(self.adapter.parameters(), view)
                own_scores = _to_global_scores(class_scores(labels, right, self.adapter.capacity), order)
                learned = np.zeros(self.adapter.capacity, bool)
                learned[order[self.adapter.learned_rows(view)]] = True

        def verdict(guarded: Decision, finite: bool) -> tuple[Decision, dict[str, Any]]:
            decision, record = decide(self.fleet_policy, guarded, finite, fleet_scores, own_scores, learned)
            return decision, {**record, "current_scored_by": scored_by} if own_scores is not None else record

        origin = f"{ORIGIN_PREFIX}{version}"
        return self.adapter.adopt(
            to_device(global_head, order), view, origin=origin, fleet_statistics=others, verdict=verdict
        )


def _to_global_scores(scores: ClassScores, order: np.ndarray) -> ClassScores:
    """Per-class counts in device row order rearranged into the fleet's (``order``: device row -> global row)."""
    correct, total = np.zeros_like(scores.correct), np.zeros_like(scores.total)
    correct[order], total[order] = scores.correct, scores.total
    return ClassScores(correct, total)


def _quiet(kind: str, **fields: Any) -> None:
    """Inbox events need no printing here: each learned entry is a committed version with its own log line."""
