"""Unfreezing: the original layers between the freeze line and the cut, made into the head's trainable body."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from edgeft.errors import EdgeftError
from edgeft.export.head import FEATURES_INPUT, LOGITS_OUTPUT, Body
from edgeft.export.pooling import Pooling, pool_nodes
from edgeft.export.surgery import extract, opset_of

BODY_OUTPUT = "edgeft.body.pooled"
MIN_BODY_OPSET = 13  # Dropout's training_mode input and ReduceMean's forms need at least this


def build_body(model: onnx.ModelProto, freeze: str, cut: str, freeze_shape: Sequence[int], pooling: Pooling) -> Body:
    """Nodes from the flat ``features`` (reshaped to ``freeze_shape``) through the original layers to the pooled cut.

    Float initializers with more than one value become trainable parameters; the rest (BatchNorm running
    statistics, scalars, integer shapes) become Constant nodes, so they stay exactly as the original had them.
    """
    opset = opset_of(model)
    if opset < MIN_BODY_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_BODY_OPSET)
        except Exception as exc:  # the converter raises various errors for ops it cannot convert
            raise EdgeftError(
                f"cannot unfreeze layers of an opset {opset} model: converting it to opset {MIN_BODY_OPSET} failed "
                f"({str(exc).splitlines()[0]})"
            ) from None
        opset = MIN_BODY_OPSET
    part = extract(model, [freeze], [cut])
    frozen_stats = {n.input[i] for n in part.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
    reserved = {FEATURES_INPUT, LOGITS_OUTPUT}

    def rename(name: str) -> str:
        """Original tensor names that clash with the head's own get an ``original.`` prefix."""
        return "original." + name if name in reserved or name.startswith("head.") else name

    shape_name = "edgeft.body.shape"
    nodes = [
        helper.make_node(
            "Constant", [], [shape_name], value=numpy_helper.from_array(np.array([-1, *freeze_shape], np.int64))
        ),
        helper.make_node("Reshape", [FEATURES_INPUT, shape_name], [rename(freeze)], name="edgeft.body.unflatten"),
    ]
    parameters: dict[str, np.ndarray] = {}
    for init in part.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype == np.float32 and value.size > 1 and init.name not in frozen_stats:
            parameters[rename(init.name)] = value
        else:
            nodes.append(helper.make_node("Constant", [], [rename(init.name)], value=init, name=rename(init.name)))
    for node in part.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename(i) if i else i for i in copy.input]
        copy.output[:] = [rename(o) if o else o for o in copy.output]
        if copy.op_type == "LayerNormalization" and len(copy.output) == 1:
            # ORT's LayerNormalization gradient needs the optional mean and inverse-std outputs.
            copy.output.extend([copy.output[0] + ".mean", copy.output[0] + ".inv_std"])
        nodes.append(copy)
    nodes.extend(pool_nodes(pooling, rename(cut), BODY_OUTPUT, opset, "edgeft.body."))
    return Body(tuple(nodes), parameters, BODY_OUTPUT, pooling.output_dim, opset)
