"""The ``edgeft`` command line in this process (typer's CliRunner): the whole workflow, exit codes, error reports;
the console script, ``python -m edgeft`` and ``python -m edgeft.cli`` in real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from helpers import CLASSES, SUBPROCESS_TIMEOUT, copy_tree, flip_byte, invoke_cli, make_dataset, one_error_line
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

import edgeft
from edgeft.cli import app
from edgeft.runtime.adapter import Adapter


def _save_npz(path: Path, n: int, seed: int, *, names: bool = True, labels: bool = True) -> Path:
    """A labelled (or unlabelled) tiny dataset file."""
    x, y = make_dataset(n, seed)
    arrays = {"x": x}
    if labels:
        arrays["y"] = np.array(CLASSES)[y] if names else y
    np.savez(path, **arrays)
    return path


def _gray_model(path: Path) -> Path:
    """A tiny single-channel classifier: Conv → GlobalAveragePool → Flatten → Gemm."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(2, 4)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.normal(size=(2,)).astype(np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "gray",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_console_script_and_module_entry_points() -> None:
    script = Path(sys.executable).parent / "edgeft"
    assert script.is_file(), "the edgeft console script is not installed next to the interpreter"
    modules = ([sys.executable, "-m", name, "--version"] for name in ("edgeft.cli", "edgeft"))
    for command in ([str(script), "--version"], *modules):
        done = subprocess.run(command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"edgeft {edgeft.__version__}"


@pytest.mark.slow
def test_full_workflow(tiny_model: Path, tmp_path: Path) -> None:
    bundle, state = tmp_path / "bundle", tmp_path / "state"
    done = invoke_cli(
        "export", tiny_model, "-o", bundle, "--classes", ",".join(CLASSES), "--epochs", "10", "--lr", "0.05"
    )
    assert done.exit_code == 0, done.stderr
    assert f"wrote {bundle}: cut at 'features' (6 features), new head for 3 classes" in done.stdout

    done = invoke_cli("info", bundle)
    assert done.exit_code == 0, done.stderr
    assert "classes     red, green, blue" in done.stdout
    assert "cut         'features' -> features 'features' [6]" in done.stdout
    assert "defaults    epochs 10, batch 16, lr 0.05" in done.stdout
    done = invoke_cli("info", bundle, "--json")
    manifest = json.loads(done.stdout)
    assert manifest["classes"] == list(CLASSES)
    assert manifest["source"]["file"] == tiny_model.name

    train = _save_npz(tmp_path / "train.npz", 120, seed=1)
    held_out = _save_npz(tmp_path / "test.npz", 120, seed=2, names=False)
    done = invoke_cli("adapt", bundle, "--data", train, "--state", state, "--eval", held_out, "--json")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["version"], report["samples"], report["epochs"], report["provider"]) == (1, 120, 10, "cpu")
    assert report["accuracy_after"] >= 0.8, report
    assert report["accuracy_after"] >= report["accuracy_before"] + 0.1, report

    done = invoke_cli("adapt", bundle, "-d", train, "-s", state)
    assert done.exit_code == 0, done.stderr
    assert f"skipped {train} (already learned in version 1)" in done.stdout
    assert "nothing new to learn; version 1 stays current" in done.stdout
    done = invoke_cli("adapt", bundle, "-d", train, "-s", state, "--eval", held_out, "--epochs", "2", "--relearn")
    assert done.exit_code == 0, done.stderr
    assert "2 epochs, loss " in done.stdout and "version 2 promoted" in done.stdout
    assert "held-out accuracy: " in done.stdout

    x, _ = make_dataset(5, seed=3)
    np.save(tmp_path / "new.npy", x)
    Image.new("RGB", (8, 8), (250, 10, 10)).save(tmp_path / "red.png")
    done = invoke_cli(
        "predict", bundle, tmp_path / "new.npy", tmp_path / "red.png", "-s", state, "--json", "--top", "3"
    )
    assert done.exit_code == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["version"] == 2
    rows = result["predictions"]
    assert [r["input"] for r in rows] == [f"{tmp_path / 'new.npy'}#{i}" for i in range(5)] + [str(tmp_path / "red.png")]
    expected = Adapter(bundle, state).predict_proba(x)
    for row, probs in zip(rows[:5], expected, strict=True):
        assert [t["label"] for t in row["top"]] == [CLASSES[i] for i in np.argsort(-probs)]
        assert row["label"] == CLASSES[int(probs.argmax())]
        assert row["probability"] == pytest.approx(float(probs.max()), abs=1e-6)

    assert rows[5]["label"] in CLASSES and len(rows[5]["top"]) == 3
    assert sum(t["probability"] for t in rows[5]["top"]) == pytest.approx(1.0, abs=1e-5)

    done = invoke_cli("predict", bundle, tmp_path / "new.npy", "-s", state, "--top", "2")
    assert done.exit_code == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(f"{tmp_path / 'new.npy'}#0\t{rows[0]['label']} ")

    merged = tmp_path / "merged.onnx"
    done = invoke_cli("export-inference", bundle, "-s", state, "-o", merged)
    assert done.exit_code == 0, done.stderr
    assert "head version 2" in done.stdout
    session = onnxruntime.InferenceSession(str(merged), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"image": x})[0]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert json.loads(session.get_modelmeta().custom_metadata_map["edgeft.classes"]) == list(CLASSES)


