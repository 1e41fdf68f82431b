"""Class-incremental benchmark: the digits arrive two new classes at a time; does the head forget?

The default bundle's backbone (EfficientNet-Lite0) is re-exported as an open-set bundle (``max_classes=10``,
no classes named): each arrival brings all training scans of two new digits (0-1, 2-3, ..., 8-9), one
``learn`` call each, through the real Adapter. After every arrival the head is scored on the held-out scans of
every task so far (predictions over the classes known at that point): the accuracy matrix R[i][j].

Contenders, all with the same features, epochs and learning rate:
- naive fine-tuning: no replay, no guard (train on the new arrival only);
- latent replay: edgeft's class-balanced reservoir with at most ``--per-class`` features per class, guard off;
- edgeft defaults: the same replay with the promotion guard on (does the guard let new classes in?);
- streaming heads (``--head-learner``): streaming LDA and nearest class mean (one pass per arrival, no replay, no
  stored samples; guard off), streaming LDA with the guard on, and SLDA-initialised SGD with the same replay;
- joint training: a fresh head trained on everything seen so far at each arrival (the upper bound).

Then the cost of one small arrival: after the whole stream, arrivals of 16 raw scans (drawn at random from
the stream), each embedded (``Adapter.embed``) and then learned (``learn_features``, the whole commit included) by
each learner in turn; the table gives the median times and learn / embed, both measured on the same arrival, by the
wall clock and by the process's CPU time.

Metrics (Avalanche / GEM definitions): average accuracy = mean_j R[T][j] after the last arrival; forgetting =
mean over tasks j < T of (max_{l<T} R[l][j] - R[T][j]) (Chaudhry et al. 2018); backward transfer = mean over
j < T of (R[T][j] - R[j][j]) (Lopez-Paz & Ranzato 2017).
With ``--arrival N`` each task's scans arrive in arrivals of N (a trickle, not one batch), and one more contender
runs: latent replay rehearsing the whole buffer every arrival (``replay_per_new=None``) next to edgeft's bounded
rehearsal (at most ``REPLAY_PER_NEW`` buffered samples per new one).
Usage: ``python tools/bench_continual.py [--per-class 50] [--seeds 3] [--arrival N] [--arrivals 10] [--costs-only]
[--out FILE]``
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "artifacts" / "default"
STREAM = ROOT / "artifacts" / "demo" / "stream"
TEST = ROOT / "artifacts" / "demo" / "test.npz"
TASKS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


@dataclass
class Run:
    """One contender's accuracy matrix and guard verdicts."""

    name: str
    matrix: np.ndarray
    promoted: list[bool]

    @property
    def average(self) -> float:
        return float(self.matrix[-1].mean())

    @property
    def forgetting(self) -> float:
        last = len(self.matrix) - 1
        return float(np.mean([np.nanmax(self.matrix[:last, j]) - self.matrix[last, j] for j in range(last)]))

    @property
    def backward_transfer(self) -> float:
        last = len(self.matrix) - 1
        return float(np.mean([self.matrix[last, j] - self.matrix[j, j] for j in range(last)]))


def task_accuracies(adapter: Adapter, features: np.ndarray, labels: np.ndarray, upto: int) -> list[float]:
    """Accuracy on each task's held-out samples, predicting over the classes known now."""
    classes = adapter.classes
    predicted = np.array(classes)[adapter.predict_proba_features(features).argmax(axis=1)]
    names = labels.astype(str)
    return [
        float((predicted[np.isin(labels, task)] == names[np.isin(labels, task)]).mean()) for task in TASKS[: upto + 1]
    ]


def run_incremental(
    name: str,
    bundle: Path,
    state: Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    seed: int,
    arrival: int | None = None,
    **adapter_options: object,
) -> Run:
    """Learn the tasks in order with one Adapter (each task in arrivals of ``arrival`` samples, or in one); score
    every task seen so far after each task."""
    matrix = np.full((len(TASKS), len(TASKS)), np.nan)
    promoted = []
    with Adapter(bundle, state, ep="cpu", **adapter_options) as adapter:
        for i, task in enumerate(TASKS):
            features, labels = train[0][np.isin(train[1], task)], train[1][np.isin(train[1], task)].astype(str)
            step = arrival or len(labels)
            results = [
                adapter.learn_features(features[i : i + step], labels[i : i + step], seed=seed)
                for i in range(0, len(labels), step)
            ]
            promoted += [r.promoted for r in results]
            matrix[i, : i + 1] = task_accuracies(adapter, test[0], test[1], i)
    return Run(name, matrix, promoted)


