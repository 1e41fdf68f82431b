"""The round trip every zoo model must survive: adapt a few steps (loss goes down), predict, export-inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from edgeft.bundle import Bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.merge import write_merged_model

SAMPLES = 48


def inputs_for(bundle: Bundle, seed: int = 0) -> np.ndarray:
    """Seeded random inputs of the bundle's input shape."""
    shape = [SAMPLES, *bundle.manifest.input.shape[1:]]
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


def learnable_labels(features: np.ndarray, classes: int, seed: int = 0) -> np.ndarray:
    """Class indices a linear head can learn: the argmax of a random projection of standardised features."""
    standard = (features - features.mean(0)) / (features.std(0) + 1e-6)
    projection = np.random.default_rng(seed).normal(size=(features.shape[1], classes))
    return (standard @ projection).argmax(axis=1)


def adapt_predict_export(bundle: Bundle, tmp_path: Path) -> dict[str, float]:
    """Learn, predict and merge; assert the loss falls and the merged model predicts what the adapter does."""
    x = inputs_for(bundle)
    merged = tmp_path / "merged.onnx"
    with Adapter(bundle, tmp_path / "state", ep="cpu") as adapter:
        features = adapter.embed(x)
        assert features.shape == (len(x), bundle.manifest.head.feature_dim)
        labels = learnable_labels(features, len(adapter.classes))
        first = adapter.learn_features(features, labels, epochs=1, batch_size=8, lr=0.01)
        later = adapter.learn_features(features, labels, epochs=6, batch_size=8, lr=0.01)
        assert later.loss < first.loss, (first.loss, later.loss)
        predicted = adapter.predict(x)
        assert len(predicted) == len(x) and set(predicted) <= set(adapter.classes)
        probabilities = adapter.predict_proba(x)
        write_merged_model(adapter.bundle, adapter.parameters(), adapter.classes, merged)
    session = onnxruntime.InferenceSession(str(merged), providers=["CPUExecutionProvider"])
    _logits, merged_probabilities = session.run(None, {bundle.manifest.input.name: x})
    np.testing.assert_allclose(merged_probabilities, probabilities, rtol=1e-4, atol=1e-5)
    return {"first": first.loss, "later": later.loss}
