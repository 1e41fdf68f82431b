"""export_bundle and the bundle format: files, hashes, verification on load, trainable set, bad arguments."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    BUNDLE_FILES,
    CLASSES,
    copy_tree,
    flip_byte,
    initial_parameters,
    needs_ort,
    run_onnx,
    softmax,
    trained_by_step,
)
from onnx import numpy_helper
from tiny_models import CHANNELS, HIDDEN, ORIGINAL_CLASSES, SIZE, classifier, save

from edgeft.bundle import FORMAT_VERSION, MANIFEST_FILE, Bundle
from edgeft.common.ort import training_api
from edgeft.errors import EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.export.artifacts import check_trainable_set

HEAD_PARAMETERS = {"head.weight", "head.bias", "head.feature_mean", "head.feature_scale"}


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, computed independently of edgeft."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files_under(root: Path) -> set[str]:
    """Relative POSIX paths of every file under ``root``."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _rewrite_manifest(bundle: Path, **changes: object) -> None:
    """Change top-level manifest fields of a bundle copy."""
    path = bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_export_writes_every_file_with_matching_hashes(bundle_dir: Path, tiny_model: Path) -> None:
    assert _files_under(bundle_dir) == BUNDLE_FILES | {MANIFEST_FILE}
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == BUNDLE_FILES
    for rel, digest in manifest["files"].items():
        assert digest == _sha256(bundle_dir / rel), rel
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["source"]["sha256"] == _sha256(tiny_model)
    assert manifest["source"]["file"] == tiny_model.name
    assert manifest["classes"] == list(CLASSES)
    assert manifest["input"] == {"name": "image", "shape": ["batch", CHANNELS, SIZE, SIZE], "dtype": "float32"}
    assert manifest["head"]["feature_dim"] == HIDDEN
    assert manifest["head"]["num_outputs"] == len(CLASSES)
    assert manifest["head"]["trainable"] == ["head.weight", "head.bias"]
    assert manifest["preprocessing"]["color"] == "RGB"
    assert manifest["preprocessing"]["layout"] == "NCHW"
    assert manifest["validation"]["cut_max_abs_diff"] <= manifest["validation"]["cut_atol"]
    # No staging directory is left beside the bundle.
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["bundle"]


def test_loaded_bundle_fingerprint_is_manifest_hash(bundle_dir: Path) -> None:
    loaded = Bundle.load(bundle_dir)
    assert loaded.fingerprint == _sha256(bundle_dir / MANIFEST_FILE)
    assert loaded.manifest.classes == list(CLASSES)


@pytest.mark.parametrize("rel", sorted(BUNDLE_FILES))
def test_load_detects_one_corrupt_byte(rel: str, bundle_dir: Path, tmp_path: Path) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    flip_byte(copy / rel)
    with pytest.raises(EdgeftError, match="corrupt") as info:
        Bundle.load(copy)
    assert str(copy / rel) in str(info.value)


def test_load_detects_missing_file(bundle_dir: Path, tmp_path: Path) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    (copy / "head.onnx").unlink()
    with pytest.raises(EdgeftError, match="missing") as info:
        Bundle.load(copy)
    assert "head.onnx" in str(info.value)


def test_load_without_manifest(bundle_dir: Path, tmp_path: Path) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(EdgeftError, match="manifest.json is missing"):
        Bundle.load(copy)


def test_load_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match="does not exist"):
        Bundle.load(tmp_path / "nothing")


def test_load_rejects_other_format_version(bundle_dir: Path, tmp_path: Path) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    _rewrite_manifest(copy, format_version=FORMAT_VERSION + 1)
    with pytest.raises(EdgeftError, match=f"format {FORMAT_VERSION + 1}.*reads format {FORMAT_VERSION}"):
        Bundle.load(copy)


def test_load_requires_listed_core_files(bundle_dir: Path, tmp_path: Path) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    files = json.loads((copy / MANIFEST_FILE).read_text())["files"]
    del files["backbone.onnx"]
    _rewrite_manifest(copy, files=files)
    with pytest.raises(EdgeftError, match="required file backbone.onnx"):
        Bundle.load(copy)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param("[]", id="json-list"),
        pytest.param('{"format_version": 1}', id="missing-keys"),
    ],
)
def test_load_rejects_malformed_manifest(text: str, bundle_dir: Path, tmp_path: Path) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    (copy / MANIFEST_FILE).write_text(text)
    with pytest.raises(EdgeftError, match="not a valid edgeft manifest"):
        Bundle.load(copy)


