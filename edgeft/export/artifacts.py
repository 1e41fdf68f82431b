"""ONNX Runtime training artifacts for the head: training, eval and optimizer graphs plus a checkpoint."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from edgeft.bundle import TRAIN_ARTIFACTS
from edgeft.errors import EdgeftError
from edgeft.export.head import FROZEN_PARAMETERS, LOGITS_OUTPUT, MAX_IR_VERSION, TRAINABLE_PARAMETERS
from edgeft.runtime.ort import training_api, training_artifacts


def generate_head_artifacts(head: onnx.ModelProto, directory: Path) -> None:
    """Write ORT training artifacts for ``head`` into ``directory``: cross-entropy loss, AdamW.

    Only the head's weight and bias are trainable; the feature normaliser is frozen. Every graph is
    checked to carry an IR version onnxruntime 1.19 can load, and re-stamped if a newer onnx raised it.
    """
    artifacts = training_artifacts()
    directory.mkdir(parents=True, exist_ok=True)
    with _without_native_info_logs():
        artifacts.generate_artifacts(
            head,
            requires_grad=list(TRAINABLE_PARAMETERS),
            frozen_params=list(FROZEN_PARAMETERS),
            loss=artifacts.LossType.CrossEntropyLoss,
            optimizer=artifacts.OptimType.AdamW,
            artifact_directory=str(directory),
            additional_output_names=[LOGITS_OUTPUT],
        )
    for name in TRAIN_ARTIFACTS:
        if not (directory / name).exists():
            raise EdgeftError(f"ORT artifact generation did not write {directory / name}")
        if name.endswith(".onnx"):
            _restamp_ir_version(directory / name)
    check_trainable_set(directory / "checkpoint", set(TRAINABLE_PARAMETERS))


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
            f"checkpoint {checkpoint} trains {sorted(trainable)} but only the head {sorted(expected)} may be trainable"
        )
