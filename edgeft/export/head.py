"""The new head that replaces a model's original classifier: a small ONNX graph over feature vectors.

Layers, in order: any original layers that were unfrozen (the *body*, with their pooling), the frozen feature
standardisation (mean and scale set from the first data the device sees, stored in every checkpoint; absent
when a body or the original head is kept, since those expect the original features), optional hidden layers
(``mlp:H1,H2``: Gemm, activation, dropout) and the final linear layer. It exists in two forms built from one
description: the training form keeps the parameters as initializers (ORT artifacts need that), the inference
form takes them as graph inputs so a runtime can feed the parameters of any checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES_INPUT = "features"
LOGITS_OUTPUT = "logits"
WEIGHT = "head.weight"
BIAS = "head.bias"
FEATURE_MEAN = "head.feature_mean"
FEATURE_SCALE = "head.feature_scale"
HEAD_OPSET = 17
MAX_IR_VERSION = 10  # the newest IR version onnxruntime 1.19 loads
ACTIVATIONS = ("relu", "gelu", "silu")


@dataclass(frozen=True)
class Body:
    """Original layers moved into the trainable part: nodes from ``features`` to ``output`` [batch, output_dim]."""

    nodes: tuple[onnx.NodeProto, ...]
    parameters: dict[str, np.ndarray]
    output: str
    output_dim: int
    opset: int


@dataclass(frozen=True)
class HeadSpec:
    """A head: optional body, optional standardisation, hidden layers of sizes ``hidden``, a final linear layer."""

    feature_dim: int
    num_outputs: int
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.0
    normalise: bool = True
    body: Body | None = field(default=None, compare=False)

    @property
    def opset(self) -> int:
        return max(HEAD_OPSET, self.body.opset) if self.body else HEAD_OPSET

    def layers(self) -> list[tuple[str, str, int, int]]:
        """(weight name, bias name, inputs, outputs) of each new linear layer, the final one last."""
        sizes = [self.body.output_dim if self.body else self.feature_dim, *self.hidden, self.num_outputs]
        names = [(f"head.hidden{i}.weight", f"head.hidden{i}.bias") for i in range(len(self.hidden))]
        names.append((WEIGHT, BIAS))
        return [(w, b, sizes[i], sizes[i + 1]) for i, (w, b) in enumerate(names)]

    @property
    def trainable(self) -> list[str]:
        """Parameters the optimizer updates: unfrozen original ones, then the new layers'."""
        body = list(self.body.parameters) if self.body else []
        return body + [name for w, b, _, _ in self.layers() for name in (w, b)]

    @property
    def frozen(self) -> list[str]:
        """Parameters stored in checkpoints but never trained: the feature normaliser."""
        return [FEATURE_MEAN, FEATURE_SCALE] if self.normalise else []


