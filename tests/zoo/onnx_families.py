"""Small versions of real architecture families, built with onnx.helper (no torch), with random weights.

Each builder returns a checked ModelProto with one float input ``x`` (dynamic batch) and one output ``y``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Graph:
    """A tiny graph builder: each call adds one node with seeded random weights and returns its output."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def param(
        self, name: str, shape: tuple[int, ...], scale: float | None = None, value: np.ndarray | None = None
    ) -> str:
        """A seeded initializer (He-scaled normal unless ``value`` is given)."""
        if value is None:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            value = self.rng.normal(0, scale or np.sqrt(2.0 / max(fan_in, 1)), shape)
        self.inits.append(
            numpy_helper.from_array(np.asarray(value, np.float32 if value.dtype.kind == "f" else value.dtype), name)
        )
        return name

    def op(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        """Add node ``name`` computing ``op(inputs)``; its output tensor is named ``name`` too."""
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(
        self, x: str, cin: int, cout: int, name: str, k: int = 3, group: int = 1, stride: int = 1, dims: int = 2
    ) -> str:
        """Conv (no bias) with 'same' padding."""
        w = self.param(f"{name}.w", (cout, cin // group, *([k] * dims)))
        return self.op("Conv", [x, w], name, pads=[k // 2] * (2 * dims), group=group, strides=[stride] * dims)

    def bn(self, x: str, c: int, name: str) -> str:
        """BatchNormalization in inference mode with random statistics."""
        scale = self.param(f"{name}.scale", (c,), value=self.rng.uniform(0.5, 1.5, c))
        bias = self.param(f"{name}.bias", (c,), value=self.rng.normal(0, 0.1, c))
        mean = self.param(f"{name}.mean", (c,), value=self.rng.normal(0, 0.1, c))
        var = self.param(f"{name}.var", (c,), value=self.rng.uniform(0.5, 1.5, c))
        return self.op("BatchNormalization", [x, scale, bias, mean, var], name)

    def silu(self, x: str, name: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x], name + ".sigmoid")], name)

    def gemm(self, x: str, din: int, dout: int, name: str, bias: bool = True) -> str:
        inputs = [x, self.param(f"{name}.w", (dout, din))] + ([self.param(f"{name}.b", (dout,), 0.1)] if bias else [])
        return self.op("Gemm", inputs, name, transB=1)

    def model(self, input_shape: list[int | str], output: str, output_shape: list[int | str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "zoo",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


IMAGE = ["N", 3, 8, 8]
CLASSES = 5


def resnet() -> onnx.ModelProto:
    """Stem conv-BN-Relu, one basic residual block, global pool, Flatten, Gemm, Softmax."""
    g = Graph(1)
    x = g.op("Relu", [g.bn(g.conv("x", 3, 8, "stem"), 8, "stem.bn")], "stem.relu")
    y = g.op("Relu", [g.bn(g.conv(x, 8, 8, "b1.conv1"), 8, "b1.bn1")], "b1.relu1")
    y = g.bn(g.conv(y, 8, 8, "b1.conv2"), 8, "b1.bn2")
    x = g.op("Relu", [g.op("Add", [x, y], "b1.add")], "b1.out")
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "features", axis=1)
    g.op("Softmax", [g.gemm(x, 8, CLASSES, "fc")], "y", axis=1)
    return g.model(IMAGE, "y", ["N", CLASSES])


def mobilenet_v2() -> onnx.ModelProto:
    """Inverted residual: 1x1 expand, ReLU6, depthwise 3x3, ReLU6, 1x1 project, residual; Dropout + Gemm head."""
    g = Graph(2)

    def relu6(t: str, name: str) -> str:
        lo = g.param(f"{name}.min", (), value=np.array(0.0))
        hi = g.param(f"{name}.max", (), value=np.array(6.0))
        return g.op("Clip", [t, lo, hi], name)

    x = relu6(g.bn(g.conv("x", 3, 8, "stem", stride=2), 8, "stem.bn"), "stem.relu6")
    y = relu6(g.bn(g.conv(x, 8, 16, "ir.expand", k=1), 16, "ir.bn1"), "ir.relu6a")
    y = relu6(g.bn(g.conv(y, 16, 16, "ir.dw", group=16), 16, "ir.bn2"), "ir.relu6b")
    y = g.bn(g.conv(y, 16, 8, "ir.project", k=1), 8, "ir.bn3")
    x = g.op("Add", [x, y], "ir.add")
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "features", axis=1)
    g.op(
        "Gemm",
        [g.op("Dropout", [x], "dropout"), g.param("fc.w", (CLASSES, 8)), g.param("fc.b", (CLASSES,), 0.1)],
        "y",
        transB=1,
    )
    return g.model(IMAGE, "y", ["N", CLASSES])


def efficientnet() -> onnx.ModelProto:
    """MBConv with SiLU and squeeze-excite (pool, 1x1 reduce, SiLU, 1x1 expand, Sigmoid, Mul); MatMul+Add head."""
    g = Graph(3)
    x = g.silu(g.bn(g.conv("x", 3, 8, "stem"), 8, "stem.bn"), "stem.silu")
    y = g.silu(g.bn(g.conv(x, 8, 8, "mb.dw", group=8), 8, "mb.bn1"), "mb.silu")
    s = g.op("GlobalAveragePool", [y], "se.pool")
    s = g.silu(
        g.op("Conv", [s, g.param("se.reduce.w", (2, 8, 1, 1)), g.param("se.reduce.b", (2,), 0.1)], "se.reduce"),
        "se.silu",
    )
    s = g.op(
        "Sigmoid",
        [g.op("Conv", [s, g.param("se.expand.w", (8, 2, 1, 1)), g.param("se.expand.b", (8,), 0.1)], "se.expand")],
        "se.gate",
    )
    y = g.bn(g.conv(g.op("Mul", [y, s], "se.scale"), 8, 12, "mb.project", k=1), 12, "mb.bn2")
    x = g.silu(g.bn(g.conv(y, 12, 16, "top", k=1), 16, "top.bn"), "top.silu")
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "features", axis=1)
    mm = g.op("MatMul", [x, g.param("fc.w", (16, CLASSES))], "fc.matmul")
    g.op("Add", [mm, g.param("fc.b", (CLASSES,), 0.1)], "y")
    return g.model(IMAGE, "y", ["N", CLASSES])


def squeezenet() -> onnx.ModelProto:
    """Fire-style convs, then SqueezeNet's classifier: Dropout, 1x1 Conv, Relu, GlobalAveragePool, Flatten."""
    g = Graph(4)
    x = g.op("Relu", [g.conv("x", 3, 8, "stem")], "stem.relu")
    sq = g.op("Relu", [g.conv(x, 8, 4, "fire.squeeze", k=1)], "fire.squeeze.relu")
    e1 = g.op("Relu", [g.conv(sq, 4, 8, "fire.e1", k=1)], "fire.e1.relu")
    e3 = g.op("Relu", [g.conv(sq, 4, 8, "fire.e3")], "fire.e3.relu")
    x = g.op("Concat", [e1, e3], "fire.out", axis=1)
    x = g.op("Dropout", [x], "dropout")
    x = g.op(
        "Relu",
        [g.op("Conv", [x, g.param("cls.w", (CLASSES, 16, 1, 1)), g.param("cls.b", (CLASSES,), 0.1)], "cls.conv")],
        "cls.relu",
    )
    g.op("Flatten", [g.op("GlobalAveragePool", [x], "cls.pool")], "y", axis=1)
    return g.model(IMAGE, "y", ["N", CLASSES])


TOKENS, FEATURES, DIM = 6, 5, 8


def transformer() -> onnx.ModelProto:
    """Token embedding, one pre-norm encoder layer (LayerNorm, single-head attention, GELU MLP), mean pool, Gemm."""
    g = Graph(5)
    x = g.op(
        "Add",
        [g.op("MatMul", ["x", g.param("embed.w", (FEATURES, DIM))], "embed.mm"), g.param("pos", (TOKENS, DIM), 0.1)],
        "embed",
    )

    def layer_norm(t: str, name: str) -> str:
        return g.op(
            "LayerNormalization",
            [t, g.param(f"{name}.g", (DIM,), value=np.ones(DIM)), g.param(f"{name}.b", (DIM,), value=np.zeros(DIM))],
            name,
            axis=-1,
        )

    h = layer_norm(x, "ln1")
    q = g.op("MatMul", [h, g.param("q.w", (DIM, DIM))], "q")
    k = g.op("MatMul", [h, g.param("k.w", (DIM, DIM))], "k")
    v = g.op("MatMul", [h, g.param("v.w", (DIM, DIM))], "v")
    scores = g.op("MatMul", [q, g.op("Transpose", [k], "k.t", perm=[0, 2, 1])], "scores")
    scaled = g.op("Div", [scores, g.param("sqrt_d", (), value=np.array(np.sqrt(DIM)))], "scores.scaled")
    attn = g.op("MatMul", [g.op("Softmax", [scaled], "attn", axis=-1), v], "attn.out")
    x = g.op("Add", [x, g.op("MatMul", [attn, g.param("o.w", (DIM, DIM))], "o")], "res1")
    h = layer_norm(x, "ln2")
    h = g.op(
        "Add", [g.op("MatMul", [h, g.param("mlp1.w", (DIM, 16))], "mlp1.mm"), g.param("mlp1.b", (16,), 0.1)], "mlp1"
    )
    erf = g.op("Erf", [g.op("Div", [h, g.param("sqrt2", (), value=np.array(np.sqrt(2.0)))], "gelu.div")], "gelu.erf")
    gate = g.op("Add", [erf, g.param("one", (), value=np.array(1.0))], "gelu.gate")
    h = g.op("Mul", [g.op("Mul", [h, gate], "gelu.xg"), g.param("half", (), value=np.array(0.5))], "gelu")
    h = g.op("MatMul", [h, g.param("mlp2.w", (16, DIM))], "mlp2")
    x = layer_norm(g.op("Add", [x, h], "res2"), "encoded")
    pooled = g.op("ReduceMean", [x], "pooled", axes=[1], keepdims=0)
    g.gemm(pooled, DIM, CLASSES, "y")
    return g.model(["N", TOKENS, FEATURES], "y", ["N", CLASSES])


def mlp() -> onnx.ModelProto:
    """Tabular / sensor MLP whose last layer has no bias (a bare MatMul)."""
    g = Graph(6)
    x = g.op("Relu", [g.gemm("x", 10, 16, "fc1")], "relu1")
    x = g.op("Relu", [g.gemm(x, 16, 12, "fc2")], "relu2")
    g.op("MatMul", [x, g.param("out.w", (12, CLASSES))], "y")
    return g.model(["N", 10], "y", ["N", CLASSES])


def conv1d() -> onnx.ModelProto:
    """Audio / time-series net: Conv1d-BN-Relu twice, MaxPool, global pool, Flatten, Gemm, LogSoftmax."""
    g = Graph(7)
    x = g.op("Relu", [g.bn(g.conv("x", 2, 8, "c1", k=5, dims=1), 8, "bn1")], "relu1")
    x = g.op("MaxPool", [x], "mp", kernel_shape=[2], strides=[2])
    x = g.op("Relu", [g.bn(g.conv(x, 8, 8, "c2", dims=1), 8, "bn2")], "relu2")
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "features", axis=1)
    g.op("LogSoftmax", [g.gemm(x, 8, CLASSES, "fc")], "y", axis=1)
    return g.model(["N", 2, 32], "y", ["N", CLASSES])


FAMILIES: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet": resnet,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet": efficientnet,
    "squeezenet": squeezenet,
    "transformer": transformer,
    "mlp": mlp,
    "conv1d": conv1d,
}