def run_joint(
    bundle: Path, root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], seed: int
) -> Run:
    """A fresh head per arrival, trained on all samples of every task so far."""
    matrix = np.full((len(TASKS), len(TASKS)), np.nan)
    for i in range(len(TASKS)):
        mask = np.isin(train[1], [c for task in TASKS[: i + 1] for c in task])
        order = np.argsort(train[1][mask], kind="stable")  # classes take outputs in label order, like the others
        policy = GuardPolicy(enabled=False)
        with Adapter(bundle, root / f"joint{i}", ep="cpu", policy=policy, replay_per_class=0) as adapter:
            adapter.learn_features(train[0][mask][order], train[1][mask][order].astype(str), seed=seed)
            matrix[i, : i + 1] = task_accuracies(adapter, test[0], test[1], i)
    return Run("joint training (upper bound)", matrix, [True] * len(TASKS))


CONTENDERS = {
    "naive fine-tuning": {"replay_per_class": 0, "policy": GuardPolicy(enabled=False)},
    "latent replay": {"policy": GuardPolicy(enabled=False)},
    "edgeft defaults: latent replay + guard": {},
    "streaming LDA, no stored samples": {"head_learner": "slda", "policy": GuardPolicy(enabled=False)},
    "nearest class mean, no stored samples": {"head_learner": "ncm", "policy": GuardPolicy(enabled=False)},
    "streaming LDA + guard": {"head_learner": "slda"},
    "SLDA-initialised SGD + latent replay": {"head_learner": "slda+sgd", "policy": GuardPolicy(enabled=False)},
}
COSTED = {"sgd (replay, 10 epochs)": "sgd", "streaming LDA": "slda", "nearest class mean": "ncm"}
ARRIVAL = 16


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def arrival_costs(
    bundle: Path, root: Path, train: tuple[np.ndarray, np.ndarray], arrivals: int, per_class: int
) -> dict[str, list[tuple[float, float, float, float]]]:
    """(embed seconds, learn seconds, embed CPU seconds, learn CPU seconds) of ``arrivals`` arrivals of 16 raw scans
    per learner, after the whole stream.

    Every learner first learns the whole stream's features (guard off); then each arrival's raw scans are
    embedded and learned by each learner in turn, so both times of a pair share the machine's state. CPU time is
    the process's (every thread's), which other jobs on a busy machine disturb much less than the wall clock.
    """
    x, y = train
    adapters = {}
    features = None
    for name, learner in COSTED.items():
        adapter = Adapter(bundle, root / f"cost-{learner}", ep="cpu", head_learner=learner, replay_per_class=per_class,
                          policy=GuardPolicy(enabled=False))  # fmt: skip
        features = adapter.embed(x) if features is None else features
        adapter.learn_features(features, y.astype(str))
        adapters[name] = adapter
    order = np.random.default_rng(0).permutation(len(y))
    costs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in COSTED}
    for i in range(arrivals):
        chunk = order[i * ARRIVAL : (i + 1) * ARRIVAL]
        for name, adapter in adapters.items():
            started, started_cpu = time.perf_counter(), cpu_seconds()
            embedded = adapter.embed(x[chunk])
            embedded_at, embedded_cpu = time.perf_counter(), cpu_seconds()
            adapter.learn_features(embedded, y[chunk].astype(str))
            learn, learn_cpu = time.perf_counter() - embedded_at, cpu_seconds() - embedded_cpu
            costs[name].append((embedded_at - started, learn, embedded_cpu - started_cpu, learn_cpu))
    for adapter in adapters.values():
        adapter.close()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50, help="replay buffer size per class")
    parser.add_argument("--seeds", type=int, default=3, help="repeat every contender with seeds 0..N-1")
    parser.add_argument("--arrivals", type=int, default=10, help="16-scan arrivals timed per learner")
    parser.add_argument("--costs-only", action="store_true", help="only time the 16-scan arrivals")
    parser.add_argument("--arrival", type=int, help="samples per arrival within a task (default: a task at once)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    runs: dict[str, list[Run]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = root / "open"
        export_bundle(ExportConfig(BUNDLE / "backbone.onnx", bundle, cut="features", max_classes=10))
        embedder = Adapter(BUNDLE, root / "embed", ep="cpu")
        chunks = [np.load(p) for p in sorted(STREAM.glob("*.npz"))]
        train = (np.concatenate([embedder.embed(c["x"]) for c in chunks]), np.concatenate([c["y"] for c in chunks]))
        with np.load(TEST) as data:
            test = (embedder.embed(data["x"]), data["y"])
        contenders = dict(CONTENDERS)
        if args.arrival:
            whole = {"policy": GuardPolicy(enabled=False), "replay_per_new": None}
            contenders["latent replay, whole buffer every arrival"] = whole
        for seed in range(0 if args.costs_only else args.seeds):
            for index, (name, options) in enumerate(contenders.items()):
                options = {"replay_per_class": args.per_class, **options}
                state = root / f"contender{index}-seed{seed}"  # a fresh state for every contender and seed
                runs.setdefault(name, []).append(
                    run_incremental(name, bundle, state, train, test, seed, args.arrival, **options)
                )
            runs.setdefault("joint training (upper bound)", []).append(
                run_joint(bundle, root / f"joint{seed}", train, test, seed)
            )
            print(f"seed {seed} done", flush=True)
        raw = (np.concatenate([c["x"] for c in chunks]), train[1])
        costs = arrival_costs(bundle, root, raw, args.arrivals, args.per_class)
    table = (_table(runs, args.per_class, args.arrival) + "\n\n" if runs else "") + _cost_table(costs)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def _table(runs: dict[str, list[Run]], per_class: int, arrival: int | None) -> str:
    rows = [
        (f"Arrivals of {arrival} samples. " if arrival else "")
        + f"Replay buffer: at most {per_class} features per class. Mean ± standard deviation over "
        f"{len(next(iter(runs.values())))} seeds (shuffling and holdout draws).",
        "",
        "| contender | final average accuracy | forgetting | backward transfer | arrivals promoted |",
        "|---|---|---|---|---|",
    ]
    for name, seeded in runs.items():
        promoted = sum(sum(r.promoted) for r in seeded)
        rows.append(
            f"| {name} | {_mean_sd([r.average for r in seeded])} | {_mean_sd([r.forgetting for r in seeded])} | "
            f"{_mean_sd([r.backward_transfer for r in seeded])} | {promoted}/{sum(len(r.promoted) for r in seeded)} |"
        )
    rows += ["", "Accuracy matrix R[i][j] of seed 0 (row: after arrival i; column: task j's held-out scans):", ""]
    for name, seeded in runs.items():
        matrix = seeded[0].matrix
        rows.append(f"- {name}: " + "; ".join(" ".join(f"{v:.2f}" for v in r[: i + 1]) for i, r in enumerate(matrix)))
    return "\n".join(rows)


def _cost_table(costs: dict[str, list[tuple[float, float, float, float]]]) -> str:
    rows = [
        f"One arrival of {ARRIVAL} scans after the whole stream, median of {len(next(iter(costs.values())))} "
        "arrivals (learn: `learn_features`, commit included; CPU: the process's user + system time):",
        "",
        "| learner | embed 16 scans (s) | learn them (s) | learn / embed | embed CPU (s) | learn CPU (s) | "
        "learn / embed, CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in costs.items():
        embed, learn, embed_cpu, learn_cpu = (statistics.median(r[k] for r in runs) for k in range(4))
        ratio = statistics.median(r[1] / r[0] for r in runs)
        cpu_ratio = statistics.median(r[3] / r[2] for r in runs)
        rows.append(
            f"| {name} | {embed:.3f} | {learn:.3f} | {ratio:.2f} | {embed_cpu:.3f} | {learn_cpu:.3f} | {cpu_ratio:.2f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