def test_load_rejects_manifest_whose_files_is_not_a_mapping(bundle_dir: Path, tmp_path: Path) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    _rewrite_manifest(copy, files=None)
    with pytest.raises(EdgeftError, match="manifest"):
        Bundle.load(copy)


def test_train_step_trains_exactly_the_head(bundle: Bundle) -> None:
    assert bundle.manifest.head.trainers[0] == "onnx"
    assert trained_by_step(bundle) == {"head.weight", "head.bias"}
    params = initial_parameters(bundle.path)
    assert set(params) == HEAD_PARAMETERS
    assert params["head.weight"].shape == (len(CLASSES), HIDDEN) and params["head.bias"].shape == (len(CLASSES),)
    np.testing.assert_array_equal(params["head.feature_mean"], np.zeros(HIDDEN, np.float32))
    np.testing.assert_array_equal(params["head.feature_scale"], np.ones(HIDDEN, np.float32))


@needs_ort
def test_checkpoint_trains_exactly_the_head(bundle_dir: Path) -> None:
    checkpoint = bundle_dir / "train" / "checkpoint"
    check_trainable_set(checkpoint, {"head.weight", "head.bias"})
    with pytest.raises(EdgeftError, match="may be trainable"):
        check_trainable_set(checkpoint, {"head.weight"})
    state = training_api().CheckpointState.load_checkpoint(str(checkpoint))
    params = {name: param for name, param in state.parameters}
    assert set(params) == HEAD_PARAMETERS
    assert {name for name, p in params.items() if p.requires_grad} == {"head.weight", "head.bias"}
    assert params["head.weight"].data.shape == (len(CLASSES), HIDDEN)
    assert params["head.bias"].data.shape == (len(CLASSES),)
    # The frozen normaliser starts as the identity.
    np.testing.assert_array_equal(params["head.feature_mean"].data, np.zeros(HIDDEN, np.float32))
    np.testing.assert_array_equal(params["head.feature_scale"].data, np.ones(HIDDEN, np.float32))


def test_inference_head_applies_checkpoint_parameters(bundle_dir: Path) -> None:
    params = initial_parameters(bundle_dir)
    rng = np.random.default_rng(0)
    params["head.feature_mean"] = rng.normal(size=HIDDEN).astype(np.float32)
    params["head.feature_scale"] = rng.uniform(0.5, 2, HIDDEN).astype(np.float32)
    features = rng.normal(size=(5, HIDDEN)).astype(np.float32)
    (logits,) = run_onnx(bundle_dir / "head.onnx", {"features": features, **params})
    standardised = (features - params["head.feature_mean"]) * params["head.feature_scale"]
    expected = standardised @ params["head.weight"].T + params["head.bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", ["gemm", "matmul_add"])
def test_backbone_with_original_head_reproduces_original_model(head: str, tmp_path: Path) -> None:
    model = classifier(head=head, tail=("Softmax",), seed=7)
    bundle = export_bundle(ExportConfig(save(model, tmp_path / "m.onnx"), tmp_path / "b", num_classes=2))
    x = np.random.default_rng(1).uniform(0, 1, (6, CHANNELS, SIZE, SIZE)).astype(np.float32)
    (features,) = run_onnx(bundle.backbone_path, {"image": x})
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    w = weights["fc.w"].T if head == "gemm" else weights["fc.w"]
    reconstructed = softmax(features.astype(np.float64) @ w + weights["fc.b"])
    (original,) = run_onnx(model, {"image": x})
    assert original.shape == (6, ORIGINAL_CLASSES)
    np.testing.assert_allclose(reconstructed, original, rtol=1e-5, atol=1e-6)


def test_num_classes_names_classes_by_index(tiny_model: Path, tmp_path: Path) -> None:
    bundle = export_bundle(ExportConfig(tiny_model, tmp_path / "b", num_classes=4))
    assert bundle.manifest.classes == ["0", "1", "2", "3"]
    assert bundle.manifest.head.num_outputs == 4


