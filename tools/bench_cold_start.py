"""Cold start (issue 19): from spawning ``edgeft adapt`` of one sample into a fresh state to its exit with version 1
committed, next to the bare runtime: a process that imports numpy and onnxruntime, opens the default bundle's
backbone in an ``InferenceSession`` (same threads) and runs the same sample through it, nothing else.

Each ``--python`` is an interpreter with edgeft installed (e.g. a venv of this tree and one of another commit);
rounds alternate the contenders' order. Reports wall-clock and CPU seconds (user + system of the child) per
contender, medians, and each adapt's excess over the bare runtime of the same round.

    python tools/bench_cold_start.py --python .venv/bin/python --python /tmp/other/bin/python --rounds 9
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "artifacts" / "default"
STREAM = ROOT / "artifacts" / "demo" / "stream"

BARE = """
import sys
import numpy as np
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[3])
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
with np.load(sys.argv[2], allow_pickle=False) as data:
    x = data["x"].astype(np.float32)
session.run(None, {session.get_inputs()[0].name: x})
"""


def timed(command: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system) of one child process run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def adapt_command(python: str, data: Path, state: Path, threads: int) -> list[str]:
    """``edgeft adapt`` of ``data`` into ``state`` through the console script's entry point."""
    return [python, "-m", "edgeft.cli", "adapt", str(BUNDLE), "--data", str(data), "--state", str(state)] + [
        "--threads",
        str(threads),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", required=True, help="an interpreter with edgeft (repeatable)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "one.npz"
        with np.load(sorted(STREAM.glob("*.npz"))[0], allow_pickle=False) as chunk:
            np.savez(data, x=chunk["x"][:1], y=chunk["y"][:1])
        names = ["bare", *args.python]
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                if name == "bare":
                    bare = [args.python[0], "-c", BARE, str(BUNDLE / "backbone.onnx"), str(data), str(args.threads)]
                    runs[name].append(timed(bare))
                    continue
                state = Path(tmp) / "state"
                shutil.rmtree(state, ignore_errors=True)
                runs[name].append(timed(adapt_command(name, data, state, args.threads)))
                if json.loads((state / "CURRENT").read_text())["version"] != 1:
                    raise RuntimeError(f"{name}: no version 1 committed")
    figures = {}
    for name in names:
        walls, cpus = [w for w, _ in runs[name]], [c for _, c in runs[name]]
        excess = [w - b for (w, _), (b, _) in zip(runs[name], runs["bare"], strict=True)]
        figures[name] = {
            "wall_s_median": statistics.median(walls),
            "cpu_s_median": statistics.median(cpus),
            "wall_over_bare_s_median": statistics.median(excess),
            "wall_s": [round(w, 3) for w in walls],
        }
        print(
            f"{name}: wall {figures[name]['wall_s_median']:.3f} s, CPU {figures[name]['cpu_s_median']:.3f} s, "
            f"wall over bare {figures[name]['wall_over_bare_s_median']:+.3f} s (medians of {args.rounds})"
        )
    print("load average after:", " ".join(f"{v:.1f}" for v in os.getloadavg()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
