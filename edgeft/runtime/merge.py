"""One self-contained ONNX model: the bundle's backbone followed by a head with a checkpoint's weights.

The result runs in plain onnxruntime without edgeft: input as the bundle's, outputs ``logits`` and
``probabilities`` over the classes the device has learned (reserved head outputs are sliced off); the class
names are stored in the model's metadata (``edgeft.classes``, JSON). A multi-label head's ``probabilities`` are
per-label sigmoids (its thresholds in ``edgeft.thresholds``); a regression head has one output, ``values``.
The task is in ``edgeft.task``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeft.bundle import Bundle
from edgeft.common.atomic import make_directory, write_atomic
from edgeft.errors import EdgeftError

LOGITS = "logits"
PROBABILITIES = "probabilities"
VALUES = "values"
HEAD_PREFIX = "edgeft.head/"
ALL_LOGITS = HEAD_PREFIX + "all_outputs"


def merged_model(  # noqa: ANN201 - onnx.ModelProto
    bundle: Bundle,
    parameters: dict[str, np.ndarray],
    classes: list[str],
    thresholds: list[float] | None = None,
    backbone: Path | None = None,
):
    """Build the merged ModelProto (onnx is imported here only: it is not needed for on-device learning);
    ``backbone``: the backbone file to merge (default: the bundle's; an int8 bundle's float fallback)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(backbone or bundle.backbone_path))
    head = onnx.load(str(bundle.head_path))
    graph = model.graph
    taken = (
        {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    )
    if {LOGITS, PROBABILITIES, VALUES} & taken:
        raise EdgeftError(
            f"{backbone or bundle.backbone_path} already has a tensor named '{LOGITS}', '{PROBABILITIES}' or '{VALUES}'"
        )
    feature = graph.output[0].name
    head_features = head.graph.input[0].name
    head_output = head.graph.output[0].name

    def rename(name: str) -> str:
        if name == head_features:
            return feature
        if name == head_output:
            return ALL_LOGITS
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
    task = bundle.manifest.head.task
    props = {"edgeft.classes": json.dumps(classes), "edgeft.task": task}
    if task == "regression":
        _slice_known_classes(model, len(classes), VALUES)
        outputs: tuple[str, ...] = (VALUES,)
    else:
        _slice_known_classes(model, len(classes), LOGITS)
        last = (
            helper.make_node("Sigmoid", [LOGITS], [PROBABILITIES], name=HEAD_PREFIX + "sigmoid")
            if task == "multilabel"
            else helper.make_node("Softmax", [LOGITS], [PROBABILITIES], axis=1, name=HEAD_PREFIX + "softmax")
        )
        graph.node.append(last)
        outputs = (LOGITS, PROBABILITIES)
    if task == "multilabel":
        props["edgeft.thresholds"] = json.dumps(thresholds or [0.5] * len(classes))
    del graph.output[:]
    for name in outputs:
        graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", len(classes)]))
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def _slice_known_classes(model, known: int, output: str) -> None:  # noqa: ANN001 - onnx.ModelProto
    """Append ``output = all_outputs[:, :known]`` (Slice with inputs from opset 10, attributes before)."""
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    name = HEAD_PREFIX + "known_classes"
    if opset >= 10:
        bounds = {"starts": [0], "ends": [known], "axes": [1]}
        for key, value in bounds.items():
            model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"{name}.{key}"))
        inputs = [ALL_LOGITS, *(f"{name}.{key}" for key in bounds)]
        model.graph.node.append(helper.make_node("Slice", inputs, [output], name=name))
    else:
        model.graph.node.append(
            helper.make_node("Slice", [ALL_LOGITS], [output], name=name, starts=[0], ends=[known], axes=[1])
        )


def write_merged_model(
    bundle: Bundle,
    parameters: dict[str, np.ndarray],
    classes: list[str],
    out: Path,
    thresholds: list[float] | None = None,
    backbone: Path | None = None,
) -> None:
    """Write the merged model (outputs over ``classes``; a multi-label head's ``thresholds``) to ``out`` atomically;
    ``backbone`` as in ``merged_model``."""
    if not classes:
        raise EdgeftError("this head knows no classes yet; learn from labelled data before exporting it")
    model = merged_model(bundle, parameters, classes, thresholds, backbone)
    make_directory(out.parent)
    write_atomic(out, lambda tmp: tmp.write_bytes(model.SerializeToString()))
