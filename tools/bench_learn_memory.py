"""Peak RSS that learning one arrival adds over holding its features: ``Adapter.learn_features`` on the default bundle.

A fresh state learns 2,400 precomputed features first (the replay buffer full: 2,000), then one arrival of
``--samples`` features (float32, 5 KiB each) is made and learned with one epoch; reported: the process's peak RSS
(``ru_maxrss``) before that call and after it. No backbone runs: this isolates what the learning step holds besides
the arrival (training set, buffers, commit). Run it once per code tree, side by side, as in BENCHMARKS.md.

Usage: ``PYTHONPATH=. python tools/bench_learn_memory.py [--samples 9600]``
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

import numpy as np

import edgeft
from edgeft.runtime.adapter import Adapter

BUNDLE = Path(__file__).resolve().parent.parent / "artifacts" / "default"


def features(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 features of 10 classes, made in place (no float64 temporary to raise the baseline)."""
    labels = rng.integers(0, 10, n)
    x = rng.standard_normal((n, 1280), dtype=np.float32)
    x += labels[:, None].astype(np.float32) * 0.1
    return x, labels


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=9600)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, Adapter(BUNDLE, Path(tmp) / "state", threads=2) as adapter:
        adapter.learn_features(*features(2400, rng), epochs=1)
        x, y = features(args.samples, rng)
        before = peak_mib()
        result = adapter.learn_features(x, y, epochs=1)
        after = peak_mib()
    print(
        json.dumps(
            {
                "edgeft": str(Path(edgeft.__file__).parent),
                "samples": args.samples,
                "peak_before_mib": round(before),
                "peak_after_mib": round(after),
                "learn_added_mib": round(after - before),
                "trained": result.trained,
                "replayed": result.replayed,
            }
        )
    )


if __name__ == "__main__":
    main()
