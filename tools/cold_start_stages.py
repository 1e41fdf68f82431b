"""Where a cold ``edgeft adapt`` of one sample spends its time (issue 19): the same run as
``tools/bench_cold_start.py``, timed stage by stage from inside the process, medians over rounds.

Each round spawns a fresh interpreter that imports what a real run imports, in the order it does, marking the time
after each step: numpy and onnxruntime (the bare runtime's imports), typer, ``edgeft.cli``, building the app with
the one command, the runtime's modules, then the command itself with ``Bundle.load`` (hash checks), the Adapter's
sessions, reading and embedding the arrival, learning and the commit wrapped to mark their start and end ("in
between" rows: what ran between two marks, typer's parsing and the command's own checks among it).

    python tools/cold_start_stages.py --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "artifacts" / "default"
STREAM = ROOT / "artifacts" / "demo" / "stream"

HARNESS = """
import sys, time
start = time.perf_counter()
marks = []
def mark(name):
    marks.append((name, time.perf_counter() - start))
import numpy, onnxruntime
mark("import numpy, onnxruntime")
import typer.main
mark("import typer")
import edgeft.cli
mark("import edgeft.cli")
app = edgeft.cli.build_app("adapt")
mark("build the adapt command")
import edgeft.bundle, edgeft.runtime.adapter, edgeft.runtime.arrivals
mark("import the runtime")
def wrap(owner, name, label):
    inner = getattr(owner, name)
    def timed(*args, **kwargs):
        mark("  in between: " + label)
        try:
            return inner(*args, **kwargs)
        finally:
            mark(label)
    setattr(owner, name, timed)
wrap(edgeft.bundle.Bundle, "load", "load the bundle (sha256 of every file)")
wrap(edgeft.runtime.adapter.Adapter, "__init__", "open the sessions")
wrap(edgeft.runtime.arrivals, "read_arrival", "read and embed the sample")
wrap(edgeft.runtime.adapter.Adapter, "_learn_arrival", "learn and commit version 1")
try:
    app(prog_name="edgeft", args=sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
mark("exit")
previous = 0.0
for name, at in marks:
    print(f"{name}\\t{(at - previous) * 1000:.1f}")
    previous = at
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="an interpreter with edgeft installed")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    stages: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "one.npz"
        with np.load(sorted(STREAM.glob("*.npz"))[0], allow_pickle=False) as chunk:
            np.savez(data, x=chunk["x"][:1], y=chunk["y"][:1])
        for round_ in range(args.rounds):
            state = Path(tmp) / f"state{round_}"
            command = [args.python, "-c", HARNESS, "adapt", str(BUNDLE), "--data", str(data), "--state", str(state)]
            done = subprocess.run(
                [*command, "--threads", str(args.threads)], capture_output=True, text=True, check=True
            )
            for line in filter(lambda line: "\t" in line, done.stdout.splitlines()):
                name, ms = line.split("\t")
                stages.setdefault(name, []).append(float(ms))
    print("| stage | median ms | range |\n|---|---|---|")
    for name, values in stages.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f}–{max(values):.1f} |")
    total = [sum(column) for column in zip(*stages.values(), strict=True)]
    print(f"| in all, inside the process | {statistics.median(total):.1f} | {min(total):.1f}–{max(total):.1f} |")


if __name__ == "__main__":
    main()