def test_missing_model_file(tmp_path: Path) -> None:
    done = invoke_cli("export", tmp_path / "nope.onnx", "-o", tmp_path / "b", "--num-classes", "2")
    assert done.exit_code == 1
    assert "nope.onnx does not exist" in one_error_line(done.stderr)
    assert not (tmp_path / "b").exists()


def test_missing_data_file_is_named_as_missing(bundle_dir: Path, tmp_path: Path) -> None:
    done = invoke_cli("adapt", bundle_dir, "-s", tmp_path / "state", "--data", tmp_path / "nope.npz")
    assert done.exit_code == 1
    assert one_error_line(done.stderr) == f"edgeft: error: {tmp_path / 'nope.npz'}: no such file or directory"


def test_non_onnx_model_file(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(bytes(range(256)) * 4)
    done = invoke_cli("export", model, "-o", tmp_path / "b", "--classes", "a,b")
    assert done.exit_code == 1
    assert f"{model} is not a valid ONNX model" in one_error_line(done.stderr)


def test_existing_output_without_force(bundle_dir: Path, tiny_model: Path) -> None:
    done = invoke_cli("export", tiny_model, "-o", bundle_dir, "--classes", "a,b")
    assert done.exit_code == 1
    assert "--force" in one_error_line(done.stderr)


def test_corrupt_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = copy_tree(bundle_dir, tmp_path / "bundle")
    flip_byte(bundle / "backbone.onnx")
    data = _save_npz(tmp_path / "d.npz", 6, seed=0)
    for args in (["adapt", bundle, "-d", data, "-s", tmp_path / "s"], ["info", bundle]):
        done = invoke_cli(*args)
        assert done.exit_code == 1
        assert f"{bundle / 'backbone.onnx'} is corrupt" in one_error_line(done.stderr)
    assert not (tmp_path / "s").exists()


def test_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", make_dataset(2, seed=0)[0])
    done = invoke_cli("predict", tmp_path, tmp_path / "x.npy", "-s", tmp_path / "s")
    assert done.exit_code == 1
    assert "manifest.json is missing" in one_error_line(done.stderr)


def test_unknown_execution_provider(bundle_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", make_dataset(2, seed=0)[0])
    done = invoke_cli("predict", bundle_dir, tmp_path / "x.npy", "-s", tmp_path / "s", "--ep", "warp-drive")
    assert done.exit_code == 1
    assert "execution provider 'warp-drive'" in one_error_line(done.stderr)


def test_labels_beyond_capacity_exit_1_and_are_kept_pending(bundle_dir: Path, tmp_path: Path) -> None:
    x, _ = make_dataset(4, seed=0)
    np.savez(tmp_path / "bad.npz", x=x, y=np.array(["red", "green", "teal", "blue"]))
    state = tmp_path / "state"
    done = invoke_cli("adapt", bundle_dir, "-d", tmp_path / "bad.npz", "-s", state)
    assert done.exit_code == 1
    line = one_error_line(done.stderr)
    assert str(tmp_path / "bad.npz") in line and "unknown label(s) ['teal']" in line and "3 outputs" in line
    assert "version 1 promoted" in done.stdout and "learned 3 samples" in done.stdout
    (pending,) = (state / "pending").glob("*.npz")
    assert str(pending) in line
    with np.load(pending, allow_pickle=False) as kept:
        np.testing.assert_array_equal(kept["x"], x[2:3])
        assert kept["y"].tolist() == ["teal"]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["adapt", "BUNDLE", "-s", "state"], id="adapt-without-data"),
        pytest.param(["predict", "BUNDLE", "-s", "state"], id="predict-without-inputs"),
        pytest.param(["export", "MODEL", "--classes", "a,b"], id="export-without-out"),
        pytest.param(["export", "MODEL", "-o", "out", "--num-classes", "1"], id="num-classes-below-2"),
        pytest.param(["info", "BUNDLE", "--colour"], id="unknown-option"),
        pytest.param(["fly"], id="unknown-command"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], bundle_dir: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = {
        "BUNDLE": str(bundle_dir),
        "MODEL": str(tiny_model),
        "state": str(tmp_path / "s"),
        "out": str(tmp_path / "o"),
    }
    monkeypatch.chdir(tmp_path)
    done = invoke_cli(*[paths.get(a, a) for a in args])
    assert done.exit_code == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "Usage:" in done.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", [["--mean", "0.5,abc"], ["--input-shape", "1,three,8,8"]])
def test_malformed_number_list_is_a_usage_error(option: list[str], tiny_model: Path, tmp_path: Path) -> None:
    done = invoke_cli("export", tiny_model, "-o", tmp_path / "b", "--classes", "a,b", *option)
    assert done.exit_code == 2, done.stderr
    assert "unexpected" not in done.stderr


def test_in_process_info_json(bundle_dir: Path) -> None:
    result = CliRunner().invoke(app, ["info", str(bundle_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["classes"] == list(CLASSES)
    assert data["files"] == json.loads((bundle_dir / "manifest.json").read_text())["files"]


def test_in_process_predict_reports_data_error(bundle_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 5, 5), np.float32))
    result = CliRunner().invoke(app, ["predict", str(bundle_dir), str(tmp_path / "wrong.npy"), "-s", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    line = one_error_line(result.stderr)
    assert "wrong.npy: inputs have shape [3, 5, 5] per sample, the bundle expects [3, 8, 8]" in line


def test_in_process_export_with_preprocessing_options(tiny_model: Path, tmp_path: Path) -> None:
    args = ["export", str(tiny_model), "-o", str(tmp_path / "b"), "--num-classes", "2", "--cut", "relu"]
    args += ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--pixel-scale", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert manifest["preprocessing"]["std"] == [0.229, 0.224, 0.225]
    assert manifest["preprocessing"]["scale"] == 0.5
    assert manifest["head"]["feature_dim"] == 6 * 8 * 8


def test_in_process_gray_model_defaults_to_gray(tmp_path: Path) -> None:
    model = _gray_model(tmp_path / "gray.onnx")
    result = CliRunner().invoke(app, ["export", str(model), "-o", str(tmp_path / "b"), "--classes", "a,b"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["preprocessing"]["color"] == "L"


def test_in_process_gray_model_keeps_gray_with_mean(tmp_path: Path) -> None:
    model = _gray_model(tmp_path / "gray.onnx")
    args = ["export", str(model), "-o", str(tmp_path / "b"), "--classes", "a,b", "--mean", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["preprocessing"]["color"] == "L"
