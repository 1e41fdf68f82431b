"""The portable trainer: the bundle's train-step graph (standard ONNX ops) in a plain InferenceSession.

Parameters and optimizer state live in ONNX Runtime-owned OrtValues between steps, in two banks bound by two
IOBindings: a step reads one bank and writes the other, then the roles swap, so no numpy round trip happens per
step. Needs only plain ``onnxruntime`` (any version, any CPU, any execution provider).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

from edgeft.bundle import TRAIN_STEP_FILE, Bundle
from edgeft.common.ort import Placement
from edgeft.errors import EdgeftError
from edgeft.head_state import HeadState, state_owner
from edgeft.runtime.epochs import EpochTrainer
from edgeft.runtime.features import session_options

HEAD_STATE_FILE = "head.npz"
LOSS, FEATURES, LABELS, LEARNING_RATE, STEP = "loss", "features", "labels", "lr", "step"
NEW_PREFIX = "new."
# The head's ops are tiny: a second intra-op thread only adds synchronisation (BENCHMARKS.md).
HEAD_TRAINING_THREADS = 1

Parameters = dict[str, np.ndarray]


class OnnxTrainer(EpochTrainer):
    """Trains the head with the bundle's portable train step, starting from ``state``."""

    name = "onnx"

    def __init__(self, bundle: Bundle, state: HeadState, placement: Placement) -> None:
        head = bundle.manifest.head
        self._session = onnxruntime.InferenceSession(
            str(bundle.train_path(TRAIN_STEP_FILE)),
            sess_options=session_options(HEAD_TRAINING_THREADS),
            providers=list(placement.providers),
        )
        specs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        self._moving = [o[len(NEW_PREFIX) :] for o in outputs if o.startswith(NEW_PREFIX)]
        self._trainable = [n for n in head.trainable if n in self._moving]
        self._normaliser = head.normaliser
        self.label_dtype = np.int64 if head.loss == "cross_entropy" else np.float32
        self._device = "cuda" if placement.name == "cuda" else "cpu"
        fixed = [n for n in specs if n not in (FEATURES, LABELS, LEARNING_RATE, STEP) and n not in self._moving]
        missing = [n for n in [*self._moving, *fixed] if n not in specs]
        if missing or set(self._trainable) != set(head.trainable):
            raise EdgeftError(f"{bundle.train_path(TRAIN_STEP_FILE)} does not match the manifest's head ({missing})")
        optimizer_state = state.optimizer if set(state.optimizer) == set(self._moving) - set(head.trainable) else {}
        values = {**state.parameters, **optimizer_state}
        for name in self._moving:
            if name not in values:  # a fresh optimizer: zero moments
                values[name] = np.zeros(state.parameters[state_owner(name, self._trainable)].shape, np.float32)
        self._steps = state.step if optimizer_state else 0
        self._banks = [{n: self._ort_value(values[n]) for n in self._moving} for _ in range(2)]
        self._fixed = {n: self._ort_value(values[n]) for n in fixed}
        self._scalars = {n: self._ort_value(np.zeros((), np.float32)) for n in (LEARNING_RATE, STEP)}
        self._loss = self._ort_value(np.zeros((), np.float32))
        self._bindings = [self._binding(self._banks[k], self._banks[1 - k]) for k in range(2)]
        self._current = 0
        self._check_shapes(specs, bundle)

    def _ort_value(self, array: np.ndarray) -> onnxruntime.OrtValue:
        """An OrtValue that owns its memory (no aliasing of a numpy array that could be freed), holding ``array``."""
        value = onnxruntime.OrtValue.ortvalue_from_shape_and_type(array.shape, np.float32, self._device, 0)
        value.update_inplace(np.asarray(array, dtype=np.float32, order="C"))
        return value

    def _binding(self, source: dict[str, onnxruntime.OrtValue], target: dict[str, onnxruntime.OrtValue]) -> object:
        binding = self._session.io_binding()
        for name, value in [*source.items(), *self._fixed.items(), *self._scalars.items()]:
            binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(LOSS, self._loss)
        for name, value in target.items():
            binding.bind_ortvalue_output(NEW_PREFIX + name, value)
        return binding

    def _check_shapes(self, specs: dict[str, onnxruntime.NodeArg], bundle: Bundle) -> None:
        for name, value in [*self._banks[0].items(), *self._fixed.items()]:
            if list(value.shape()) != list(specs[name].shape):
                raise EdgeftError(
                    f"{name} has shape {value.shape()}, {bundle.train_path(TRAIN_STEP_FILE)} expects {specs[name].shape}"
                )

    def parameters(self) -> Parameters:
        """Copies of every head parameter (trainable and frozen)."""
        bank = self._banks[self._current]
        values = {n: bank[n] for n in self._trainable} | self._fixed
        return {n: _copy(v) for n, v in values.items()}

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Copies of the optimizer-state tensors (AdamW moments, SGD velocity)."""
        bank = self._banks[self._current]
        return {n: _copy(bank[n]) for n in self._moving if n not in self._trainable}

    def set_parameters(self, parameters: Parameters) -> None:
        """Replace the head's parameters (all of them, same names and shapes) with ``parameters``."""
        current = {**self._banks[self._current], **self._fixed}
        wanted = set(self._trainable) | set(self._fixed)
        if set(parameters) != wanted:
            raise ValueError(f"parameters {sorted(parameters)} do not match the head's {sorted(wanted)}")
        for name, value in parameters.items():
            if tuple(value.shape) != tuple(current[name].shape()):
                raise ValueError(f"parameter {name} has shape {value.shape}, the head's is {current[name].shape()}")
        for name, value in parameters.items():
            current[name].update_inplace(np.ascontiguousarray(value, dtype=np.float32))

    def set_normaliser(self, mean: np.ndarray, scale: np.ndarray) -> None:
        """Fix the frozen feature standardisation (done once, before the first training step); some heads have none."""
        if self._normaliser:
            self._fixed[self._normaliser["mean"]].update_inplace(np.ascontiguousarray(mean, np.float32))
            self._fixed[self._normaliser["scale"]].update_inplace(np.ascontiguousarray(scale, np.float32))

    def step(self, features: np.ndarray, labels: np.ndarray, lr: float) -> float:
        """One optimizer step on one batch; returns its loss."""
        binding = self._bindings[self._current]
        binding.bind_cpu_input(FEATURES, np.ascontiguousarray(features, np.float32))
        binding.bind_cpu_input(LABELS, np.ascontiguousarray(labels, self.label_dtype))
        self._steps += 1
        self._scalars[LEARNING_RATE].update_inplace(np.array(lr, np.float32))
        self._scalars[STEP].update_inplace(np.array(self._steps, np.float32))
        self._session.run_with_iobinding(binding)
        self._current = 1 - self._current
        return float(self._loss.numpy())

    def state(self) -> HeadState:
        """Parameters, optimizer state and step count, as one backend-neutral record."""
        return HeadState(self.parameters(), self.optimizer_state(), self._steps)

    def writers(self) -> dict[str, Callable[[Path], None]]:
        """The version files this trainer writes: its head state."""
        return {HEAD_STATE_FILE: lambda path: self.state().save(path)}


def _copy(value: onnxruntime.OrtValue) -> np.ndarray:
    """A numpy copy of an OrtValue (``numpy()`` of a CPU value is a view of memory the next steps overwrite)."""
    return np.array(value.numpy(), copy=True)
