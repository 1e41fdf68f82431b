"""The trainable head: ORT training Module and Optimizer over feature vectors, and head inference."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

from edgeft.bundle import Bundle
from edgeft.runtime.features import session_options
from edgeft.runtime.ort import Placement, training_api
from edgeft.runtime.schedule import Schedule

Parameters = dict[str, np.ndarray]
# The head's ops (a [batch, features] x [features, classes] GEMM and AdamW on its weights) are too small to split:
# a second intra-op thread only adds synchronisation (replay steps ran 1.1-2.5x faster on one thread, BENCHMARKS.md).
HEAD_TRAINING_THREADS = 1


def checkpoint_parameters(checkpoint: Path) -> Parameters:
    """Copies of every head parameter stored in an ORT checkpoint."""
    state = training_api().CheckpointState.load_checkpoint(str(checkpoint))
    return {name: param.data.copy() for name, param in state.parameters}


def steps_per_fit(samples: int, epochs: int, batch_size: int) -> int:
    """Optimizer steps ``HeadTrainer.fit`` takes for ``samples`` samples."""
    return epochs * -(-samples // batch_size)


def parameters_finite(parameters: Parameters) -> bool:
    """True when no parameter holds NaN or infinity."""
    return all(np.isfinite(value).all() for value in parameters.values())


def feature_normaliser(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean, and one scale for all features: the inverse of their root-mean-square deviation.

    One shared scale makes the learning rate independent of the backbone's feature magnitude while keeping the
    features' relative scales: per-feature scales fitted on a first arrival that holds only some classes blow up
    features that barely vary among those classes (measured in tools/bench_continual.py and BENCHMARKS.md).
    """
    mean = features.mean(axis=0)
    spread = float(features.var(axis=0).mean()) if len(features) > 1 else 1.0
    scale = 1.0 / np.sqrt(spread) if spread > 1e-12 else 1.0
    return mean.astype(np.float32), np.full(features.shape[1], scale, np.float32)


class HeadTrainer:
    """ORT training of the head from one checkpoint onwards (the bundle's initial one or a state version).

    The training Module always runs on ``HEAD_TRAINING_THREADS`` intra-op threads, whatever ``threads`` says.
    """

    def __init__(self, bundle: Bundle, checkpoint: Path, placement: Placement, threads: int | None = None) -> None:
        api = training_api()
        self._state = api.CheckpointState.load_checkpoint(str(checkpoint))
        self._module = api.Module(
            str(bundle.train_path("training_model.onnx")),
            self._state,
            str(bundle.train_path("eval_model.onnx")),
            device=placement.training_device,
            session_options=session_options(HEAD_TRAINING_THREADS),
        )
        self._optimizer = api.Optimizer(str(bundle.train_path("optimizer_model.onnx")), self._module)
        self._normaliser = bundle.manifest.head.normaliser
        self._label_dtype = np.int64 if bundle.manifest.head.loss == "cross_entropy" else np.float32

    def parameters(self) -> Parameters:
        """Copies of the current head parameters."""
        return {name: param.data.copy() for name, param in self._state.parameters}

    def set_parameters(self, parameters: Parameters) -> None:
        """Replace the head's parameters (all of them, same names and shapes) with ``parameters``."""
        current = self.parameters()
        if set(parameters) != set(current):
            raise ValueError(f"parameters {sorted(parameters)} do not match the head's {sorted(current)}")
        for name, value in parameters.items():
            if value.shape != current[name].shape:
                raise ValueError(f"parameter {name} has shape {value.shape}, the head's is {current[name].shape}")
            self._state.parameters[name] = np.ascontiguousarray(value, dtype=current[name].dtype)

    def set_normaliser(self, mean: np.ndarray, scale: np.ndarray) -> None:
        """Fix the frozen feature standardisation (done once, before the first training step); some heads have none."""
        if not self._normaliser:
            return
        self._state.parameters[self._normaliser["mean"]] = mean
        self._state.parameters[self._normaliser["scale"]] = scale

    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        schedule: Schedule,
        seed: int,
        progress: Callable[[int], None] | None = None,
    ) -> float:
        """Train on shuffled mini-batches for ``epochs``, the learning rate of step k being ``schedule(k)``.

        Returns the mean loss of the last epoch.
        """
        rng = np.random.default_rng(seed)
        labels = labels.astype(self._label_dtype)  # class indices; float 0/1 matrices or targets for other losses
        self._module.train()
        last_epoch_loss = float("nan")
        step = 0
        for _ in range(epochs):
            order = rng.permutation(len(features))
            total = 0.0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                loss, _logits = self._module(features[idx], labels[idx])
                self._optimizer.set_learning_rate(schedule(step))
                step += 1
                self._optimizer.step()
                self._module.lazy_reset_grad()
                total += float(loss) * len(idx)
            last_epoch_loss = total / max(len(order), 1)
            if progress:
                progress(1)
        return last_epoch_loss

    def save(self, path: Path) -> None:
        """Write the head parameters and optimizer state to ``path`` (an ORT checkpoint), and read it back.

        ONNX Runtime does not report a failed write (a full disk leaves a short file behind); reading it back does.
        """
        api = training_api()
        api.CheckpointState.save_checkpoint(self._state, str(path), include_optimizer_state=True)
        try:
            api.CheckpointState.load_checkpoint(str(path))
        except RuntimeError:
            raise OSError(
                errno.EIO, "ONNX Runtime wrote an incomplete checkpoint (is the disk full?)", str(path)
            ) from None


class HeadPredictor:
    """``head.onnx`` in an InferenceSession, fed with any checkpoint's parameters."""

    def __init__(self, bundle: Bundle, placement: Placement, threads: int | None = None) -> None:
        # One thread, like training: the head's ops are tiny, and a pool's spinning threads would compete with the
        # backbone for the cores (``threads`` is kept for callers; the backbone session uses it).
        self._session = onnxruntime.InferenceSession(
            str(bundle.head_path),
            sess_options=session_options(HEAD_TRAINING_THREADS),
            providers=list(placement.providers),
        )
        self._features_input = self._session.get_inputs()[0].name

    def logits(self, features: np.ndarray, parameters: Parameters) -> np.ndarray:
        """The head's raw outputs for each feature vector, all outputs (reserved ones included)."""
        feeds = {inp.name: parameters[inp.name] for inp in self._session.get_inputs()[1:]}
        return self._session.run(None, {self._features_input: features, **feeds})[0]

    def probabilities(self, features: np.ndarray, parameters: Parameters, known: int) -> np.ndarray:
        """Softmax probabilities over the first ``known`` outputs (the classes seen so far) for each vector."""
        logits = self.logits(features, parameters)[:, :known]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
