"""What a long-lived device's journal costs when edgeft reads it: the consumed-inputs map a learner holds.

Every ``edgeft adapt`` (and a watch, for as long as it runs) reads ``journal.jsonl`` into the map of consumed inputs
it skips (sha256 -> version). This tool writes a journal of ``--inputs`` lines as edgeft writes them (a file name,
its sha256, 16 samples, status, time, version; 4 inputs a version), then, in a fresh process for each round (started
in the journal's folder, so ``PYTHONPATH`` picks the tree), reads it with ``History.consumed()`` and reports the
seconds that took, the resident memory the map still holds afterwards (``/proc/self/statm`` after a garbage
collection) and the peak the reading added (``ru_maxrss``). Run it with ``PYTHONPATH`` on each of two trees to
compare them side by side.

Usage: ``python tools/bench_consumed.py [--inputs 500000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

READ = """
import gc, json, resource, sys, time
from pathlib import Path
from edgeft.runtime.history import History

def resident() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

history = History(Path(sys.argv[1]))
gc.collect()
before, peak = resident(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
consumed = history.consumed()
seconds = time.perf_counter() - started
gc.collect()
added_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak
print(json.dumps({"seconds": seconds, "held_mib": resident() - before, "peak_mib": added_peak, "kind": type(consumed).__name__}))
"""


def write_journal(folder: Path, inputs: int) -> Path:
    """A journal of ``inputs`` consumed files, one line each, as edgeft.runtime.history writes them."""
    path = folder / "journal.jsonl"
    with path.open("w") as journal:
        for i in range(inputs):
            line = {
                "name": f"cam0-2026-12-04T01:45:12.{i:06d}.npz",
                "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
                "samples": 16,
                "status": "learned",
                "time": "2026-12-04T01:45:12.123456+00:00",
                "version": i // 4 + 1,
            }
            journal.write(json.dumps(line, sort_keys=True) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=500_000, help="journal lines (consumed inputs)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes that read it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        journal = write_journal(Path(tmp), args.inputs)
        rounds = [
            json.loads(
                subprocess.run(
                    [sys.executable, "-c", READ, tmp], capture_output=True, text=True, check=True, cwd=tmp
                ).stdout
            )
            for _ in range(args.rounds)
        ]
        size = journal.stat().st_size
    print(f"{args.inputs} inputs, journal {size / 2**20:.0f} MiB, read as {rounds[0]['kind']}, {args.rounds} rounds:")
    for key, unit in (("seconds", "s"), ("held_mib", "MiB held"), ("peak_mib", "MiB peak added")):
        values = [r[key] for r in rounds]
        print(f"  {unit}: median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
