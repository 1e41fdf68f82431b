"""A zoo of small real architecture families built with onnx.helper (no torch): export, adapt, predict, merge."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from helpers import float_weight_layers, trained_by_step
from tiny_models import save
from zoo.exercise import adapt_predict_export, inputs_for
from zoo.onnx_families import FAMILIES

from edgeft.bundle import Bundle, Defaults
from edgeft.export import ExportConfig, export_bundle

CLASSES = ["a", "b", "c"]
DEFAULTS = Defaults(epochs=3, batch_size=8, lr=0.01)
# family -> (tensor the head is found at, feature size, pooling recorded)
DETECTED = {
    "resnet": ("features", 8, "none"),
    "mobilenet_v2": ("dropout", 8, "none"),
    "efficientnet": ("features", 16, "none"),
    "squeezenet": ("dropout", 16, "avg"),
    "transformer": ("pooled", 8, "none"),
    "mlp": ("relu2", 12, "none"),
    "conv1d": ("features", 8, "none"),
}
# family -> a non-default export of it: options, and the original parameters that must become trainable
VARIANTS = {
    "resnet": ({"unfreeze_last": 1}, {"b1.conv1.w", "b1.conv2.w", "b1.bn1.scale", "b1.bn2.bias"}),
    "mobilenet_v2": ({"cut": "ir.add", "pool": "max", "head": "mlp:16", "dropout": 0.1}, set()),
    "efficientnet": ({"unfreeze_from": "mb.bn2", "head": "mlp:8", "activation": "silu"}, {"top.w", "top.bn.scale"}),
    "squeezenet": ({"remove_layers": 2, "pool": "avg"}, set()),
    "transformer": ({"cut": "encoded", "pool": "cls", "unfreeze_from": "res1"}, {"mlp1.w", "mlp2.w", "encoded.g"}),
    "mlp": ({"keep_head": True, "classes": None}, set()),
    "conv1d": ({"cut": "relu2", "pool": "max", "unfreeze_last": 1}, {"c2.w", "bn2.scale"}),
}


def _trainable(bundle_path: Path) -> set[str]:
    """What the portable train step trains; where ORT artifacts exist too, their checkpoint must agree."""
    bundle = Bundle.load(bundle_path)
    trainable = trained_by_step(bundle)
    if "ort" in bundle.manifest.head.trainers:
        from edgeft.common.ort import training_api

        state = training_api().CheckpointState.load_checkpoint(str(bundle_path / "train" / "checkpoint"))
        assert trainable == {name for name, param in state.parameters if param.requires_grad}
    return trainable


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_exports_with_detected_head(family: str, tmp_path: Path) -> None:
    path = save(FAMILIES[family](), tmp_path / f"{family}.onnx")
    bundle = export_bundle(ExportConfig(path, tmp_path / "b", classes=CLASSES, defaults=DEFAULTS))
    tensor, dim, pool = DETECTED[family]
    manifest = bundle.manifest
    assert (manifest.source["cut_tensor"], manifest.head.feature_dim, manifest.head.pool) == (tensor, dim, pool)
    assert manifest.validation["cut_max_abs_diff"] <= manifest.validation["cut_atol"]
    assert _trainable(bundle.path) == {"head.weight", "head.bias"}
    adapt_predict_export(bundle, tmp_path)


@pytest.mark.parametrize("family", sorted(VARIANTS))
def test_family_exports_with_other_cut_head_or_unfreezing(family: str, tmp_path: Path) -> None:
    options, unfrozen = VARIANTS[family]
    options = {"classes": CLASSES, **options}
    path = save(FAMILIES[family](), tmp_path / f"{family}.onnx")
    bundle = export_bundle(ExportConfig(path, tmp_path / "b", defaults=DEFAULTS, **options))
    trainable = _trainable(bundle.path)
    new_layers = {n for n in trainable if n.startswith("head.")}
    assert trainable == set(bundle.manifest.head.trainable)
    assert unfrozen <= trainable - new_layers
    if not unfrozen:
        assert trainable == new_layers
    else:
        # Unfrozen parameters moved out of the backbone: it no longer holds them.
        backbone = {i.name for i in onnx.load(str(bundle.backbone_path)).graph.initializer}
        assert not unfrozen & backbone
        assert bundle.manifest.head.normaliser == {} and bundle.manifest.head.unfrozen
    adapt_predict_export(bundle, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_exports_int8_with_its_first_weight_layer_float(family: str, tmp_path: Path) -> None:
    path = save(FAMILIES[family](), tmp_path / f"{family}.onnx")
    float_bundle = export_bundle(ExportConfig(path, tmp_path / "float", classes=CLASSES, defaults=DEFAULTS))
    x = inputs_for(float_bundle, seed=1)
    # The target CPU is the one the test runs on (--target-cpu auto, the default; README: int8).
    bundle = export_bundle(
        ExportConfig(
            path,
            tmp_path / "b",
            classes=CLASSES,
            defaults=DEFAULTS,
            quantize="int8",
            calibration=x,
            keep_float=1,
        )
    )
    layers = bundle.manifest.quantization["float_layers"]
    backbone = onnx.load(str(bundle.backbone_path))
    assert layers["count"] == 1 and float_weight_layers(backbone) == layers["weight_layers"]  # the others: int8
    assert any(n.op_type == "DequantizeLinear" for n in backbone.graph.node)
    assert bundle.manifest.quantization["validation"]["mean_cosine"] >= 0.99
    adapt_predict_export(bundle, tmp_path)
