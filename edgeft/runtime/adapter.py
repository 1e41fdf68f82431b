"""``Adapter``: a bundle plus a device's state directory; learns from labelled data as it arrives, and predicts.

Each ``learn`` call is one arrival: predict it first (prequential metrics), keep a share as holdout, train the head
on the rest mixed with the latent replay buffer, let the guard compare the candidate head with the current one on
the holdout, and commit a version either way (the candidate's head, or the previous head if it was refused), so the
journal of consumed inputs and the head always change together.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.bundle import Bundle
from edgeft.common.atomic import make_directory, write_atomic
from edgeft.common.ort import Placement, resolve_placement
from edgeft.data.targets import is_target_task, parse_targets
from edgeft.errors import DataError, EdgeftError
from edgeft.runtime import guard, replay_store, tasks
from edgeft.runtime.class_statistics import FLEET_STATISTICS_FILE, STATISTICS_FILE, ClassStatistics
from edgeft.runtime.consumed import ConsumedInputs
from edgeft.runtime.drift import PageHinkley
from edgeft.runtime.drift import update as update_drift
from edgeft.runtime.features import FeatureExtractor
from edgeft.runtime.history import History
from edgeft.runtime.int8_check import backbone_to_use, cached_check
from edgeft.runtime.labels import EncodedLabels, encode_growing, encode_known, label_names
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.replay import REPLAY_PER_NEW, ReplayBuffer, Rows, training_set
from edgeft.runtime.rollback import RollbackPlan, plan, rollback_meta
from edgeft.runtime.schedule import learning_rates
from edgeft.runtime.slda import (
    DEFAULT_SHRINKAGE,
    closed_form_head,
    head_learner_name,
    learn_statistics,
    stored_fleet_statistics,
    stored_statistics,
)
from edgeft.runtime.statistics_log import FLEET, OWN, StatisticsLog, listed_segments
from edgeft.runtime.store import KEEP_VERSIONS, StateStore, Version
from edgeft.runtime.target_replay import TargetBuffer
from edgeft.runtime.trainer import (
    HEAD_STATE_FILE,
    ORT_CHECKPOINT_FILE,
    HeadPredictor,
    Parameters,
    Trainer,
    choose_trainer,
    feature_normaliser,
    open_trainer,
    parameters_finite,
    steps_per_fit,
    stored_state,
    trainer_name,
)
from edgeft.runtime.version_record import VersionRecord
from edgeft.runtime.versions import collect_history

Progress = Callable[[int], None]
REJECTED_DIR = "rejected"
KEEP_REJECTED = 5
HEAD_FILES = (HEAD_STATE_FILE, ORT_CHECKPOINT_FILE)  # a version's head, in either trainer's files


@dataclass(frozen=True)
class LearnResult:
    """What one ``learn`` call did; ``promoted`` says whether the new head became current."""

    samples: int
    trained: int
    held_out: int
    replayed: int
    epochs: int
    loss: float | None
    version: int
    promoted: bool
    reason: str
    prequential_accuracy: float | None
    holdout_accuracy: float | None
    new_classes: list[str]


class Adapter:
    """Learn a bundle's head from new labelled data on this device, and predict with the latest head.

    ``replay_per_class`` overrides the bundle's replay buffer size (0 turns replay off); ``replay_mb`` caps its
    memory (features of every reserved class). ``policy`` sets the promotion guard; ``holdout`` is an optional
    fixed labelled holdout set (raw inputs, labels) used instead of holding out a share of each arrival.
    ``replay_per_new`` caps the buffered samples an arrival trains with per new sample (None: the whole buffer).
    ``trainer`` picks the training backend: ``auto`` (the portable ONNX trainer when the bundle carries it),
    ``onnx`` or ``ort`` (ONNX Runtime training, the ``edgeft[ort]`` extra). ``keep_versions`` is how many
    committed versions stay on disk (and can be rolled back to). ``head_learner`` is ``sgd`` (train the head with
    the train step), ``slda`` or ``ncm`` (closed-form heads from class statistics, no epochs or replay; see
    ``edgeft.runtime.slda``, ``shrinkage`` is streaming LDA's) or ``slda+sgd`` (the LDA head, then SGD).
    Multi-label and regression heads learn float targets (``edgeft.runtime.tasks``); ``tune_thresholds`` re-tunes a
    multi-label head's per-label thresholds on the holdout after each promotion. ``drift`` sets the drift signal's
    Page-Hinkley constants (``edgeft.runtime.drift``).
    Learning takes the state directory's lock (one writer at a time) and commits a version per call;
    prediction reads the current version and needs no lock. ``backbone_path`` is the backbone this CPU runs: an
    int8 bundle's float fallback where its self-check (``int8_check``) fails.
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        state: str | Path,
        *,
        ep: str = "auto",
        threads: int | None = None,
        replay_per_class: int | None = None,
        replay_mb: float | None = None,
        policy: guard.GuardPolicy | None = None,
        holdout: tuple[np.ndarray, np.ndarray] | None = None,
        schedule: str = "constant",
        trainer: str = "auto",
        keep_versions: int = KEEP_VERSIONS,
        head_learner: str = "sgd",
        shrinkage: float = DEFAULT_SHRINKAGE,
        tune_thresholds: bool = False,
        replay_per_new: int | None = REPLAY_PER_NEW,
        drift: PageHinkley | None = None,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.task = self.bundle.manifest.head.task
        self._targets = is_target_task(self.bundle.manifest.head)
        self.tune_thresholds = tune_thresholds and self.task == tasks.MULTILABEL
        self.head_learner = head_learner_name(head_learner)
        self._closed_form = closed_form_head(self.bundle, self.head_learner, shrinkage)
        self._statistics: ClassStatistics | None = None
        self._statistics_log: StatisticsLog | None = None
        self._fleet_statistics: ClassStatistics | None = None
        self._fleet_log: StatisticsLog | None = None
        self.placement: Placement = resolve_placement(ep)
        self._trainer_choice = trainer_name(trainer)
        self._trainer_kind: str | None = None
        self.store = StateStore(state, self.bundle.fingerprint, keep_versions)
        # int8 self-check (issue 17): the float fallback where this CPU's int8 kernels disagree, else a refusal
        self.int8_check = cached_check(self.bundle, self.store.root)
        self.backbone_path = backbone_to_use(self.bundle, self.int8_check)
        self._logs = History(self.store.root)
        self.policy = policy or guard.GuardPolicy()
        self.drift = drift or PageHinkley()
        learning_rates(schedule, 1.0, 1)  # fail early on an unknown schedule
        self.schedule = schedule
        head = self.bundle.manifest.head
        per_class = self.bundle.manifest.defaults.replay_per_class if replay_per_class is None else replay_per_class
        if replay_mb is not None:
            per_class = min(per_class, int(replay_mb * 2**20) // (4 * head.feature_dim * head.num_outputs))
        self._replay_per_class = 0 if self._closed_form and not self._closed_form.then_sgd else per_class
        self._replay_per_new = replay_per_new  # rehearsed per new sample (None: the whole buffer every arrival)
        self._features = FeatureExtractor(self.bundle, self.placement, threads, self.backbone_path)
        self._predictor = HeadPredictor(self.bundle, self.placement, threads)
        self._trainer: Trainer | None = None
        self._replay: ReplayBuffer | TargetBuffer | None = None
        self._holdout: ReplayBuffer | TargetBuffer | None = None
        self._version: Version | None = self.store.current()
        self._parameters: Parameters | None = None
        self._history_behind = True
        self._fixed_holdout = self._embed_holdout(holdout) if holdout is not None else None

    @property
    def classes(self) -> list[str]:
        """Class names in head-output order: the bundle's, then those this device added."""
        if self._version is not None and self._version.record.classes is not None:
            return list(self._version.record.classes)
        return list(self.bundle.manifest.classes)

    @property
    def trainer_kind(self) -> str:
        """The trainer learning uses, ``onnx`` or ``ort`` (resolved on first use: prediction needs none)."""
        if self._trainer_kind is None:
            self._trainer_kind = choose_trainer(self.bundle, self._trainer_choice)
        return self._trainer_kind

    @property
    def capacity(self) -> int:
        """How many classes the head can hold (its outputs)."""
        return self.bundle.manifest.head.num_outputs

    @property
    def version(self) -> int:
        """The current committed version number (0: nothing learned yet)."""
        return self._version.number if self._version else 0

    @property
    def record(self) -> VersionRecord | None:
        """The current version's record (None before anything was learned)."""
        return self._version.record if self._version else None

    @property
    def meta(self) -> dict[str, Any]:
        """The current version's record as plain JSON data (empty before anything was learned)."""
        return self._version.meta if self._version else {}

    def parameters(self) -> Parameters:
        """The current head parameters (the bundle's initial head before anything was learned)."""
        if self._trainer is not None:
            return self._trainer.parameters()
        if self._parameters is None:
            self._parameters = stored_state(self.bundle, self._version.files if self._version else None).parameters
        return self._parameters

    def check_inputs(self, x: np.ndarray, origin: str = "input") -> np.ndarray:
        """``x`` as float32 of the bundle's input shape, or a DataError naming ``origin`` (wrong shape, NaN, ...)."""
        return self._features.check(np.asarray(x), origin)

    def embed(self, x: np.ndarray, origin: str = "input", progress: Progress | None = None) -> np.ndarray:
        """Backbone features of raw inputs ``x`` (checked against the bundle's input spec)."""
        return self._features.embed(self._features.check(np.asarray(x), origin), progress)

    def embed_checked(self, x: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """Backbone features of inputs ``check_inputs`` returned (not checked again: streamed arrivals check once)."""
        return self._features.embed(x, progress)

    def predict_proba(self, x: np.ndarray, origin: str = "input") -> np.ndarray:
        """Class probabilities [N, known classes] for raw inputs."""
        return self.predict_proba_features(self.embed(x, origin))

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities for precomputed backbone features, over the classes known so far."""
        if not self.classes:
            raise EdgeftError("this head knows no classes yet; learn from labelled data first")
        if self._targets:
            raise EdgeftError(f"a {self.task} head has no class probabilities; use outputs_features")
        return self._predictor.probabilities(features, self.parameters(), len(self.classes))

    @property
    def thresholds(self) -> np.ndarray:
        """A multi-label head's per-label decision thresholds (0.5 unless tuned), in ``classes`` order."""
        return tasks.thresholds_of(self.record, self.classes)

    def outputs_features(self, features: np.ndarray) -> np.ndarray:
        """What a multi-label or regression head says for precomputed features: per-label sigmoid scores, or the
        target values ``[N, len(classes)]``."""
        logits = self._predictor.logits(features, self.parameters())
        return tasks.outputs(self.bundle.manifest.head, logits, len(self.classes))

    def predictions(self, x: np.ndarray, origin: str = "input") -> list[dict[str, Any]]:
        """Per sample: ``{"label": ..., "probability": ...}``, ``{"labels": [...], "scores": {...}}`` (multi-label) or
        ``{"values": {...}}`` (regression)."""
        features = self.embed(x, origin)
        if not self._targets:
            probabilities = self.predict_proba_features(features)
            best = probabilities.argmax(axis=1)
            return [
                {"label": self.classes[b], "probability": float(p[b])} for b, p in zip(best, probabilities, strict=True)
            ]
        head, thresholds = self.bundle.manifest.head, self.thresholds
        return [tasks.prediction(head, row, thresholds, self.classes) for row in self.outputs_features(features)]

    def predict(self, x: np.ndarray, origin: str = "input") -> list[str]:
        """Predicted class names for raw inputs."""
        return [self.classes[i] for i in self.predict_proba(x, origin).argmax(axis=1)]

    def evaluate(self, x: np.ndarray, y: np.ndarray, origin: str = "input") -> float:
        """Accuracy of the current head on labelled raw inputs (``score`` for any task)."""
        if self._targets:
            raise EdgeftError(f"a {self.task} head has no accuracy; use score (its metric is {self.metric})")
        labels = encode_known(np.asarray(y), self.classes, origin)
        return guard.accuracy(self.predict_proba(x, origin), labels)

    @property
    def metric(self) -> str:
        """The task's main figure: ``accuracy``, ``micro_f1``, ``mae`` or ``rmse``."""
        return tasks.metric_name(self.bundle.manifest.head) if self._targets else "accuracy"

    def score(self, x: np.ndarray, y: np.ndarray, origin: str = "input") -> float:
        """The task's metric (``metric``) of the current head on labelled raw inputs."""
        if not self._targets:
            return self.evaluate(x, y, origin)
        targets = self.encode(y, origin).values[:, : len(self.classes)]
        scores = self.outputs_features(self.embed(x, origin))
        return tasks.score(self.bundle.manifest.head, scores, targets, self.thresholds)

    def encode(self, y: np.ndarray, origin: str = "input") -> EncodedLabels | tasks.Targets:
        """Head outputs for labels, new names taking free outputs; ``overflow`` lists names that do not fit.
        Multi-label and regression labels become float targets (the label map is fixed; bad labels raise)."""
        if self._targets:
            values = parse_targets(y, self.bundle.manifest.head, self.classes, origin)
            return tasks.Targets(values, self.classes)
        return encode_growing(np.asarray(y), self.classes, self.capacity, origin)

    def learn(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        seed: int | None = None,
        origin: str = "input",
        inputs: list[dict[str, Any]] | None = None,
        progress: Progress | None = None,
    ) -> LearnResult:
        """Learn one arrival of raw inputs ``x`` with labels ``y`` (names or indices); commit a version."""
        _check_lengths(len(x), len(y), origin)
        self._strict_encode(y, origin)
        features = self.embed(x, origin, progress)
        return self.learn_features(
            features,
            y,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            origin=origin,
            inputs=inputs,
            progress=progress,
        )

    def learn_features(
        self,
        features: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        seed: int | None = None,
        origin: str = "input",
        inputs: list[dict[str, Any]] | None = None,
        progress: Progress | None = None,
    ) -> LearnResult:
        """Learn one arrival of precomputed features; ``inputs`` (name, sha256, samples) go to the journal."""
        options = LearnOptions(epochs, batch_size, lr, seed).resolved(self.bundle.manifest.defaults)
        if len(features) == 0:
            raise DataError(f"{origin}: no samples to learn from")
        _check_lengths(len(features), len(y), origin)
        self._open()
        try:
            return self._learn_arrival(features, y, options, origin, inputs or [], progress)
        except BaseException:
            self._forget_uncommitted()  # whatever trained in memory was not committed: start again from disk
            raise

    def adopt(
        self,
        parameters: Parameters,
        classes: list[str],
        *,
        origin: str,
        fleet_statistics: ClassStatistics | None = None,
        verdict: Callable[[guard.Decision, bool], tuple[guard.Decision, dict[str, Any]]] | None = None,
    ) -> LearnResult:
        """Make a head trained elsewhere (e.g. a fleet's federated head) current, if the guard agrees; commit.

        ``classes`` is that head's label map: the device's classes must be its prefix (the fleet assigns outputs
        to new names in one agreed order). Replay and holdout stay as they are. ``fleet_statistics`` (slda/ncm,
        in this device's row order) are the other devices' class statistics behind that head: kept with it, later
        arrivals rewrite the head from them and this device's own. ``verdict`` (a fleet policy) turns the guard's
        decision and whether the head's weights are finite into the final decision and a record for the log.
        """
        trainer, _replay, holdout = self._open()
        if len(classes) > self.capacity or list(classes[: len(self.classes)]) != self.classes:
            raise EdgeftError(
                f"{origin}: its classes {classes} do not extend this device's {self.classes} (outputs must agree)"
            )
        try:
            current = self.parameters()
            try:
                trainer.set_parameters(parameters)
            except ValueError as exc:
                raise EdgeftError(f"{origin}: {exc}") from None
            decision = self._judge(None, current, trainer.parameters(), holdout, list(classes))
            record: dict[str, Any] = {}
            if verdict is not None:
                decision, record = verdict(decision, parameters_finite(trainer.parameters()))
            promoted_writers = {**self._unchanged_writers(self._version, skip=HEAD_FILES), **trainer.writers()}
            if decision.promoted and fleet_statistics is not None and self._closed_form is not None:
                # kept with the head from now on: their snapshot segment, once (else the last ones stay)
                self._fleet_statistics, self._fleet_log = fleet_statistics, StatisticsLog(based=False, suffix=FLEET)
                promoted_writers[FLEET_STATISTICS_FILE] = self._fleet_log.persist(
                    self.store, self._next_number(), fleet_statistics
                )
            arrival = {"origin": origin, "inputs": [], "samples": 0, "adopted": True}
            if record:
                arrival["fleet_policy"] = record
            record = self._commit(trainer, decision, promoted_writers, list(classes), None, 0, arrival)
        except BaseException:
            self._forget_uncommitted()
            raise
        return LearnResult(
            samples=0,
            trained=0,
            held_out=0,
            replayed=0,
            epochs=0,
            loss=None,
            version=self.version,
            promoted=decision.promoted,
            reason=decision.reason,
            prequential_accuracy=None,
            holdout_accuracy=decision.holdout_accuracy,
            new_classes=record.arrival["new_classes"],
        )

    def history(self) -> list[dict[str, Any]]:
        """Every version, oldest first: time, origin, samples, accuracies, verdict, retained (``edgeft history``)."""
        return collect_history(self.store.root)

    def rollback(self, version: int | None = None) -> RollbackPlan:
        """Make the head of ``version`` (default: the previous promoted head) current as a new version; commit.

        Its replay buffer and holdout come back with it; the inputs learned since stay consumed in the journal.
        Returns the plan that was committed (target, head source, undone versions and inputs).
        """
        self._open()
        parent = self._version
        if parent is None:
            raise EdgeftError(f"state {self.store.root}: nothing learned yet, nothing to roll back")
        chosen = plan(self.store, parent, version)
        writers: dict[str, Callable[[Path], None]] = {
            kind: (lambda dst, src=src: shutil.copyfile(src, dst)) for kind, src in chosen.target.files.items()
        }
        meta = rollback_meta(parent, chosen, datetime.now(timezone.utc).isoformat())
        try:
            self._version = self.store.commit(writers, meta, parent)
        finally:
            self._forget_uncommitted()
        self._record()
        return chosen

    def replay_buffer(self) -> ReplayBuffer | TargetBuffer:
        """The current version's latent replay buffer, as learning uses it (takes the writer lock)."""
        return self._open()[1]

    def class_statistics(self) -> ClassStatistics | None:
        """The current version's class statistics (``slda``/``ncm`` learners; None for ``sgd``; takes the lock)."""
        self._open()
        return self._statistics

    def fleet_statistics(self) -> ClassStatistics | None:
        """The other devices' class statistics behind the adopted fleet head (None: none adopted; takes the lock)."""
        self._open()
        return self._fleet_statistics

    def consumed_inputs(self) -> ConsumedInputs:
        """sha256 -> version of every input the journal records as consumed (takes the writer lock)."""
        self._open()
        return self._logs.consumed()

    def _learn_arrival(
        self,
        features: np.ndarray,
        y: np.ndarray,
        options: LearnOptions,
        origin: str,
        inputs: list[dict[str, Any]],
        progress: Progress | None,
    ) -> LearnResult:
        started = time.monotonic()
        trainer, replay, holdout = self._open()
        epochs, batch_size, lr, seed = options.epochs, options.batch_size, options.lr, options.seed
        encoded = self._strict_encode(y, origin)
        labels = encoded.values if isinstance(encoded, tasks.Targets) else encoded.indices
        parent = self._version
        current = self.parameters()
        known_before = len(self.classes)
        # Each version draws its own random stream, so repeated arrivals are not split or shuffled alike.
        rng = np.random.default_rng(seed + self.version)
        prequential = (
            self._task_prequential(features, labels, current)
            if self._targets
            else self._prequential(features, labels, current, known_before)
        )
        to_holdout = (
            np.zeros(len(labels), bool)
            if self._fixed_holdout is not None or not self.policy.enabled
            else guard.holdout_mask(len(labels), self.policy.holdout_fraction, rng)
        )
        train_y = labels[~to_holdout]
        if not (parent and parent.record.head_version):  # the first head ever trained fixes the normaliser
            trainer.set_normaliser(*feature_normaliser(features))
            current = trainer.parameters()
            centred = tasks.centred_output(self.bundle.manifest.head, current, train_y) if self._targets else None
            if centred is not None:
                trainer.set_parameters(centred)
        keep = ~to_holdout
        trains_sgd = self._closed_form is None or self._closed_form.then_sgd
        train_f = Rows([features], np.flatnonzero(keep))  # the arrival's training share, read, not copied
        if trains_sgd:
            all_f, all_y, passes, replayed = training_set(
                features, labels, keep, replay, epochs, rng, self._replay_per_new
            )
        else:  # a closed-form head: one pass over the arrival's statistics, no training set
            all_f, all_y, epochs, passes, replayed = train_f, train_y, 0, 0, 0
        loss: float | None = None
        if self._closed_form is not None and self._statistics is not None and len(train_y):
            normaliser = self.bundle.manifest.head.normaliser
            others = self._fleet_statistics
            learn_statistics(self._closed_form, trainer, self._statistics, features[keep], train_y, normaliser, others)
            self._statistics_log.added(features[keep], train_y)
        if len(all_y) and trains_sgd:
            schedule = learning_rates(self.schedule, lr, steps_per_fit(len(all_y), passes, batch_size))
            loss = trainer.fit(
                all_f,
                all_y,
                epochs=passes,
                batch_size=batch_size,
                schedule=schedule,
                seed=int(rng.integers(2**31)),
                progress=progress,
            )
        decision = self._judge(loss, current, trainer.parameters(), holdout, encoded.classes)
        if decision.promoted:
            replay.add(train_f, train_y, rng)
            holdout.add(features[to_holdout], labels[to_holdout], rng)
        extra = self._tuned(trainer, holdout) if decision.promoted and self.tune_thresholds else {}
        promoted_writers = trainer.writers()
        if self._statistics is not None and decision.promoted:  # its rows (or a snapshot) into a segment now
            number = self._next_number()
            promoted_writers[STATISTICS_FILE] = self._statistics_log.persist(self.store, number, self._statistics)
            if self._fleet_statistics is not None:  # the index of their segment (a snapshot after a whole file)
                promoted_writers[FLEET_STATISTICS_FILE] = self._fleet_log.persist(
                    self.store, number, self._fleet_statistics
                )
        arrival = {
            "origin": origin,
            "head_learner": self.head_learner,
            "inputs": inputs,
            "samples": len(labels),
            "trained": int(len(train_y)),
            "held_out": int(to_holdout.sum()),
            "replayed": replayed,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "schedule": self.schedule,
            "loss": loss,
            "prequential": prequential,
            "seconds": round(time.monotonic() - started, 3),
        }
        record = self._commit(trainer, decision, promoted_writers, encoded.classes, labels, len(labels), arrival, extra)
        return LearnResult(
            samples=len(labels),
            trained=int(len(train_y)),
            held_out=int(to_holdout.sum()),
            replayed=replayed,
            epochs=epochs,
            loss=loss,
            version=self.version,
            promoted=decision.promoted,
            reason=decision.reason,
            prequential_accuracy=prequential["accuracy"],
            holdout_accuracy=decision.holdout_accuracy,
            new_classes=record.arrival["new_classes"],
        )

    def _commit(
        self,
        trainer: Trainer,
        decision: guard.Decision,
        promoted_writers: dict[str, Callable[[Path], None]],
        classes: list[str],
        labels: np.ndarray | None,
        received: int,
        arrival: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> VersionRecord:
        """Commit the candidate (``promoted_writers``, label map ``classes``) if the guard promoted it; else keep it
        aside and commit the unchanged head. Either way the arrival is recorded; returns the version's record.
        ``extra`` goes into the metadata of a promoted version (a multi-label head's tuned thresholds)."""
        parent = self._version
        number = self._next_number()
        if decision.promoted:
            writers = promoted_writers
        else:
            self._keep_aside(trainer, number)
            writers = self._unchanged_writers(parent)
            classes, labels = self.classes, None
        meta = self._meta(parent, number, decision.promoted, classes, labels, received)
        if decision.promoted and extra:
            meta.update(extra)
        known_accuracy = arrival.get("prequential", {}).get("known_accuracy")
        meta["drift"], signal = update_drift(parent.record.drift if parent else None, known_accuracy, self.drift)
        meta["arrival"] = {
            **arrival,
            "guard": decision.to_dict(),
            "promoted": decision.promoted,
            "new_classes": classes[len(self.classes) :] if decision.promoted else [],
            **({"drift": signal} if signal else {}),
            **({"int8_check": self.int8_check} if self.int8_check else {}),  # issue 17: into metrics.jsonl
        }
        buffers = {"replay": self._replay, "holdout": self._holdout}
        writers[replay_store.BUFFERS_FILE], meta["segments"] = replay_store.persist(self.store, number, buffers, parent)
        for kind, log, suffix in (
            (STATISTICS_FILE, self._statistics_log, OWN),
            (FLEET_STATISTICS_FILE, self._fleet_log, FLEET),
        ):
            # the segments the version's statistics index names: its log's, or, where this learner keeps none (sgd
            # opening an slda state), those of the parent whose index it copies
            if kind in writers and log is not None:
                meta["segments"].update(log.listed())
            elif kind in writers and parent is not None:
                meta["segments"].update(listed_segments(self.store, parent, suffix))
        self._version = self.store.commit(writers, meta, parent)
        if not decision.promoted:
            self._forget_uncommitted()  # the next arrival trains from the head that stayed current
        self._parameters = None
        self._record()
        return self._version.record

    def _record(self) -> None:
        """Append the new version's log lines; the logs derive from committed versions, so a failure waits."""
        try:
            self._logs.record(self._version)
        except OSError:
            self._history_behind = True  # caught up on the next learn

    def _strict_encode(self, y: np.ndarray, origin: str) -> EncodedLabels | tasks.Targets:
        encoded = self.encode(y, origin)
        if encoded.overflow:
            raise DataError(
                f"{origin}: unknown label(s) {encoded.overflow[:5]} do not fit: the head has {self.capacity} outputs, all "
                f"taken by {self.classes}; export the bundle with a larger --max-classes"
            )
        return encoded

    def _prequential(
        self, features: np.ndarray, labels: np.ndarray, parameters: Parameters, known: int
    ) -> dict[str, float | int | None]:
        """Accuracy and log-loss of the current head on an arrival before learning from it (progressive validation);
        ``known_accuracy`` counts only samples of classes the head already knew (the drift signal's input)."""
        if known == 0:
            return {"samples": len(labels), "accuracy": None, "loss": None, "known_accuracy": None}
        probabilities = self._predictor.probabilities(features, parameters, known)
        seen = labels < known
        return {
            "samples": len(labels),
            "accuracy": guard.accuracy(probabilities, labels),
            "loss": guard.log_loss(probabilities, labels),
            "known_accuracy": guard.accuracy(probabilities[seen], labels[seen]) if seen.any() else None,
        }

    def _task_prequential(self, features: np.ndarray, targets: np.ndarray, parameters: Parameters) -> dict[str, Any]:
        """A multi-label or regression head's metric on an arrival before learning from it."""
        head, known = self.bundle.manifest.head, len(self.classes)
        scores = tasks.outputs(head, self._predictor.logits(features, parameters), known)
        return tasks.prequential(head, scores, targets[:, :known], self.thresholds)

    def _tuned(self, trainer: Trainer, holdout: ReplayBuffer | TargetBuffer) -> dict[str, Any]:
        """Per-label thresholds of the promoted head, tuned on the holdout as it is after this arrival."""
        features, targets = self._holdout_targets(holdout)
        if not len(targets):
            return {}
        known = len(self.classes)
        scores = tasks.outputs(self.bundle.manifest.head, self._predictor.logits(features, trainer.parameters()), known)
        return {"thresholds": tasks.tuned_thresholds(scores, targets[:, :known], self.classes)}

    def _holdout_targets(self, holdout: ReplayBuffer | TargetBuffer) -> tuple[np.ndarray, np.ndarray]:
        if self._fixed_holdout is not None:
            return self._fixed_holdout
        return holdout.features, holdout.labels

    def _judge(
        self,
        loss: float | None,
        current: Parameters,
        candidate: Parameters,
        holdout: ReplayBuffer | TargetBuffer,
        classes: list[str],
    ) -> guard.Decision | tasks.TaskDecision:
        """Refuse a diverged head outright; otherwise compare both heads on the holdout as it was before this arrival.

        Both heads choose only among the classes learned before this arrival: a head that learns new classes is
        judged on whether it still tells the old ones apart, not penalised because a new class is now possible.
        """
        if (loss is not None and not np.isfinite(loss)) or not parameters_finite(candidate):
            return guard.Decision(False, f"training diverged (loss {loss}); try a smaller --lr", 0, None, None)
        if self._targets:
            features, targets = self._holdout_targets(holdout)
            head, known = self.bundle.manifest.head, len(classes)
            now, new = (tasks.outputs(head, self._predictor.logits(features, p), known) for p in (current, candidate))
            return tasks.judge(head, self.policy, now, new, targets[:, :known], self.thresholds)
        learned = self.learned_rows(classes)
        features, labels = self._holdout_samples(holdout, classes)
        if not len(labels) or not len(learned):
            return guard.decide(self.policy, None, None)
        now = guard.correct_among(self._predictor.logits(features, current), labels, learned)
        new = guard.correct_among(self._predictor.logits(features, candidate), labels, learned)
        return guard.decide(self.policy, now, new)

    def learned_rows(self, classes: list[str]) -> np.ndarray:
        """Indices into ``classes`` of the classes the current version has learned samples of."""
        counts = self._version.record.class_counts if self._version else {}
        return np.array([i for i, name in enumerate(classes) if counts.get(name, 0) > 0], np.int64)

    def _holdout_samples(self, holdout: ReplayBuffer, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The guard's holdout features and labels (indices into ``classes``); of a fixed holdout, learned classes'."""
        if self._fixed_holdout is None:
            return holdout.features, holdout.labels
        counts = self._version.record.class_counts if self._version else {}
        fixed_features, names = self._fixed_holdout
        index = {name: i for i, name in enumerate(classes)}
        rows = np.array([name in index and counts.get(name, 0) > 0 for name in names], bool)
        return fixed_features[rows], np.array([index[name] for name in names[rows]], np.int64)

    def holdout_correct(
        self, parameters: Parameters, classes: list[str], among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The guard's holdout labels (indices into ``classes``, this device's own first) and, per sample, whether
        head ``parameters`` predicts it right choosing among the ``among`` indices (default: the learned classes)."""
        _trainer, _replay, holdout = self._open()
        features, labels = self._holdout_samples(holdout, classes)
        allowed = self.learned_rows(classes) if among is None else among
        if not len(labels) or not len(allowed):
            return labels, np.zeros(len(labels), bool)
        return labels, guard.correct_among(self._predictor.logits(features, parameters), labels, allowed)

    def _meta(
        self,
        parent: Version | None,
        number: int,
        promoted: bool,
        classes: list[str],
        labels: np.ndarray | None,
        received: int,
    ) -> dict[str, Any]:
        previous = parent.record if parent else None
        counts = dict(previous.class_counts) if previous else {}
        if labels is not None and self._targets:
            for name, count in tasks.label_counts(self.bundle.manifest.head, labels, classes).items():
                counts[name] = counts.get(name, 0) + count
        elif labels is not None:
            for index, count in zip(*np.unique(labels, return_counts=True), strict=True):
                counts[classes[int(index)]] = counts.get(classes[int(index)], 0) + int(count)
        accepted = (previous.samples_accepted if previous else 0) + (len(labels) if labels is not None else 0)
        updates = {"promoted": 0, "refused": 0, **(previous.updates if previous else {})}
        updates["promoted" if promoted else "refused"] += 1
        return {
            **({"thresholds": previous.thresholds} if previous and previous.thresholds is not None else {}),
            "updates": updates,
            "created": datetime.now(timezone.utc).isoformat(),
            "classes": classes,
            "class_counts": counts,
            "samples_accepted": accepted,
            "samples_received": (previous.samples_received if previous else 0) + received,
            "head_version": number if promoted else ((previous.head_version or 0) if previous else 0),
            "head_source": number if promoted else (previous.trained_head if previous else 0),
        }

    def _next_number(self) -> int:
        """The number the next commit gives its version."""
        return (self._version.number if self._version else 0) + 1

    def _unchanged_writers(
        self, parent: Version | None, skip: tuple[str, ...] = ()
    ) -> dict[str, Callable[[Path], None]]:
        """Writers that copy the current version's files (but the kinds in ``skip``, and the buffers: ``_commit``
        stores those) into the next version; before the first version, the bundle's starting head."""
        skip = (*skip, *replay_store.BUFFER_KINDS)
        sources = {kind: path for kind, path in (parent.files if parent else {}).items() if kind not in skip}
        writers: dict[str, Callable[[Path], None]] = {
            kind: (lambda dst, src=src: shutil.copyfile(src, dst)) for kind, src in sources.items()
        }
        if parent is None and HEAD_STATE_FILE not in skip:
            writers[HEAD_STATE_FILE] = stored_state(self.bundle, None).save
        return writers

    def _keep_aside(self, trainer: Trainer, number: int) -> None:
        """Save a refused candidate head as ``rejected/NNNNNN.head.npz`` for inspection (the newest few are kept)."""
        folder = self.store.root / REJECTED_DIR
        make_directory(folder)
        write_atomic(folder / f"{number:06d}.{HEAD_STATE_FILE}", trainer.state().save)
        for old in sorted(folder.glob(f"*.{HEAD_STATE_FILE}"))[:-KEEP_REJECTED]:
            old.unlink(missing_ok=True)

    def _forget_uncommitted(self) -> None:
        """Drop in-memory training state so the next call reloads the committed version."""
        self._trainer = self._replay = self._holdout = None
        self._parameters = self._statistics = self._fleet_statistics = self._statistics_log = self._fleet_log = None

    def _open(self) -> tuple[Trainer, ReplayBuffer | TargetBuffer, ReplayBuffer | TargetBuffer]:
        """Take the lock, then load the current head, its replay buffer and holdout for training."""
        if self._trainer is None or self._replay is None or self._holdout is None:
            self.store.acquire()
            self._history_behind = True
            self._version = self.store.current()
            files = self._version.files if self._version else None
            self._trainer = open_trainer(self.bundle, files, self.placement, self.trainer_kind)
            replay, holdout = self._new_buffer(self._replay_per_class), self._new_buffer(self.policy.holdout_per_class)
            replay_store.load(self.store, self._version, {"replay": replay, "holdout": holdout})
            self._replay, self._holdout = replay, holdout
            if self._closed_form is not None:
                stored = stored_statistics(self._closed_form, self.bundle, self.store, self._version)
                self._statistics, self._statistics_log = stored
                fleet = stored_fleet_statistics(self._closed_form, self.bundle, self.store, self._version)
                self._fleet_statistics, self._fleet_log = fleet if fleet else (None, None)
        if self._history_behind:
            self._logs.catch_up(self.store)
            self._history_behind = False
        return self._trainer, self._replay, self._holdout

    def _new_buffer(self, per_class: int) -> ReplayBuffer | TargetBuffer:
        head = self.bundle.manifest.head
        if self._targets:
            return TargetBuffer(head.task, head.feature_dim, head.num_outputs, per_class)
        return ReplayBuffer(head.feature_dim, head.num_outputs, per_class)

    def _embed_holdout(self, holdout: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Features and label names of a fixed holdout set (names, since the label map may still grow)."""
        x, y = holdout
        _check_lengths(len(x), len(y), "holdout")
        if self._targets:
            return self.embed(x, "holdout"), self.encode(y, "holdout").values
        names = label_names(np.asarray(y), self.classes, "holdout").astype(str)
        return self.embed(x, "holdout"), names

    def close(self) -> None:
        """Release the state directory's lock."""
        self.store.release()

    def __enter__(self) -> Adapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_lengths(samples: int, labels: int, origin: str) -> None:
    if samples != labels:
        raise DataError(f"{origin}: {samples} samples but {labels} labels; give exactly one label per sample")
