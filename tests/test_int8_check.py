"""The int8 self-check: the probe an int8 bundle carries, run on the device's CPU, cached per CPU signature."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import CLASSES, make_dataset, one_error_line, run_cli, run_onnx
from onnx import TensorProto, numpy_helper
from tiny_models import classifier

from edgeft.bundle import FLOAT_BACKBONE_FILE, MANIFEST_FILE, Bundle, hash_tree, sha256_file
from edgeft.common.int8_probe import PROBE_FILE, cpu_family, cpu_signature, save_probe
from edgeft.errors import EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.export.int8_agreement import MIN_MEAN_COSINE, PROBE_MARGIN, PROBE_SAMPLES
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.history import METRICS_FILE
from edgeft.runtime.int8_check import CACHE_FILE, Int8FallbackWarning, cached_check, check_bundle
from edgeft.runtime.merge import write_merged_model


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("int8check")
    model = root / "tiny.onnx"
    onnx.save(classifier(), str(model))
    x, y = make_dataset(200, seed=3)
    return export_bundle(
        ExportConfig(model, root / "int8", classes=list(CLASSES), quantize="int8", calibration=(x, y))
    ).path


def _disagreeing_copy(int8_bundle: Path, path: Path, fallback: bool) -> Path:
    """The int8 bundle with its int8 weights negated (as kernels that got them badly wrong would), rehashed;
    without its float fallback unless ``fallback``."""
    shutil.copytree(int8_bundle, path)
    backbone = onnx.load(str(path / "backbone.onnx"))
    for tensor in backbone.graph.initializer:
        if tensor.data_type == TensorProto.INT8:
            flipped = -numpy_helper.to_array(tensor).astype(np.int16)
            tensor.CopyFrom(numpy_helper.from_array(np.clip(flipped, -127, 127).astype(np.int8), tensor.name))
    onnx.save(backbone, str(path / "backbone.onnx"))
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    if not fallback:
        (path / manifest["quantization"]["float_backbone"].pop("file")).unlink()
    manifest["files"] = hash_tree(path)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    return path


@pytest.fixture
def bad_bundle(int8_bundle: Path, tmp_path: Path) -> Path:
    """A disagreeing int8 bundle without a float backbone to fall back to."""
    return _disagreeing_copy(int8_bundle, tmp_path / "bad", fallback=False)


@pytest.fixture
def bad_bundle_with_fallback(int8_bundle: Path, tmp_path: Path) -> Path:
    """A disagreeing int8 bundle that ships its float backbone (the export's default)."""
    return _disagreeing_copy(int8_bundle, tmp_path / "bad-fallback", fallback=True)


def test_cpu_family_and_signature_name_the_kernels() -> None:
    machine = platform.machine().lower()
    family = cpu_family()
    if machine in ("x86_64", "amd64"):
        assert family in ("x86-exact", "x86-saturating")
    elif machine in ("aarch64", "arm64"):
        assert family == "arm64"
    assert cpu_signature().startswith(f"{family}/onnxruntime-")


def test_int8_bundle_carries_a_listed_probe_that_passes_where_it_was_exported(
    int8_bundle: Path, tmp_path: Path
) -> None:
    bundle = Bundle.load(int8_bundle)
    rule = bundle.manifest.quantization["probe"]
    assert rule["file"] == PROBE_FILE and PROBE_FILE in bundle.manifest.files
    assert rule["samples"] == PROBE_SAMPLES
    assert rule["min_mean_cosine"] == pytest.approx(max(MIN_MEAN_COSINE, rule["export_mean_cosine"] - PROBE_MARGIN))
    with np.load(int8_bundle / PROBE_FILE, allow_pickle=False) as probe:
        assert probe["x"].shape[0] == probe["features"].shape[0] == PROBE_SAMPLES
    copy = tmp_path / PROBE_FILE
    with np.load(int8_bundle / PROBE_FILE, allow_pickle=False) as probe:
        save_probe(copy, probe["x"], probe["features"])
    assert copy.read_bytes() == (int8_bundle / PROBE_FILE).read_bytes()  # reproducible bytes
    result = check_bundle(bundle)
    assert result is not None and result["ok"] and result["cpu"] == cpu_signature()
    assert result["mean_cosine"] == pytest.approx(rule["export_mean_cosine"], abs=1e-3)


def test_a_bundle_whose_probe_is_missing_or_changed_does_not_load(int8_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "b"
    shutil.copytree(int8_bundle, path)
    (path / PROBE_FILE).write_bytes(b"not the probe")
    with pytest.raises(EdgeftError, match=PROBE_FILE):
        Bundle.load(path)


def test_check_catches_a_backbone_that_disagrees_and_the_adapter_refuses_it(bad_bundle: Path, tmp_path: Path) -> None:
    result = check_bundle(Bundle.load(bad_bundle))
    assert result is not None and not result["ok"] and result["mean_cosine"] < result["min_mean_cosine"]
    with pytest.raises(EdgeftError, match=r"DISAGREES .*no float fallback.*--target-cpu avx2.*--int8-fallback"):
        Adapter(bad_bundle, tmp_path / "state")
    cached = json.loads((tmp_path / "state" / CACHE_FILE).read_text())
    assert [key.split("@")[1] for key in cached] == [cpu_signature()] and not next(iter(cached.values()))["ok"]
    shown = run_cli("status", "--state", tmp_path / "state")
    assert shown.returncode == 0 and "int8        int8 backbone DISAGREES" in shown.stdout


def test_check_runs_once_per_cpu_signature(int8_bundle: Path, tmp_path: Path) -> None:
    bundle = Bundle.load(int8_bundle)
    key = f"{bundle.manifest.files['backbone.onnx']}@{cpu_signature()}"
    state = tmp_path / "state"
    state.mkdir()
    planted = {"cpu": cpu_signature(), "mean_cosine": 0.5, "min_mean_cosine": 0.9, "samples": 16, "ok": False}
    (state / CACHE_FILE).write_text(json.dumps({key: planted}))
    assert cached_check(bundle, state) == planted  # the cached verdict for this CPU, not a new run
    with Adapter(int8_bundle, tmp_path / "fresh") as adapter:
        assert adapter.int8_check is not None and adapter.int8_check["ok"]


@pytest.mark.slow
def test_cli_check(int8_bundle: Path, bad_bundle: Path, bad_bundle_with_fallback: Path) -> None:
    good = run_cli("check", int8_bundle)
    assert good.returncode == 0 and "int8 backbone agrees with the float one on this CPU" in good.stdout
    bad = run_cli("check", bad_bundle, "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout.splitlines()[0])["int8_check"]["ok"] is False
    assert "DISAGREES" in one_error_line(bad.stderr)
    usable = run_cli("check", bad_bundle_with_fallback)  # runs here, on its float backbone: not an error
    assert usable.returncode == 0, usable.stderr
    assert "DISAGREES" in usable.stdout and "float backbone is used instead" in usable.stdout
    float_bundle = run_cli("check", Path(__file__).resolve().parent.parent / "artifacts" / "default")
    assert float_bundle.returncode == 0 and "no int8 probe" in float_bundle.stdout


@pytest.mark.slow
def test_int8_bundle_ships_its_float_backbone_unless_told_not_to(int8_bundle: Path, tmp_path: Path) -> None:
    record = Bundle.load(int8_bundle).manifest.quantization["float_backbone"]
    fallback = Bundle.load(int8_bundle).float_backbone_path
    assert fallback == int8_bundle / FLOAT_BACKBONE_FILE and record["file"] == FLOAT_BACKBONE_FILE
    assert sha256_file(fallback) == record["sha256"] and fallback.stat().st_size == record["bytes"]
    x, y = make_dataset(200, seed=3)
    lean = export_bundle(
        ExportConfig(
            int8_bundle.parent / "tiny.onnx",
            tmp_path / "lean",
            classes=list(CLASSES),
            quantize="int8",
            calibration=(x, y),
            float_fallback=False,
        )
    )
    assert lean.float_backbone_path is None and not (lean.path / FLOAT_BACKBONE_FILE).exists()
    assert "file" not in lean.manifest.quantization["float_backbone"]
    with pytest.raises(EdgeftError, match="--int8-fallback / --no-int8-fallback is only used with --quantize int8"):
        export_bundle(
            ExportConfig(
                int8_bundle.parent / "tiny.onnx", tmp_path / "float", classes=list(CLASSES), float_fallback=False
            )
        )
    shown = run_cli("info", int8_bundle)
    assert shown.returncode == 0 and f"else the float backbone ({FLOAT_BACKBONE_FILE}) is used" in shown.stdout
    assert "else the bundle is refused" in run_cli("info", lean.path).stdout


def test_a_manifest_naming_a_float_backbone_it_does_not_list_does_not_load(int8_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "b"
    shutil.copytree(int8_bundle, path)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    del manifest["files"][FLOAT_BACKBONE_FILE]
    (path / FLOAT_BACKBONE_FILE).unlink()
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(EdgeftError, match=f"does not list the required file {FLOAT_BACKBONE_FILE}"):
        Bundle.load(path)


@pytest.mark.slow
def test_disagreeing_int8_backbone_falls_back_to_the_float_one_and_learning_goes_on(
    bad_bundle_with_fallback: Path, train_data: tuple, test_data: tuple, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with pytest.warns(Int8FallbackWarning, match=r"DISAGREES .*float backbone is used instead"):
        adapter = Adapter(bad_bundle_with_fallback, state)
    with adapter:
        assert adapter.backbone_path == bad_bundle_with_fallback / FLOAT_BACKBONE_FILE
        assert adapter.int8_check is not None and adapter.int8_check["backbone"] == "float"
        (float_features,) = run_onnx(bad_bundle_with_fallback / FLOAT_BACKBONE_FILE, {"image": test_data[0]})
        (int8_features,) = run_onnx(bad_bundle_with_fallback / "backbone.onnx", {"image": test_data[0]})
        np.testing.assert_array_equal(adapter.embed(test_data[0]), float_features)
        assert not np.allclose(int8_features, float_features, atol=0.1)  # the int8 backbone really disagrees
        adapter.learn(*train_data, lr=0.05)
        assert adapter.evaluate(*test_data) > 0.8  # three classes: chance is 0.33
        merged = tmp_path / "merged.onnx"
        write_merged_model(
            adapter.bundle, adapter.parameters(), adapter.classes, merged, backbone=adapter.backbone_path
        )
        (probabilities,) = run_onnx(merged, {"image": test_data[0]}, ["probabilities"])
        np.testing.assert_allclose(probabilities, adapter.predict_proba(test_data[0]), atol=1e-5)
    rows = [json.loads(line) for line in (state / METRICS_FILE).read_text().splitlines()]
    assert rows and all(r["int8_check"]["backbone"] == "float" and not r["int8_check"]["ok"] for r in rows)
    shown = run_cli("status", "--state", state)
    assert shown.returncode == 0 and "DISAGREES" in shown.stdout and "float backbone is used instead" in shown.stdout
    data = tmp_path / "more.npz"
    np.savez(data, x=test_data[0][:30], y=np.array(CLASSES)[test_data[1][:30]])
    cli = run_cli("adapt", bad_bundle_with_fallback, "--state", state, "--data", data)
    assert cli.returncode == 0, cli.stderr
    assert "edgeft: warning:" in cli.stderr and "float backbone is used instead" in cli.stderr
    assert "learned 30 samples" in cli.stdout


@pytest.mark.slow
def test_watch_logs_the_fallback_as_a_json_warning(bad_bundle_with_fallback: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    x, y = make_dataset(30, seed=4)
    np.savez(inbox / "a.npz", x=x, y=np.array(CLASSES)[y])
    log = tmp_path / "events.jsonl"
    done = run_cli(
        "adapt", bad_bundle_with_fallback, "--state", tmp_path / "s", "--watch", inbox, "--once", "--log-file", log
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    fallback = next(e for e in events if e["event"] == "int8_fallback")
    assert fallback["level"] == "warning" and fallback["backbone"] == "float" and "DISAGREES" in fallback["reason"]
    assert fallback["ok"] is False and fallback["mean_cosine"] < fallback["min_mean_cosine"]
    assert any(e["event"] == "learned" for e in events)
