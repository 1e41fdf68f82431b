"""Cross-check ``edgeft eval --tasks`` against tools/bench_continual.py's own scoring, on the digits stream.

Learns the five class-incremental tasks (0-1, 2-3, ..., 8-9) with the benchmark's open-set bundle, naive
fine-tuning and latent replay (50 per class, guard off, seed 0, every version retained), scores each task after
each arrival as the benchmark does, then runs ``edgeft.evaluate(..., tasks=True)`` on the test scans once at the
end and prints the largest difference between the two accuracy matrices and both sets of figures.
Usage: ``python tools/check_eval_matrix.py`` (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from bench_continual import BUNDLE, STREAM, TASKS, TEST, Run, task_accuracies

from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.evaluation import evaluate
from edgeft.runtime.guard import GuardPolicy

CONTENDERS = {"naive fine-tuning": 0, "latent replay, 50 per class": 50}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = root / "open"
        export_bundle(ExportConfig(BUNDLE / "backbone.onnx", bundle, cut="features", max_classes=10))
        chunks = [np.load(p) for p in sorted(STREAM.glob("*.npz"))]
        x, y = np.concatenate([c["x"] for c in chunks]), np.concatenate([c["y"] for c in chunks])
        with np.load(TEST) as data:
            test_x, test_y = data["x"], data["y"]
        for name, per_class in CONTENDERS.items():
            policy = GuardPolicy(enabled=False)
            options = {"replay_per_class": per_class, "policy": policy, "keep_versions": len(TASKS)}
            with Adapter(bundle, root / str(per_class), ep="cpu", **options) as adapter:
                features, test_features = adapter.embed(x), adapter.embed(test_x)
                bench = np.full((len(TASKS), len(TASKS)), np.nan)
                for i, task in enumerate(TASKS):
                    mask = np.isin(y, task)
                    adapter.learn_features(features[mask], y[mask].astype(str), seed=0)
                    bench[i, : i + 1] = task_accuracies(adapter, test_features, test_y, i)
                result = evaluate(adapter, test_x, test_y.astype(str), tasks=True)
            matrix = np.array([[np.nan if v is None else v for v in row] for row in result["task_matrix"]["matrix"]])
            lower = np.tril(np.ones_like(matrix, bool))
            run = Run(name, bench, [])
            print(f"{name}: max |eval - bench| over R[i][j], j <= i: {np.abs(matrix - bench)[lower].max():.2g}")
            print(
                f"  bench: ACC {run.average:.4f}, forgetting (Chaudhry) {run.forgetting:.4f}, BWT {run.backward_transfer:.4f}"
            )
            print(
                f"  eval:  ACC {result['average_accuracy']:.4f}, max forgetting {result['max_forgetting']:.4f}, "
                f"BWT {result['backward_transfer']:.4f}, forgetting (Avalanche) {result['forgetting']:.4f}"
            )


if __name__ == "__main__":
    main()
