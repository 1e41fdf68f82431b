"""``edgeft export --list-cuts``: the tensors a model can be cut at, with shapes, so a user can choose."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from edgeft.errors import EdgeftError
from edgeft.export.graph import cut_points, producers, weight_layers
from edgeft.export.surgery import choose_output, find_head


@dataclass(frozen=True)
class CutPoint:
    """A tensor every path to the output passes through: a place to cut, or to put the freeze line."""

    tensor: str
    shape: list[int | str]
    op: str
    layers_after: int
    detected_head: bool


def list_cuts(model: onnx.ModelProto, output: str | None = None) -> list[CutPoint]:
    """Candidate cut tensors in graph order, with inferred shapes and the number of weight layers after each."""
    output = choose_output(model, output)
    try:
        detected = find_head(model, output).feature_tensor
    except EdgeftError:
        detected = None
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.output)
        if v.type.tensor_type.HasField("shape")
    }
    made_by = producers(model.graph)
    total = len(weight_layers(model, output))
    return [
        CutPoint(
            tensor,
            shapes.get(tensor, ["?"]),
            model.graph.node[made_by[tensor]].op_type,
            total - len(weight_layers(model, tensor)),
            tensor == detected,
        )
        for tensor in cut_points(model, output)
    ]
