"""ONNX Runtime training artifacts for the head: training, eval and optimizer graphs plus a checkpoint."""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeft import _ort_shell
from edgeft.bundle import TRAIN_ARTIFACTS
from edgeft.common.ort import training_api, training_artifacts
from edgeft.errors import EdgeftError
from edgeft.export.head import LOGITS_OUTPUT, MAX_IR_VERSION

LOSSES = {"cross_entropy": "CrossEntropyLoss", "bce_with_logits": "BCEWithLogitsLoss", "mse": "MSELoss", "l1": "L1Loss"}
OPTIMIZERS = ("adamw", "sgd")
_NO_GRADIENT = re.compile(r"gradient builder has not been registered: (\S+) for node (\S*)")


@dataclass(frozen=True)
class Training:
    """What the training artifacts do: which parameters learn, the loss, and the optimizer."""

    trainable: list[str]
    frozen: list[str]
    loss: str = "cross_entropy"
    optimizer: str = "adamw"
    weight_decay: float = 0.0


def generate_head_artifacts(head: onnx.ModelProto, directory: Path, training: Training) -> None:
    """Write ORT training artifacts for ``head`` into ``directory`` and check what they train.

    Every graph is checked to carry an IR version onnxruntime 1.19 can load, and re-stamped if a newer onnx
    raised it. An op ORT cannot differentiate fails with its name and what to do about it.
    """
    artifacts = training_artifacts()
    if training.loss not in LOSSES:
        raise EdgeftError(f"unknown loss '{training.loss}'; choose one of {', '.join(LOSSES)}")
    if training.optimizer not in OPTIMIZERS:
        raise EdgeftError(f"unknown optimizer '{training.optimizer}'; choose adamw or sgd")
    optimizer = (
        onnxblock().optim.AdamW(weight_decay=training.weight_decay)
        if training.optimizer == "adamw"
        else artifacts.OptimType.SGD
    )
    directory.mkdir(parents=True, exist_ok=True)
    with _without_native_info_logs():
        try:
            artifacts.generate_artifacts(
                head,
                requires_grad=training.trainable,
                frozen_params=training.frozen,
                loss=getattr(artifacts.LossType, LOSSES[training.loss]),
                optimizer=optimizer,
                artifact_directory=str(directory),
                additional_output_names=[LOGITS_OUTPUT],
            )
        except RuntimeError as exc:
            match = _NO_GRADIENT.search(str(exc))
            if match is None:
                raise
            op, node = match.groups()
            raise EdgeftError(
                f"onnxruntime training cannot differentiate the {op} node '{node}' on the gradient path; move the "
                "freeze line after it (--unfreeze-from a later tensor or a smaller --unfreeze-last)"
            ) from None
    for name in TRAIN_ARTIFACTS:
        if not (directory / name).exists():
            raise EdgeftError(f"ORT artifact generation did not write {directory / name}")
        if name.endswith(".onnx"):
            _restamp_ir_version(directory / name)
    check_trainable_set(directory / "checkpoint", set(training.trainable))


def ort_training_installed() -> bool:
    """True when ONNX Runtime training (the ``edgeft[ort]`` extra) can be imported."""
    return _ort_shell.install()


def onnxblock() -> types.ModuleType:
    """``onnxruntime.training.onnxblock`` (optimizer blocks), torch-free."""
    training_artifacts()
    return importlib.import_module("onnxruntime.training.onnxblock")


@contextmanager
def _without_native_info_logs() -> Iterator[None]:
    """Drop the INFO lines ORT's native gradient builder prints to fd 2 whatever the log level; keep the rest."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(True)
                if "[I:onnxruntime" not in line
            ]
            sys.stderr.write("".join(kept))


def _restamp_ir_version(path: Path) -> None:
    model = onnx.load(str(path))
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save(model, str(path))


def check_trainable_set(checkpoint: Path, expected: set[str]) -> None:
    """Fail unless the checkpoint's trainable parameters are exactly ``expected``."""
    state = training_api().CheckpointState.load_checkpoint(str(checkpoint))
    trainable = {name for name, param in state.parameters if param.requires_grad}
    if trainable != expected:
        raise EdgeftError(
            f"checkpoint {checkpoint} trains {sorted(trainable)} but only {sorted(expected)} may be trainable"
        )


def check_artifacts_run(directory: Path, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Load the artifacts in an ORT training Module and Optimizer, run the eval model once; return its logits."""
    api = training_api()
    try:
        state = api.CheckpointState.load_checkpoint(str(directory / "checkpoint"))
        module = api.Module(
            str(directory / "training_model.onnx"), state, str(directory / "eval_model.onnx"), device="cpu"
        )
        api.Optimizer(str(directory / "optimizer_model.onnx"), module)
        module.eval()
        _loss, logits = module(features, labels)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EdgeftError(
            f"the training artifacts in {directory} do not run in onnxruntime: {str(exc).splitlines()[0]}"
        ) from None
    return logits
