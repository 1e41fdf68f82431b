"""What one small arrival costs a streaming-LDA learner that already knows the whole demo stream: CPU, wall, bytes.

The default bundle's backbone is re-exported as an open-set bundle (as ``tools/bench_continual.py`` does), the demo
stream's 1,257 scans are embedded once, and one ``Adapter(head_learner="slda")`` (guard off) learns all their
features; then ``--arrivals`` arrivals of 16 features (drawn at random from the stream) are learned one by one
(``learn_features``, commit included). Per arrival: the process's CPU time (user + system), the wall time, and the
bytes the process wrote (``wchar`` of /proc/self/io: every write call — head, buffers, statistics, metadata,
logs). No embedding is timed: this isolates the learner, for comparing two versions of the code side by side
(run it with ``PYTHONPATH`` on each). ``--fleet``: before the timed arrivals the device adopts its head as a fleet
head that comes with the other devices' statistics (a copy of its own: the same size as any fleet's), as a device
in a fleet of streaming-LDA learners does, so the arrivals also keep those.

Usage: ``OPENBLAS_NUM_THREADS=1 python tools/bench_slda_arrival.py [--arrivals 40] [--learner slda] [--fleet]``
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.class_statistics import ClassStatistics
from edgeft.runtime.guard import GuardPolicy

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "artifacts" / "default"
STREAM = ROOT / "artifacts" / "demo" / "stream"
ARRIVAL = 16


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bytes_written() -> int:
    """Bytes this process passed to write calls so far (``wchar``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrivals", type=int, default=40, help="arrivals of 16 features timed")
    parser.add_argument("--learner", default="slda", help="head learner (slda, ncm, sgd, slda+sgd)")
    parser.add_argument("--fleet", action="store_true", help="adopt a fleet head with the others' statistics first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = root / "open"
        export_bundle(ExportConfig(BUNDLE / "backbone.onnx", bundle, cut="features", max_classes=10))
        with Adapter(BUNDLE, root / "embed", ep="cpu") as embedder:
            chunks = [np.load(p) for p in sorted(STREAM.glob("*.npz"))]
            features = np.concatenate([embedder.embed(c["x"]) for c in chunks])
        labels = np.concatenate([c["y"] for c in chunks]).astype(str)
        policy = GuardPolicy(enabled=False)
        rows = []
        with Adapter(bundle, root / "state", ep="cpu", head_learner=args.learner, policy=policy) as adapter:
            adapter.learn_features(features, labels)
            if args.fleet:
                own = adapter.class_statistics()
                assert own is not None, "--fleet needs a streaming learner (slda, ncm, slda+sgd)"
                others = ClassStatistics(own.counts.copy(), own.sums.copy(), own.moment.copy())
                adopted = adapter.adopt(adapter.parameters(), adapter.classes, origin="fleet", fleet_statistics=others)
                assert adopted.promoted
            order = np.random.default_rng(0).permutation(len(labels))
            for i in range(args.arrivals):
                chunk = order[(i * ARRIVAL) % len(labels) :][:ARRIVAL]
                cpu, wall, written = cpu_seconds(), time.perf_counter(), bytes_written()
                adapter.learn_features(features[chunk], labels[chunk])
                rows.append((cpu_seconds() - cpu, time.perf_counter() - wall, bytes_written() - written))
    cpu, wall, written = (np.array([r[k] for r in rows]) for k in range(3))
    fleet = ", in a fleet" if args.fleet else ""
    print(f"{args.learner}{fleet}, {len(rows)} arrivals of {ARRIVAL} after {len(labels)} samples:")
    print(f"  CPU ms: median {1e3 * statistics.median(cpu):.1f}, mean {1e3 * cpu.mean():.1f}")
    print(f"  wall ms: median {1e3 * statistics.median(wall):.1f}, mean {1e3 * wall.mean():.1f}")
    print(f"  KiB written: median {statistics.median(written) / 1024:.0f}, mean {written.mean() / 1024:.0f}")


if __name__ == "__main__":
    main()
