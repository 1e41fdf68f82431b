"""The portable train step: one ONNX graph of standard ops that any onnxruntime (or ONNX engine) can run.

``(features, labels, lr, step, parameters, optimizer state) -> (loss, new parameters, new optimizer state)``:
the head's forward pass (dropout in training mode), the loss, the analytic backward pass (``autodiff``) and the
optimizer update. The updates follow ONNX Runtime training's own optimizers exactly, so a head trains the same
under either trainer: AdamW as ORT's ``AdamWOptimizer`` in its default mode (Hugging Face's AdamW: bias correction
folded into the step size, epsilon 1e-6, decoupled weight decay applied after the step), SGD as ``p -= lr * g``,
plus optional heavy-ball momentum (``v = momentum * v + g``; ``p -= lr * v``) that ORT's SGD does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, shape_inference

from edgeft.errors import EdgeftError
from edgeft.export import head as head_graph
from edgeft.export.autodiff import Emitter, gradient_nodes
from edgeft.head_state import state_owner

FEATURES = head_graph.FEATURES_INPUT
LABELS = "labels"
LEARNING_RATE = "lr"
STEP = "step"
LOSS = "loss"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-6
LOSSES = ("cross_entropy", "bce_with_logits", "mse", "l1")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class Optimizer:
    """The update rule: ``adamw`` (with ``weight_decay``) or ``sgd`` (with ``momentum``)."""

    kind: str = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.0

    def state_names(self, parameter: str) -> list[str]:
        """Names of the optimizer-state tensors kept for one parameter (none for plain SGD)."""
        if self.kind == "adamw":
            return [f"adamw.m.{parameter}", f"adamw.v.{parameter}"]
        return [f"sgd.velocity.{parameter}"] if self.momentum else []


def new_name(tensor: str) -> str:
    """The train step's output holding the updated value of input ``tensor``."""
    return "new." + tensor


def build_train_step(
    spec: head_graph.HeadSpec, parameters: dict[str, np.ndarray], loss: str, optimizer: Optimizer
) -> onnx.ModelProto:
    """The train-step graph for ``spec``; ``parameters`` gives every parameter's shape."""
    if loss not in LOSSES:
        raise EdgeftError(f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}")
    if optimizer.kind not in OPTIMIZERS:
        raise EdgeftError(f"unknown optimizer '{optimizer.kind}'; choose adamw or sgd")
    forward = head_graph.forward_nodes(spec, training=True)
    inputs = _inputs(spec, parameters, loss, optimizer)
    shapes = _shapes(forward, inputs, spec.opset)
    emitter = Emitter(shapes, spec.opset)
    logits = head_graph.LOGITS_OUTPUT
    loss_value, seed = _loss(emitter, logits, loss)
    grads = gradient_nodes(forward, {logits: seed}, spec.trainable, emitter)
    outputs = [helper.make_tensor_value_info(LOSS, TensorProto.FLOAT, [])]
    emitter.nodes.append(helper.make_node("Identity", [loss_value], [LOSS], name=LOSS))
    for name in spec.trainable:
        for out in _update(emitter, name, grads[name], optimizer):
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, list(parameters[name].shape)))
    graph = helper.make_graph(forward + emitter.nodes, "edgeft_train_step", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)], producer_name="edgeft")
    model.ir_version = min(model.ir_version, head_graph.MAX_IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _inputs(
    spec: head_graph.HeadSpec, parameters: dict[str, np.ndarray], loss: str, optimizer: Optimizer
) -> list[onnx.ValueInfoProto]:
    features = helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", spec.feature_dim])
    labels = (
        helper.make_tensor_value_info(LABELS, TensorProto.INT64, ["batch"])
        if loss == "cross_entropy"
        else helper.make_tensor_value_info(LABELS, TensorProto.FLOAT, ["batch", spec.num_outputs])
    )
    scalars = [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in (LEARNING_RATE, STEP)]
    values = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, list(parameters[name].shape))
        for name in spec.trainable + spec.frozen
    ]
    states = [
        helper.make_tensor_value_info(state, TensorProto.FLOAT, list(parameters[name].shape))
        for name in spec.trainable
        for state in optimizer.state_names(name)
    ]
    return [features, labels, *scalars, *values, *states]


