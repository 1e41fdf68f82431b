"""Which of an int8 backbone's first weight layers stay float: the candidates, their cost, and the search.

Layers near the input see the raw signal at full resolution: on many vision backbones quantising them costs the
most feature accuracy for the least compute (EfficientNet-Lite0 on the demo digits: BENCHMARKS.md). A prefix of
``k`` weight layers (Conv, Gemm or MatMul nodes whose weight is an initializer, counted in the graph as ORT's
``quant_pre_process`` left it: batch norms fused, constants folded) is every node before the ``(k+1)``-th of
them in topological order, input preprocessing included; those nodes are left out of the quantisation.
(ConvTranspose and a MatMul whose constant is its first input are not counted as weight layers: they are
quantised, or kept float inside a prefix, like any other node, and their compute is left out of the shares.) Its cost
is its share of the weight layers' multiply-accumulates per sample, from the output shapes of one real run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime

from edgeft.export import graph
from edgeft.export.surgery import with_extra_outputs

# The weight layers a float prefix counts: graph.WEIGHT_OPS (what --remove-layers and --unfreeze-last count) but
# ConvTranspose, which the quantiser handles like any other node (see the module docstring).
QUANTIZED_WEIGHT_OPS = graph.WEIGHT_OPS - {"ConvTranspose"}
AUTO = "auto"
# The search keeps the fewest leading weight layers float whose int8 features reach this mean cosine similarity to
# the float features on held-out calibration samples, spending at most MAX_FLOAT_SHARE of the compute on them.
TARGET_MEAN_COSINE = 0.995
MAX_FLOAT_SHARE = 0.25
# When no candidate reaches the target (7-bit weights on EfficientNet-Lite0 level off at 0.991-0.992 from 5 float
# layers on: BENCHMARKS.md), more float layers buy little agreement for much speed: the target becomes the best
# cosine found less SLACK times its disagreement (1 - cosine), and the search bisects to the shortest reaching that.
SLACK = 0.25
T = TypeVar("T")


@dataclass(frozen=True)
class Prefix:
    """The first ``layers`` weight layers and every node before the next one, kept float."""

    layers: int
    nodes: tuple[str, ...]
    weight_layers: tuple[str, ...]
    compute_share: float


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name, so that it can be left out of the quantisation by name."""
    taken = {n.name for n in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = next(
                name for k in range(len(taken) + 1) if (name := f"edgeft_{node.op_type}_{index}_{k}") not in taken
            )
            taken.add(node.name)


def weight_layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Conv, Gemm and MatMul nodes whose weight (second input) is an initializer, in graph order."""
    initializers = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node if _weight(n, initializers) is not None]


def output_shapes(model: onnx.ModelProto, input_name: str, sample: np.ndarray) -> dict[str, tuple[int, ...]]:
    """The shape of every weight layer's output when ``model`` runs on ``sample`` (one sample: one real run, so
    symbolic dimensions such as a dynamic height and width get their actual sizes)."""
    names = [n.output[0] for n in weight_layers(model)]
    if not names:
        return {}
    probe = with_extra_outputs(model, names)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {input_name: sample})
    return {name: tuple(value.shape) for name, value in zip(names, values, strict=True)}


def prefixes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[Prefix]:
    """Every prefix, from none (all int8) to all weight layers, with its share of the multiply-accumulates;
    ``shapes``: the weight layers' output shapes (output_shapes)."""
    initializers = {i.name: i for i in model.graph.initializer}
    nodes: list[str] = []
    weights: list[str] = []
    costs: list[int] = []
    ends: list[int] = []  # ends[k - 1]: how many nodes come before the (k+1)-th weight layer
    for node in model.graph.node:
        weight = _weight(node, initializers)
        if weight is not None:
            if weights:
                ends.append(len(nodes))
            weights.append(node.name)
            costs.append(_multiply_accumulates(node, weight, shapes[node.output[0]]))
        nodes.append(node.name)
    ends.append(len(nodes))
    total = max(sum(costs), 1)
    found = [Prefix(0, (), (), 0.0)]
    for k in range(1, len(weights) + 1):
        found.append(Prefix(k, tuple(nodes[: ends[k - 1]]), tuple(weights[:k]), sum(costs[:k]) / total))
    return found


