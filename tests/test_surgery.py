"""Head detection and backbone extraction on real ONNX graphs (edgeft.export.surgery, export_bundle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import exposing, run_onnx
from onnx import TensorProto, helper
from tiny_models import CHANNELS, HIDDEN, ORIGINAL_CLASSES, SIZE, classifier, save

from edgeft.errors import EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.export.surgery import cut_at, extract_backbone, find_head

HEAD_NODES = {"gemm": ("fc",), "matmul_add": ("fc.add", "fc.matmul"), "matmul": ("fc.matmul",)}
TAILS = [
    (),
    ("Softmax",),
    ("LogSoftmax",),
    ("Identity",),
    ("Flatten",),
    ("Reshape",),
    ("Dropout",),
    ("Sigmoid",),
    ("Reshape", "Softmax"),
    ("Dropout", "Identity", "LogSoftmax"),
    ("Flatten", "Reshape", "Identity", "Softmax"),
]


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    """Random inputs of the tiny models' shape."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, CHANNELS, SIZE, SIZE)).astype(np.float32)


def _assert_backbone_matches(original: onnx.ModelProto, backbone: onnx.ModelProto, tensor: str) -> np.ndarray:
    """Run the original (exposing ``tensor``) and the backbone on random input; they must agree."""
    x = _images()
    expected = run_onnx(exposing(original, tensor), {"image": x}, [tensor])[0].reshape(len(x), -1)
    (got,) = run_onnx(backbone, {"image": x})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    return got


def _no_linear_head() -> onnx.ModelProto:
    """A graph ending Conv → GlobalAveragePool → Flatten, with no classifier layer at the end."""
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.normal(size=(HIDDEN, CHANNELS, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("GlobalAveragePool", ["conv"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "no_head",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", HIDDEN])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _two_outputs() -> onnx.ModelProto:
    """The tiny classifier that also outputs its feature vector."""
    model = classifier()
    model.graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", HIDDEN]))
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("tail", TAILS, ids=lambda t: "+".join(t) or "none")
@pytest.mark.parametrize("head", sorted(HEAD_NODES))
def test_find_head_cuts_at_features(head: str, tail: tuple[str, ...]) -> None:
    model = classifier(head=head, tail=tail)
    cut = find_head(model)
    assert cut.feature_tensor == "features"
    tail_nodes = tuple(f"tail{i}" for i in reversed(range(len(tail))))
    assert cut.head_nodes == tail_nodes + HEAD_NODES[head]
    assert cut.original_classes == ORIGINAL_CLASSES


@pytest.mark.parametrize("head", sorted(HEAD_NODES))
def test_extracted_backbone_equals_original_at_cut(head: str) -> None:
    model = classifier(head=head, tail=("Dropout", "Softmax"), seed=3)
    backbone = extract_backbone(model, find_head(model).feature_tensor)
    assert [o.name for o in backbone.graph.output] == ["features"]
    removed = {n.name for n in model.graph.node} - {n.name for n in backbone.graph.node}
    assert removed == {"fc", "fc.add", "fc.matmul", "tail0", "tail1"} & {n.name for n in model.graph.node}
    features = _assert_backbone_matches(model, backbone, "features")
    assert features.shape == (4, HIDDEN)


@pytest.mark.parametrize("head", sorted(HEAD_NODES))
def test_export_records_cut_and_backbone_matches(head: str, tmp_path: Path) -> None:
    model = classifier(head=head, tail=("LogSoftmax",), seed=1)
    bundle = export_bundle(ExportConfig(save(model, tmp_path / "m.onnx"), tmp_path / "b", num_classes=2))
    source = bundle.manifest.source
    assert source["cut_tensor"] == "features"
    assert source["removed_head_nodes"] == ["tail0", *HEAD_NODES[head]]
    assert source["original_outputs"] == ORIGINAL_CLASSES
    assert bundle.manifest.head.feature_dim == HIDDEN
    _assert_backbone_matches(model, onnx.load(str(bundle.backbone_path)), "features")


@pytest.mark.parametrize(
    ("tensor", "dim"), [("relu", HIDDEN * SIZE * SIZE), ("pool", HIDDEN), ("conv", HIDDEN * SIZE * SIZE)]
)
def test_cut_at_intermediate_tensor_flattens_features(tensor: str, dim: int, tiny_model: Path, tmp_path: Path) -> None:
    bundle = export_bundle(ExportConfig(tiny_model, tmp_path / "b", classes=["x", "y"], cut=tensor))
    manifest = bundle.manifest
    assert manifest.source["cut_tensor"] == tensor
    assert manifest.source["removed_head_nodes"] == []
    assert manifest.head.feature_dim == dim
    assert manifest.feature.name == f"{tensor}.flat"
    assert manifest.feature.shape == ["batch", dim]
    backbone = onnx.load(str(bundle.backbone_path))
    features = _assert_backbone_matches(onnx.load(str(tiny_model)), backbone, tensor)
    assert features.shape == (4, dim)


def test_cut_at_the_feature_vector_needs_no_flatten(tiny_model: Path) -> None:
    model = onnx.load(str(tiny_model))
    cut = cut_at(model, "features")
    assert cut.head_nodes == ()
    backbone = extract_backbone(model, cut.feature_tensor)
    assert [o.name for o in backbone.graph.output] == ["features"]
    assert "edgeft.flatten" not in {n.name for n in backbone.graph.node}


def test_several_outputs_need_output_choice(tmp_path: Path) -> None:
    model = _two_outputs()
    with pytest.raises(EdgeftError, match=r"2 outputs.*--output"):
        find_head(model)
    path = save(model, tmp_path / "two.onnx")
    with pytest.raises(EdgeftError, match="--output"):
        export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2))
    assert not (tmp_path / "b").exists()
    cut = find_head(model, output="tail0")
    assert (cut.feature_tensor, cut.head_nodes) == ("features", ("tail0", "fc"))
    bundle = export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2, output="tail0"))
    assert bundle.manifest.source["cut_tensor"] == "features"


