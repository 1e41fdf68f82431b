"""Fleet benchmark: the digits split non-IID over a few devices; local-only heads vs federated vs centralised.

The default bundle's features are computed once (``Adapter.embed``). Device i sees only the classes
``2i, 2i+1, ..., 2i+k-1`` (mod 10, ``--classes-per-device k``); each class's training scans are shared out
among the devices that see it. Every device first learns its own data locally (one ``learn_features`` call,
default options, guard on): that is its **local-only** head. Then the fleet federates in-process, with no Flower
messaging but the same code the Flower App runs: each device reports its feature moments (``FleetDevice.report``;
the server pools the normaliser), trains the global head on its replay buffer (``FleetDevice.train``), the
server averages the heads with Flower's own sample-weighted FedAvg (``aggregate_arrayrecords``, the function
``flwr.serverapp.strategy.FedAvg`` calls), and each device adopts the result through its promotion guard
(``FleetDevice.adopt``). The **centralised** head learns all training scans at once with the same defaults.
Accuracy: every head on all 540 held-out scans (10 classes).
Usage: ``python tools/bench_fleet.py [--devices 5] [--classes-per-device 4] [--rounds 10] [--epochs 5] [--out t.md]``
(needs ``pip install -e '.[fleet]'``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from edgeft.fleet.device import FleetDevice, TrainOptions
from edgeft.fleet.normaliser import pooled_normaliser
from edgeft.fleet.records import from_record, to_record
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.trainer import stored_state

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "artifacts" / "default"
STREAM = ROOT / "artifacts" / "demo" / "stream"
TEST = ROOT / "artifacts" / "demo" / "test.npz"


def _accuracy(adapter: Adapter, features: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy over all ten digits (the head's label map is the bundle's 0..9)."""
    predicted = np.array(adapter.classes)[adapter.predict_proba_features(features).argmax(axis=1)]
    return float((predicted == labels.astype(str)).mean())


def _split(labels: np.ndarray, devices: int, per_device: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sample indices of each device: its classes' scans, each class shared out among the devices that see it."""
    sees = [{(2 * i + j) % 10 for j in range(per_device)} for i in range(devices)]
    parts: list[list[int]] = [[] for _ in range(devices)]
    for digit in range(10):
        owners = [i for i in range(devices) if digit in sees[i]]
        indices = rng.permutation(np.flatnonzero(labels == digit))
        for owner, chunk in zip(owners, np.array_split(indices, len(owners)), strict=True):
            parts[owner].extend(chunk.tolist())
    return [np.array(sorted(p)) for p in parts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--classes-per-device", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with Adapter(BUNDLE, work / "embed") as embedder:
            chunks = [np.load(path) for path in sorted(STREAM.glob("chunk_*.npz"))]
            train_f = embedder.embed(np.concatenate([c["x"] for c in chunks]))
            train_y = np.concatenate([c["y"] for c in chunks]).astype(str)
            with np.load(TEST) as test:
                test_f, test_y = embedder.embed(test["x"]), test["y"].astype(str)
        embedded = time.monotonic() - started
        with Adapter(BUNDLE, work / "central") as central:
            central.learn_features(train_f, train_y, seed=args.seed)
            centralised = _accuracy(central, test_f, test_y)
        parts = _split(train_y.astype(int), args.devices, args.classes_per_device, np.random.default_rng(args.seed))
        adapters = [Adapter(BUNDLE, work / f"device{i}") for i in range(args.devices)]
        try:
            for adapter, part in zip(adapters, parts, strict=True):
                adapter.learn_features(train_f[part], train_y[part], seed=args.seed)
            local = [_accuracy(a, test_f, test_y) for a in adapters]
            fleet = [FleetDevice(a) for a in adapters]
            classes = list(adapters[0].bundle.manifest.classes)
            head = stored_state(adapters[0].bundle, None).parameters
            head["head.feature_mean"], head["head.feature_scale"] = pooled_normaliser(
                [d.report().moments for d in fleet]
            )
            options = TrainOptions(args.epochs, adapters[0].bundle.manifest.defaults.batch_size, args.lr, args.seed)
            refused = 0
            for round_ in range(1, args.rounds + 1):
                outcomes = [d.train(head, classes, options) for d in fleet]
                replies = [
                    RecordDict(
                        {"arrays": to_record(o.parameters), "metrics": MetricRecord({"num-examples": o.samples})}
                    )
                    for o in outcomes
                ]
                head = from_record(aggregate_arrayrecords(replies, "num-examples"))
                refused += sum(not d.adopt(head, classes, round_).promoted for d in fleet)
            federated = [_accuracy(a, test_f, test_y) for a in adapters]
        finally:
            for adapter in adapters:
                adapter.close()
    lines = [
        f"{args.devices} devices, {args.classes_per_device} digits each, {args.rounds} rounds of {args.epochs} local "
        f"epochs (lr {args.lr}); accuracy on all 540 held-out scans (10 digits)",
        "",
        "| device | digits seen | training scans | local-only | federated | centralised |",
        "|---|---|---|---|---|---|",
    ]
    for i, part in enumerate(parts):
        seen = ",".join(sorted({str(v) for v in train_y[part]}, key=int))
        lines.append(f"| {i} | {seen} | {len(part)} | {local[i]:.3f} | {federated[i]:.3f} | {centralised:.3f} |")
    lines += [
        "",
        f"Worst federated device {min(federated):.3f} vs centralised {centralised:.3f} "
        f"(gap {centralised - min(federated):+.3f}); best local-only {max(local):.3f}. "
        f"Guard refusals of a global head: {refused} of {args.rounds * args.devices}. "
        f"Embedding {embedded:.0f} s, total {time.monotonic() - started:.0f} s.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
