"""Find a classifier's head in an ONNX graph, choose where to cut and freeze, and extract the parts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgeft.errors import EdgeftError
from edgeft.export.graph import ancestor_nodes, cut_points, describe, producers, real_inputs, weight_layers
from edgeft.export.pooling import Pooling, pool_nodes

# Nodes that may follow the classifier layer without changing which tensor is the feature vector.
PASSTHROUGH_OPS = frozenset(
    {"Softmax", "LogSoftmax", "Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Sigmoid"}
)
GLOBAL_POOLS = {"GlobalAveragePool": "avg", "GlobalMaxPool": "max"}


@dataclass(frozen=True)
class LinearLayer:
    """The original classifier layer: ``logits = x @ weight.T + bias`` once the weight is read as [K, D]."""

    weight: np.ndarray
    bias: np.ndarray | None
    logits_tensor: str
    exact: bool  # False when a nonlinearity (SqueezeNet's Relu) sits between the layer and its pooling


@dataclass(frozen=True)
class HeadCut:
    """Where to cut: the feature tensor, the original head nodes removed, and what detection learnt about them."""

    feature_tensor: str
    head_nodes: tuple[str, ...]
    original_classes: int | None
    pool: str | None = None
    linear: LinearLayer | None = None


def choose_output(model: onnx.ModelProto, output: str | None) -> str:
    outputs = [o.name for o in model.graph.output]
    if output is None:
        if len(outputs) != 1:
            raise EdgeftError(f"the model has {len(outputs)} outputs ({', '.join(outputs)}); choose one with --output")
        return outputs[0]
    if output not in outputs:
        raise EdgeftError(f"the model has no output '{output}'; its outputs are: {', '.join(outputs)}")
    return output


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
    return {name: numpy_helper.to_array(t) for name, t in values.items()}


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _linear(node: onnx.NodeProto, producers_of: dict[str, onnx.NodeProto], weights: dict[str, np.ndarray]):  # noqa: ANN202
    """(input tensor, weight [K, D], bias or None, nodes) if ``node`` is a linear layer with constant weights."""
    if node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in weights:
        if _attr(node, "transA", 0):
            return None
        w = weights[node.input[1]] * _attr(node, "alpha", 1.0)
        w = w if _attr(node, "transB", 0) else w.T
        bias = weights.get(node.input[2]) if len(node.input) > 2 else None
        return node.input[0], w, None if bias is None else bias * _attr(node, "beta", 1.0), [node]
    if node.op_type == "MatMul" and node.input[1] in weights and weights[node.input[1]].ndim == 2:
        return node.input[0], weights[node.input[1]].T, None, [node]
    if node.op_type == "Add":
        for i, tensor in enumerate(node.input):
            matmul = producers_of.get(tensor)
            other = node.input[1 - i]
            if matmul is not None and matmul.op_type == "MatMul" and other in weights:
                found = _linear(matmul, producers_of, weights)
                if found is not None:
                    return found[0], found[1], weights[other].reshape(-1), [node, matmul]
    if node.op_type == "Conv" and len(node.input) >= 2 and node.input[1] in weights:
        w = weights[node.input[1]]
        if w.ndim >= 3 and all(d == 1 for d in w.shape[2:]) and _attr(node, "group", 1) == 1:
            bias = weights.get(node.input[2]) if len(node.input) > 2 else None
            return node.input[0], w.reshape(w.shape[0], -1), bias, [node]
    return None


def find_head(model: onnx.ModelProto, output: str | None = None) -> HeadCut:
    """Find the classifier feeding ``output``: Gemm, MatMul(+Add), or a 1x1 Conv with global pooling.

    Walking back from the output it passes Softmax, LogSoftmax, Sigmoid, Dropout, Identity, Reshape,
    Squeeze and Flatten; one global pooling (and a Relu between it and a 1x1 Conv, SqueezeNet style).
    """
    output = choose_output(model, output)
    graph = model.graph
    made_by = {o: node for node in graph.node for o in node.output}
    weights = _constants(graph)
    walked: list[str] = []
    tensor, pool, logits, exact = output, None, output, True
    while tensor in made_by:
        node = made_by[tensor]
        walked.append(node.name or node.output[0])
        if node.op_type in PASSTHROUGH_OPS and pool is None:
            tensor = logits = node.input[0]
            continue
        if node.op_type in GLOBAL_POOLS and pool is None:
            pool, tensor, logits = GLOBAL_POOLS[node.op_type], node.input[0], node.output[0]
            continue
        if node.op_type == "Relu" and pool is not None and exact:
            tensor, exact = node.input[0], False
            continue
        found = _linear(node, made_by, weights)
        if found is not None and (pool is None or node.op_type == "Conv"):
            feature, weight, bias, nodes = found
            walked.extend(n.name or n.output[0] for n in nodes[1:])
            exact = exact and (pool != "max")
            return HeadCut(feature, tuple(walked), weight.shape[0], pool, LinearLayer(weight, bias, logits, exact))
        raise EdgeftError(
            f"could not find a linear classifier feeding output '{output}': reached {describe(node)}, which is not a "
            "Gemm, MatMul(+Add) or 1x1 Conv with constant weights; choose the feature tensor with --cut "
            "(edgeft export --list-cuts MODEL shows candidates)"
        )
    raise EdgeftError(f"output '{output}' is not produced by any node; choose the feature tensor with --cut")


def tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor a cut could be placed at: graph inputs and node outputs."""
    names = {i.name for i in model.graph.input}
    names.update(out for node in model.graph.node for out in node.output)
    return names


