"""Small arrivals through an inbox: whole-process ``edgeft adapt --watch INBOX --once`` draining a backlog of small
files, with coalescing on (the default) and off (``--coalesce 0``), next to plain inference of the same files.

The workload is the default bundle's demo stream (``artifacts/demo/stream``, 8x8 digit scans that the backbone,
EfficientNet-Lite0, resizes to 224x224): its first ``--files x --samples`` samples cut into that many .npz files
(float32 ``x`` [16, 1, 8, 8], integer ``y``), oldest first by mtime, in a fresh copy of the inbox every run. The
state starts, in every run, as a copy of one that learned the stream's samples after those (``adapt --data``), so
the replay buffer and the guard's holdout are in use, as on a device in service.

Three whole processes per round, in rotating order, each timed from spawn to exit (wall) and by CPU time (user +
system from ``wait4``, which a loaded machine disturbs less):

- ``inference``: import numpy and onnxruntime, open the backbone's InferenceSession (same threads), then for every
  file in the same order: load it and run its samples, 16 at a time. The least a program that only predicts does.
- ``coalesce``: ``python -m edgeft.cli adapt BUNDLE -s STATE --watch INBOX --once --json`` (default ``--coalesce``).
- ``per-file``: the same with ``--coalesce 0``: one arrival, one committed version per file.

Reported: each contender's median seconds, the throughput ratio adapt/inference (inference seconds over adapt
seconds, taken within each round, median over rounds) by wall and CPU time, versions committed and bytes written
(``wchar``). Every adapt run is checked: the inbox drained into ``done/`` and the journal holds every file once.

Usage: ``python tools/bench_inbox.py [--files 64] [--samples 16] [--rounds 2] [--threads 2] [--out report.md]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_common import BUNDLE, stream_chunks
from bench_stream import EXIT_IO, run_child

INFER = """
import sys
from pathlib import Path
import numpy as np
import onnxruntime
bundle, inbox, threads = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
options = onnxruntime.SessionOptions()
options.log_severity_level = 3
options.intra_op_num_threads = threads
session = onnxruntime.InferenceSession(bundle + '/backbone.onnx', options, providers=['CPUExecutionProvider'])
for path in sorted(inbox.glob('*.npz'), key=lambda p: p.stat().st_mtime_ns):
    with np.load(path, allow_pickle=False) as data:
        x = data['x']
    for start in range(0, len(x), 16):
        session.run(None, {'image': x[start : start + 16]})
"""
CONTENDERS = ("inference", "coalesce", "per-file")


def write_inbox(folder: Path, files: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``files`` .npz files of ``samples`` demo samples each, oldest first by mtime; the stream's rest returned."""
    chunks = stream_chunks()
    x = np.concatenate([c[0] for c in chunks]).astype(np.float32)
    y = np.concatenate([c[1] for c in chunks]).astype(np.int64)
    if files * samples >= len(x):
        raise SystemExit(f"the demo stream holds {len(x)} samples; ask for fewer than {files} x {samples}")
    folder.mkdir(parents=True)
    for i in range(files):
        part = slice(i * samples, (i + 1) * samples)
        path = folder / f"arrival-{i:03d}.npz"
        with path.open("wb") as handle:
            np.savez(handle, x=x[part], y=y[part])
        os.utime(path, ns=(10**18 + i * 10**9,) * 2)
    return x[files * samples :], y[files * samples :]


def adapt_command(python: str, state: Path, inbox: Path, threads: int, extra: list[str]) -> list[str]:
    code = EXIT_IO + "from edgeft.cli import run\nsys.argv[0] = 'edgeft'\nrun()\n"
    return [
        python,
        "-c",
        code,
        "adapt",
        str(BUNDLE),
        "-s",
        str(state),
        *extra,
        "--threads",
        str(threads),
        "--ep",
        "cpu",
    ]


def check_drained(state: Path, inbox: Path, files: int) -> int:
    """The versions the run committed; raises unless every file is in ``done/`` and in the journal once."""
    done = sorted(p.name for p in (inbox / "done").iterdir())
    journal = [json.loads(line) for line in (state / "journal.jsonl").read_text().splitlines()]
    names = [row["name"] for row in journal if row["name"].startswith("arrival-")]
    if len(done) != files or sorted(names) != done:
        raise RuntimeError(f"{inbox}: {len(done)} of {files} files done, journal holds {len(names)}")
    return len({row["version"] for row in journal if row["name"].startswith("arrival-")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--samples", type=int, default=16, help="samples per file")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--workdir", type=Path, help="where inbox and states go (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-inbox-", dir=args.workdir))
    try:
        rest_x, rest_y = write_inbox(work / "inbox-template", args.files, args.samples)
        with (work / "warm.npz").open("wb") as handle:
            np.savez(handle, x=rest_x, y=rest_y)
        warm = adapt_command(args.python, work / "warm-state", work, args.threads, ["--data", str(work / "warm.npz")])
        run_child(warm)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
        for round_number in range(args.rounds):
            order = CONTENDERS[round_number % 3 :] + CONTENDERS[: round_number % 3]
            for name in order:
                runs[name].append(run_once(name, work, args))
                print(json.dumps({"round": round_number, "contender": name, **runs[name][-1]}), flush=True)
        table = render(runs, args)
        print(table)
        if args.out:
            args.out.write_text(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_once(name: str, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """One whole process of contender ``name`` on a fresh copy of the inbox (and of the warm state)."""
    inbox, state = work / "inbox", work / "state"
    for path in (inbox, state):
        shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(work / "inbox-template", inbox)
    if name == "inference":
        return run_child([args.python, "-c", EXIT_IO + INFER, str(BUNDLE), str(inbox), str(args.threads)])
    shutil.copytree(work / "warm-state", state)
    extra = ["--watch", str(inbox), "--once", "--json", *(["--coalesce", "0"] if name == "per-file" else [])]
    result = run_child(adapt_command(args.python, state, inbox, args.threads, extra))
    versions = check_drained(state, inbox, args.files)
    return {**result, "versions": float(versions)}


def render(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
    """The markdown table: medians over rounds, ratios taken within each round."""
    out = [
        f"`tools/bench_inbox.py --files {args.files} --samples {args.samples} --rounds {args.rounds} "
        f"--threads {args.threads}` ({os.cpu_count()} cores)",
        "",
        "| contender | versions | wall s | CPU s | throughput vs inference (wall) | (CPU time) | bytes written |",
        "|---|---|---|---|---|---|---|",
    ]
    inference = runs["inference"]
    for name, rows in runs.items():
        wall = statistics.median(r["s"] for r in rows)
        cpu = statistics.median(r["cpu_s"] for r in rows)
        ratio = statistics.median(i["s"] / r["s"] for i, r in zip(inference, rows, strict=True))
        cpu_ratio = statistics.median(i["cpu_s"] / r["cpu_s"] for i, r in zip(inference, rows, strict=True))
        versions = f"{statistics.median(r['versions'] for r in rows):.0f}" if "versions" in rows[0] else "–"
        wrote = statistics.median(r["wchar"] for r in rows) / 1024
        out.append(
            f"| {name} | {versions} | {wall:.1f} | {cpu:.1f} | {ratio:.2f} | {cpu_ratio:.2f} | {wrote:,.0f} KiB |"
        )
    per_round = [
        " ".join(f"{name} {r['s']:.1f}/{r['cpu_s']:.1f}" for name, r in ((n, runs[n][i]) for n in CONTENDERS))
        for i in range(args.rounds)
    ]
    out += ["", "Per round (wall/CPU s): " + "; ".join(per_round)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