def _shapes(forward: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], opset: int) -> dict[str, list]:
    """Shapes of every forward tensor (symbolic batch), from ONNX shape inference."""
    graph = helper.make_graph(forward, "shapes", inputs, [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).graph
    shapes: dict[str, list] = {}
    for info in [*inferred.input, *inferred.value_info, *inferred.output]:
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in info.type.tensor_type.shape.dim
            ]
    for node in forward:  # Constant nodes: shape inference leaves them out of value_info
        if node.op_type == "Constant" and node.output[0] not in shapes:
            shapes[node.output[0]] = list(onnx.numpy_helper.to_array(node.attribute[0].t).shape)
    return shapes


def _loss(e: Emitter, logits: str, loss: str) -> tuple[str, str]:
    """(mean loss, its gradient with respect to the logits), as ORT training's loss blocks define them."""
    count = e.op("Cast", [e.op("Size", [logits])], to=TensorProto.FLOAT)  # batch * outputs
    if loss == "cross_entropy":
        batch = e.op(
            "Cast", [e.op("Gather", [e.op("Shape", [logits]), e.const(np.array(0, np.int64))])], to=TensorProto.FLOAT
        )
        outputs = e.op("Gather", [e.op("Shape", [logits]), e.const(np.array(1, np.int64))])
        onehot = e.op("OneHot", [LABELS, outputs, e.const(np.array([0.0, 1.0], np.float32))], axis=-1)
        log_p = e.op("LogSoftmax", [logits], axis=1)
        picked = e.op("ReduceSum", [e.op("Mul", [onehot, log_p])], keepdims=0)
        value = e.op("Div", [e.op("Neg", [picked]), batch])
        seed = e.op("Div", [e.op("Sub", [e.op("Softmax", [logits], axis=1), onehot]), batch], "dlogits")
        return value, seed
    diff = e.op("Sub", [logits, LABELS])
    if loss == "mse":
        value = e.op("Div", [e.op("ReduceSum", [e.op("Mul", [diff, diff])], keepdims=0), count])
        return value, e.op("Div", [e.op("Mul", [diff, e.const(2.0)]), count], "dlogits")
    if loss == "l1":
        value = e.op("Div", [e.op("ReduceSum", [e.op("Abs", [diff])], keepdims=0), count])
        return value, e.op("Div", [e.op("Sign", [diff]), count], "dlogits")
    # BCE with logits, stable form: max(x, 0) - x * y + log(1 + exp(-|x|))
    terms = e.op(
        "Add",
        [
            e.op("Sub", [e.op("Relu", [logits]), e.op("Mul", [logits, LABELS])]),
            e.op("Log", [e.op("Add", [e.const(1.0), e.op("Exp", [e.op("Neg", [e.op("Abs", [logits])])])])]),
        ],
    )
    value = e.op("Div", [e.op("ReduceSum", [terms], keepdims=0), count])
    return value, e.op("Div", [e.op("Sub", [e.op("Sigmoid", [logits]), LABELS]), count], "dlogits")


