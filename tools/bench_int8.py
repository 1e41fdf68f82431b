"""int8 backbone against float, side by side in one run: adapt throughput, held-out accuracy, file size (issue 9).

Bundles: ``artifacts/default`` (float EfficientNet-Lite0 backbone) and ``artifacts/default-int8`` (the same
export with ``quantize="int8"``, calibrated on the demo stream; rebuild both with tools/build_default_bundle.py).
Each round runs four contenders, in an order that alternates between rounds, on the same machine and threads:

- float inference: the float ``backbone.onnx`` alone in an InferenceSession over the demo stream's 1,257
  training scans, batch 64 (the runtime's embedding batch), after one warm-up batch: samples per second;
- int8 inference: the same with the int8 backbone;
- float adapt / int8 adapt: the main job as ``edgeft demo`` runs it: a fresh state, the real ``Adapter`` with
  the bundle's defaults, one ``learn`` per stream chunk (embed, remember, train, guard, commit); throughput =
  samples / wall time of the five ``learn`` calls; then the accuracy on the 540 held-out test scans;
- float process / int8 process: the whole process, ``edgeft -q adapt BUNDLE --data STREAM --state FRESH``
  (interpreter start, imports, bundle verification, sessions, the int8 self-check, embedding, training, commit);
  throughput = samples / the process's wall time.

Every contender also records its CPU time (user + system, all threads; the child's for the processes), so that
CPU-time ratios can stand in for wall-time ones on a machine whose other load swamps the wall clock.

Goals: int8 adapt (and int8 process) >= 1.4x float inference samples/s; int8 held-out accuracy within 1 point of float; int8
backbone file >= 3x smaller. Speed ratios are taken within each round (the machine's load changes between
rounds), then their median is reported; the load average is recorded before and after. Untimed references
separate the features from the learning loop: both adapt runs again with the promotion guard off; a converged
logistic regression (scikit-learn, standardised features) on each backbone's features of the stream, scored on
the test scans; and the same probe's int8-minus-float accuracy over all 1,797 scans by repeated 5-fold
cross-validation (the gap to expect from the features, beyond the one split the main job sees).
``--int8 BUNDLE`` measures another int8 export of the same classifier (e.g. ``--target-cpu avx2``) instead.
Usage: ``python tools/bench_int8.py [--rounds 3] [--threads 2] [--json out.json] [--int8 BUNDLE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnxruntime
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edgeft.bundle import Bundle, Manifest
from edgeft.data.readers import Samples, read_path
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.features import EMBED_BATCH, session_options
from edgeft.runtime.guard import GuardPolicy

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = {"float": ROOT / "artifacts" / "default", "int8": ROOT / "artifacts" / "default-int8"}
STREAM = ROOT / "artifacts" / "demo" / "stream"
TEST = ROOT / "artifacts" / "demo" / "test.npz"
CONTENDERS = ("float inference", "int8 inference", "float adapt", "int8 adapt", "float process", "int8 process")
CV_FOLDS, CV_REPEATS = 5, 3


def demo_data(manifest: Manifest) -> tuple[list[Samples], Samples]:
    """The demo stream's chunks in order, and the held-out test scans, read as ``adapt`` reads them."""
    chunks = [s for p in sorted(STREAM.glob("*.npz")) for s in read_path(p, manifest)]
    return chunks, read_path(TEST, manifest)[0]


def print_rows(rows: Iterable[dict], json_path: Path | None) -> None:
    """Print each result row as a JSON line as it comes; also write them all to ``json_path`` when given."""
    done = []
    for row in rows:
        print(json.dumps(row), flush=True)
        done.append(row)
    if json_path:
        json_path.write_text(json.dumps(done, indent=1) + "\n")


def inference_rate(bundle: Bundle, x: np.ndarray, threads: int) -> tuple[float, float]:
    """(samples per second, samples per CPU second) of the bundle's backbone alone, in the runtime's batches."""
    session = onnxruntime.InferenceSession(
        str(bundle.backbone_path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )
    name = bundle.manifest.input.name
    session.run(None, {name: x[:EMBED_BATCH]})
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(x), EMBED_BATCH):
        session.run(None, {name: x[i : i + EMBED_BATCH]})
    return len(x) / (time.perf_counter() - start), len(x) / (time.process_time() - cpu)


