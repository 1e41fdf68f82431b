"""Multi-label and regression heads on the real backbone: the task's metric before and after on-device adaptation.

The default bundle's backbone (EfficientNet-Lite0, cut at its pooled features) is re-exported three times with a
new head, and each head learns the demo stream (``artifacts/demo/stream``, 5 arrivals of ~250 digit scans) through
the real Adapter with edgeft's defaults (latent replay, the promotion guard, the bundle's epochs and learning rate):

- multi-label (BCE): each scan's label set is {its digit, "even" or not, ">=5" or not}: 12 labels, 1 to 3 per scan.
  Scored by micro-F1 over every (scan, label) decision at the 0.5 thresholds, and with per-label thresholds tuned
  on the holdout (``--tune-thresholds``);
- regression (MSE, then L1): the target is the digit's value 0..9. Scored by RMSE (MSE head) and MAE (L1 head).

"before" is the freshly exported head, "after" the head after the 5 arrivals, both on the 540 held-out scans of
``artifacts/demo/test.npz``. The reference row is the best constant answer learned from the same training labels
(the label set of the k most frequent labels, k chosen for the best training micro-F1; the training mean
for RMSE, the median for MAE), which a head must beat to have learned
anything from the images. Then a sixth arrival brings garbage: all 1257 training scans again with their labels
shuffled among them (a flood of wrong labels); the last column counts how often the guard refused it. For regression, the last column is the linear ceiling: ridge regression (lambda
100, the best of 0.1..100 on the test scans, so optimistic) fitted in closed form to all training features at once.
Usage: ``python tools/bench_tasks.py [--seeds 3] [--out table.md]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.tasks import micro_f1, score

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "artifacts" / "default"
STREAM = ROOT / "artifacts" / "demo" / "stream"
TEST = ROOT / "artifacts" / "demo" / "test.npz"
RIDGE = 100.0
LABELS = [str(d) for d in range(10)] + ["even", ">=5"]


def label_sets(digits: np.ndarray) -> np.ndarray:
    """Multi-hot rows over ``LABELS``: the digit, whether it is even, whether it is at least 5."""
    rows = np.zeros((len(digits), len(LABELS)), np.float32)
    rows[np.arange(len(digits)), digits] = 1
    rows[:, 10] = digits % 2 == 0
    rows[:, 11] = digits >= 5
    return rows


def task_targets(task: str, digits: np.ndarray) -> np.ndarray:
    return label_sets(digits) if task == "multilabel" else digits.astype(np.float32)


def constant_reference(task: str, loss: str | None, train: np.ndarray, test: np.ndarray) -> float:
    """The metric of the best constant answer fitted to the training targets."""
    if task == "multilabel":  # the same label set for every scan: the k most frequent labels, k best on train
        order = np.argsort(-train.mean(axis=0), kind="stable")
        sets = [np.isin(np.arange(train.shape[1]), order[:k]) for k in range(train.shape[1] + 1)]
        best = max(sets, key=lambda s: micro_f1(np.broadcast_to(s, train.shape), train > 0.5))
        return micro_f1(np.broadcast_to(best, test.shape), test > 0.5)
    if loss == "mse":
        return float(np.sqrt(np.mean((test - train.mean()) ** 2)))
    return float(np.mean(np.abs(test - np.median(train))))


def ridge_reference(loss: str, train: tuple, test: tuple) -> float:
    """RMSE (MSE) or MAE (L1) of closed-form ridge regression on the standardised training features."""
    features, values = train[0], train[1].astype(np.float64)
    mean, scale = features.mean(axis=0), features.std()
    z, z_test = (features - mean) / scale, (test[0] - mean) / scale
    weights = np.linalg.solve(z.T @ z + RIDGE * np.eye(z.shape[1]), z.T @ (values - values.mean()))
    errors = z_test @ weights + values.mean() - test[1]
    return float(np.sqrt(np.mean(errors**2))) if loss == "mse" else float(np.mean(np.abs(errors)))


def run(
    bundle: Path, state: Path, task: str, arrivals: list, test: tuple, seed: int, tune: bool
) -> tuple[float, float, int, bool]:
    """(metric before, metric after, arrivals promoted, garbage refused) for one head learning the stream."""
    test_features, test_digits = test
    with Adapter(bundle, state, ep="cpu", tune_thresholds=tune) as adapter:
        before = adapter_score(adapter, test_features, task_targets(task, test_digits))
        promoted = 0
        for features, digits in arrivals:
            promoted += adapter.learn_features(features, task_targets(task, digits), seed=seed).promoted
        after = adapter_score(adapter, test_features, task_targets(task, test_digits))
        features = np.concatenate([f for f, _ in arrivals])
        shuffled = np.random.default_rng(seed).permutation(np.concatenate([d for _, d in arrivals]))
        garbage = adapter.learn_features(features, task_targets(task, shuffled), seed=seed)
    return before, after, promoted, not garbage.promoted


def adapter_score(adapter: Adapter, features: np.ndarray, targets: np.ndarray) -> float:
    """The head's metric on precomputed features (what ``Adapter.score`` computes from raw inputs)."""
    known = adapter.encode(targets, "test").values[:, : len(adapter.classes)]
    return score(adapter.bundle.manifest.head, adapter.outputs_features(features), known, adapter.thresholds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="repeat every head with seeds 0..N-1")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    heads = [
        ("multi-label (BCE), micro-F1 at 0.5", "multilabel", None, LABELS, False),
        ("multi-label (BCE), micro-F1, thresholds tuned on the holdout", "multilabel", None, LABELS, True),
        ("regression (MSE), RMSE", "regression", "mse", ["digit"], False),
        ("regression (L1), MAE", "regression", "l1", ["digit"], False),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        embedder = Adapter(BUNDLE, root / "embed", ep="cpu")
        chunks = [np.load(p) for p in sorted(STREAM.glob("*.npz"))]
        arrivals = [(embedder.embed(c["x"]), c["y"]) for c in chunks]
        with np.load(TEST) as data:
            test = (embedder.embed(data["x"]), data["y"])
        train_digits = np.concatenate([digits for _, digits in arrivals])
        for name, task, loss, classes, tune in heads:
            bundle = root / f"{task}-{loss}"
            if not bundle.exists():
                export_bundle(
                    ExportConfig(
                        BUNDLE / "backbone.onnx", bundle, cut="features", classes=classes, task=task, loss=loss
                    )
                )
            results = [
                run(bundle, root / f"{name}-{seed}", task, arrivals, test, seed, tune) for seed in range(args.seeds)
            ]
            reference = constant_reference(task, loss, task_targets(task, train_digits), task_targets(task, test[1]))
            train = (np.concatenate([f for f, _ in arrivals]), train_digits)
            ceiling = ridge_reference(loss, train, test) if task == "regression" else None
            rows.append((name, results, reference, ceiling))
            print(f"{name} done", flush=True)
    table = _table(rows, args.seeds)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def _table(rows: list, seeds: int) -> str:
    lines = [
        f"Mean ± standard deviation over {seeds} seeds (shuffling and holdout draws); 5 arrivals, 1257 training "
        "scans, 540 test scans.",
        "",
        "| head, metric | before (exported head) | after 5 arrivals | arrivals promoted | best constant answer "
        "| linear ceiling (ridge, all data) | garbage arrival refused |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, results, reference, ceiling in rows:
        before, after, promoted, refused = zip(*results, strict=True)
        lines.append(
            f"| {name} | {_mean_sd(list(before))} | {_mean_sd(list(after))} | {sum(promoted)}/{5 * len(results)} | "
            f"{reference:.3f} | {'-' if ceiling is None else f'{ceiling:.3f}'} | {sum(refused)}/{len(results)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
