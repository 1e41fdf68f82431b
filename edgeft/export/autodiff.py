"""Reverse-mode differentiation of an ONNX node list into standard ONNX ops (no training-domain ops).

``gradient_nodes`` walks a forward graph backwards from a seed gradient and emits, for each node on the path to a
parameter, the nodes of its vector-Jacobian product. Every rule uses only ops of the default domain, so the result
runs in any onnxruntime build (and any other ONNX engine). Shapes come from ONNX shape inference of the forward
graph; the batch axis may stay symbolic. An op without a rule is a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeft.errors import EdgeftError

Shape = list[int | str | None]


@dataclass
class Emitter:
    """Collects generated nodes with fresh, readable tensor names; ``shapes`` maps forward tensors to shapes."""

    shapes: dict[str, Shape]
    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    _count: int = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"grad.{self._count}.{hint}"

    def op(self, op_type: str, inputs: Sequence[str], hint: str = "", **attributes: object) -> str:
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attributes))
        return out

    def const(self, value: np.ndarray | float | int | Sequence[int], hint: str = "const") -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        out = self.fresh(hint)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=numpy_helper.from_array(array, out)))
        return out

    def shape(self, tensor: str) -> Shape:
        if tensor not in self.shapes:
            raise EdgeftError(f"the portable trainer needs the shape of '{tensor}', which shape inference left open")
        return self.shapes[tensor]

    def static_dims(self, tensor: str, axes: Sequence[int]) -> list[int]:
        shape = self.shape(tensor)
        dims = [shape[a] for a in axes]
        if not all(isinstance(d, int) for d in dims):
            raise EdgeftError(f"the portable trainer needs fixed sizes for axes {list(axes)} of '{tensor}' ({shape})")
        return [int(d) for d in dims]  # type: ignore[arg-type]

    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        return self.op("ReduceSum", [x, self.const(np.array(list(axes), np.int64), "axes")], keepdims=keepdims)

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(np.array(list(axes), np.int64), "axes")], keepdims=keepdims)
        return self.op("ReduceMean", [x], axes=list(axes), keepdims=keepdims)

    def unbroadcast(self, grad: str, target: str, result_shape: Shape) -> str:
        """Sum ``grad`` (shaped like the op's result) down to the shape of the input ``target``."""
        shape = self.shape(target)
        lead = len(result_shape) - len(shape)
        axes = list(range(lead)) + [
            lead + i
            for i, d in enumerate(shape)
            if d == 1 and result_shape[lead + i] != 1  # a broadcast axis of size 1
        ]
        if any(d != result_shape[lead + i] and d != 1 for i, d in enumerate(shape)):
            raise EdgeftError(f"cannot tell how '{target}' {shape} broadcasts to {result_shape}")
        if not axes:
            return grad
        summed = self.reduce_sum(grad, axes, keepdims=1)
        if lead == 0:
            return summed
        if not all(isinstance(d, int) for d in shape):
            raise EdgeftError(f"the portable trainer needs a fixed shape for '{target}' ({shape})")
        return self.op("Reshape", [summed, self.const(np.array(shape, np.int64), "shape")])


Rule = Callable[[Emitter, onnx.NodeProto, list[str], list[bool]], list[str | None]]
_RULES: dict[str, Rule] = {}


def _rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            _RULES[op] = fn
        return fn

    return register


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _out_shape(e: Emitter, node: onnx.NodeProto) -> Shape:
    return e.shape(node.output[0])


@_rule("Identity")
def _identity(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    return [g[0]]


@_rule("Add", "Sub")
def _add(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    result = _out_shape(e, node)
    grads: list[str | None] = [None, None]
    if needs[0]:
        grads[0] = e.unbroadcast(g[0], node.input[0], result)
    if needs[1]:
        other = g[0] if node.op_type == "Add" else e.op("Neg", [g[0]])
        grads[1] = e.unbroadcast(other, node.input[1], result)
    return grads


@_rule("Mul")
def _mul(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    result = _out_shape(e, node)
    a, b = node.input
    return [
        e.unbroadcast(e.op("Mul", [g[0], b]), a, result) if needs[0] else None,
        e.unbroadcast(e.op("Mul", [g[0], a]), b, result) if needs[1] else None,
    ]


@_rule("Div")
def _div(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    result = _out_shape(e, node)
    a, b = node.input
    grads: list[str | None] = [None, None]
    if needs[0]:
        grads[0] = e.unbroadcast(e.op("Div", [g[0], b]), a, result)
    if needs[1]:  # d(a/b)/db = -(a/b)/b
        grads[1] = e.unbroadcast(e.op("Neg", [e.op("Div", [e.op("Mul", [g[0], node.output[0]]), b])]), b, result)
    return grads


@_rule("Neg")
def _neg(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    return [e.op("Neg", [g[0]])]


@_rule("Relu")
def _relu(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    positive = e.op("Cast", [e.op("Greater", [node.input[0], e.const(0.0)])], to=onnx.TensorProto.FLOAT)
    return [e.op("Mul", [g[0], positive], "relu")]


@_rule("Clip")
def _clip(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    x = node.input[0]
    inside = e.const(1.0)
    bounds = [(1, "Greater"), (2, "Less")]
    for index, compare in bounds:
        if len(node.input) > index and node.input[index]:
            within = e.op("Cast", [e.op(compare, [x, node.input[index]])], to=onnx.TensorProto.FLOAT)
            inside = e.op("Mul", [inside, within])
    return [e.op("Mul", [g[0], inside], "clip"), None, None][: len(node.input)]


@_rule("Sigmoid")
def _sigmoid(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    y = node.output[0]
    return [e.op("Mul", [g[0], e.op("Mul", [y, e.op("Sub", [e.const(1.0), y])])], "sigmoid")]


@_rule("Tanh")
def _tanh(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    y = node.output[0]
    return [e.op("Mul", [g[0], e.op("Sub", [e.const(1.0), e.op("Mul", [y, y])])], "tanh")]


@_rule("Erf")
def _erf(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    x = node.input[0]
    slope = e.op("Mul", [e.const(2.0 / np.sqrt(np.pi)), e.op("Exp", [e.op("Neg", [e.op("Mul", [x, x])])])])
    return [e.op("Mul", [g[0], slope], "erf")]


@_rule("Dropout")
def _dropout(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    if len(node.input) < 3 or not node.input[2]:  # no training_mode: the forward pass was the identity
        return [g[0]] + [None] * (len(node.input) - 1)
    if len(node.output) < 2 or not node.output[1]:
        raise EdgeftError(f"Dropout node '{node.name}' has no mask output to differentiate through")
    ratio = node.input[1] if len(node.input) > 1 and node.input[1] else e.const(float(_attr(node, "ratio", 0.5)))
    keep = e.op("Div", [e.op("Cast", [node.output[1]], to=onnx.TensorProto.FLOAT), e.op("Sub", [e.const(1.0), ratio])])
    return [e.op("Mul", [g[0], keep], "dropout")] + [None] * (len(node.input) - 1)


@_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    back = e.op("Reshape", [g[0], e.op("Shape", [node.input[0]])], "reshape")
    return [back] + [None] * (len(node.input) - 1)


@_rule("Transpose")
def _transpose(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    perm = list(_attr(node, "perm", list(reversed(range(len(e.shape(node.input[0])))))))  # type: ignore[arg-type]
    return [e.op("Transpose", [g[0]], perm=[int(i) for i in np.argsort(perm)])]


@_rule("Gemm")
def _gemm(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    a, b = node.input[0], node.input[1]
    alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))  # type: ignore[arg-type]
    ta, tb = int(_attr(node, "transA", 0)), int(_attr(node, "transB", 0))  # type: ignore[call-overload]
    grads: list[str | None] = [None] * len(node.input)
    if needs[0]:
        grads[0] = (
            e.op("Gemm", [g[0], b], "gemm.da", alpha=alpha, transB=1 - tb)
            if not ta
            else e.op("Gemm", [b, g[0]], "gemm.da", alpha=alpha, transA=tb, transB=1)
        )
    if needs[1]:
        grads[1] = (
            e.op("Gemm", [a, g[0]], "gemm.db", alpha=alpha, transA=1 - ta)
            if not tb
            else e.op("Gemm", [g[0], a], "gemm.db", alpha=alpha, transA=1, transB=ta)
        )
    if len(node.input) > 2 and needs[2]:
        scaled = e.op("Mul", [g[0], e.const(beta)]) if beta != 1.0 else g[0]
        grads[2] = e.unbroadcast(scaled, node.input[2], _out_shape(e, node))
    return grads


@_rule("MatMul")
def _matmul(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    a, b = node.input
    rank_a, rank_b = len(e.shape(a)), len(e.shape(b))
    if rank_b != 2 or rank_a < 2:
        raise EdgeftError(
            f"the portable trainer differentiates MatMul only by a 2-D right operand (node '{node.name}')"
        )
    grads: list[str | None] = [None, None]
    if needs[0]:
        grads[0] = e.op("MatMul", [g[0], e.op("Transpose", [b], perm=[1, 0])], "matmul.da")
    if needs[1]:
        rows, cols = e.static_dims(b, [0, 1])
        flat_a = e.op("Reshape", [a, e.const(np.array([-1, rows], np.int64))])
        flat_g = e.op("Reshape", [g[0], e.const(np.array([-1, cols], np.int64))])
        grads[1] = e.op("Gemm", [flat_a, flat_g], "matmul.db", transA=1)
    return grads


@_rule("GlobalAveragePool")
def _global_average_pool(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    x = node.input[0]
    count = int(np.prod(e.static_dims(x, range(2, len(e.shape(x))))))
    spread = e.op("Expand", [g[0], e.op("Shape", [x])])
    return [e.op("Mul", [spread, e.const(1.0 / count)], "gap")]


@_rule("ReduceMean", "ReduceSum")
def _reduce(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    x = node.input[0]
    rank = len(e.shape(x))
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        raise EdgeftError(
            f"{node.op_type} node '{node.name}' takes its axes as a tensor; the portable trainer needs them fixed"
        )
    axes = [int(a) % rank for a in axes] if axes is not None else list(range(rank))  # type: ignore[union-attr]
    grad = g[0]
    if not int(_attr(node, "keepdims", 1)):  # type: ignore[call-overload]
        grad = e.op("Unsqueeze", [grad, e.const(np.array(axes, np.int64))])
    spread = e.op("Expand", [grad, e.op("Shape", [x])])
    if node.op_type == "ReduceMean":
        spread = e.op("Mul", [spread, e.const(1.0 / int(np.prod(e.static_dims(x, axes))))], "mean")
    return [spread] + [None] * (len(node.input) - 1)


@_rule("MaxPool")
def _max_pool(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    x = node.input[0]
    spatial = e.static_dims(x, range(2, len(e.shape(x))))
    if list(_attr(node, "kernel_shape", [])) != spatial or any(int(p) for p in _attr(node, "pads", [])):  # type: ignore[call-overload]
        raise EdgeftError(f"the portable trainer differentiates only a global MaxPool (node '{node.name}')")
    # The gradient goes to the maximum (to every tied maximum: ties of float features are measure-zero).
    winners = e.op("Cast", [e.op("Equal", [x, node.output[0]])], to=onnx.TensorProto.FLOAT)
    return [e.op("Mul", [winners, g[0]], "maxpool")]


@_rule("Gather")
def _gather(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    x, index = node.input
    axis = int(_attr(node, "axis", 0)) % len(e.shape(x))  # type: ignore[call-overload]
    (size,) = e.static_dims(x, [axis])
    if axis == 0:
        raise EdgeftError(f"the portable trainer cannot differentiate Gather over the batch axis ('{node.name}')")
    if e.shape(index) != []:
        raise EdgeftError(f"the portable trainer differentiates Gather of one index only ('{node.name}')")
    # x [..., T, ...] -> one row; the gradient is g placed at that row: one-hot over T, broadcast.
    row = e.op("Unsqueeze", [index, e.const(np.array([0], np.int64))])
    onehot = e.op("OneHot", [row, e.const(np.array(size, np.int64)), e.const(np.array([0.0, 1.0], np.float32))])
    shape = [1] * len(e.shape(x))
    shape[axis] = size
    mask = e.op("Reshape", [onehot, e.const(np.array(shape, np.int64))])
    spread = e.op("Unsqueeze", [g[0], e.const(np.array([axis], np.int64))])
    return [e.op("Mul", [spread, mask], "gather"), None]


@_rule("BatchNormalization")
def _batch_norm(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    if int(_attr(node, "training_mode", 0)):  # type: ignore[call-overload]
        raise EdgeftError(f"BatchNormalization '{node.name}' runs in training mode; export it in inference mode")
    x, scale, bias, mean, var = node.input[:5]
    rank = len(e.shape(x))
    eps = float(_attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    per_channel = e.const(np.array([-1] + [1] * (rank - 2), np.int64), "channel_shape")
    inv_std = e.op("Reciprocal", [e.op("Sqrt", [e.op("Add", [var, e.const(eps)])])])
    reduce_axes = [0, *range(2, rank)]
    grads: list[str | None] = [None] * len(node.input)
    if needs[0]:
        grads[0] = e.op("Mul", [g[0], e.op("Reshape", [e.op("Mul", [scale, inv_std]), per_channel])], "bn.dx")
    if needs[1]:
        normalised = e.op(
            "Mul",
            [e.op("Sub", [x, e.op("Reshape", [mean, per_channel])]), e.op("Reshape", [inv_std, per_channel])],
        )
        grads[1] = e.reduce_sum(e.op("Mul", [g[0], normalised]), reduce_axes, keepdims=0)
    if needs[2]:
        grads[2] = e.reduce_sum(g[0], reduce_axes, keepdims=0)
    return grads


@_rule("LayerNormalization")
def _layer_norm(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    x, scale = node.input[0], node.input[1]
    rank = len(e.shape(x))
    axis = int(_attr(node, "axis", -1)) % rank  # type: ignore[call-overload]
    eps = float(_attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    norm_axes, lead_axes = list(range(axis, rank)), list(range(axis))
    centred = e.op("Sub", [x, e.reduce_mean(x, norm_axes)])
    inv_std = e.op(
        "Reciprocal",
        [e.op("Sqrt", [e.op("Add", [e.reduce_mean(e.op("Mul", [centred, centred]), norm_axes), e.const(eps)])])],
    )
    normalised = e.op("Mul", [centred, inv_std], "ln.xhat")
    grads: list[str | None] = [None] * len(node.input)
    if needs[0]:
        dxhat = e.op("Mul", [g[0], scale])
        mean_d = e.reduce_mean(dxhat, norm_axes)
        mean_dx = e.reduce_mean(e.op("Mul", [dxhat, normalised]), norm_axes)
        inner = e.op("Sub", [e.op("Sub", [dxhat, mean_d]), e.op("Mul", [normalised, mean_dx])])
        grads[0] = e.op("Mul", [inner, inv_std], "ln.dx")
    if needs[1]:
        grads[1] = e.reduce_sum(e.op("Mul", [g[0], normalised]), lead_axes, keepdims=0)
    if len(node.input) > 2 and node.input[2] and needs[2]:
        grads[2] = e.reduce_sum(g[0], lead_axes, keepdims=0)
    return grads


@_rule("Softmax")
def _softmax(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    y = node.output[0]
    axis = int(_attr(node, "axis", -1)) % len(e.shape(y))  # type: ignore[call-overload]
    weighted = e.reduce_sum(e.op("Mul", [g[0], y]), [axis], keepdims=1)
    return [e.op("Mul", [y, e.op("Sub", [g[0], weighted])], "softmax")]


@_rule("Conv")
def _conv(e: Emitter, node: onnx.NodeProto, g: list[str], needs: list[bool]) -> list[str | None]:
    x, w = node.input[0], node.input[1]
    x_shape, w_shape = e.shape(x), e.shape(w)
    spatial = len(x_shape) - 2
    group = int(_attr(node, "group", 1))  # type: ignore[call-overload]
    channels = e.static_dims(x, [1])[0]
    if group not in (1, channels) or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise EdgeftError(
            f"the portable trainer differentiates Conv with group 1 or depthwise and explicit pads only ('{node.name}')"
        )
    strides = [int(s) for s in _attr(node, "strides", [1] * spatial)]  # type: ignore[union-attr]
    dilations = [int(d) for d in _attr(node, "dilations", [1] * spatial)]  # type: ignore[union-attr]
    pads = [int(p) for p in _attr(node, "pads", [0] * 2 * spatial)]  # type: ignore[union-attr]
    kernel = [int(k) for k in w_shape[2:]]  # type: ignore[arg-type]
    in_size = e.static_dims(x, range(2, 2 + spatial))
    out_size = e.static_dims(node.output[0], range(2, 2 + spatial))
    grads: list[str | None] = [None] * len(node.input)
    if needs[0]:
        natural = [
            (o - 1) * s - pads[i] - pads[i + spatial] + (k - 1) * d + 1
            for i, (o, s, k, d) in enumerate(zip(out_size, strides, kernel, dilations, strict=True))
        ]
        output_padding = [size - n for size, n in zip(in_size, natural, strict=True)]
        grads[0] = e.op(
            "ConvTranspose",
            [g[0], w],
            "conv.dx",
            strides=strides,
            dilations=dilations,
            pads=pads,
            group=group,
            output_padding=output_padding,
        )
    if needs[1]:
        # dW[o, i, k] = sum_n,p g[n, o, p] x[n, i, p*s + k*d - pad]: a convolution of x (batch as channels) by g.
        swap = [1, 0, *range(2, 2 + spatial)]
        if group == 1:
            xs = e.op("Transpose", [x], perm=swap)  # [C_in, N, ...]
            gs = e.op("Transpose", [g[0]], perm=swap)  # [C_out, N, ...]
            raw = e.op(
                "Conv", [xs, gs], "conv.dw", strides=dilations, dilations=strides, pads=pads
            )  # [C_in, C_out, k']
            raw = e.op("Transpose", [raw], perm=swap)
        else:  # depthwise: channel c of x meets channel c of g only
            xs = e.op("Reshape", [e.op("Transpose", [x], perm=swap), e.const(np.array([1, -1, *in_size], np.int64))])
            gs = e.op("Transpose", [g[0]], perm=swap)  # [C, N, ...] as C filters over N channels each
            raw = e.op("Conv", [xs, gs], "conv.dw", strides=dilations, dilations=strides, pads=pads, group=channels)
            raw = e.op("Transpose", [raw], perm=swap)  # [1, C, k'] -> [C, 1, k']
        ends = np.array([int(w_shape[0]), int(w_shape[1]), *kernel], np.int64)
        grads[1] = e.op(
            "Slice",
            [
                raw,
                e.const(np.zeros(2 + spatial, np.int64)),
                e.const(ends),
                e.const(np.arange(2 + spatial, dtype=np.int64)),
            ],
            "conv.dw",
        )
    if len(node.input) > 2 and node.input[2] and needs[2]:
        grads[2] = e.reduce_sum(g[0], [0, *range(2, 2 + spatial)], keepdims=0)
    return grads


def gradient_nodes(
    forward: Sequence[onnx.NodeProto], seeds: dict[str, str], wrt: Sequence[str], emitter: Emitter
) -> dict[str, str]:
    """Emit into ``emitter`` the gradients of ``wrt`` tensors, given gradient tensors ``seeds`` of some outputs.

    Returns tensor -> its gradient tensor, for every name in ``wrt`` (a parameter that does not reach the seeds
    gets an explicit zero).
    """
    needs_grad = set(wrt)
    for node in forward:
        if any(i in needs_grad for i in node.input):
            needs_grad.update(o for o in node.output if o)
    pending: dict[str, list[str]] = {name: [grad] for name, grad in seeds.items()}
    for node in reversed(list(forward)):
        outputs = [o for o in node.output if o]
        if not any(o in pending for o in outputs) or not any(i in needs_grad for i in node.input):
            continue
        rule = _RULES.get(node.op_type)
        if rule is None:
            raise EdgeftError(
                f"the portable trainer cannot differentiate the {node.op_type} node '{node.name}'; move the freeze line "
                "after it, or export with --ort-artifacts and adapt with --trainer ort"
            )
        if any(o in pending for o in outputs[1:]):
            raise EdgeftError(f"the portable trainer cannot differentiate the second output of '{node.name}'")
        grad = _sum(emitter, pending.pop(node.output[0]))
        needs = [i in needs_grad for i in node.input]
        for name, g in zip(node.input, rule(emitter, node, [grad], needs), strict=False):
            if g is not None and name in needs_grad:
                pending.setdefault(name, []).append(g)
    result = {}
    for name in wrt:
        if name in pending:
            result[name] = _sum(emitter, pending[name])
        else:
            shape = emitter.shape(name)
            result[name] = emitter.const(np.zeros([int(d) for d in shape], np.float32), "zero")  # type: ignore[arg-type]
    return result


def _sum(emitter: Emitter, grads: list[str]) -> str:
    return grads[0] if len(grads) == 1 else emitter.op("Sum", grads, "sum")
