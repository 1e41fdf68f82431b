"""ExportConfig: options checked when the config is made, a JSON form that restores the same export."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES

from edgeft.bundle import Defaults, Preprocessing
from edgeft.errors import EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.export.config import CONFIG_FORMAT_VERSION


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optimizer": "sgd", "weight_decay": 0.1}, "SGD optimizer has no weight decay"),
        ({"momentum": 0.9}, "--momentum applies to --optimizer sgd"),
        ({"optimizer": "sgd", "momentum": 0.9, "ort_artifacts": True}, "ORT training's SGD has no momentum"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"cut": "a", "remove_layers": 1}, "either --cut or --remove-layers"),
        ({"num_classes": 3}, "either --classes or --num-classes"),
        ({"head": "mlp:0"}, "unknown head 'mlp:0'"),
        ({"head": "mlp:8", "activation": "tanh"}, "unknown activation 'tanh'"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"task": "ranking"}, "unknown task 'ranking'"),
        ({"loss": "l1"}, "loss 'l1' does not fit task 'classification'"),
        ({"calibration": "calib.npz"}, "calibration data is only used with --quantize int8"),
        ({"quantize": "int4"}, "unknown quantisation 'int4'"),
        ({"keep_float": -1, "quantize": "int8", "calibration": "calib.npz"}, "--keep-float takes"),
    ],
)
def test_a_bad_option_is_refused_when_the_config_is_made(options: dict, message: str, tmp_path: Path) -> None:
    """Checked before any model is read: the model file does not even exist."""
    with pytest.raises(EdgeftError, match=message):
        ExportConfig(tmp_path / "missing.onnx", tmp_path / "out", classes=list(CLASSES), **options)


def test_classes_from_a_kept_head_need_no_names(tmp_path: Path) -> None:
    """``keep_head`` without classes takes the original classifier's outputs: nothing to refuse up front."""
    config = ExportConfig(tmp_path / "missing.onnx", tmp_path / "out", keep_head=True)
    assert config.derives_classes
    with pytest.raises(EdgeftError, match="say what the new head predicts"):
        ExportConfig(tmp_path / "missing.onnx", tmp_path / "out")


def test_the_config_is_frozen(tmp_path: Path) -> None:
    config = ExportConfig(tmp_path / "m.onnx", tmp_path / "out", classes=list(CLASSES))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]


def test_json_round_trip_restores_every_option(tmp_path: Path) -> None:
    config = ExportConfig(
        tmp_path / "m.onnx",
        tmp_path / "out",
        classes=["a", "b"],
        max_classes=4,
        head="mlp:8,4",
        activation="gelu",
        dropout=0.25,
        optimizer="sgd",
        momentum=0.5,
        ort_artifacts=False,
        preprocessing=Preprocessing(color="L", scale=1.0, mean=[0.5], std=[0.25], note="grey"),
        defaults=Defaults(epochs=3, batch_size=8, lr=0.01, seed=2, replay_per_class=5),
        seed=7,
        quantize="int8",
        calibration=tmp_path / "calib",
        keep_float=2,
        target_cpu="avx2",
        float_fallback=False,
        int8_speed_rounds=0,
        force=True,
    )
    text = config.to_json()
    data = json.loads(text)
    assert data["format_version"] == CONFIG_FORMAT_VERSION
    assert data["calibration"] == str(tmp_path / "calib") and data["defaults"]["epochs"] == 3
    restored = ExportConfig.from_json(text)
    assert restored.to_json() == text
    assert restored.preprocessing == config.preprocessing and restored.defaults == config.defaults
    assert restored.hidden_layers == (8, 4) and restored.float_layers == 2
    for field in dataclasses.fields(ExportConfig):
        before, after = getattr(config, field.name), getattr(restored, field.name)
        assert (str(before) if isinstance(before, Path) else before) == after, field.name


def test_a_restored_config_exports_the_same_bundle(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    options = {"classes": list(CLASSES), "head": "mlp:6", "seed": 3, "ort_artifacts": False}
    first = export_bundle(ExportConfig(tiny_model, tmp_path / "first", **options))
    text = ExportConfig(tiny_model, tmp_path / "second", **options).to_json()
    second = export_bundle(ExportConfig.from_json(text))
    assert _hashes(first.path) == _hashes(second.path)
    assert second.manifest.head.hidden == [6]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "a JSON object"),
        ('{"format_version": 99, "model": "m.onnx", "out": "b"}', "format 99; this edgeft reads 1"),
        ('{"model": "m.onnx", "out": "b"}', "format None"),
        ('{"format_version": 1, "model": "m.onnx", "out": "b", "clases": ["a", "b"]}', "unknown export option"),
        ('{"format_version": 1, "out": "b", "classes": ["a", "b"]}', "model"),
        ('{"format_version": 1, "model": "m", "out": "b", "classes": ["a", "b"], "dropout": 2}', "dropout"),
        ('{"format_version": 1, "model": "m", "out": "b", "classes": ["a"], "defaults": {"epoch": 1}}', "epoch"),
    ],
)
def test_a_bad_json_config_is_refused_naming_the_file(text: str, message: str) -> None:
    with pytest.raises(EdgeftError, match=message) as info:
        ExportConfig.from_json(text, origin="export.json")
    assert str(info.value).startswith("export.json: ")


def test_in_memory_inputs_have_no_json_form(tmp_path: Path) -> None:
    arrays = ExportConfig(
        tmp_path / "m.onnx", tmp_path / "out", classes=list(CLASSES), quantize="int8", calibration=np.zeros((8, 3))
    )
    with pytest.raises(EdgeftError, match="'calibration' is a ndarray, not a path"):
        arrays.to_json()
    module = ExportConfig(object(), tmp_path / "out", classes=list(CLASSES), example_input=np.zeros((1, 3)))
    with pytest.raises(EdgeftError, match="'model' is a object, not a path"):
        module.to_json()
