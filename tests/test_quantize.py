"""int8 backbones: export with --quantize int8, the manifest record, validation, bias repair, runtime use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import CLASSES, make_dataset, one_error_line, run_cli, run_onnx
from onnx import TensorProto, helper, numpy_helper
from tiny_models import CHANNELS, SIZE

from edgeft.bundle import MANIFEST_FILE, Bundle
from edgeft.errors import EdgeftError
from edgeft.export import export_bundle
from edgeft.export.quantize import MAX_CALIBRATION, MIN_MEAN_COSINE
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.merge import merged_model

FEATURES = 4
DEAD_BIAS = 0.5


def _model(dead_channel: bool = False) -> onnx.ModelProto:
    """Conv(3→4) → Relu → GlobalAveragePool → Flatten → Gemm(4→5); optionally channel 3 has near-zero weights.

    A channel with weights ~1e-12 and bias +0.5 outputs 0.5 everywhere; its int32 bias overflows in ORT 1.19.
    """
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.5, (FEATURES, CHANNELS, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, FEATURES).astype(np.float32)
    if dead_channel:
        weight[3] *= 1e-12
        bias[3] = DEAD_BIAS
    inits = [
        numpy_helper.from_array(weight, "conv.w"),
        numpy_helper.from_array(bias, "conv.b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (5, FEATURES)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(np.zeros(5, np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv.w", "conv.b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["features"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["scores"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_dead" if dead_channel else "tiny_quant",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quant") / "tiny.onnx"
    onnx.save(_model(), str(path))
    return path


@pytest.fixture(scope="module")
def calibration() -> tuple[np.ndarray, np.ndarray]:
    """400 labelled samples: 100 are held out (enough for the linear probe), MAX_CALIBRATION calibrate."""
    return make_dataset(400, seed=7)


@pytest.fixture(scope="module")
def bundles(model_path: Path, calibration: tuple, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(float bundle, int8 bundle) of the same model, classes and seed."""
    root = tmp_path_factory.mktemp("bundles")
    float_dir = export_bundle(model_path, root / "float", classes=list(CLASSES)).path
    int8_dir = export_bundle(
        model_path, root / "int8", classes=list(CLASSES), quantize="int8", calibration=calibration
    ).path
    return float_dir, int8_dir


def test_int8_bundle_records_quantisation_and_keeps_the_float_head(bundles: tuple[Path, Path]) -> None:
    float_dir, int8_dir = bundles
    record = Bundle.load(int8_dir).manifest.quantization
    assert record["scheme"] == "int8" and record["format"] == "QDQ"
    assert record["calibration"]["samples"] == MAX_CALIBRATION
    assert record["float_backbone"]["sha256"] == Bundle.load(float_dir).manifest.files["backbone.onnx"]
    assert record["backbone_bytes"] == (int8_dir / "backbone.onnx").stat().st_size
    validation = record["validation"]
    assert validation["held_out_samples"] == 100
    assert validation["mean_cosine"] >= MIN_MEAN_COSINE
    assert abs(validation["probe_accuracy_int8"] - validation["probe_accuracy_float"]) <= validation["max_probe_drop"]
    backbone = onnx.load(str(int8_dir / "backbone.onnx"))
    ops = {n.op_type for n in backbone.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in backbone.graph.initializer if i.data_type == TensorProto.INT8]
    assert int8_weights and all(len(w.dims) > 1 or w.dims[0] > 0 for w in int8_weights)
    # ORT numbers the loss nodes of training artifacts per process, so only these files compare byte for byte.
    for rel in ("head.onnx", "train/checkpoint"):
        assert (int8_dir / rel).read_bytes() == (float_dir / rel).read_bytes(), rel
    assert Bundle.load(int8_dir).manifest.head == Bundle.load(float_dir).manifest.head


def test_float_manifest_has_no_quantisation_key_and_old_manifests_load(bundles: tuple[Path, Path]) -> None:
    float_dir, _ = bundles
    assert "quantization" not in json.loads((float_dir / MANIFEST_FILE).read_text())
    assert Bundle.load(float_dir).manifest.quantization == {}


def test_int8_features_agree_with_float_features(bundles: tuple[Path, Path]) -> None:
    float_dir, int8_dir = bundles
    x, _ = make_dataset(64, seed=11)
    (reference,) = run_onnx(float_dir / "backbone.onnx", {"image": x})
    (features,) = run_onnx(int8_dir / "backbone.onnx", {"image": x})
    assert features.shape == reference.shape
    np.testing.assert_allclose(features, reference, atol=0.05 * np.abs(reference).max())


