"""One self-contained ONNX model: the bundle's backbone followed by a head with a checkpoint's weights.

The result runs in plain onnxruntime without edgeft: input as the bundle's, outputs ``logits`` and
``probabilities``; the class names are stored in the model's metadata (``edgeft.classes``, JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeft.bundle import Bundle
from edgeft.errors import EdgeftError
from edgeft.runtime.atomic import write_atomic

LOGITS = "logits"
PROBABILITIES = "probabilities"
HEAD_PREFIX = "edgeft.head/"


def merged_model(bundle: Bundle, parameters: dict[str, np.ndarray]):  # noqa: ANN201 - onnx.ModelProto
    """Build the merged ModelProto (onnx is imported here only: it is not needed for on-device learning)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(bundle.backbone_path))
    head = onnx.load(str(bundle.head_path))
    graph = model.graph
    taken = (
        {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    )
    if {LOGITS, PROBABILITIES} & taken:
        raise EdgeftError(f"{bundle.backbone_path} already has a tensor named '{LOGITS}' or '{PROBABILITIES}'")
    feature = graph.output[0].name
    head_features = head.graph.input[0].name
    head_output = head.graph.output[0].name

    def rename(name: str) -> str:
        if name == head_features:
            return feature
        if name == head_output:
            return LOGITS
        return HEAD_PREFIX + name

    for node in head.graph.node:
        graph.node.append(
            helper.make_node(
                node.op_type,
                [rename(i) for i in node.input],
                [rename(o) for o in node.output],
                name=HEAD_PREFIX + node.name,
                **{a.name: helper.get_attribute_value(a) for a in node.attribute},
            )
        )
    for value in head.graph.input[1:]:
        graph.initializer.append(numpy_helper.from_array(parameters[value.name], rename(value.name)))
    graph.node.append(helper.make_node("Softmax", [LOGITS], [PROBABILITIES], axis=1, name=HEAD_PREFIX + "softmax"))
    classes = len(bundle.manifest.classes)
    del graph.output[:]
    for name in (LOGITS, PROBABILITIES):
        graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", classes]))
    helper.set_model_props(model, {"edgeft.classes": json.dumps(bundle.manifest.classes)})
    onnx.checker.check_model(model)
    return model


def write_merged_model(bundle: Bundle, parameters: dict[str, np.ndarray], out: Path) -> None:
    """Write the merged model to ``out`` atomically."""
    model = merged_model(bundle, parameters)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: tmp.write_bytes(model.SerializeToString()))
