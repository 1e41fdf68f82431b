"""Small real ONNX classifiers built with onnx.helper, in several head shapes, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 3
SIZE = 8
HIDDEN = 6
ORIGINAL_CLASSES = 5


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)


def classifier(
    head: str = "gemm", tail: tuple[str, ...] = ("Softmax",), seed: int = 0, hidden: int = HIDDEN
) -> onnx.ModelProto:
    """Conv → Relu → GlobalAveragePool → Flatten → head → tail ops, on [N, 3, 8, 8] images; ``hidden`` features.

    ``head``: ``gemm`` (Gemm, transB=1), ``matmul_add`` (MatMul + Add) or ``matmul`` (no bias).
    """
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "conv.w", (hidden, CHANNELS, 3, 3)), _init(rng, "conv.b", (hidden,))]
    nodes = [
        helper.make_node("Conv", ["image", "conv.w", "conv.b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["features"], axis=1, name="flatten"),
    ]
    if head == "gemm":
        inits += [_init(rng, "fc.w", (ORIGINAL_CLASSES, hidden)), _init(rng, "fc.b", (ORIGINAL_CLASSES,))]
        nodes.append(helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["scores"], transB=1, name="fc"))
    elif head == "matmul_add":
        inits += [_init(rng, "fc.w", (hidden, ORIGINAL_CLASSES)), _init(rng, "fc.b", (ORIGINAL_CLASSES,))]
        nodes.append(helper.make_node("MatMul", ["features", "fc.w"], ["mm"], name="fc.matmul"))
        nodes.append(helper.make_node("Add", ["mm", "fc.b"], ["scores"], name="fc.add"))
    elif head == "matmul":
        inits.append(_init(rng, "fc.w", (hidden, ORIGINAL_CLASSES)))
        nodes.append(helper.make_node("MatMul", ["features", "fc.w"], ["scores"], name="fc.matmul"))
    else:
        raise ValueError(head)
    tensor = "scores"
    for i, op in enumerate(tail):
        out = f"tail{i}"
        attrs = {"axis": 1} if op in ("Softmax", "LogSoftmax") else {}
        inputs = [tensor]
        if op == "Reshape":
            inits.append(numpy_helper.from_array(np.array([-1, ORIGINAL_CLASSES], np.int64), f"shape{i}"))
            inputs.append(f"shape{i}")
        nodes.append(helper.make_node(op, inputs, [out], name=f"tail{i}", **attrs))
        tensor = out
    graph = helper.make_graph(
        nodes,
        f"tiny_{head}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info(tensor, TensorProto.FLOAT, ["N", ORIGINAL_CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` and return the path."""
    onnx.save(model, str(path))
    return path
