"""Session fixtures: one tiny ONNX classifier, its exported bundle, and a learnable dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, make_dataset
from tiny_models import classifier, save

from edgeft.bundle import Bundle, Defaults
from edgeft.export import ExportConfig, export_bundle

# Training defaults recorded in the session bundle: small enough to keep every learn call fast.
TEST_DEFAULTS = Defaults(epochs=10, batch_size=16, lr=0.05, seed=0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny classifier (Gemm head, Softmax tail) saved as an ONNX file."""
    return save(classifier(), tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="session")
def bundle_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle exported once from ``tiny_model`` for the classes red/green/blue; never modified by tests."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    export_bundle(ExportConfig(tiny_model, out, classes=list(CLASSES), defaults=TEST_DEFAULTS))
    return out


@pytest.fixture()
def bundle(bundle_dir: Path) -> Bundle:
    """The session bundle, loaded (and verified) afresh."""
    return Bundle.load(bundle_dir)


@pytest.fixture(scope="session")
def train_data() -> tuple[np.ndarray, np.ndarray]:
    """120 labelled training images (labels are class indices)."""
    return make_dataset(120, seed=1)


@pytest.fixture(scope="session")
def test_data() -> tuple[np.ndarray, np.ndarray]:
    """120 held-out labelled images from another seed."""
    return make_dataset(120, seed=2)


@pytest.fixture()
def state_dir(tmp_path: Path) -> Path:
    """A fresh (not yet created) state directory."""
    return tmp_path / "state"
