"""Find a classifier's head in an ONNX graph, cut it off, and keep the frozen part as the backbone."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from edgeft.errors import EdgeftError

# Nodes that may follow the classifier layer without changing which tensor is the feature vector.
PASSTHROUGH_OPS = frozenset({"Softmax", "LogSoftmax", "Flatten", "Reshape", "Identity", "Dropout", "Sigmoid"})


@dataclass(frozen=True)
class HeadCut:
    """Where to cut: the feature tensor, and the original head nodes that consume it (empty for --cut)."""

    feature_tensor: str
    head_nodes: tuple[str, ...]
    original_classes: int | None


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _initializer_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    return {init.name: tuple(init.dims) for init in graph.initializer}


def _describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node '{node.name or node.output[0]}'"


def find_head(model: onnx.ModelProto, output: str | None = None) -> HeadCut:
    """Locate the last Gemm, MatMul+Add or bias-free MatMul feeding ``output`` through passthrough nodes."""
    graph = model.graph
    outputs = [o.name for o in graph.output]
    if output is None:
        if len(outputs) != 1:
            raise EdgeftError(f"the model has {len(outputs)} outputs ({', '.join(outputs)}); choose one with --output")
        output = outputs[0]
    elif output not in outputs:
        raise EdgeftError(f"the model has no output '{output}'; its outputs are: {', '.join(outputs)}")
    producers = _producers(graph)
    weights = _initializer_shapes(graph)
    walked: list[str] = []
    tensor = output
    while tensor in producers:
        node = producers[tensor]
        walked.append(node.name or node.output[0])
        if node.op_type in PASSTHROUGH_OPS:
            tensor = node.input[0]
            continue
        if node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in weights:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            shape = weights[node.input[1]]
            return HeadCut(node.input[0], tuple(walked), shape[0] if trans_b else shape[1])
        if node.op_type == "Add":
            matmul = next(
                (producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"), None
            )
            if matmul is not None and matmul.input[1] in weights:
                walked.append(matmul.name or matmul.output[0])
                return HeadCut(matmul.input[0], tuple(walked), weights[matmul.input[1]][-1])
        if node.op_type == "MatMul" and node.input[1] in weights:
            return HeadCut(node.input[0], tuple(walked), weights[node.input[1]][-1])
        raise EdgeftError(
            f"could not find a linear classifier feeding output '{output}': reached {_describe(node)}, "
            "which is not a Gemm, MatMul+Add or MatMul with constant weights; choose the feature tensor with --cut"
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


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are real inputs, not initializers listed as inputs (old exporters do that)."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def extract_backbone(model: onnx.ModelProto, feature_tensor: str) -> onnx.ModelProto:
    """The subgraph from the model's inputs to ``feature_tensor``, flattened to [batch, D] if needed.

    The backbone's single output is named ``feature_tensor``'s name, or ``<name>.flat`` when a Flatten
    node had to be appended to turn an N-D feature map into vectors.
    """
    inputs = [i.name for i in model_inputs(model)]
    if feature_tensor in inputs:
        raise EdgeftError(f"cannot cut at '{feature_tensor}': it is a model input, nothing would remain frozen")
    inferred = onnx.shape_inference.infer_shapes(model)
    backbone = onnx.utils.Extractor(inferred).extract_model(inputs, [feature_tensor])
    rank = _rank(backbone.graph.output[0])
    if rank is not None and rank != 2:
        flat = feature_tensor + ".flat"
        backbone.graph.node.append(
            onnx.helper.make_node("Flatten", [feature_tensor], [flat], axis=1, name="edgeft.flatten")
        )
        del backbone.graph.output[:]
        backbone.graph.output.append(onnx.helper.make_empty_tensor_value_info(flat))
    del backbone.graph.value_info[:]
    backbone.ir_version = model.ir_version
    backbone.producer_name = "edgeft"
    return backbone


def _rank(value: onnx.ValueInfoProto) -> int | None:
    tensor_type = value.type.tensor_type
    return len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None


def with_extra_output(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``tensor`` (used to validate the cut)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if tensor not in {o.name for o in copy.graph.output}:
        copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    return copy
