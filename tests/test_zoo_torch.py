"""The zoo again, built as torch modules and exported through edgeft's PyTorch source (skipped without torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, run_onnx
from zoo.exercise import adapt_predict_export

torch = pytest.importorskip("torch")

from zoo.torch_families import FAMILIES  # noqa: E402  (needs torch)

from edgeft.export import ExportConfig, export_bundle  # noqa: E402
from edgeft.export.torch_source import example_from_shape  # noqa: E402

pytestmark = pytest.mark.torch
CLASSES = ["a", "b", "c"]
TESTS_DIR = Path(__file__).parent


def _export(family: str, out: Path, **options: object):  # noqa: ANN202
    factory, shape = FAMILIES[family]
    options = {"classes": CLASSES, **options}
    return export_bundle(ExportConfig(factory(), out, example_input=example_from_shape(shape), **options))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_torch_family_exports_adapts_predicts(family: str, tmp_path: Path) -> None:
    bundle = _export(family, tmp_path / "b")
    manifest = bundle.manifest
    assert (
        manifest.input.shape[0] == "batch"
        and manifest.validation["cut_max_abs_diff"] <= manifest.validation["cut_atol"]
    )
    assert "(torch)" in manifest.source["file"]
    # The backbone equals the torch model's own penultimate activations.
    factory, shape = FAMILIES[family]
    module = factory()
    x = torch.randn(3, *shape[1:], generator=torch.Generator().manual_seed(1))
    captured = []
    last = [m for m in module.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)][-1]
    last.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    with torch.no_grad():
        module(x)
    expected = captured[0].numpy()
    expected = expected.mean(axis=(2, 3)) if expected.ndim == 4 else expected
    (features,) = run_onnx(bundle.backbone_path, {"input": x.numpy()})
    np.testing.assert_allclose(features, expected.reshape(3, -1), rtol=1e-4, atol=1e-5)
    adapt_predict_export(bundle, tmp_path)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_torch_family_with_last_layer_unfrozen(family: str, tmp_path: Path) -> None:
    bundle = _export(family, tmp_path / "b", unfreeze_last=1, head="mlp:8")
    head = bundle.manifest.head
    assert head.unfrozen and len(head.trainable) > 4 and head.normaliser == {}
    adapt_predict_export(bundle, tmp_path)


def test_torch_keep_head_reproduces_logits(tmp_path: Path) -> None:
    bundle = _export("resnet", tmp_path / "b", keep_head=True, classes=None)
    assert bundle.manifest.validation["logits_max_abs_diff"] <= bundle.manifest.validation["logits_atol"]


def test_cli_exports_a_torch_factory(tmp_path: Path) -> None:
    done = run_cli(
        "export",
        "--torch",
        "zoo.torch_families:mlp",
        "--input-shape",
        "1,10",
        "-o",
        tmp_path / "b",
        "--classes",
        "a,b",
        cwd=TESTS_DIR,
    )
    assert done.returncode == 0, done.stderr
    assert "(12 features)" in done.stdout
    cuts = run_cli("export", "--torch", "zoo.torch_families:mlp", "--input-shape", "1,10", "--list-cuts", cwd=TESTS_DIR)
    assert cuts.returncode == 0 and "<- head found here" in cuts.stdout
    bad = run_cli(
        "export", "--torch", "zoo.torch_families:nothing", "--input-shape", "1,10", "-o", tmp_path / "c", cwd=TESTS_DIR
    )
    assert bad.returncode == 1 and "has no callable 'nothing'" in bad.stderr
