"""Turn an N-D feature tensor into one vector per sample: ``avg``, ``max``, ``cls`` (first token) or ``flatten``.

The same nodes serve the frozen backbone (when nothing is unfrozen) and the trainable part (after unfrozen
layers), so they use only ops onnxruntime training can differentiate (MaxPool, not ReduceMax).
``numpy_pool`` is an independent numpy version used to validate the graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeft.errors import EdgeftError

POOLS = ("none", "avg", "max", "cls", "flatten")


@dataclass(frozen=True)
class Pooling:
    """How to pool a tensor of per-sample shape ``shape``; ``channels_last`` for [N, T, D] or NHWC tensors."""

    kind: str
    shape: tuple[int, ...]
    channels_last: bool

    @property
    def output_dim(self) -> int:
        """Length of the pooled vector."""
        if self.kind in ("flatten", "none"):
            return int(np.prod(self.shape))
        return self.shape[-1] if self.channels_last else self.shape[0]


def choose_pooling(kind: str | None, shape: Sequence[int], channels_last: bool, tensor: str) -> Pooling:
    """Check a pooling choice against the tensor's shape; default: none for vectors, flatten otherwise."""
    shape = tuple(int(d) for d in shape)
    if kind is None:
        kind = "none" if len(shape) == 1 else "flatten"
    if kind not in POOLS:
        raise EdgeftError(f"unknown pooling '{kind}'; choose one of {', '.join(POOLS)}")
    if len(shape) == 1 and kind not in ("none", "flatten"):
        raise EdgeftError(
            f"--pool {kind} needs an N-D feature tensor, but '{tensor}' is already a vector {list(shape)}"
        )
    if len(shape) > 1 and kind == "none":
        raise EdgeftError(f"'{tensor}' has per-sample shape {list(shape)}; choose --pool avg, max, cls or flatten")
    if kind == "cls" and not (channels_last and len(shape) == 2):
        raise EdgeftError(
            f"--pool cls takes the first token of a [batch, tokens, dim] tensor; '{tensor}' is {list(shape)}"
        )
    return Pooling("none" if len(shape) == 1 else kind, shape, channels_last)


def _reduce_mean(tensor: str, out: str, axes: list[int], opset: int, name: str) -> list[onnx.NodeProto]:
    if opset < 18:
        return [helper.make_node("ReduceMean", [tensor], [out], axes=axes, keepdims=0, name=name)]
    axes_name = name + ".axes"
    return [
        helper.make_node(
            "Constant", [], [axes_name], value=numpy_helper.from_array(np.array(axes, np.int64)), name=axes_name
        ),
        helper.make_node("ReduceMean", [tensor, axes_name], [out], keepdims=0, name=name),
    ]


def pool_nodes(pooling: Pooling, tensor: str, out: str, opset: int, prefix: str) -> list[onnx.NodeProto]:
    """Nodes computing ``out`` [batch, output_dim] from ``tensor`` [batch, *shape] (valid in ``opset``)."""
    rank = len(pooling.shape) + 1
    if pooling.kind in ("none", "flatten"):
        return [helper.make_node("Flatten", [tensor], [out], axis=1, name=prefix + "flatten")]
    if pooling.kind == "cls":
        index = prefix + "cls.index"
        return [
            helper.make_node("Constant", [], [index], value=numpy_helper.from_array(np.array(0, np.int64)), name=index),
            helper.make_node("Gather", [tensor, index], [out], axis=1, name=prefix + "cls"),
        ]
    spatial = list(range(1, rank - 1)) if pooling.channels_last else list(range(2, rank))
    if pooling.kind == "avg":
        return _reduce_mean(tensor, out, spatial, opset, prefix + "avgpool")
    nodes = []
    if pooling.channels_last:
        transposed = prefix + "maxpool.channels_first"
        perm = [0, rank - 1, *range(1, rank - 1)]
        nodes.append(helper.make_node("Transpose", [tensor], [transposed], perm=perm, name=transposed))
        tensor = transposed
    kernel = [pooling.shape[a - 1] for a in spatial]
    pooled = prefix + "maxpool.out"
    nodes.append(helper.make_node("MaxPool", [tensor], [pooled], kernel_shape=kernel, name=prefix + "maxpool"))
    nodes.append(helper.make_node("Flatten", [pooled], [out], axis=1, name=prefix + "maxpool.flatten"))
    return nodes


def numpy_pool(pooling: Pooling, x: np.ndarray) -> np.ndarray:
    """The same pooling in numpy, [batch, output_dim]."""
    if pooling.kind in ("none", "flatten"):
        return x.reshape(len(x), -1)
    if pooling.kind == "cls":
        return x[:, 0, :]
    axes = tuple(range(1, x.ndim - 1)) if pooling.channels_last else tuple(range(2, x.ndim))
    return x.mean(axis=axes) if pooling.kind == "avg" else x.max(axis=axes)
