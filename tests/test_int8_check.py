"""The int8 self-check: the probe an int8 bundle carries, run on the device's CPU, cached per CPU signature."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import CLASSES, make_dataset, one_error_line, run_cli
from onnx import TensorProto, numpy_helper
from tiny_models import classifier

from edgeft.bundle import MANIFEST_FILE, Bundle, hash_tree
from edgeft.errors import EdgeftError
from edgeft.export import export_bundle
from edgeft.export.quantize import MIN_MEAN_COSINE, PROBE_MARGIN, PROBE_SAMPLES
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.int8_check import (
    CACHE_FILE,
    PROBE_FILE,
    cached_check,
    check_bundle,
    cpu_family,
    cpu_signature,
    save_probe,
)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("int8check")
    model = root / "tiny.onnx"
    onnx.save(classifier(), str(model))
    x, y = make_dataset(200, seed=3)
    return export_bundle(model, root / "int8", classes=list(CLASSES), quantize="int8", calibration=(x, y)).path


@pytest.fixture
def bad_bundle(int8_bundle: Path, tmp_path: Path) -> Path:
    """The int8 bundle with its int8 weights negated (as kernels that got them badly wrong would), rehashed."""
    path = tmp_path / "bad"
    shutil.copytree(int8_bundle, path)
    backbone = onnx.load(str(path / "backbone.onnx"))
    for tensor in backbone.graph.initializer:
        if tensor.data_type == TensorProto.INT8:
            flipped = -numpy_helper.to_array(tensor).astype(np.int16)
            tensor.CopyFrom(numpy_helper.from_array(np.clip(flipped, -127, 127).astype(np.int8), tensor.name))
    onnx.save(backbone, str(path / "backbone.onnx"))
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["files"] = hash_tree(path)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    return path


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
    with pytest.raises(EdgeftError, match=r"DISAGREES .*--target-cpu avx2.*edgeft check"):
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


def test_cli_check(int8_bundle: Path, bad_bundle: Path) -> None:
    good = run_cli("check", int8_bundle)
    assert good.returncode == 0 and "int8 backbone agrees with the float one on this CPU" in good.stdout
    bad = run_cli("check", bad_bundle, "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout.splitlines()[0])["int8_check"]["ok"] is False
    assert "DISAGREES" in one_error_line(bad.stderr)
    float_bundle = run_cli("check", Path(__file__).resolve().parent.parent / "artifacts" / "default")
    assert float_bundle.returncode == 0 and "no int8 probe" in float_bundle.stdout