def cut_at(model: onnx.ModelProto, tensor: str) -> HeadCut:
    """A user-chosen cut at any tensor of the graph."""
    if tensor not in tensor_names(model):
        raise EdgeftError(f"the model has no tensor named '{tensor}' to cut at")
    return HeadCut(tensor, (), None)


def remove_layers(model: onnx.ModelProto, count: int, output: str | None = None) -> HeadCut:
    """Cut at the input of the ``count``-th layer with weights, counted back from ``output``."""
    output = choose_output(model, output)
    layers = weight_layers(model, output)
    if not 1 <= count <= len(layers):
        raise EdgeftError(f"--remove-layers {count}: output '{output}' depends on {len(layers)} layers with weights")
    feature = layers[-count].input[0]
    graph = model.graph
    removed = sorted(ancestor_nodes(graph, output) - ancestor_nodes(graph, feature), reverse=True)
    return HeadCut(feature, tuple(graph.node[i].name or graph.node[i].output[0] for i in removed), None)


def freeze_line(model: onnx.ModelProto, cut: str, unfreeze_from: str | None, unfreeze_last: int | None) -> str | None:
    """The tensor where the frozen part ends when original layers before ``cut`` are unfrozen (None: nothing is)."""
    if unfreeze_from is not None and unfreeze_last is not None:
        raise EdgeftError("give either --unfreeze-from or --unfreeze-last, not both")
    if unfreeze_from is None and unfreeze_last is None:
        return None
    points = cut_points(model, cut)[:-1]
    inputs = {i.name for i in real_inputs(model)}
    if unfreeze_from is not None:
        if unfreeze_from in inputs:
            raise EdgeftError(
                f"cannot unfreeze from '{unfreeze_from}': it is a model input, nothing would remain frozen"
            )
        if unfreeze_from not in points:
            raise EdgeftError(
                f"cannot unfreeze from '{unfreeze_from}': it is not a tensor that every path to the cut '{cut}' passes "
                f"through; candidates: {', '.join(points) or 'none'}"
            )
        return unfreeze_from
    layers = weight_layers(model, cut)
    if not 1 <= unfreeze_last <= len(layers):
        raise EdgeftError(
            f"--unfreeze-last {unfreeze_last}: the cut '{cut}' depends on {len(layers)} layers with weights"
        )
    first = list(model.graph.node).index(layers[-unfreeze_last])
    made_by = producers(model.graph)
    before = [p for p in points if made_by[p] < first]
    if not before:
        raise EdgeftError(
            f"--unfreeze-last {unfreeze_last} would unfreeze the whole model; nothing would remain frozen"
        )
    return before[-1]


def extract(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The subgraph computing ``outputs`` from ``inputs`` (shape-inferred, so intermediate inputs get types)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    part = onnx.utils.Extractor(inferred).extract_model(inputs, outputs)
    part.ir_version = model.ir_version
    return part


def with_extra_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``tensors`` (used to validate the cut)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for tensor in tensors:
        if tensor not in present:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
            present.add(tensor)
    return copy


def opset_of(model: onnx.ModelProto) -> int:
    """The model's default-domain opset."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def extract_backbone(model: onnx.ModelProto, tensor: str, pooling: Pooling | None = None) -> onnx.ModelProto:
    """The frozen part: the model's inputs to ``tensor``, then ``pooling`` into vectors (flatten when not given).

    Its single output is ``tensor`` when that already is [batch, D], else ``<tensor>.flat`` / ``<tensor>.<kind>pool``.
    """
    inputs = [i.name for i in real_inputs(model)]
    if tensor in inputs:
        raise EdgeftError(f"cannot cut at '{tensor}': it is a model input, nothing would remain frozen")
    backbone = extract(model, inputs, [tensor])
    if pooling is None:
        dims = backbone.graph.output[0].type.tensor_type.shape.dim
        rank = len(dims) if backbone.graph.output[0].type.tensor_type.HasField("shape") else 2
        pooling = Pooling("none" if rank == 2 else "flatten", (0,) * (rank - 1), False)
    if pooling.kind != "none":
        out = f"{tensor}.flat" if pooling.kind == "flatten" else f"{tensor}.{pooling.kind}pool"
        backbone.graph.node.extend(pool_nodes(pooling, tensor, out, opset_of(model), "edgeft.backbone."))
        del backbone.graph.output[:]
        backbone.graph.output.append(onnx.helper.make_empty_tensor_value_info(out))
    del backbone.graph.value_info[:]
    backbone.producer_name = "edgeft"
    return backbone
