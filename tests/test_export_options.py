"""Export options beyond the default: pooling, mlp heads, tasks, optimizers, --keep-head, --list-cuts, sources."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import exposing, initial_parameters, one_error_line, run_cli, run_onnx
from onnx import helper, numpy_helper
from tiny_models import CHANNELS, HIDDEN, SIZE, classifier, save
from zoo.onnx_families import FAMILIES, Graph

from edgeft.common.ort import resolve_placement
from edgeft.errors import EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.export import sources as sources_module
from edgeft.export.artifacts import ort_training_installed
from edgeft.export.cuts import list_cuts
from edgeft.runtime.trainer import choose_trainer, open_trainer


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, CHANNELS, SIZE, SIZE)).astype(np.float32)


def _original(model: onnx.ModelProto, tensor: str, x: np.ndarray, name: str = "image") -> np.ndarray:
    return run_onnx(exposing(model, tensor), {name: x}, [tensor])[0]


@pytest.mark.parametrize(
    ("pool", "reduce"),
    [
        ("avg", lambda t: t.mean(axis=(2, 3))),
        ("max", lambda t: t.max(axis=(2, 3))),
        ("flatten", lambda t: t.reshape(len(t), -1)),
    ],
)
def test_pool_turns_feature_maps_into_vectors(pool: str, reduce, tiny_model: Path, tmp_path: Path) -> None:
    bundle = export_bundle(ExportConfig(tiny_model, tmp_path / "b", num_classes=2, cut="relu", pool=pool))
    x = _images()
    (features,) = run_onnx(bundle.backbone_path, {"image": x})
    expected = reduce(_original(onnx.load(str(tiny_model)), "relu", x))
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    assert bundle.manifest.head.pool == pool and bundle.manifest.head.feature_dim == expected.shape[1]


@pytest.mark.parametrize("pool", ["cls", "avg", "max"])
def test_pool_over_transformer_tokens(pool: str, tmp_path: Path) -> None:
    model = FAMILIES["transformer"]()
    bundle = export_bundle(
        ExportConfig(save(model, tmp_path / "t.onnx"), tmp_path / "b", num_classes=2, cut="encoded", pool=pool)
    )
    x = np.random.default_rng(0).normal(size=(3, 6, 5)).astype(np.float32)
    tokens = _original(model, "encoded", x, "x")
    expected = {"cls": tokens[:, 0], "avg": tokens.mean(1), "max": tokens.max(1)}[pool]
    (features,) = run_onnx(bundle.backbone_path, {"x": x})
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cut": "features", "pool": "avg"}, "already a vector"),
        ({"cut": "relu", "pool": "cls"}, "first token"),
        ({"cut": "relu", "pool": "median"}, "unknown pooling"),
        ({"head": "mlp:"}, "mlp:H1,H2"),
        ({"head": "conv"}, "mlp:H1,H2"),
        ({"head": "mlp:4", "activation": "tanh"}, "unknown activation"),
        ({"task": "ranking"}, "unknown task"),
        ({"task": "classification", "loss": "mse"}, "does not fit task"),
        ({"optimizer": "sgd", "weight_decay": 0.1}, "SGD optimizer has no weight decay"),
        ({"optimizer": "lamb"}, "unknown optimizer"),
        ({"cut": "relu", "remove_layers": 1}, "not both"),
        ({"remove_layers": 3}, "depends on 2 layers"),
        ({"unfreeze_from": "pool", "unfreeze_last": 1}, "not both"),
        ({"unfreeze_from": "image"}, "model input"),
        ({"unfreeze_last": 1}, "whole model"),
        ({"keep_head": True, "head": "mlp:4"}, "mlp head"),
        ({"keep_head": True, "cut": "features"}, "found automatically"),
    ],
)
def test_bad_options_are_explained(kwargs: dict, message: str, tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match=message):
        export_bundle(ExportConfig(tiny_model, tmp_path / "b", num_classes=5, **kwargs))
    assert not (tmp_path / "b").exists()


def test_unfreeze_from_must_be_on_every_path(tmp_path: Path) -> None:
    path = save(FAMILIES["resnet"](), tmp_path / "r.onnx")
    with pytest.raises(
        EdgeftError, match="not a tensor that every path.*candidates: stem, stem.bn, stem.relu, b1.add, b1.out, pool"
    ):
        export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2, unfreeze_from="b1.relu1"))


def test_mlp_head_computes_what_it_says(tiny_model: Path, tmp_path: Path) -> None:
    bundle = export_bundle(
        ExportConfig(tiny_model, tmp_path / "b", num_classes=3, head="mlp:7,5", activation="gelu", dropout=0.3, seed=4)
    )
    head = bundle.manifest.head
    assert (head.kind, head.hidden, head.activation, head.dropout) == ("mlp", [7, 5], "gelu", 0.3)
    params = initial_parameters(bundle.path)
    assert params["head.hidden0.weight"].shape == (7, HIDDEN) and params["head.weight"].shape == (3, 5)
    features = np.random.default_rng(1).normal(size=(4, HIDDEN)).astype(np.float32)
    (logits,) = run_onnx(bundle.head_path, {"features": features, **params})
    from math import erf

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
    h = features
    for i in range(2):
        h = gelu(h @ params[f"head.hidden{i}.weight"].T + params[f"head.hidden{i}.bias"])
    np.testing.assert_allclose(logits, h @ params["head.weight"].T + params["head.bias"], rtol=1e-4, atol=1e-5)
    # Seeded: the same seed gives the same initial head, another seed another one.
    again = export_bundle(
        ExportConfig(tiny_model, tmp_path / "c", num_classes=3, head="mlp:7,5", activation="gelu", seed=4)
    )
    other = export_bundle(
        ExportConfig(tiny_model, tmp_path / "d", num_classes=3, head="mlp:7,5", activation="gelu", seed=5)
    )
    np.testing.assert_array_equal(initial_parameters(again.path)["head.weight"], params["head.weight"])
    assert not np.array_equal(initial_parameters(other.path)["head.weight"], params["head.weight"])


def _train(bundle_path: Path, features: np.ndarray, targets: np.ndarray, lr: float = 0.05) -> tuple[float, float]:
    from edgeft.bundle import Bundle

    bundle = Bundle.load(bundle_path)
    trainer = open_trainer(bundle, None, resolve_placement("cpu"), choose_trainer(bundle))
    first = trainer.fit(features, targets, epochs=1, batch_size=8, schedule=lambda step: lr, seed=0)
    later = trainer.fit(features, targets, epochs=15, batch_size=8, schedule=lambda step: lr, seed=1)
    return first, later


@pytest.mark.parametrize(
    ("task", "loss"), [("multilabel", "bce_with_logits"), ("regression", "mse"), ("regression", "l1")]
)
def test_tasks_train_with_their_loss(task: str, loss: str, tiny_model: Path, tmp_path: Path) -> None:
    names = ["x", "y", "z"]
    bundle = export_bundle(ExportConfig(tiny_model, tmp_path / "b", classes=names, task=task, loss=loss))
    assert (bundle.manifest.head.task, bundle.manifest.head.loss) == (task, loss)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, HIDDEN)).astype(np.float32)
    mixed = features @ rng.normal(size=(HIDDEN, 3))
    targets = (mixed > 0).astype(np.float32) if task == "multilabel" else mixed.astype(np.float32)
    first, later = _train(bundle.path, features, targets)
    assert later < first * 0.7, (first, later)


def test_single_regression_target_and_label(tiny_model: Path, tmp_path: Path) -> None:
    assert (
        export_bundle(
            ExportConfig(tiny_model, tmp_path / "r", classes=["price"], task="regression")
        ).manifest.head.num_outputs
        == 1
    )
    assert (
        export_bundle(ExportConfig(tiny_model, tmp_path / "m", classes=["cat"], task="multilabel")).manifest.head.loss
        == "bce_with_logits"
    )
    with pytest.raises(EdgeftError, match="fixed set of targets"):
        export_bundle(ExportConfig(tiny_model, tmp_path / "x", classes=["a"], max_classes=4, task="regression"))


@pytest.mark.parametrize(
    ("optimizer", "decay", "op"), [("adamw", 0.05, "AdamWOptimizer"), ("sgd", 0.0, "SGDOptimizerV2")]
)
def test_optimizer_and_weight_decay_are_in_the_artifacts(
    optimizer: str, decay: float, op: str, tiny_model: Path, tmp_path: Path
) -> None:
    bundle = export_bundle(
        ExportConfig(tiny_model, tmp_path / "b", num_classes=3, optimizer=optimizer, weight_decay=decay)
    )
    assert (bundle.manifest.head.optimizer, bundle.manifest.head.weight_decay) == (optimizer, decay)
    step_outputs = {o.name for o in onnx.load(str(bundle.train_path("train_step.onnx"))).graph.output}
    assert ("new.adamw.m.head.weight" in step_outputs) == (optimizer == "adamw")
    if ort_training_installed():
        graph = onnx.load(str(bundle.train_path("optimizer_model.onnx"))).graph
        (node,) = [n for n in graph.node if n.op_type == op]
        if optimizer == "adamw":
            weight_decay = next(a for a in node.attribute if a.name == "weight_decay")
            assert helper.get_attribute_value(weight_decay) == pytest.approx(decay)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(48, HIDDEN)).astype(np.float32)
    first, later = _train(bundle.path, features, (features @ rng.normal(size=(HIDDEN, 3))).argmax(1))
    assert later < first


@pytest.mark.parametrize("family", ["mlp", "efficientnet", "resnet"])
def test_keep_head_reproduces_original_logits(family: str, tmp_path: Path) -> None:
    model = FAMILIES[family]()
    bundle = export_bundle(ExportConfig(save(model, tmp_path / "m.onnx"), tmp_path / "b", keep_head=True))
    validation = bundle.manifest.validation
    assert validation["logits_max_abs_diff"] <= validation["logits_atol"]
    assert bundle.manifest.head.normaliser == {} and len(bundle.manifest.classes) == 5
    input_value = model.graph.input[0]
    shape = [3, *[d.dim_value for d in input_value.type.tensor_type.shape.dim[1:]]]
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    (features,) = run_onnx(bundle.backbone_path, {"x": x})
    params = initial_parameters(bundle.path)
    (logits,) = run_onnx(bundle.head_path, {"features": features, **params})
    expected = _original(model, {"mlp": "y", "efficientnet": "y", "resnet": "fc"}[family], x, "x")
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_keep_head_refuses_squeezenet_relu(tmp_path: Path) -> None:
    path = save(FAMILIES["squeezenet"](), tmp_path / "s.onnx")
    with pytest.raises(EdgeftError, match="nonlinearity"):
        export_bundle(ExportConfig(path, tmp_path / "b", keep_head=True))
    with pytest.raises(EdgeftError, match="has 5 outputs, the new one 3"):
        export_bundle(
            ExportConfig(save(FAMILIES["mlp"](), tmp_path / "m.onnx"), tmp_path / "b", keep_head=True, num_classes=3)
        )


def _with_round(where: str) -> onnx.ModelProto:
    """Conv → Round → Relu → Conv → GAP → Flatten → Gemm, with Round before or after the freeze line."""
    g = Graph(8)
    x = g.conv("x", 3, 4, "c1")
    x = g.op("Round", [x], "round") if where == "frozen" else x
    x = g.op("Relu", [x], "relu1")
    x = g.conv(x, 4, 4, "c2")
    x = g.op("Round", [x], "round") if where == "trainable" else x
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "features", axis=1)
    g.gemm(x, 4, 3, "y")
    return g.model(["N", 3, 8, 8], "y", ["N", 3])


def test_non_differentiable_op_on_gradient_path_is_named(tmp_path: Path) -> None:
    path = save(_with_round("trainable"), tmp_path / "m.onnx")
    with pytest.raises(EdgeftError, match="cannot differentiate the Round node 'round'.*move the freeze line"):
        export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2, unfreeze_from="relu1"))
    assert not (tmp_path / "b").exists()
    # Frozen, the same op does not matter.
    export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2))
    frozen = save(_with_round("frozen"), tmp_path / "f.onnx")
    bundle = export_bundle(ExportConfig(frozen, tmp_path / "f", num_classes=2, unfreeze_from="relu1"))
    assert "c2.w" in bundle.manifest.head.trainable


@pytest.mark.slow
def test_list_cuts_shows_cut_points_with_shapes(tmp_path: Path) -> None:
    points = list_cuts(FAMILIES["resnet"]())
    tensors = [p.tensor for p in points]
    assert tensors == ["stem", "stem.bn", "stem.relu", "b1.add", "b1.out", "pool", "features", "fc", "y"]
    by_name = {p.tensor: p for p in points}
    assert by_name["stem.relu"].shape == ["N", 8, 8, 8] and by_name["stem.relu"].op == "Relu"
    assert by_name["features"].detected_head and by_name["features"].layers_after == 1
    assert by_name["stem.relu"].layers_after == 3 and not by_name["stem.relu"].detected_head
    path = save(FAMILIES["resnet"](), tmp_path / "r.onnx")
    done = run_cli("export", path, "--list-cuts")
    assert done.returncode == 0, done.stderr
    assert "features\t['N', 8]\tFlatten\t1\t<- head found here" in done.stdout
    assert "b1.relu1" not in done.stdout


@pytest.mark.slow
def test_cli_export_with_new_options(tiny_model: Path, tmp_path: Path) -> None:
    done = run_cli(
        "export",
        tiny_model,
        "-o",
        tmp_path / "b",
        "--num-classes",
        "3",
        "--cut",
        "relu",
        "--pool",
        "avg",
        "--head",
        "mlp:8",
        "--task",
        "multilabel",
        "--optimizer",
        "sgd",
    )
    assert done.returncode == 0, done.stderr
    info = run_cli("info", tmp_path / "b")
    assert (
        "mlp 6 -> 3 (multilabel)" in info.stdout and "bce_with_logits, sgd" in info.stdout and "pool avg" in info.stdout
    )
    bad = run_cli("export", tiny_model, "-o", tmp_path / "c", "--num-classes", "3", "--pool", "avg")
    assert bad.returncode == 1 and "already a vector" in one_error_line(bad.stderr)


def test_output_picks_one_of_several(tmp_path: Path) -> None:
    model = classifier()
    model.graph.output.append(helper.make_tensor_value_info("relu", onnx.TensorProto.FLOAT, ["N", HIDDEN, SIZE, SIZE]))
    path = save(model, tmp_path / "two.onnx")
    bundle = export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2, output="tail0", keep_head=False))
    assert bundle.manifest.source["cut_tensor"] == "features"
    with pytest.raises(EdgeftError, match="depends on 1 layers"):
        export_bundle(ExportConfig(path, tmp_path / "c", num_classes=2, output="relu", remove_layers=2))


@pytest.mark.parametrize("opset", [11, 13, 18, 21])
def test_models_of_other_opsets(opset: int, tmp_path: Path) -> None:
    model = classifier()
    model.opset_import[0].version = opset
    if opset >= 18:
        model.ir_version = 8 if opset == 18 else 10
    path = save(model, tmp_path / "m.onnx")
    bundle = export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2, cut="relu", pool="avg"))
    assert onnx.load(str(bundle.backbone_path)).opset_import[0].version == opset
    x = _images()
    (features,) = run_onnx(bundle.backbone_path, {"image": x})
    np.testing.assert_allclose(features, _original(model, "relu", x).mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    unfrozen = export_bundle(
        ExportConfig(path, tmp_path / "u", num_classes=2, cut="relu", pool="avg", unfreeze_from="conv")
    )
    assert unfrozen.manifest.head.unfrozen == ["relu"]


def test_external_data_is_loaded(tmp_path: Path) -> None:
    model = classifier()
    path = tmp_path / "ext" / "m.onnx"
    path.parent.mkdir()
    onnx.save(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0
    )
    bundle = export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2))
    assert bundle.manifest.head.feature_dim == HIDDEN
    (path.parent / "m.data").unlink()
    with pytest.raises(EdgeftError, match="external data files that are missing.*m.data"):
        export_bundle(ExportConfig(path, tmp_path / "c", num_classes=2))


def test_models_over_the_protobuf_limit_are_refused(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = tiny_model.stat().st_size
    monkeypatch.setattr(sources_module, "PROTOBUF_LIMIT", size - 1)
    with pytest.raises(EdgeftError, match=r"GiB with its external data; edgeft exports models up to 2 GiB"):
        export_bundle(ExportConfig(tiny_model, tmp_path / "b", num_classes=2))


def test_validation_catches_a_backbone_that_differs(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeft.export import exporter

    real = exporter.extract_backbone

    def tampered(model, tensor, pooling):  # noqa: ANN001, ANN202
        backbone = real(model, tensor, pooling)
        bias = next(i for i in backbone.graph.initializer if i.name == "conv.b")
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, "conv.b"))
        return backbone

    monkeypatch.setattr(exporter, "extract_backbone", tampered)
    with pytest.raises(EdgeftError, match="differs from the original at 'features'"):
        export_bundle(ExportConfig(tiny_model, tmp_path / "b", num_classes=2))


def test_torch_sources_without_torch_say_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    from edgeft.export.torch_source import module_from_spec

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail, torch installed or not
    with pytest.raises(EdgeftError, match=r"pip install 'edgeft\[torch\]' \(torch==2.13.0"):
        module_from_spec("zoo.torch_families:mlp")
    with pytest.raises(EdgeftError, match=r"edgeft\[torch\]"):
        export_bundle(ExportConfig(object(), tmp_path / "b", num_classes=2))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"color": "XYZ"}, "--color XYZ: image files are read as L or RGB"),
        ({"color": "L"}, "--color L gives images 1 channel(s); input image takes 3"),
        ({"mean": [1.0, 2.0, 3.0, 4.0, 5.0]}, "--mean: give 1 or 3 finite values for RGB images"),
        ({"std": [0.0]}, "--std and --pixel-scale must be positive"),
        ({"scale": -1.0}, "--std and --pixel-scale must be positive"),
    ],
)
def test_image_preprocessing_that_cannot_fit_the_input_is_refused(
    tiny_model: Path, tmp_path: Path, options: dict, message: str
) -> None:
    with pytest.raises(EdgeftError, match=re.escape(message)):
        export_bundle(ExportConfig(tiny_model, tmp_path / "b", classes=["a", "b"], preprocessing=options))
    assert not (tmp_path / "b").exists()
