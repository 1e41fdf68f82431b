"""The ORT trainer: the head trained by ONNX Runtime training's Module and Optimizer (``edgeft[ort]``, x86_64 only).

It keeps ORT's own checkpoint beside the backend-neutral head state, so its AdamW moments carry over between its own
versions; starting from a head state (one the portable trainer wrote) it begins with fresh optimizer state.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeft.bundle import Bundle
from edgeft.common.ort import Placement, training_api
from edgeft.head_state import HeadState
from edgeft.runtime.epochs import EpochTrainer
from edgeft.runtime.features import session_options
from edgeft.runtime.onnx_trainer import HEAD_STATE_FILE, HEAD_TRAINING_THREADS, Parameters

ORT_CHECKPOINT_FILE = "ckpt"


def checkpoint_parameters(checkpoint: Path) -> Parameters:
    """Copies of every head parameter stored in an ORT checkpoint."""
    state = training_api().CheckpointState.load_checkpoint(str(checkpoint))
    return {name: param.data.copy() for name, param in state.parameters}


class OrtTrainer(EpochTrainer):
    """ORT training of the head from an ORT checkpoint (a state version's, or the bundle's) or from a head state.

    The training Module always runs on ``HEAD_TRAINING_THREADS`` intra-op threads.
    """

    name = "ort"

    def __init__(self, bundle: Bundle, start: Path | HeadState, placement: Placement) -> None:
        api = training_api()
        checkpoint = start if isinstance(start, Path) else bundle.train_path("checkpoint")
        self._state = api.CheckpointState.load_checkpoint(str(checkpoint))
        self._module = api.Module(
            str(bundle.train_path("training_model.onnx")),
            self._state,
            str(bundle.train_path("eval_model.onnx")),
            device=placement.training_device,
            session_options=session_options(HEAD_TRAINING_THREADS),
        )
        self._optimizer = api.Optimizer(str(bundle.train_path("optimizer_model.onnx")), self._module)
        self._module.train()  # the Module only ever trains here (heads predict through head.onnx)
        self._normaliser = bundle.manifest.head.normaliser
        self.label_dtype = np.int64 if bundle.manifest.head.loss == "cross_entropy" else np.float32
        if isinstance(start, HeadState):
            self.set_parameters(start.parameters)

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

    def step(self, features: np.ndarray, labels: np.ndarray, lr: float) -> float:
        """One optimizer step on one batch; returns its loss."""
        loss, _logits = self._module(features, labels)
        self._optimizer.set_learning_rate(lr)
        self._optimizer.step()
        self._module.lazy_reset_grad()
        return float(loss)

    def state(self) -> HeadState:
        """The parameters as a backend-neutral head state (ORT does not expose its optimizer state: none kept)."""
        return HeadState(self.parameters())

    def writers(self) -> dict[str, Callable[[Path], None]]:
        """The version files this trainer writes: the head state, and ORT's own checkpoint."""
        return {HEAD_STATE_FILE: lambda path: self.state().save(path), ORT_CHECKPOINT_FILE: self.save}

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
