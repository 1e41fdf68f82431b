"""Fleet benchmark: the digits split non-IID over devices; local-only heads vs each fleet strategy vs central heads.

The default bundle's features of the 1,257 training scans (``artifacts/demo/stream``) and the 540 held-out scans
are computed once (``Adapter.embed``) and cached (``--cache``, keyed by the bundle's fingerprint). Splits:

* ``slices``: 3 devices see digits {0-3}, {3-6}, {6-9} (the issue's split; 3 and 6 are shared by two devices);
* ``disjoint``: 3 devices see {0-2}, {3-5}, {6-9}, no digit on two devices;
* ``overlap``: 5 devices see 4 digits each, {2i .. 2i+3} mod 10 (each digit on two devices);
* ``dirichlet-0.1`` / ``dirichlet-1.0``: 5 devices; each digit's scans shared out in Dirichlet(alpha) proportions.

A digit's scans are shared out among the devices that see it. Per device and head learner, every device first
learns its own data locally (one ``learn_features`` call, bundle defaults, guard on): its **local-only** head.
Then the fleet federates **in-process**, without Flower's messaging but with the code the Flower App runs on
both ends (``FleetDevice.report/train/statistics/adopt``, ``pooled_normaliser``, Flower's own sample-weighted
``aggregate_arrayrecords`` that ``FedAvg`` calls, ``pooled``/``global_head`` of the statistics strategy); every
device adopts each global head through its promotion guard (policy ``guard``). Strategies (server/devices'):

* ``fedavg/sgd``: ``--rounds`` rounds of ``--epochs`` local epochs (lr ``--lr``) from the bundle's head with the
  pooled normaliser (``fleet run --strategy fedavg``);
* ``statistics/slda``: one round of summed class statistics, the closed-form LDA head (``auto`` for slda devices);
* ``stats+fedavg/sgd`` (``auto`` for sgd devices on a linear head) and ``stats+fedavg/slda+sgd``: one statistics
  round (an sgd device sends its replay buffer's statistics), then ``--rounds`` - 1 FedAvg rounds from that head.

**Central**: one device of the same learner that learns all 1,257 scans at once. Accuracy: a device's current head
after the run (what it predicts with) on all 540 held-out scans, 10 digits. **Sent**: bytes of the arrays one
device uploads in the run (report moments, head parameters or class statistics), payload only (Flower's framing
not counted). ``--no-guard``: no device holds scans out for its guard, so every scan is learned everywhere and the
statistics head must equal the central one.
Usage: ``python tools/bench_fleet.py [--splits slices,...] [--strategies ...] [--rounds 5] [--no-guard] [--out t.md]``
(needs ``pip install -e '.[fleet]'``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from edgeft.bundle import Bundle
from edgeft.fleet.device import FleetDevice
from edgeft.fleet.normaliser import pooled_normaliser
from edgeft.fleet.pooled_statistics import global_head, pooled
from edgeft.fleet.records import from_record, to_record
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.slda import DEFAULT_SHRINKAGE
from edgeft.runtime.trainer import Parameters, stored_state

WEIGHTS = ("head.weight", "head.bias")
ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "artifacts" / "default"
STREAM = ROOT / "artifacts" / "demo" / "stream"
TEST = ROOT / "artifacts" / "demo" / "test.npz"
SPLITS = ("slices", "disjoint", "overlap", "dirichlet-0.1", "dirichlet-1.0")
STRATEGIES = {  # name: (devices' head learner, server strategy)
    "fedavg/sgd": ("sgd", "fedavg"),
    "statistics/slda": ("slda", "statistics"),
    "stats+fedavg/sgd": ("sgd", "statistics+fedavg"),
    "stats+fedavg/slda+sgd": ("slda+sgd", "statistics+fedavg"),
}


@dataclass(frozen=True)
class Features:
    """Embedded training and held-out scans."""

    train: np.ndarray
    train_y: np.ndarray
    test: np.ndarray
    test_y: np.ndarray


def embedded(cache: Path, work: Path) -> Features:
    """The scans' features, from ``cache`` when it holds this bundle's, else embedded now and cached."""
    fingerprint = Bundle.load(BUNDLE).fingerprint
    if cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            if str(data["fingerprint"]) == fingerprint:
                return Features(data["train"], data["train_y"], data["test"], data["test_y"])
    with Adapter(BUNDLE, work / "embed") as embedder:
        chunks = [np.load(path) for path in sorted(STREAM.glob("chunk_*.npz"))]
        train = embedder.embed(np.concatenate([c["x"] for c in chunks]))
        train_y = np.concatenate([c["y"] for c in chunks]).astype(str)
        with np.load(TEST) as test:
            test_f, test_y = embedder.embed(test["x"]), test["y"].astype(str)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, fingerprint=fingerprint, train=train, train_y=train_y, test=test_f, test_y=test_y)
    return Features(train, train_y, test_f, test_y)


def by_class_sets(labels: np.ndarray, sees: list[set[int]], rng: np.random.Generator) -> list[np.ndarray]:
    """Sample indices per device: each digit's scans shared out evenly among the devices that see it."""
    parts: list[list[int]] = [[] for _ in sees]
    for digit in range(10):
        owners = [i for i, seen in enumerate(sees) if digit in seen]
        for owner, chunk in zip(
            owners, np.array_split(rng.permutation(np.flatnonzero(labels == digit)), len(owners)), strict=True
        ):
            parts[owner].extend(chunk.tolist())
    return [np.array(sorted(p)) for p in parts]


