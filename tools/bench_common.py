"""Shared by the benchmark's contender processes: the workload, peak RSS, one JSON result line.

numpy only, so that the PyTorch process and the torch-free processes import the same code and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "artifacts" / "default"
STREAM = ROOT / "artifacts" / "demo" / "stream"
RESULT_PREFIX = "BENCH_RESULT "
Arrival = tuple[np.ndarray, np.ndarray]


def stream_chunks() -> list[Arrival]:
    """The demo stream's chunks in order: raw uint8 scans [N, 1, 8, 8] and integer labels."""
    chunks = []
    for path in sorted(STREAM.glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            chunks.append((data["x"], data["y"]))
    return chunks


def split_arrivals(chunks: list[Arrival], limit: int | None, arrival: int | None) -> list[Arrival]:
    """The chunks cut to ``limit`` samples in all, then re-split into arrivals of ``arrival`` samples (if given)."""
    x = np.concatenate([c[0] for c in chunks])
    y = np.concatenate([c[1] for c in chunks])
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if arrival is None:
        bounds = np.cumsum([len(c[0]) for c in chunks])
        starts = [0, *[int(b) for b in bounds if b < len(x)]]
        ends = [*starts[1:], len(x)]
    else:
        starts = list(range(0, len(x), arrival))
        ends = [min(s + arrival, len(x)) for s in starts]
    return [(x[s:e], y[s:e]) for s, e in zip(starts, ends, strict=True) if e > s]


def batches(n: int, size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Index arrays of ``size`` (the last may be shorter), shuffled when ``rng`` is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def common_args(description: str, contenders: list[str]) -> argparse.Namespace:
    """Arguments every contender process takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("contender", choices=contenders)
    parser.add_argument("--batch", type=int, default=16, help="samples per backbone run / training step")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--limit", type=int, help="use only the stream's first LIMIT samples")
    parser.add_argument("--arrival", type=int, help="re-split the stream into arrivals of this many samples")
    parser.add_argument("--warm-chunks", type=int, default=0, help="learn the first K chunks untimed first")
    parser.add_argument("--ep", default="cpu", help="cpu or cuda")
    parser.add_argument("--trainer", default="onnx", choices=["onnx", "ort"], help="edgeft and replay contenders")
    parser.add_argument("--opt-level", default="all", choices=["all", "extended", "basic"], help="inference only")
    parser.add_argument("--dump", type=Path, help="write the features of the first 4 samples here (.npy)")
    return parser.parse_args()


def workload(args: argparse.Namespace) -> tuple[list[Arrival], list[Arrival]]:
    """(untimed warm-up arrivals, timed arrivals) as the arguments ask."""
    chunks = stream_chunks()
    warm, rest = chunks[: args.warm_chunks], chunks[args.warm_chunks :]
    return warm, split_arrivals(rest, args.limit, args.arrival)


def timed_run(setup_s: float, arrivals: list[Arrival], absorb: Callable[[np.ndarray, np.ndarray], None]) -> dict:
    """Feed every arrival to ``absorb`` and time it all; the common part of every contender's result."""
    cpu, start = cpu_seconds(), time.perf_counter()
    for x, y in arrivals:
        absorb(x, y)
    seconds = time.perf_counter() - start
    samples = sum(len(x) for x, _ in arrivals)
    return {
        "samples": samples,
        "arrivals": len(arrivals),
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "cpu_ms_per_sample": (cpu_seconds() - cpu) * 1000 / samples,
        "setup_s": setup_s,
    }


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(result: dict[str, Any]) -> None:
    """Print the result as one prefixed JSON line (the parent reads it), with this process's peak RSS."""
    result["peak_rss_mb"] = peak_rss_mb()
    result["pid"] = os.getpid()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