def test_class_names_are_stripped(tiny_model: Path, tmp_path: Path) -> None:
    bundle = export_bundle(ExportConfig(tiny_model, tmp_path / "b", classes=[" cat", "dog "]))
    assert bundle.manifest.classes == ["cat", "dog"]


def test_max_classes_reserves_outputs(tiny_model: Path, tmp_path: Path) -> None:
    bundle = export_bundle(ExportConfig(tiny_model, tmp_path / "b", classes=["cat"], max_classes=6))
    assert bundle.manifest.classes == ["cat"]
    assert bundle.manifest.head.num_outputs == 6
    open_set = export_bundle(ExportConfig(tiny_model, tmp_path / "open", max_classes=4))
    assert open_set.manifest.classes == [] and open_set.manifest.head.num_outputs == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ["only"]}, "at least 2 classes"),
        ({"num_classes": 1}, "at least 2 classes"),
        ({"classes": ["a", "b", "a"]}, "distinct"),
        ({"classes": ["a", " a "]}, "distinct"),
        ({"classes": ["a", ""]}, "non-empty"),
        ({"classes": ["a", "b"], "num_classes": 2}, "not both"),
        ({}, "--classes a,b,c, --num-classes N or --max-classes N"),
        ({"classes": ["a", "b", "c"], "max_classes": 2}, "at least the 3 classes"),
        ({"max_classes": 1}, "must be at least 2"),
    ],
)
def test_bad_class_arguments(kwargs: dict, message: str, tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match=message):
        export_bundle(ExportConfig(tiny_model, tmp_path / "b", **kwargs))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EdgeftError, match="already exists.*--force"):
        export_bundle(ExportConfig(tiny_model, out, num_classes=2))
    assert (out / "keep.txt").read_text() == "mine"
    bundle = export_bundle(ExportConfig(tiny_model, out, num_classes=3, force=True))
    assert not (out / "keep.txt").exists()
    assert bundle.manifest.classes == ["0", "1", "2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_failed_forced_export_keeps_the_old_bundle(bundle_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = copy_tree(bundle_dir, tmp_path / "b")
    before = _sha256(out / MANIFEST_FILE)
    with pytest.raises(EdgeftError, match="no tensor named"):
        export_bundle(ExportConfig(tiny_model, out, num_classes=2, cut="nope", force=True))
    assert _sha256(out / MANIFEST_FILE) == before
    Bundle.load(out)


def test_force_over_an_existing_file(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("not a bundle")
    try:
        bundle = export_bundle(ExportConfig(tiny_model, out, num_classes=2, force=True))
    except EdgeftError as exc:
        assert str(out) in str(exc)
    else:
        assert bundle.manifest.classes == ["0", "1"]


def test_random_bytes_are_not_an_onnx_model(tmp_path: Path) -> None:
    path = tmp_path / "random.onnx"
    path.write_bytes(os.urandom(512))
    with pytest.raises(EdgeftError, match="not a valid ONNX model") as info:
        export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2))
    assert str(path) in str(info.value)
    assert not (tmp_path / "b").exists()


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match="does not exist") as info:
        export_bundle(ExportConfig(tmp_path / "missing.onnx", tmp_path / "b", num_classes=2))
    assert "missing.onnx" in str(info.value)


def test_dynamic_input_needs_input_shape(tmp_path: Path) -> None:
    model = classifier()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis in (2, 3):
        dims[axis].Clear()
        dims[axis].dim_param = "HW"[axis - 2]
    path = save(model, tmp_path / "dyn.onnx")
    with pytest.raises(EdgeftError, match=r"dynamic axes \[2, 3\].*--input-shape"):
        export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2))
    bundle = export_bundle(ExportConfig(path, tmp_path / "b", num_classes=2, input_shape=[1, CHANNELS, 5, 7]))
    assert bundle.manifest.input.shape == ["batch", CHANNELS, "H", "W"]
    assert bundle.manifest.head.feature_dim == HIDDEN
    # The backbone runs on any image size, with any batch.
    x = np.random.default_rng(0).uniform(size=(3, CHANNELS, 4, 6)).astype(np.float32)
    (features,) = run_onnx(bundle.backbone_path, {"image": x})
    assert features.shape == (3, HIDDEN)