def test_unknown_output_is_named() -> None:
    with pytest.raises(EdgeftError, match="no output 'nope'.*tail0"):
        find_head(classifier(), output="nope")


def test_unknown_cut_tensor(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match="no tensor named 'nope'"):
        cut_at(onnx.load(str(tiny_model)), "nope")
    with pytest.raises(EdgeftError, match="nope"):
        export_bundle(ExportConfig(tiny_model, tmp_path / "b", num_classes=2, cut="nope"))
    assert not (tmp_path / "b").exists()


def test_cut_at_model_input_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match="model input"):
        export_bundle(ExportConfig(tiny_model, tmp_path / "b", num_classes=2, cut="image"))


def test_graph_without_linear_head_asks_for_cut(tmp_path: Path) -> None:
    model = _no_linear_head()
    with pytest.raises(EdgeftError, match="Conv node 'conv'.*--cut"):
        find_head(model)
    path = save(model, tmp_path / "nohead.onnx")
    with pytest.raises(EdgeftError, match="--cut"):
        export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2))
    bundle = export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2, cut="flat"))
    assert bundle.manifest.head.feature_dim == HIDDEN
    _assert_backbone_matches(model, onnx.load(str(bundle.backbone_path)), "flat")


def test_matmul_with_non_constant_weight_is_not_a_head() -> None:
    model = classifier(head="matmul")
    # Make the weight a graph input instead of an initializer: no longer a frozen linear layer.
    weight = next(i for i in model.graph.initializer if i.name == "fc.w")
    model.graph.initializer.remove(weight)
    model.graph.input.append(helper.make_tensor_value_info("fc.w", TensorProto.FLOAT, [HIDDEN, ORIGINAL_CLASSES]))
    onnx.checker.check_model(model)
    with pytest.raises(EdgeftError, match="MatMul node 'fc.matmul'.*--cut"):
        find_head(model)
