"""Measure how the learning settings change what the main job reaches, to choose the defaults.

On the default bundle (EfficientNet-Lite0 features of the digits): the demo stream's five chunks arrive in
order, one ``learn`` each, through the real Adapter (ORT training, AdamW, batch 16); held-out accuracy is
measured after the last chunk. Grid: learning rate x epochs per arrival x feature standardisation (the head's
frozen normaliser, on or replaced by identity) x latent replay (200 per class, or 0). Reference: a converged
scikit-learn LogisticRegression on all training features, with and without StandardScaler.

Features are computed once and fed through ``learn_features``, exactly what ``learn`` does after embedding.
Usage: ``python tools/bench_learning_defaults.py [--out table.md]`` (needs scikit-learn: the dev extra).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import edgeft.runtime.adapter as adapter_module
from edgeft.runtime.adapter import Adapter

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "artifacts" / "default"
STREAM = ROOT / "artifacts" / "demo" / "stream"
TEST = ROOT / "artifacts" / "demo" / "test.npz"
LRS = (1e-2, 3e-3, 1e-3, 3e-4)
EPOCHS = (5, 10, 20)


def identity_normaliser(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """No standardisation: zero mean, unit scale."""
    dim = features.shape[1]
    return np.zeros(dim, np.float32), np.ones(dim, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        embedder = Adapter(BUNDLE, Path(tmp) / "embed", ep="cpu")
        chunks = [np.load(p) for p in sorted(STREAM.glob("*.npz"))]
        features = [embedder.embed(c["x"]) for c in chunks]
        labels = [c["y"] for c in chunks]
        test = np.load(TEST)
        test_features, test_labels = embedder.embed(test["x"]), test["y"]
        all_features, all_labels = np.concatenate(features), np.concatenate(labels)
        rows = [
            "| lr | epochs | standardised | replay | accuracy after each chunk | final |",
            "|---|---|---|---|---|---|",
        ]
        scaler = StandardScaler().fit(all_features)
        for scaled in (True, False):
            train = scaler.transform(all_features) if scaled else all_features
            test_x = scaler.transform(test_features) if scaled else test_features
            probe = LogisticRegression(max_iter=3000).fit(train, all_labels).score(test_x, test_labels)
            rows.append(
                f"| reference: LogisticRegression | converged | {'yes' if scaled else 'no'} | all data | | {probe:.3f} |"
            )
        original = adapter_module.feature_normaliser
        for n, (lr, epochs, standardise, replay) in enumerate(itertools.product(LRS, EPOCHS, (True, False), (200, 0))):
            adapter_module.feature_normaliser = original if standardise else identity_normaliser
            with Adapter(BUNDLE, Path(tmp) / f"run{n}", ep="cpu", replay_per_class=replay) as adapter:
                accuracies = []
                for f, y in zip(features, labels, strict=True):
                    adapter.learn_features(f, y, epochs=epochs, lr=lr)
                    accuracies.append(
                        float((adapter.predict_proba_features(test_features).argmax(1) == test_labels).mean())
                    )
            curve = " ".join(f"{a:.3f}" for a in accuracies)
            rows.append(
                f"| {lr:g} | {epochs} | {'yes' if standardise else 'no'} | {replay}/class | {curve} | {accuracies[-1]:.3f} |"
            )
            print(rows[-1], flush=True)
        adapter_module.feature_normaliser = original
    table = "\n".join(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