def test_adapter_learns_on_the_int8_bundle_as_well_as_on_the_float_one(
    bundles: tuple[Path, Path], train_data: tuple, test_data: tuple, tmp_path: Path
) -> None:
    accuracies = []
    for bundle_dir in bundles:
        with Adapter(bundle_dir, tmp_path / bundle_dir.name) as adapter:
            adapter.learn(*train_data, lr=0.05)
            accuracies.append(adapter.evaluate(*test_data))
            merged = merged_model(adapter.bundle, adapter.parameters(), adapter.classes)
            (probabilities,) = run_onnx(merged, {"image": test_data[0]}, ["probabilities"])
            np.testing.assert_allclose(probabilities, adapter.predict_proba(test_data[0]), atol=1e-5)
    float_accuracy, int8_accuracy = accuracies
    assert float_accuracy > 0.6  # three classes: chance is 0.33
    assert int8_accuracy >= float_accuracy - 0.05


def test_degenerate_bias_channel_is_repaired(calibration: tuple, tmp_path: Path) -> None:
    source = tmp_path / "dead.onnx"
    onnx.save(_model(dead_channel=True), str(source))
    bundle = export_bundle(source, tmp_path / "int8", classes=list(CLASSES), quantize="int8", calibration=calibration)
    assert bundle.manifest.quantization["repaired_bias_channels"] == {"conv": 1}
    x, _ = make_dataset(32, seed=12)
    (features,) = run_onnx(bundle.backbone_path, {"image": x})
    np.testing.assert_allclose(features[:, 3], DEAD_BIAS, atol=0.05)  # unrepaired: 0 (garbage bias, then Relu)


def test_quantisation_that_disagrees_fails_with_its_figures(model_path: Path, tmp_path: Path) -> None:
    x, _ = make_dataset(200, seed=3)
    x[::8] *= 1e4  # outliers stretch the calibrated ranges: ordinary samples quantise to nothing
    out = tmp_path / "broken"
    with pytest.raises(EdgeftError, match=r"disagree with the float ones .*mean_cosine 0\.\d+.*not shipped"):
        export_bundle(model_path, out, classes=list(CLASSES), quantize="int8", calibration=x)
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantize": "int4", "calibration": np.zeros((8, 3, 8, 8), np.float32)}, "unknown quantisation 'int4'"),
        ({"quantize": "int8"}, "needs --calibration"),
        ({"calibration": np.zeros((8, 3, 8, 8), np.float32)}, "only used with --quantize int8"),
        ({"quantize": "int8", "calibration": np.zeros((8, 3, 4, 4), np.float32)}, r"shape \[3, 4, 4\]"),
        ({"quantize": "int8", "calibration": np.zeros((4, 3, 8, 8), np.float32)}, "needs at least 8"),
        ({"quantize": "int8", "calibration": np.full((8, 3, 8, 8), "a")}, "dtype <U1, expected real numbers"),
    ],
)
def test_bad_quantisation_requests(kwargs: dict, message: str, model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match=message):
        export_bundle(model_path, tmp_path / "b", classes=list(CLASSES), **kwargs)


def test_cli_export_int8_and_info(model_path: Path, calibration: tuple, tmp_path: Path) -> None:
    data = tmp_path / "calibration.npz"
    np.savez(data, x=calibration[0], y=np.array(CLASSES)[calibration[1]])
    out = tmp_path / "bundle"
    done = run_cli("export", model_path, "-o", out, "--classes", ",".join(CLASSES), "--quantize", "int8",
                   "--calibration", data)
    assert done.returncode == 0, done.stderr
    assert "backbone quantised: int8 QDQ" in done.stdout and "linear probe" in done.stdout
    shown = run_cli("info", out)
    assert shown.returncode == 0, shown.stderr
    assert "backbone    int8 QDQ" in shown.stdout and f"calibrated on {MAX_CALIBRATION} samples" in shown.stdout
    missing = run_cli("export", model_path, "-o", tmp_path / "b2", "--classes", "a,b", "--quantize", "int8")
    assert missing.returncode == 1
    assert "needs --calibration" in one_error_line(missing.stderr)


def test_shipped_int8_bundle_is_the_float_default_on_an_int8_backbone() -> None:
    artifacts = Path(__file__).resolve().parent.parent / "artifacts"
    float_bundle, int8_bundle = Bundle.load(artifacts / "default"), Bundle.load(artifacts / "default-int8")
    f, q = float_bundle.manifest, int8_bundle.manifest
    assert (q.input, q.preprocessing, q.head, q.classes, q.defaults) == (
        f.input,
        f.preprocessing,
        f.head,
        f.classes,
        f.defaults,
    )
    assert q.quantization["float_backbone"]["sha256"] == f.files["backbone.onnx"]
    assert float_bundle.backbone_path.stat().st_size >= 3 * int8_bundle.backbone_path.stat().st_size
    x = np.load(artifacts / "demo" / "test.npz")["x"][:32].astype(np.float32)
    (reference,) = run_onnx(float_bundle.backbone_path, {"image": x})
    (features,) = run_onnx(int8_bundle.backbone_path, {"image": x})
    cosine = np.sum(reference * features, 1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(features, axis=1)
    assert cosine.mean() >= MIN_MEAN_COSINE
