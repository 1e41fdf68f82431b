"""Read-only questions about an ONNX graph: producers, ancestors, layers with weights, single-tensor cut points."""

from __future__ import annotations

import onnx

# Ops whose constant second input makes them a layer with weights (counted by --remove-layers / --unfreeze-last).
WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that produce channels-first feature maps; walking back through elementwise ops to one of these says NCHW.
CHANNELS_FIRST_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "MaxPool",
        "AveragePool",
        "InstanceNormalization",
        "GlobalAveragePool",
        "GlobalMaxPool",
    }
)
# Ops that produce channels-last tensors ([N, T, D] token sequences, NHWC after a Transpose).
CHANNELS_LAST_OPS = frozenset({"LayerNormalization", "MatMul", "Gemm", "Transpose", "Softmax", "Attention"})


def producers(graph: onnx.GraphProto) -> dict[str, int]:
    """Index of the node producing each tensor."""
    return {out: i for i, node in enumerate(graph.node) for out in node.output if out}


def initializer_names(graph: onnx.GraphProto) -> set[str]:
    """Names of the graph's initializers."""
    return {init.name for init in graph.initializer}


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are real inputs, not initializers listed as inputs (old exporters do that)."""
    constants = initializer_names(model.graph)
    return [i for i in model.graph.input if i.name not in constants]


def ancestor_nodes(graph: onnx.GraphProto, tensor: str) -> set[int]:
    """Indices of every node ``tensor`` depends on."""
    made_by = producers(graph)
    seen: set[int] = set()
    stack = [tensor]
    while stack:
        index = made_by.get(stack.pop())
        if index is None or index in seen:
            continue
        seen.add(index)
        stack.extend(i for i in graph.node[index].input if i)
    return seen


def _input_dependent(model: onnx.ModelProto) -> set[str]:
    """Tensors that depend on a real graph input (constant-derived tensors are not data)."""
    dependent = {i.name for i in real_inputs(model)}
    for node in model.graph.node:
        if any(i in dependent for i in node.input):
            dependent.update(o for o in node.output if o)
    return dependent


def cut_points(model: onnx.ModelProto, target: str) -> list[str]:
    """Tensors every path from the inputs to ``target`` passes through, in graph order (``target`` included).

    A sweep over the topologically sorted nodes: a tensor is a cut point when it is the only input-dependent
    tensor alive (produced, and still needed on the way to ``target``) right after its producer runs.
    """
    graph = model.graph
    dependent = _input_dependent(model)
    relevant = sorted(ancestor_nodes(graph, target))
    last_use: dict[str, float] = {target: float("inf")}
    for index in relevant:
        for name in graph.node[index].input:
            if name in dependent:
                last_use[name] = max(last_use.get(name, -1), index)
    live = {i.name for i in real_inputs(model) if i.name in last_use}
    points = []
    for index in relevant:
        node = graph.node[index]
        live -= {name for name in node.input if last_use.get(name) == index}
        made = [o for o in node.output if o in dependent and o in last_use]
        live.update(made)
        if len(live) == 1 and made == list(live):
            points.append(made[0])
    return points


def weight_layers(model: onnx.ModelProto, target: str) -> list[onnx.NodeProto]:
    """Conv, ConvTranspose, Gemm and MatMul nodes with constant weights that ``target`` depends on, in order."""
    graph = model.graph
    constants = initializer_names(graph) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [
        graph.node[i]
        for i in sorted(ancestor_nodes(graph, target))
        if graph.node[i].op_type in WEIGHT_OPS and len(graph.node[i].input) > 1 and graph.node[i].input[1] in constants
    ]


def is_channels_last(model: onnx.ModelProto, tensor: str) -> bool:
    """Guess an N-D tensor's layout from the nearest conv-type (channels first) or token-type op above it."""
    graph = model.graph
    made_by = producers(graph)
    while tensor in made_by:
        node = graph.node[made_by[tensor]]
        if node.op_type in CHANNELS_FIRST_OPS:
            return False
        if node.op_type in CHANNELS_LAST_OPS:
            return True
        tensor = node.input[0]
    return False


def describe(node: onnx.NodeProto) -> str:
    """``Op node 'name'`` for messages."""
    return f"{node.op_type} node '{node.name or node.output[0]}'"