def search(
    candidates: list[Prefix], mean_cosine: Callable[[Prefix], float], target: float = TARGET_MEAN_COSINE
) -> tuple[Prefix, list[dict[str, Any]]]:
    """A short candidate whose ``mean_cosine`` reaches ``target``, and the trace of what was tried.

    Tries 0, 1, 2, 4, ... layers up to the last candidate, then bisects between the last miss and the first hit,
    so a deep backbone costs about 2·log2(candidates) quantisations. That finds the shortest hit when the cosine
    grows with the number of float layers, as it does on the backbones measured; otherwise a short one. When
    no candidate tried reaches ``target``: the shortest one reaching the best cosine tried less SLACK times its
    disagreement, bisected from the longest miss before the shortest such candidate tried.
    """
    scores: dict[int, float] = {}
    trace: list[dict[str, Any]] = []

    def reaches(index: int) -> bool:
        if index not in scores:
            scores[index] = mean_cosine(candidates[index])
            trace.append({"float_layers": candidates[index].layers, "mean_cosine": round(scores[index], 5)})
        return scores[index] >= target

    last = len(candidates) - 1
    if reaches(0):
        return candidates[0], trace
    miss, hit, step = 0, None, 1
    while hit is None and miss < last:
        index = min(step, last)
        if reaches(index):
            hit = index
        else:
            miss, step = index, step * 2
    if hit is None:
        best = max(scores.values())
        target = best - SLACK * (1.0 - best)
        hit = min(i for i, score in scores.items() if score >= target)
        miss = max((i for i in scores if i < hit), default=hit)
    while hit - miss > 1:
        middle = (miss + hit) // 2
        if reaches(middle):
            hit = middle
        else:
            miss = middle
    return candidates[hit], trace


def search_calibrations(
    candidates: list[Prefix],
    calibrations: Sequence[T],
    mean_cosine: Callable[[T, Prefix], float],
    target: float = TARGET_MEAN_COSINE,
) -> tuple[T, Prefix, list[dict[str, Any]], float]:
    """The calibration and prefix with the fewest float layers whose ``mean_cosine`` reaches ``target``, the
    trace of what was tried (each entry also names its calibration's index in ``calibrations``) and the cosine the
    choice was held to (``target``, or the slack one below).

    Better calibration before more float layers: the first calibration is searched over every candidate (search);
    each next one only over fewer float layers than the best hit so far, so at equal float layers the earlier
    calibration is kept and a later one costs a few quantisations at most. When none reaches ``target``: of
    what each calibration's search chose, the fewest float layers whose cosine reaches the best one less SLACK
    times its disagreement (the earlier calibration on a tie).
    """
    trace: list[dict[str, Any]] = []
    scores: dict[tuple[int, int], float] = {}  # (float layers, calibration index): mean cosine
    best: tuple[int, Prefix] | None = None
    chosen: list[tuple[int, int]] = []  # (float layers, calibration index) each search chose
    for index, calibration in enumerate(calibrations):
        limit = best[1].layers if best else len(candidates)
        if limit == 0:
            break

        def score(prefix: Prefix, index: int = index, calibration: T = calibration) -> float:
            scores[prefix.layers, index] = mean_cosine(calibration, prefix)
            return scores[prefix.layers, index]

        prefix, tried = search(candidates[:limit], score, target)
        trace += [{**t, "calibration": index} for t in tried]
        chosen.append((prefix.layers, index))
        if scores[prefix.layers, index] >= target:
            best = index, prefix
    if best is None:
        top = max(scores[key] for key in chosen)
        target = top - SLACK * (1.0 - top)
        layers, index = min(key for key in chosen if scores[key] >= target)
        best = index, candidates[layers]
    return calibrations[best[0]], best[1], trace, target


def _weight(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    """The weight initializer of a Conv, Gemm or MatMul node (its second input), or None."""
    if node.op_type not in QUANTIZED_WEIGHT_OPS or len(node.input) < 2:
        return None
    weight = initializers.get(node.input[1])
    return weight if weight is not None and len(weight.dims) >= 2 else None


def _multiply_accumulates(node: onnx.NodeProto, weight: onnx.TensorProto, shape: tuple[int, ...]) -> int:
    """Output elements of a one-sample run (``shape``) times the weights each one uses (Conv: C/group·kh·kw;
    Gemm/MatMul: K); counting every element, not a batch dimension, also fits [N*T, D] and [T, N, D] layouts."""
    outputs_per_sample = int(np.prod(shape))
    weight_count = int(np.prod(weight.dims))
    if node.op_type == "Conv":
        outputs = weight.dims[0]
    elif node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        outputs = weight.dims[0] if trans_b else weight.dims[-1]
    else:
        outputs = weight.dims[-1]
    return outputs_per_sample * weight_count // max(outputs, 1)
