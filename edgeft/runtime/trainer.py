"""The trainable head: ORT training Module and Optimizer over feature vectors, and head inference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

from edgeft.bundle import Bundle
from edgeft.runtime.features import session_options
from edgeft.runtime.ort import Placement, training_api

Parameters = dict[str, np.ndarray]
# The head's ops (a [batch, features] x [features, classes] GEMM and AdamW on its weights) are too small to split:
# a second intra-op thread only adds synchronisation (replay steps ran 1.1-2.5x faster on one thread, BENCHMARKS.md).
HEAD_TRAINING_THREADS = 1


def checkpoint_parameters(checkpoint: Path) -> Parameters:
    """Copies of every head parameter stored in an ORT checkpoint."""
    state = training_api().CheckpointState.load_checkpoint(str(checkpoint))
    return {name: param.data.copy() for name, param in state.parameters}


def feature_normaliser(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and inverse standard deviation per feature, with a variance floor relative to the average."""
    mean = features.mean(axis=0)
    var = features.var(axis=0) if len(features) > 1 else np.ones_like(mean)
    floor = 1e-4 * float(var.mean()) + 1e-12
    return mean.astype(np.float32), (1.0 / np.sqrt(var + floor)).astype(np.float32)


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

    def parameters(self) -> Parameters:
        """Copies of the current head parameters."""
        return {name: param.data.copy() for name, param in self._state.parameters}

    def set_normaliser(self, mean: np.ndarray, scale: np.ndarray) -> None:
        """Fix the frozen feature standardisation (done once, before the first training step)."""
        self._state.parameters[self._normaliser["mean"]] = mean
        self._state.parameters[self._normaliser["scale"]] = scale

    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
        progress: Callable[[int], None] | None = None,
    ) -> float:
        """Train on shuffled mini-batches for ``epochs``; return the mean loss of the last epoch."""
        rng = np.random.default_rng(seed)
        labels = labels.astype(np.int64)
        self._module.train()
        self._optimizer.set_learning_rate(lr)
        last_epoch_loss = float("nan")
        for _ in range(epochs):
            order = rng.permutation(len(features))
            total = 0.0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                loss, _logits = self._module(features[idx], labels[idx])
                self._optimizer.step()
                self._module.lazy_reset_grad()
                total += float(loss) * len(idx)
            last_epoch_loss = total / max(len(order), 1)
            if progress:
                progress(1)
        return last_epoch_loss

    def save(self, path: Path) -> None:
        """Write the head parameters and optimizer state to ``path`` (an ORT checkpoint)."""
        training_api().CheckpointState.save_checkpoint(self._state, str(path), include_optimizer_state=True)


class HeadPredictor:
    """``head.onnx`` in an InferenceSession, fed with any checkpoint's parameters."""

    def __init__(self, bundle: Bundle, placement: Placement, threads: int | None = None) -> None:
        self._session = onnxruntime.InferenceSession(
            str(bundle.head_path), sess_options=session_options(threads), providers=list(placement.providers)
        )
        self._features_input = self._session.get_inputs()[0].name

    def probabilities(self, features: np.ndarray, parameters: Parameters) -> np.ndarray:
        """Softmax class probabilities for each feature vector."""
        feeds = {inp.name: parameters[inp.name] for inp in self._session.get_inputs()[1:]}
        logits = self._session.run(None, {self._features_input: features, **feeds})[0]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