def _update(e: Emitter, name: str, grad: str, optimizer: Optimizer) -> list[str]:
    """Nodes that write ``new.<name>`` and the new optimizer state; returns those output names."""
    states = optimizer.state_names(name)
    if optimizer.kind == "adamw":
        # The betas as float32, and 1 - beta computed in float32 from them, as ORT's kernel does: 1 - 0.999 in float64
        # differs from 1 - float32(0.999) by 1.3e-5 relative, which the bias correction would not cancel.
        b1, b2 = (np.float32(beta) for beta in ADAM_BETAS)
        m, v = states
        new_m = e.op("Add", [e.op("Mul", [m, e.const(b1)]), e.op("Mul", [grad, e.const(np.float32(1) - b1)])])
        new_v = e.op(
            "Add",
            [e.op("Mul", [v, e.const(b2)]), e.op("Mul", [e.op("Mul", [grad, grad]), e.const(np.float32(1) - b2)])],
        )
        correction1 = e.op("Sub", [e.const(1.0), e.op("Pow", [e.const(b1), STEP])])
        correction2 = e.op("Sub", [e.const(1.0), e.op("Pow", [e.const(b2), STEP])])
        step_size = e.op("Div", [e.op("Mul", [LEARNING_RATE, e.op("Sqrt", [correction2])]), correction1])
        direction = e.op("Div", [new_m, e.op("Add", [e.op("Sqrt", [new_v]), e.const(ADAM_EPSILON)])])
        updated = e.op("Sub", [name, e.op("Mul", [direction, step_size])])
        if optimizer.weight_decay:
            decay = e.op("Mul", [LEARNING_RATE, e.const(optimizer.weight_decay)])
            updated = e.op("Sub", [updated, e.op("Mul", [updated, decay])])
        moved = [(updated, name), (new_m, m), (new_v, v)]
    elif optimizer.momentum:
        (velocity,) = states
        new_velocity = e.op("Add", [e.op("Mul", [velocity, e.const(optimizer.momentum)]), grad])
        moved = [(e.op("Sub", [name, e.op("Mul", [new_velocity, LEARNING_RATE])]), name), (new_velocity, velocity)]
    else:
        moved = [(e.op("Sub", [name, e.op("Mul", [grad, LEARNING_RATE])]), name)]
    for value, tensor in moved:
        e.nodes.append(helper.make_node("Identity", [value], [new_name(tensor)], name=new_name(tensor)))
    return [new_name(tensor) for _, tensor in moved]


def check_train_step(
    step: onnx.ModelProto,
    parameters: dict[str, np.ndarray],
    features: np.ndarray,
    logits: np.ndarray,
    loss: str,
    dropout: float,
) -> float:
    """Run the step once at learning rate 0 in onnxruntime: no parameter may move, and (without dropout, which
    makes the training forward pass random) its loss must equal ``loss`` of head.onnx's ``logits``. Returns the
    absolute loss difference (0.0 with dropout)."""
    labels = np.zeros(len(features), np.int64) if loss == "cross_entropy" else np.zeros(logits.shape, np.float32)
    feeds = {
        FEATURES: features,
        LABELS: labels,
        LEARNING_RATE: np.array(0.0, np.float32),
        STEP: np.array(1.0, np.float32),
    }
    names = {i.name for i in step.graph.input}
    for name in names - set(feeds):
        feeds[name] = (
            parameters[name] if name in parameters else np.zeros_like(parameters[state_owner(name, parameters)])
        )
    try:
        session = onnxruntime.InferenceSession(step.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EdgeftError(f"the portable train step does not run in onnxruntime: {str(exc).splitlines()[0]}") from None
    for name, value in outputs.items():
        if name.startswith("new.") and name[4:] in parameters and not np.array_equal(value, parameters[name[4:]]):
            raise EdgeftError(f"the portable train step moved {name[4:]} at learning rate 0")
    value = float(outputs[LOSS])
    if dropout:
        if not np.isfinite(value):
            raise EdgeftError("the portable train step's loss is not finite")
        return 0.0
    diff = abs(value - reference_loss(logits, labels, loss))
    if not diff <= 1e-4 * max(1.0, abs(value)):
        raise EdgeftError(f"the portable train step's loss differs from head.onnx's by {diff:.3g}")
    return diff


def reference_loss(logits: np.ndarray, labels: np.ndarray, loss: str) -> float:
    """The mean loss of ``logits`` against ``labels`` in numpy (float64), as the train step defines it."""
    x = logits.astype(np.float64)
    if loss == "cross_entropy":
        shifted = x - x.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(x)), labels].mean())
    y = labels.astype(np.float64)
    if loss == "mse":
        return float(((x - y) ** 2).mean())
    if loss == "l1":
        return float(np.abs(x - y).mean())
    return float((np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))).mean())
