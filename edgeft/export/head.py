"""The new head that replaces a model's original classifier: a small ONNX graph over feature vectors.

The head standardises its input features with a frozen mean and scale (set from the first data the device
sees, stored in every checkpoint) and applies one trainable linear layer. It exists in two forms built from
one description: the training form keeps the parameters as initializers (ORT artifacts need that), the
inference form takes them as graph inputs so a runtime can feed the parameters of any checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES_INPUT = "features"
LOGITS_OUTPUT = "logits"
WEIGHT = "head.weight"
BIAS = "head.bias"
FEATURE_MEAN = "head.feature_mean"
FEATURE_SCALE = "head.feature_scale"
TRAINABLE_PARAMETERS = (WEIGHT, BIAS)
FROZEN_PARAMETERS = (FEATURE_MEAN, FEATURE_SCALE)
HEAD_OPSET = 17
MAX_IR_VERSION = 10  # the newest IR version onnxruntime 1.19 loads


@dataclass(frozen=True)
class HeadSpec:
    """A linear head: ``logits = ((features - mean) * scale) @ weight.T + bias``."""

    feature_dim: int
    num_outputs: int


def initial_parameters(spec: HeadSpec, seed: int) -> dict[str, np.ndarray]:
    """Seeded starting values: weights uniform in ±1/sqrt(D) (PyTorch's Linear default), zero bias."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(spec.feature_dim)
    return {
        WEIGHT: rng.uniform(-bound, bound, (spec.num_outputs, spec.feature_dim)).astype(np.float32),
        BIAS: np.zeros(spec.num_outputs, np.float32),
        FEATURE_MEAN: np.zeros(spec.feature_dim, np.float32),
        FEATURE_SCALE: np.ones(spec.feature_dim, np.float32),
    }


def _nodes() -> list[onnx.NodeProto]:
    return [
        helper.make_node("Sub", [FEATURES_INPUT, FEATURE_MEAN], ["head.centred"], name="head.centre"),
        helper.make_node("Mul", ["head.centred", FEATURE_SCALE], ["head.standardised"], name="head.scale"),
        helper.make_node("Gemm", ["head.standardised", WEIGHT, BIAS], [LOGITS_OUTPUT], name="head.linear", transB=1),
    ]


def _io(spec: HeadSpec) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    features = helper.make_tensor_value_info(FEATURES_INPUT, TensorProto.FLOAT, ["batch", spec.feature_dim])
    logits = helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, ["batch", spec.num_outputs])
    return features, logits


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", HEAD_OPSET)], producer_name="edgeft")
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(model)
    return model


def training_head(spec: HeadSpec, parameters: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The head with its parameters as initializers, the input to ORT artifact generation."""
    features, logits = _io(spec)
    initializers = [
        numpy_helper.from_array(parameters[name], name) for name in TRAINABLE_PARAMETERS + FROZEN_PARAMETERS
    ]
    graph = helper.make_graph(_nodes(), "edgeft_head", [features], [logits], initializer=initializers)
    return _model(graph)


def inference_head(spec: HeadSpec) -> onnx.ModelProto:
    """The head with its parameters as graph inputs, so any checkpoint's values can be fed."""
    features, logits = _io(spec)
    shapes = {
        WEIGHT: [spec.num_outputs, spec.feature_dim],
        BIAS: [spec.num_outputs],
        FEATURE_MEAN: [spec.feature_dim],
        FEATURE_SCALE: [spec.feature_dim],
    }
    params = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in shapes.items()]
    graph = helper.make_graph(_nodes(), "edgeft_head_inference", [features, *params], [logits])
    return _model(graph)