def process_rate(bundle: Bundle, samples: int, threads: int) -> tuple[float, float]:
    """(samples per second, samples per CPU second) of a whole ``edgeft adapt`` process learning the stream."""
    with tempfile.TemporaryDirectory(prefix="edgeft-bench-int8-") as state:
        command = [sys.executable, "-m", "edgeft.cli", "-q", "adapt", str(bundle.path), "--data", str(STREAM)]
        command += ["--state", state, "--ep", "cpu", "--threads", str(threads)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return samples / wall, samples / cpu


def embedded(bundle: Bundle, xs: list[np.ndarray], threads: int) -> list[np.ndarray]:
    """The bundle's backbone features of each array, through the runtime's Adapter.embed."""
    with tempfile.TemporaryDirectory(prefix="edgeft-bench-int8-") as state:
        with Adapter(bundle, state, ep="cpu", threads=threads) as adapter:
            return [adapter.embed(x) for x in xs]


def probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Held-out accuracy of a converged logistic regression on standardised features."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x_train, y_train)
    return float(model.score(x_test, y_test))


def cross_validated_gap(features: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """int8 minus float probe accuracy over all scans, 5-fold stratified CV repeated 3 times, paired per fold:
    the gap to expect on a fresh split. Its standard error is Nadeau and Bengio's corrected one (repeated-CV folds
    share training data, so the plain standard error of the fold gaps is too small; here by a factor of 2.2)."""
    folds = RepeatedStratifiedKFold(n_splits=CV_FOLDS, n_repeats=CV_REPEATS, random_state=0).split(features["float"], y)
    gaps = [
        probe(features["int8"][a], y[a], features["int8"][b], y[b])
        - probe(features["float"][a], y[a], features["float"][b], y[b])
        for a, b in folds
    ]
    test_over_train = 1 / (CV_FOLDS - 1)
    return {
        "mean": float(np.mean(gaps)),
        "corrected_standard_error": float(np.sqrt((1 / len(gaps) + test_over_train) * np.var(gaps, ddof=1))),
        "folds": len(gaps),
    }


def adapt(
    bundle: Bundle, chunks: list[Samples], test: Samples, threads: int, guard: bool = True
) -> tuple[tuple[float, float], float, list[bool]]:
    """((samples per second, per CPU second) over the stream's learn calls, held-out accuracy after the last
    chunk, promotions)."""
    with tempfile.TemporaryDirectory(prefix="edgeft-bench-int8-") as state:
        policy = GuardPolicy() if guard else GuardPolicy(holdout_fraction=0.0, enabled=False)
        with Adapter(bundle, state, ep="cpu", threads=threads, policy=policy) as adapter:
            start, cpu = time.perf_counter(), time.process_time()
            promoted = [adapter.learn(chunk.x, chunk.y, origin=chunk.origin).promoted for chunk in chunks]
            elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu
            accuracy = adapter.evaluate(test.x, test.y, test.origin)
            samples = sum(len(c.x) for c in chunks)
            return (samples / elapsed, samples / cpu_elapsed), accuracy, promoted


def run(rounds: int, threads: int, int8: Path = BUNDLES["int8"]) -> dict:
    """All rounds; returns every measurement and the medians (``int8``: the int8 bundle to measure)."""
    bundles = {kind: Bundle.load(path) for kind, path in {**BUNDLES, "int8": int8}.items()}
    manifest = bundles["float"].manifest
    chunks, test = demo_data(manifest)
    stream_x = np.concatenate([c.x for c in chunks]).astype(np.float32)
    rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    cpu_rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    accuracy: dict[str, list[float]] = {"float": [], "int8": []}
    promoted: dict[str, list[bool]] = {}
    load_before = os.getloadavg()
    for r in range(rounds):
        order = CONTENDERS if r % 2 == 0 else tuple(reversed(CONTENDERS))
        for contender in order:
            kind, what = contender.split()
            if what == "inference":
                rate = inference_rate(bundles[kind], stream_x, threads)
            elif what == "process":
                rate = process_rate(bundles[kind], len(stream_x), threads)
            else:
                rate, acc, promoted[kind] = adapt(bundles[kind], chunks, test, threads)
                accuracy[kind].append(acc)
            rates[contender].append(rate[0])
            cpu_rates[contender].append(rate[1])
            print(f"round {r + 1} {contender}: {rate[0]:.1f} samples/s, {rate[1]:.1f} per CPU second", flush=True)
    load_after = os.getloadavg()
    unguarded = {kind: adapt(bundles[kind], chunks, test, threads, guard=False)[1] for kind in bundles}
    stream_y = np.concatenate([c.y for c in chunks]).astype(np.int64)
    test_y = test.y.astype(np.int64)
    features = {kind: embedded(bundles[kind], [stream_x, test.x], threads) for kind in bundles}
    probes = {kind: probe(f[0], stream_y, f[1], test_y) for kind, f in features.items()}
    cv_gap = cross_validated_gap(
        {k: np.concatenate(f) for k, f in features.items()}, np.concatenate([stream_y, test_y])
    )
    sizes = {kind: b.backbone_path.stat().st_size for kind, b in bundles.items()}
    acc = {k: statistics.median(v) for k, v in accuracy.items()}

    def paired(a: str, b: str, figures: dict[str, list[float]] = rates) -> float:
        return statistics.median(x / y for x, y in zip(figures[a], figures[b], strict=True))

    return {
        "int8_bundle": str(int8),
        "rounds": rounds,
        "threads": threads,
        "samples": len(stream_x),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "samples_per_second": rates,
        "median_samples_per_second": {c: statistics.median(v) for c, v in rates.items()},
        "samples_per_cpu_second": cpu_rates,
        "held_out_accuracy": accuracy,
        "promoted_per_chunk": promoted,
        "held_out_accuracy_guard_off": unguarded,
        "reference_probe_accuracy": probes,
        "cross_validated_probe_gap": cv_gap,
        "backbone_bytes": sizes,
        "goals": {
            "int8 adapt / float inference (>= 1.4)": paired("int8 adapt", "float inference"),
            "int8 process / float inference (>= 1.4)": paired("int8 process", "float inference"),
            "int8 - float held-out accuracy (>= -0.01)": acc["int8"] - acc["float"],
            "float / int8 backbone bytes (>= 3)": sizes["float"] / sizes["int8"],
        },
        "also": {
            "int8 inference / float inference": paired("int8 inference", "float inference"),
            "int8 adapt / float adapt": paired("int8 adapt", "float adapt"),
            "int8 adapt / int8 inference": paired("int8 adapt", "int8 inference"),
            "int8 process / float process": paired("int8 process", "float process"),
        },
        "per_cpu_second": {
            "int8 adapt / float inference": paired("int8 adapt", "float inference", cpu_rates),
            "int8 process / float inference": paired("int8 process", "float inference", cpu_rates),
            "int8 inference / float inference": paired("int8 inference", "float inference", cpu_rates),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four contenders (3)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every session (2)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--int8", type=Path, default=BUNDLES["int8"], help="int8 bundle (artifacts/default-int8)")
    args = parser.parse_args()
    result = run(args.rounds, args.threads, args.int8)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
