"""The shipped default: the main job adapts EfficientNet-Lite0's new head to the digits, near a reference probe."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from edgeft.runtime.adapter import Adapter

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
BAR = 0.02  # the main job must land within 2 accuracy points of the reference probe


def _edgeft() -> list[str]:
    return [sys.executable, "-m", "edgeft.cli"]


@pytest.fixture(scope="module")
def reference_accuracy(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Held-out accuracy of a converged logistic regression on the same backbone features."""
    adapter = Adapter(ARTIFACTS / "default", tmp_path_factory.mktemp("ref-state"), ep="cpu")
    chunks = [np.load(p) for p in sorted((ARTIFACTS / "demo" / "stream").glob("*.npz"))]
    test = np.load(ARTIFACTS / "demo" / "test.npz")
    x_train = np.concatenate([adapter.embed(c["x"]) for c in chunks])
    y_train = np.concatenate([c["y"] for c in chunks])
    x_test = adapter.embed(test["x"])
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(max_iter=3000).fit(scaler.transform(x_train), y_train)
    return float(probe.score(scaler.transform(x_test), test["y"]))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """One real run of the main job in a subprocess, and its state directory."""
    state = tmp_path_factory.mktemp("demo") / "state"
    run = subprocess.run([*_edgeft(), "demo", "--state", str(state)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run, state


@pytest.mark.slow
def test_main_job_reaches_reference_probe(reference_accuracy: float, demo_run: tuple) -> None:
    """`edgeft demo` (the README's first command) learns the digits to within 2 points of the probe."""
    run, state = demo_run
    before = float(re.search(r"accuracy before adaptation: ([0-9.]+)", run.stdout).group(1))
    after = float(re.search(r"accuracy after adaptation: ([0-9.]+)", run.stdout).group(1))
    assert before < 0.3, run.stdout  # a fresh head knows nothing of the digits
    assert after >= reference_accuracy - BAR, f"main job {after:.3f} vs reference probe {reference_accuracy:.3f}"
    assert (state / "CURRENT").read_text() == '{"version": 5}'


@pytest.mark.slow
def test_demo_refuses_a_used_state_directory(tmp_path: Path) -> None:
    """The demo starts from the bundle's fresh head; it will not silently continue someone's state."""
    chunk = np.load(ARTIFACTS / "demo" / "stream" / "chunk_01.npz")
    with Adapter(ARTIFACTS / "default", tmp_path, ep="cpu") as adapter:
        adapter.learn(chunk["x"][:20], chunk["y"][:20], epochs=1)
    second = subprocess.run([*_edgeft(), "demo", "--state", str(tmp_path)], capture_output=True, text=True)
    assert second.returncode == 1
    assert "already holds a learned head" in second.stderr
    assert "Traceback" not in second.stderr


def test_png_examples_predict_their_folder_label(demo_run: tuple) -> None:
    """After the main job, the shipped PNG scans are read, preprocessed and classified like the arrays."""
    _, state = demo_run
    adapter = Adapter(ARTIFACTS / "default", state, ep="cpu")
    pngs = sorted((ARTIFACTS / "demo" / "images").glob("*/*.png"))
    from edgeft.data.readers import read_image

    x = np.stack([read_image(p, adapter.bundle.manifest) for p in pngs])
    predicted = adapter.predict(x)
    correct = sum(label == p.parent.name for label, p in zip(predicted, pngs, strict=True))
    assert correct >= 0.8 * len(pngs)


@pytest.mark.slow
def test_demo_with_streaming_lda_reaches_reference_probe(reference_accuracy: float, tmp_path: Path) -> None:
    """`edgeft demo --head-learner slda`: one pass per chunk, no epochs or replay, as good as the probe."""
    run = subprocess.run(
        [*_edgeft(), "demo", "--state", str(tmp_path / "state"), "--head-learner", "slda"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("loss n/a") == 5, run.stdout  # no training loss: nothing was trained by gradient
    after = float(re.search(r"accuracy after adaptation: ([0-9.]+)", run.stdout).group(1))
    assert after >= reference_accuracy - BAR, f"slda {after:.3f} vs reference probe {reference_accuracy:.3f}"
