"""Does the portable trainer compute the same on an execution provider as on the CPU? One command, one verdict.

Learns the first demo chunk on the shipped default bundle twice, once with ``--provider cpu`` and once with the
provider given, each in a fresh state, and compares the committed heads (parameters within ``--rtol``) and the
held-out accuracy. Prints one ``PROVIDER_CHECK`` JSON line; exits 1 on a mismatch.
Usage: ``python tools/check_provider.py cuda [--rtol 1e-3]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeft.data.readers import read_path
from edgeft.runtime.adapter import Adapter

ROOT = Path(__file__).resolve().parent.parent
BUNDLE, DEMO = ROOT / "artifacts" / "default", ROOT / "artifacts" / "demo"


def learn(provider: str, state: Path) -> tuple[dict[str, np.ndarray], float, float, str]:
    """(head parameters, held-out accuracy, seconds, providers used) after learning the first demo chunk."""
    with Adapter(BUNDLE, state, ep=provider) as adapter:
        chunk = read_path(DEMO / "stream" / "chunk_01.npz", adapter.bundle.manifest)[0]
        test = read_path(DEMO / "test.npz", adapter.bundle.manifest)[0]
        start = time.perf_counter()
        adapter.learn(chunk.x, chunk.y)
        seconds = time.perf_counter() - start
        return adapter.parameters(), adapter.evaluate(test.x, test.y), seconds, ",".join(adapter.placement.providers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("provider")
    parser.add_argument("--rtol", type=float, default=1e-3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cpu, cpu_accuracy, cpu_s, _ = learn("cpu", Path(tmp) / "cpu")
        other, accuracy, seconds, used = learn(args.provider, Path(tmp) / "other")
    worst = max(float(np.abs(other[k] - cpu[k]).max() / (np.abs(cpu[k]).max() + 1e-12)) for k in cpu)
    result = {
        "provider": used,
        "max_relative_parameter_difference": worst,
        "accuracy_cpu": cpu_accuracy,
        "accuracy_provider": accuracy,
        "learn_s_cpu": round(cpu_s, 2),
        "learn_s_provider": round(seconds, 2),
    }
    print("PROVIDER_CHECK " + json.dumps(result))
    if worst > args.rtol or abs(accuracy - cpu_accuracy) > 0.01:
        sys.exit(f"{args.provider} differs from the CPU: {result}")


if __name__ == "__main__":
    main()
