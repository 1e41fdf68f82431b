"""The trainer interface the Adapter and the fleet use, the choice between the two trainers, and head inference.

Two trainers implement ``Trainer``: ``onnx`` (the portable train step in plain onnxruntime, any CPU or execution
provider; ``edgeft.runtime.onnx_trainer``) and ``ort`` (ONNX Runtime training, the ``edgeft[ort]`` extra;
``edgeft.runtime.ort_trainer``). Both read and write the backend-neutral head state (``edgeft.head_state``), so
replay, the guard, the fleet and the state directory do not know which one runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime

from edgeft.bundle import INITIAL_HEAD_FILE, Bundle
from edgeft.common.ort import Placement
from edgeft.errors import EdgeftError
from edgeft.head_state import HeadState
from edgeft.runtime.features import session_options
from edgeft.runtime.onnx_trainer import HEAD_STATE_FILE, HEAD_TRAINING_THREADS, OnnxTrainer, Parameters
from edgeft.runtime.replay import Rows
from edgeft.runtime.schedule import Schedule

TRAINERS = ("auto", "onnx", "ort")
ORT_CHECKPOINT_FILE = "ckpt"
PREDICT_ROWS = 1024
_DESCRIBED = {"onnx": "portable train step (train/train_step.onnx)", "ort": "ORT training artifacts"}


class Trainer(Protocol):
    """What learning needs of a trainer: train, read and replace parameters, and write its version files."""

    name: str

    def parameters(self) -> Parameters: ...

    def set_parameters(self, parameters: Parameters) -> None: ...

    def set_normaliser(self, mean: np.ndarray, scale: np.ndarray) -> None: ...

    def fit(
        self,
        features: np.ndarray | Rows,
        labels: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        schedule: Schedule,
        seed: int,
        progress: Callable[[int], None] | None = None,
    ) -> float: ...

    def state(self) -> HeadState: ...

    def writers(self) -> dict[str, Callable[[Path], None]]: ...


def trainer_name(wanted: str) -> str:
    """``wanted`` normalised (``auto``, ``onnx`` or ``ort``), or a clear error."""
    choice = wanted.strip().lower()
    if choice not in TRAINERS:
        raise EdgeftError(f"unknown trainer '{wanted}'; choose one of {', '.join(TRAINERS)}")
    return choice


def choose_trainer(bundle: Bundle, wanted: str = "auto") -> str:
    """``onnx`` or ``ort`` for ``wanted`` (``auto``: the portable trainer whenever the bundle carries it), or a
    clear error when the bundle lacks that trainer's files or ORT training is not installed."""
    choice = trainer_name(wanted)
    carried = bundle.manifest.head.trainers
    if choice == "auto":
        choice = "onnx" if "onnx" in carried else "ort"
    if choice not in carried:
        advice = (
            "re-export it with this edgeft to add the portable train step"
            if choice == "onnx"
            else "use --trainer onnx, or re-export it with --ort-artifacts"
        )
        raise EdgeftError(f"bundle {bundle.path} carries no {_DESCRIBED[choice]}; {advice}")
    if choice == "ort":
        from edgeft.common.ort import training_api

        try:
            training_api()
        except EdgeftError as exc:
            if "onnx" in carried:
                raise
            raise EdgeftError(
                f"bundle {bundle.path} carries only ORT training artifacts (an older edgeft made it) and ONNX Runtime "
                "training is not installed: re-export the bundle with this edgeft (it adds the portable train step), "
                "or pip install 'edgeft[ort]' (x86_64, Python <= 3.12)"
            ) from exc
    return choice


def stored_state(bundle: Bundle, files: Mapping[str, Path] | None) -> HeadState:
    """The head state of a version (its files by kind), or the bundle's starting head when ``files`` is None.

    A version written before the head-state format (an ORT checkpoint only) is read with ORT training.
    """
    if files:
        if HEAD_STATE_FILE in files:
            return HeadState.load(files[HEAD_STATE_FILE])
        if ORT_CHECKPOINT_FILE in files:
            return HeadState(_ort_parameters(files[ORT_CHECKPOINT_FILE]))
        raise EdgeftError(f"state version files {sorted(map(str, files.values()))} hold no head")
    if "onnx" in bundle.manifest.head.trainers:
        return HeadState.load(bundle.train_path(INITIAL_HEAD_FILE))
    return HeadState(_ort_parameters(bundle.train_path("checkpoint")))


def _ort_parameters(checkpoint: Path) -> Parameters:
    from edgeft.runtime.ort_trainer import checkpoint_parameters

    return checkpoint_parameters(checkpoint)


def open_trainer(bundle: Bundle, files: Mapping[str, Path] | None, placement: Placement, kind: str) -> Trainer:
    """A ``kind`` trainer (from ``choose_trainer``) starting at a version's files, or at the bundle's head."""
    if kind == "onnx":
        return OnnxTrainer(bundle, stored_state(bundle, files), placement)
    from edgeft.runtime.ort_trainer import OrtTrainer

    if placement.name not in ("cpu", "cuda"):
        raise EdgeftError(f"ORT training runs on CPU or CUDA only, not {placement.name}; use --trainer onnx")
    if files and ORT_CHECKPOINT_FILE in files:
        return OrtTrainer(bundle, files[ORT_CHECKPOINT_FILE], placement)  # its own moments carry over
    start = stored_state(bundle, files) if files else bundle.train_path("checkpoint")
    return OrtTrainer(bundle, start, placement)


def steps_per_fit(samples: int, epochs: int, batch_size: int) -> int:
    """Optimizer steps a trainer's ``fit`` takes for ``samples`` samples."""
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
        """The head's raw outputs for each feature vector, all outputs (reserved ones included), ``PREDICT_ROWS``
        vectors a run: the session's working memory stays that of a few thousand vectors, whatever the arrival."""
        feeds = {inp.name: parameters[inp.name] for inp in self._session.get_inputs()[1:]}
        chunks = [features[i : i + PREDICT_ROWS] for i in range(0, len(features), PREDICT_ROWS)] or [features]
        return np.concatenate([self._session.run(None, {self._features_input: c, **feeds})[0] for c in chunks])

    def probabilities(self, features: np.ndarray, parameters: Parameters, known: int) -> np.ndarray:
        """Softmax probabilities over the first ``known`` outputs (the classes seen so far) for each vector."""
        logits = self.logits(features, parameters)[:, :known]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