def by_dirichlet(labels: np.ndarray, devices: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Sample indices per device: each digit's scans shared out in Dirichlet(alpha) proportions."""
    parts: list[list[int]] = [[] for _ in range(devices)]
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(labels == digit))
        cuts = (np.cumsum(rng.dirichlet(np.full(devices, alpha)))[:-1] * len(indices)).astype(int)
        for owner, chunk in enumerate(np.split(indices, cuts)):
            parts[owner].extend(chunk.tolist())
    return [np.array(sorted(p)) for p in parts]


def split(name: str, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The named split's sample indices per device."""
    if name == "slices":
        return by_class_sets(labels, [set(range(0, 4)), set(range(3, 7)), set(range(6, 10))], rng)
    if name == "disjoint":
        return by_class_sets(labels, [set(range(0, 3)), set(range(3, 6)), set(range(6, 10))], rng)
    if name == "overlap":
        return by_class_sets(labels, [{(2 * i + j) % 10 for j in range(4)} for i in range(5)], rng)
    return by_dirichlet(labels, 5, float(name.split("-")[1]), rng)


def accuracy(adapter: Adapter, data: Features) -> float:
    """Accuracy over all ten digits of the adapter's current head."""
    predicted = np.array(adapter.classes)[adapter.predict_proba_features(data.test).argmax(axis=1)]
    return float((predicted == data.test_y).mean())


def relative_difference(head: Parameters, central: Parameters) -> float:
    """Largest |weight or bias - the central head's|, relative to the central head's largest |weight or bias|."""
    return max(float(np.abs(head[n] - central[n]).max() / max(np.abs(central[n]).max(), 1e-12)) for n in WEIGHTS)


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    """Payload bytes of named arrays."""
    return sum(int(np.asarray(value).nbytes) for value in arrays.values())


def fedavg_rounds(
    fleet: list[FleetDevice], head: Parameters, classes: list[str], options: LearnOptions, rounds: int, first: int
) -> tuple[list[int], int]:
    """``rounds`` of FedAvg from ``head``, each global head adopted through the guards; (bytes per device, refusals)."""
    sent, refused = [0] * len(fleet), 0
    for round_ in range(rounds):
        outcomes = [device.train(head, classes, options) for device in fleet]
        replies = [
            RecordDict({"arrays": to_record(o.parameters), "metrics": MetricRecord({"num-examples": o.samples})})
            for o in outcomes
        ]
        sent = [s + nbytes(o.parameters) for s, o in zip(sent, outcomes, strict=True)]
        head = from_record(aggregate_arrayrecords(replies, "num-examples"))
        refused += sum(not device.adopt(head, classes, first + round_).promoted for device in fleet)
    return sent, refused


@dataclass
class Outcome:
    """One strategy on one split: per-device local-only and federated accuracy, central accuracy, cost."""

    local: list[float]
    federated: list[float]
    central: float
    rounds: int
    sent: list[int]
    refused: int
    difference: float  # largest relative_difference of a device's final head from the central head


def run_strategy(
    strategy: str, data: Features, parts: list[np.ndarray], work: Path, args: argparse.Namespace
) -> Outcome:
    """Local-only heads, then one federation by ``strategy``, then the central head of the same learner."""
    learner, server = STRATEGIES[strategy]
    policy = GuardPolicy(enabled=not args.no_guard)
    open_device: Callable[[str], Adapter] = lambda name: Adapter(  # noqa: E731
        BUNDLE, work / name, head_learner=learner, policy=policy
    )
    with open_device("central") as central:
        central.learn_features(data.train, data.train_y, seed=args.seed)
        central_accuracy, central_head = accuracy(central, data), central.parameters()
    adapters = [open_device(f"device{i}") for i in range(len(parts))]
    try:
        for adapter, part in zip(adapters, parts, strict=True):
            adapter.learn_features(data.train[part], data.train_y[part], seed=args.seed)
        local = [accuracy(a, data) for a in adapters]
        fleet = [FleetDevice(a) for a in adapters]
        classes = list(adapters[0].bundle.manifest.classes)
        reports = [device.report() for device in fleet]
        sent = [nbytes({"mean": r.moments.mean, "var": r.moments.var}) for r in reports]
        refused, rounds = 0, 0
        options = LearnOptions(args.epochs, adapters[0].bundle.manifest.defaults.batch_size, args.lr, args.seed)
        if server == "fedavg":
            head = stored_state(adapters[0].bundle, None).parameters
            head["head.feature_mean"], head["head.feature_scale"] = pooled_normaliser([r.moments for r in reports])
            more, refused = fedavg_rounds(fleet, head, classes, options, args.rounds, 1)
            sent, rounds = [s + m for s, m in zip(sent, more, strict=True)], args.rounds
        else:
            parts_statistics = [device.statistics(classes) for device in fleet]
            sent = [
                s + nbytes({"c": p.counts, "s": p.sums, "m": p.moment})
                for s, p in zip(sent, parts_statistics, strict=True)
            ]
            total = pooled(parts_statistics)
            head = global_head(adapters[0].bundle, total, DEFAULT_SHRINKAGE)
            refused = sum(not device.adopt(head, classes, 1, total).promoted for device in fleet)
            rounds = 1
            if server == "statistics+fedavg" and args.rounds > 1:
                more, more_refused = fedavg_rounds(fleet, head, classes, options, args.rounds - 1, 2)
                sent, refused = [s + m for s, m in zip(sent, more, strict=True)], refused + more_refused
                rounds = args.rounds
        federated = [accuracy(a, data) for a in adapters]
        difference = max(relative_difference(a.parameters(), central_head) for a in adapters)
    finally:
        for adapter in adapters:
            adapter.close()
    return Outcome(local, federated, central_accuracy, rounds, sent, refused, difference)


def table(name: str, data: Features, parts: list[np.ndarray], outcomes: dict[str, Outcome]) -> list[str]:
    """Markdown lines for one split: a row per device, a column pair (local-only, federated) per strategy."""
    header = "| device | digits | scans | " + " | ".join(f"{s} local | {s} fleet" for s in outcomes) + " |"
    lines = [f"**{name}**", "", header, "|" + "---|" * (3 + 2 * len(outcomes))]
    for i, part in enumerate(parts):
        seen = ",".join(sorted({str(v) for v in data.train_y[part]}, key=int))
        cells = " | ".join(f"{o.local[i]:.3f} | {o.federated[i]:.3f}" for o in outcomes.values())
        lines.append(f"| {i} | {seen} | {len(part)} | {cells} |")
    central = " | ".join(f"| {o.central:.3f}" for o in outcomes.values())
    lines.append(f"| central | 0-9 | {len(data.train_y)} | {central} |")
    cost = "; ".join(
        f"{s}: {o.rounds} round(s), at most {max(o.sent) / 1e6:.2f} MB sent by a device, worst device minus central "
        f"{min(o.federated) - o.central:+.3f}, {o.refused} guard refusals"
        + (f", head max |W - W_central| / max |W_central| {o.difference:.1e}" if s == "statistics/slda" else "")
        for s, o in outcomes.items()
    )
    return [*lines, "", cost, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default=",".join(SPLITS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the multi-round strategies")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-guard", action="store_true", help="no holdout and no guard: every scan is learned (statistics == central)"
    )
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "bench_fleet_features.npz")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.monotonic()
    lines = [
        f"fedavg: {args.rounds} rounds of {args.epochs} local epochs (lr {args.lr}); stats+fedavg: the statistics "
        f"round, then {args.rounds - 1} such rounds; accuracy on all 540 held-out scans (10 digits); guard "
        f"{'off' if args.no_guard else 'on'}",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = embedded(args.cache, work)
        for name in args.splits.split(","):
            parts = split(name, data.train_y.astype(int), np.random.default_rng(args.seed))
            outcomes = {
                strategy: run_strategy(strategy, data, parts, work / f"{name}-{strategy.replace('/', '-')}", args)
                for strategy in args.strategies.split(",")
            }
            lines += table(name, data, parts, outcomes)
            print("\n".join(lines[-len(parts) - 7 :]), flush=True)
    lines.append(f"Total {time.monotonic() - started:.0f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
