"""``Adapter``: a bundle plus a device's state directory; learns from labelled data and predicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgeft.bundle import Bundle
from edgeft.errors import DataError, EdgeftError
from edgeft.runtime.features import FeatureExtractor
from edgeft.runtime.ort import Placement, resolve_placement
from edgeft.runtime.replay import ReplayBuffer
from edgeft.runtime.sources import encode_labels
from edgeft.runtime.store import StateStore, Version
from edgeft.runtime.trainer import HeadPredictor, HeadTrainer, Parameters, checkpoint_parameters, feature_normaliser

Progress = Callable[[int], None]


@dataclass(frozen=True)
class LearnResult:
    """What one ``learn`` call did."""

    samples: int
    replayed: int
    epochs: int
    loss: float
    version: int


class Adapter:
    """Learn a bundle's head from new labelled data on this device, and predict with the latest head.

    ``replay_per_class`` overrides the bundle's replay buffer size (0 turns replay off).
    Learning takes the state directory's lock (one writer at a time) and commits a new version after
    every call; prediction reads the current version and needs no lock.
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        state: str | Path,
        *,
        ep: str = "auto",
        threads: int | None = None,
        replay_per_class: int | None = None,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.placement: Placement = resolve_placement(ep)
        self.store = StateStore(state, self.bundle.fingerprint)
        self._threads = threads
        defaults = self.bundle.manifest.defaults
        self._replay_per_class = defaults.replay_per_class if replay_per_class is None else replay_per_class
        self._features = FeatureExtractor(self.bundle, self.placement, threads)
        self._predictor = HeadPredictor(self.bundle, self.placement, threads)
        self._trainer: HeadTrainer | None = None
        self._replay: ReplayBuffer | None = None
        self._version: Version | None = self.store.current()
        self._parameters: Parameters | None = None

    @property
    def classes(self) -> list[str]:
        return self.bundle.manifest.classes

    @property
    def version(self) -> int:
        """The current committed version number (0: nothing learned yet)."""
        return self._version.number if self._version else 0

    def _checkpoint(self) -> Path:
        return self._version.checkpoint if self._version else self.bundle.train_path("checkpoint")

    def parameters(self) -> Parameters:
        """The current head parameters (the bundle's initial head before anything was learned)."""
        if self._trainer is not None:
            return self._trainer.parameters()
        if self._parameters is None:
            self._parameters = checkpoint_parameters(self._checkpoint())
        return self._parameters

    def embed(self, x: np.ndarray, origin: str = "input", progress: Progress | None = None) -> np.ndarray:
        """Backbone features of raw inputs ``x`` (checked against the bundle's input spec)."""
        return self._features.embed(self._features.check(np.asarray(x), origin), progress)

    def predict_proba(self, x: np.ndarray, origin: str = "input") -> np.ndarray:
        """Class probabilities [N, classes] for raw inputs."""
        return self.predict_proba_features(self.embed(x, origin))

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities for precomputed backbone features."""
        return self._predictor.probabilities(features, self.parameters())

    def predict(self, x: np.ndarray, origin: str = "input") -> list[str]:
        """Predicted class names for raw inputs."""
        return [self.classes[i] for i in self.predict_proba(x, origin).argmax(axis=1)]

    def evaluate(self, x: np.ndarray, y: np.ndarray, origin: str = "input") -> float:
        """Accuracy of the current head on labelled raw inputs."""
        labels = encode_labels(np.asarray(y), self.classes, origin)
        return float((self.predict_proba(x, origin).argmax(axis=1) == labels).mean())

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
        progress: Progress | None = None,
    ) -> LearnResult:
        """Embed ``x``, train the head on (features, ``y``), and commit a new version atomically."""
        labels = encode_labels(np.asarray(y), self.classes, origin)
        _check_lengths(len(x), len(labels), origin)
        features = self.embed(x, origin, progress)
        return self.learn_features(
            features, labels, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, origin=origin, progress=progress
        )

    def learn_features(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        seed: int | None = None,
        origin: str = "input",
        progress: Progress | None = None,
    ) -> LearnResult:
        """Train the head on precomputed features and class indices; commit a new version."""
        defaults = self.bundle.manifest.defaults
        epochs = defaults.epochs if epochs is None else epochs
        batch_size = defaults.batch_size if batch_size is None else batch_size
        lr = defaults.lr if lr is None else lr
        seed = defaults.seed if seed is None else seed
        if epochs < 1 or batch_size < 1 or not lr > 0:
            raise EdgeftError(
                f"epochs and batch size must be at least 1 and lr positive (got {epochs}, {batch_size}, {lr})"
            )
        if len(features) == 0:
            raise DataError(f"{origin}: no samples to learn from")
        _check_lengths(len(features), len(labels), origin)
        trainer, replay = self._open_trainer()
        if self._version is None:
            trainer.set_normaliser(*feature_normaliser(features))
        replayed = len(replay)
        train_features = np.concatenate([features, replay.features]) if replayed else features
        train_labels = np.concatenate([labels, replay.labels]) if replayed else labels
        # Each version trains with its own random stream, so repeated arrivals are not shuffled alike.
        rng_seed = seed + self.version
        loss = trainer.fit(
            train_features, train_labels, epochs=epochs, batch_size=batch_size, lr=lr, seed=rng_seed, progress=progress
        )
        if not np.isfinite(loss):
            self._trainer = self._replay = None  # the next call starts again from the last committed version
            raise EdgeftError(f"{origin}: training diverged (loss {loss}); nothing was committed, try a smaller --lr")
        previous = self._version.meta if self._version else {}
        counts = dict(previous.get("class_counts", {}))
        for index, count in zip(*np.unique(labels, return_counts=True), strict=True):
            name = self.classes[int(index)]
            counts[name] = counts.get(name, 0) + int(count)
        replay.add(features, labels, np.random.default_rng(rng_seed))
        self._version = self.store.commit(
            {"ckpt": trainer.save, "replay.npz": replay.save},
            {
                "created": datetime.now(timezone.utc).isoformat(),
                "samples_seen": int(previous.get("samples_seen", 0)) + len(features),
                "class_counts": counts,
                "last_update": {
                    "origin": origin,
                    "samples": len(features),
                    "replayed": replayed,
                    "epochs": epochs,
                    "batch_size": batch_size,
                    "lr": lr,
                    "loss": loss,
                },
            },
        )
        return LearnResult(len(features), replayed, epochs, loss, self._version.number)

    def _open_trainer(self) -> tuple[HeadTrainer, ReplayBuffer]:
        """Take the lock, then load the current head and its replay buffer for training."""
        if self._trainer is None or self._replay is None:
            self.store.acquire()
            self._version = self.store.current()
            self._trainer = HeadTrainer(self.bundle, self._checkpoint(), self.placement, self._threads)
            self._replay = self._load_replay()
        return self._trainer, self._replay

    def _load_replay(self) -> ReplayBuffer:
        head = self.bundle.manifest.head
        per_class = self._replay_per_class
        if self._version is None or "replay.npz" not in self._version.files:
            return ReplayBuffer(head.feature_dim, head.num_outputs, per_class)
        return ReplayBuffer.load(self._version.files["replay.npz"], head.feature_dim, head.num_outputs, per_class)

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