def initial_parameters(
    spec: HeadSpec, seed: int, keep: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Seeded starting values: weights uniform in ±1/sqrt(inputs) (PyTorch's Linear default), zero biases.

    ``keep`` gives the final layer's weight [K, D] and bias [K] instead (the original head, reused).
    """
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = dict(spec.body.parameters) if spec.body else {}
    for weight, bias, inputs, outputs in spec.layers():
        bound = 1.0 / np.sqrt(inputs)
        values[weight] = rng.uniform(-bound, bound, (outputs, inputs)).astype(np.float32)
        values[bias] = np.zeros(outputs, np.float32)
    if keep is not None:
        values[WEIGHT], values[BIAS] = keep[0].astype(np.float32), keep[1].astype(np.float32)
    if spec.normalise:
        values[FEATURE_MEAN] = np.zeros(spec.feature_dim, np.float32)
        values[FEATURE_SCALE] = np.ones(spec.feature_dim, np.float32)
    return values


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name), name=name)


def _activation(kind: str, x: str, prefix: str) -> tuple[list[onnx.NodeProto], str]:
    out = prefix + "." + kind
    if kind == "relu":
        return [helper.make_node("Relu", [x], [out], name=out)], out
    if kind == "silu":
        return [
            helper.make_node("Sigmoid", [x], [out + ".gate"], name=out + ".gate"),
            helper.make_node("Mul", [x, out + ".gate"], [out], name=out),
        ], out
    # GELU, exact: 0.5 * x * (1 + erf(x / sqrt(2)))
    return [
        _constant(out + ".sqrt2", np.array(np.sqrt(2.0), np.float32)),
        _constant(out + ".one", np.array(1.0, np.float32)),
        _constant(out + ".half", np.array(0.5, np.float32)),
        helper.make_node("Div", [x, out + ".sqrt2"], [out + ".scaled"], name=out + ".scaled"),
        helper.make_node("Erf", [out + ".scaled"], [out + ".erf"], name=out + ".erf"),
        helper.make_node("Add", [out + ".erf", out + ".one"], [out + ".gate"], name=out + ".gate"),
        helper.make_node("Mul", [x, out + ".gate"], [out + ".x"], name=out + ".x"),
        helper.make_node("Mul", [out + ".x", out + ".half"], [out], name=out),
    ], out


def forward_nodes(spec: HeadSpec, training: bool) -> list[onnx.NodeProto]:
    nodes: list[onnx.NodeProto] = []
    x = FEATURES_INPUT
    if spec.body:
        nodes.extend(spec.body.nodes)
        x = spec.body.output
    if spec.normalise:
        nodes.append(helper.make_node("Sub", [x, FEATURE_MEAN], ["head.centred"], name="head.centre"))
        nodes.append(helper.make_node("Mul", ["head.centred", FEATURE_SCALE], ["head.standardised"], name="head.scale"))
        x = "head.standardised"
    *hidden, final = spec.layers()
    for i, (weight, bias, _, _) in enumerate(hidden):
        prefix = f"head.hidden{i}"
        nodes.append(helper.make_node("Gemm", [x, weight, bias], [prefix + ".linear"], name=prefix, transB=1))
        activation, x = _activation(spec.activation, prefix + ".linear", prefix)
        nodes.extend(activation)
        if spec.dropout > 0:
            inputs = [x, prefix + ".dropout.ratio"]
            nodes.append(_constant(prefix + ".dropout.ratio", np.array(spec.dropout, np.float32)))
            if training:  # ORT's eval model drops this input again, so dropout acts only while training
                nodes.append(_constant(prefix + ".dropout.training", np.array(True)))
                inputs.append(prefix + ".dropout.training")
            outputs = [prefix + ".dropout", prefix + ".dropout.mask"]  # ORT's Dropout gradient needs the mask
            nodes.append(helper.make_node("Dropout", inputs, outputs, name=prefix + ".dropout", seed=i))
            x = prefix + ".dropout"
    nodes.append(helper.make_node("Gemm", [x, final[0], final[1]], [LOGITS_OUTPUT], name="head.linear", transB=1))
    return nodes


def _io(spec: HeadSpec) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    features = helper.make_tensor_value_info(FEATURES_INPUT, TensorProto.FLOAT, ["batch", spec.feature_dim])
    logits = helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, ["batch", spec.num_outputs])
    return features, logits


def _model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeft")
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(model)
    return model


def training_head(spec: HeadSpec, parameters: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The head with its parameters as initializers, the input to ORT artifact generation."""
    features, logits = _io(spec)
    initializers = [numpy_helper.from_array(parameters[name], name) for name in spec.trainable + spec.frozen]
    graph = helper.make_graph(
        forward_nodes(spec, training=True), "edgeft_head", [features], [logits], initializer=initializers
    )
    return _model(graph, spec.opset)


def inference_head(spec: HeadSpec, parameters: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The head with its parameters as graph inputs (shaped like ``parameters``), so any checkpoint can be fed."""
    features, logits = _io(spec)
    params = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, list(parameters[name].shape))
        for name in spec.trainable + spec.frozen
    ]
    graph = helper.make_graph(
        forward_nodes(spec, training=False), "edgeft_head_inference", [features, *params], [logits]
    )
    return _model(graph, spec.opset)
