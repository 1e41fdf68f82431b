"""Fleet benchmark through the real Flower deployment: a non-IID split on the real backbone, `edgeft fleet ...`.

Device states learn a split of the digits (``--split``, one of ``bench_fleet.SPLITS``; default ``slices``: three
devices with {0-3}, {3-6}, {6-9}; features cached as in bench_fleet) with ``--head-learner`` (default sgd) and the guard on. Then a SuperLink (``edgeft fleet server``), one
SuperNode per device (``edgeft fleet device``) and ``edgeft fleet run --rounds R --min-devices N`` (strategy
``auto``) run as separate processes on loopback (insecure, 127.0.0.1 only). Reported: each device's local-only
and final accuracy on the 540 held-out scans, the central head of the same learner, the strategy each saved global
head came from, and the run's wall time.
Usage: ``python tools/bench_fleet_flower.py [--split slices] [--rounds 5] [--head-learner sgd] [--out t.md]`` (needs
the fleet extra).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_fleet import BUNDLE, ROOT, SPLITS, accuracy, embedded, relative_difference, split

from edgeft.bundle import Bundle
from edgeft.fleet.store import GlobalStore
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy

CLI = [sys.executable, "-m", "edgeft.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """End each started process group (the Flower process and the children it spawned)."""
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def federate(states: list[Path], work: Path, rounds: int, learner: str) -> tuple[Path, float]:
    """Run the deployment to its end; (the server's fleet folder, seconds the run took)."""
    port = free_port()
    env = {**os.environ, "FLWR_HOME": str(work / "flwr")}
    (work / "flwr").mkdir()
    (work / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    processes = [start([*CLI, "fleet", "server", "--port", str(port), "--insecure"], work / "superlink.log", env)]
    try:
        deadline = time.monotonic() + 120
        while not listening(port):
            if time.monotonic() > deadline or processes[0].poll() is not None:
                raise SystemExit(f"the SuperLink did not start:\n{(work / 'superlink.log').read_text()[-2000:]}")
            time.sleep(0.5)
        for i, state in enumerate(states):
            args = [*CLI, "fleet", "device", str(BUNDLE), "--state", str(state), "--head-learner", learner]
            args += ["--superlink", f"127.0.0.1:{port}", "--port", str(free_port()), "--insecure", "--threads", "1"]
            processes.append(start(args, work / f"supernode{i}.log", env))
        out, began = work / "fleet", time.monotonic()
        run = subprocess.run(
            [
                *CLI,
                "fleet",
                "run",
                str(BUNDLE),
                "--out",
                str(out),
                "--rounds",
                str(rounds),
                "--min-devices",
                str(len(states)),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        took = time.monotonic() - began
    finally:
        stop(processes)
    if run.returncode != 0:
        raise SystemExit(f"edgeft fleet run failed:\n{(run.stdout + run.stderr)[-3000:]}")
    return out, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=SPLITS, default="slices")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--head-learner", default="sgd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-guard", action="store_true", help="states and central head learn every scan")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "bench_fleet_features.npz")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = embedded(args.cache, work)
        parts = split(args.split, data.train_y.astype(int), np.random.default_rng(args.seed))
        policy = GuardPolicy(enabled=not args.no_guard)
        with Adapter(BUNDLE, work / "central", head_learner=args.head_learner, policy=policy) as central:
            central.learn_features(data.train, data.train_y, seed=args.seed)
            central_accuracy, central_head = accuracy(central, data), central.parameters()
        states, local = [work / f"state{i}" for i in range(len(parts))], []
        for state, part in zip(states, parts, strict=True):
            with Adapter(BUNDLE, state, head_learner=args.head_learner, policy=policy) as adapter:
                adapter.learn_features(data.train[part], data.train_y[part], seed=args.seed)
                local.append(accuracy(adapter, data))
        out, took = federate(states, work, args.rounds, args.head_learner)
        store = GlobalStore(out, Bundle.load(BUNDLE))
        strategies = [store.meta(v)["strategy"] for v in store.versions()]
        final, difference = [], 0.0
        for state in states:
            with Adapter(BUNDLE, state, head_learner=args.head_learner) as adapter:
                final.append(accuracy(adapter, data))
                difference = max(difference, relative_difference(adapter.parameters(), central_head))
    lines = [
        f"Real Flower deployment, split {args.split}, `edgeft fleet run --rounds {args.rounds}` (auto), "
        f"{args.head_learner} devices; "
        f"guard {'off' if args.no_guard else 'on'}; global heads by round: {', '.join(strategies)}; run {took:.0f} s; "
        f"devices' heads max |W - W_central| / max |W_central| {difference:.1e}",
        "",
        "| device | digits | scans | local-only | after the run | central |",
        "|---|---|---|---|---|---|",
    ]
    for i, part in enumerate(parts):
        seen = ",".join(sorted({str(v) for v in data.train_y[part]}, key=int))
        lines.append(f"| {i} | {seen} | {len(part)} | {local[i]:.3f} | {final[i]:.3f} | {central_accuracy:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
