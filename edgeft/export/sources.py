"""Load a pretrained model for export: an ONNX file (PyTorch modules come in a later version)."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgeft.errors import EdgeftError


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX model (external data beside it included), or fail naming the file."""
    file = Path(path)
    if not file.is_file():
        raise EdgeftError(f"model file {file} does not exist")
    try:
        model = onnx.load(str(file))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeftError(f"{file} is not a valid ONNX model: {reason}") from None
    return model
