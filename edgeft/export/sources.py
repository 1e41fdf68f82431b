"""Load a pretrained ONNX model for export, external data included, or say exactly why it cannot be."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgeft.errors import EdgeftError

# One protobuf message (an ONNX model held in memory with its weights) cannot exceed 2 GiB.
PROTOBUF_LIMIT = 2**31 - 1


def _external_files(model: onnx.ModelProto, directory: Path) -> set[Path]:
    files = set()
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next(e.value for e in tensor.external_data if e.key == "location")
            files.add(directory / location)
    return files


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX model with any external data beside it, or fail naming the file and the problem.

    Models whose weights add up to more than protobuf's 2 GiB limit are refused: edgeft's surgery and validation
    hold the whole model in one message.
    """
    file = Path(path)
    if not file.is_file():
        raise EdgeftError(f"model file {file} does not exist")
    try:
        skeleton = onnx.load(str(file), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError...
        raise EdgeftError(f"{file} is not a valid ONNX model: {_reason(exc)}") from None
    external = _external_files(skeleton, file.parent)
    missing = sorted(str(f) for f in external if not f.is_file())
    if missing:
        raise EdgeftError(f"{file} keeps its weights in external data files that are missing: {', '.join(missing)}")
    total = file.stat().st_size + sum(f.stat().st_size for f in external)
    if total > PROTOBUF_LIMIT:
        raise EdgeftError(
            f"{file} is {total / 2**30:.2f} GiB with its external data; edgeft exports models up to 2 GiB "
            "(protobuf's limit for one model in memory): export a smaller part of it, or quantise it first"
        )
    try:
        onnx.checker.check_model(str(file))
        model = onnx.load(str(file))
    except Exception as exc:  # onnx raises ValidationError, OSError...
        raise EdgeftError(f"{file} is not a valid ONNX model: {_reason(exc)}") from None
    return model


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
