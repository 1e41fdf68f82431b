"""A real federation on loopback: one SuperLink and three SuperNodes as separate processes, started by the
``edgeft fleet`` commands, run by ``edgeft fleet run`` (Flower's deployment engine, insecure on 127.0.0.1 only)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, CLI, make_dataset

from edgeft.bundle import Bundle
from edgeft.fleet.device import adopted_version
from edgeft.fleet.pooled_statistics import normaliser
from edgeft.fleet.store import GlobalStore
from edgeft.runtime import guard
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.history import read_lines
from edgeft.runtime.slda import DEFAULT_SHRINKAGE, ClosedFormHead

pytest.importorskip("flwr", reason="the fleet extra is not installed (pip install 'edgeft[fleet]')")
pytestmark = pytest.mark.fleet

ROUNDS = 2
DEVICE_CLASSES = [(0, 1), (1, 2), (0, 2)]  # non-IID: each device sees two of the three classes
RUN_TIMEOUT = 900


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """End each started process group (the Flower process and the SuperExec children it spawned)."""
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the SuperLink exited early:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"the SuperLink did not listen on port {port} within {seconds} s")


@pytest.fixture()
def devices(bundle_dir: Path, tmp_path: Path) -> Iterator[list[tuple[Path, Path]]]:
    """Three device states that learned from two classes each, and an inbox with one new arrival each."""
    x, y = make_dataset(900, seed=11)
    made = []
    for i, keep in enumerate(DEVICE_CLASSES):
        mask = np.isin(y, keep)
        xs, ys = x[mask], y[mask]
        state, inbox = tmp_path / f"state{i}", tmp_path / f"inbox{i}"
        with Adapter(bundle_dir, state) as adapter:
            adapter.learn(xs[:240], ys[:240])
        inbox.mkdir()
        np.savez(inbox / "arrival.npz", x=xs[240:300], y=np.array(CLASSES)[ys[240:300]])
        made.append((state, inbox))
    yield made


def _federate(
    bundle_dir: Path,
    tmp_path: Path,
    devices: list[tuple[Path, Path | None]],
    rounds: int,
    device_args: list[str],
    first_device_args: tuple[str, ...] = (),
) -> tuple[Path, str]:
    """Start a SuperLink and one SuperNode per device state, run ``edgeft fleet run`` to the end; (out, its log)."""
    port = _free_port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr")}
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    out = tmp_path / "fleet"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        link_log = tmp_path / "superlink.log"
        processes.append(_start([*CLI, "fleet", "server", "--port", str(port), "--insecure"], link_log, env))
        _wait_for_port(port, processes[0], link_log)
        for i, (state, inbox) in enumerate(devices):
            args = [*CLI, "fleet", "device", str(bundle_dir), "--state", str(state), *device_args]
            args += list(first_device_args) if i == 0 else []
            args += ["--inbox", str(inbox)] if inbox else []
            args += ["--superlink", f"127.0.0.1:{port}", "--port", str(_free_port()), "--insecure", "--threads", "1"]
            processes.append(_start(args, tmp_path / f"supernode{i}.log", env))
        run = subprocess.run(
            [*CLI, "fleet", "run", str(bundle_dir), "--out", str(out), "--rounds", str(rounds), "--min-devices", "3"],
            capture_output=True,
            text=True,
            env=env,
            timeout=RUN_TIMEOUT,
        )
    finally:
        _stop(processes)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert f"[ROUND {rounds}/{rounds}]" in log or "[ROUND 1/1]" in log, log[-4000:]  # statistics+fedavg: 1 + 1
    return out, log


def test_three_devices_federate_and_adopt_the_same_global_head(
    bundle_dir: Path, tmp_path: Path, devices: list[tuple[Path, Path]]
) -> None:
    """Device 0 adopts by the ``overall`` fleet policy (judged on the fleet's holdout scores), the others by the
    guard; ``auto`` on sgd devices runs a statistics round, then FedAvg."""
    out, log = _federate(bundle_dir, tmp_path, list(devices), ROUNDS, [], ("--fleet-policy", "overall"))
    assert "the fleet scored the global head" in log, log[-4000:]
    store = GlobalStore(out, Bundle.load(bundle_dir))
    assert store.versions() == list(range(1, ROUNDS + 1)), log[-4000:]
    # auto on sgd devices with a linear head: the exact LDA head of their replay buffers, then FedAvg from it
    assert [store.meta(v)["strategy"] for v in store.versions()] == ["statistics"] + ["fedavg"] * (ROUNDS - 1)
    assert store.registry() == list(CLASSES)
    final = store.load(ROUNDS)
    first = store.load(1)
    # One normaliser for the fleet, pooled from the devices' moments, kept in every round.
    assert np.abs(final.parameters["head.feature_mean"]).max() > 0
    for name in ("head.feature_mean", "head.feature_scale"):  # FedAvg's float32 weighted mean may round (1e-7)
        np.testing.assert_allclose(final.parameters[name], first.parameters[name], rtol=1e-6, atol=1e-7)

    policy = guard.GuardPolicy()
    for i, (state, inbox) in enumerate(devices):
        assert [p.name for p in (inbox / "done").iterdir()] == ["arrival.npz"]  # the new arrival was learned
        rows = [row for row in read_lines(state / "metrics.jsonl") if row.get("adopted")]
        assert [row["origin"] for row in rows] == [f"fleet global head {v}" for v in range(1, ROUNDS + 1)]
        for row in rows:  # each adoption was judged by the guard on the device's own holdout
            judged = row["guard"]
            if i == 0:  # the overall policy decided, on all three classes the fleet's holdouts hold
                record = row["fleet_policy"]
                assert record["policy"] == "overall" and record["decided_by"] == "overall", record
                assert record["classes"] == 3 and record["guard_promoted"] == (judged["reason"].find("fall") < 0)
                assert row["promoted"] == (record["candidate_overall"] >= record["current_overall"]), row
                holds_previous = row is not rows[0] and rows[rows.index(row) - 1]["promoted"]
                assert record["current_scored_by"] == ("fleet" if holds_previous else "device"), (row, rows)
                continue
            assert row["fleet_policy"] == {"policy": "guard", "guard_promoted": row["promoted"], "decided_by": "guard"}
            if judged["current_accuracy"] is None:  # holdout too small: promoted without judging
                assert row["promoted"] and judged["holdout_samples"] < policy.min_holdout, row
            elif judged["candidate_accuracy"] >= judged["current_accuracy"] - policy.tolerance:
                assert row["promoted"], row  # within the tolerance: always promoted
            else:
                assert "would fall" in judged["reason"] or row["promoted"], row  # refused only for a real fall
        assert rows[-1]["guard"]["holdout_samples"] >= policy.min_holdout  # a real judgement, not a free pass
        with Adapter(bundle_dir, state) as adapter:
            assert adopted_version(adapter.meta) == ROUNDS  # every device ends on the same global head version
            if rows[-1]["promoted"]:
                assert adapter.meta["head_version"] == adapter.version
                for name, value in final.parameters.items():
                    np.testing.assert_allclose(adapter.parameters()[name], value, atol=1e-6)
            else:
                assert adapter.meta["head_version"] < adapter.version


def test_statistics_strategy_gives_every_device_the_central_lda_head(bundle_dir: Path, tmp_path: Path) -> None:
    """slda devices that saw different classes: one round of summed statistics is the central head (to 1e-6)."""
    x, y = make_dataset(600, seed=12)
    names = np.array(CLASSES)[y]
    off = guard.GuardPolicy(enabled=False)  # every sample joins the statistics: none is held out
    states, learned = [], []
    for i, keep in enumerate(DEVICE_CLASSES):
        mask = np.isin(y, keep) & (np.arange(len(y)) % 3 == i)
        states.append(tmp_path / f"state{i}")
        with Adapter(bundle_dir, states[-1], policy=off, head_learner="slda") as adapter:
            adapter.learn(x[mask], names[mask])
        learned.append(np.flatnonzero(mask))
    everything = np.concatenate(learned)
    with Adapter(bundle_dir, tmp_path / "central", policy=off, head_learner="slda") as central:
        central.learn(x[everything], names[everything])
        expected = central.class_statistics()
        central_predictions = central.predict(x)
    assert expected is not None

    out, log = _federate(bundle_dir, tmp_path, [(state, None) for state in states], 1, ["--head-learner", "slda"])
    store = GlobalStore(out, Bundle.load(bundle_dir))
    assert store.versions() == [1] and store.meta(1)["strategy"] == "statistics", log[-4000:]
    assert store.meta(1)["samples"] == len(everything)
    fleet = store.load(1).parameters
    weight, bias = ClosedFormHead("slda", DEFAULT_SHRINKAGE).linear_head(expected, *normaliser(expected))
    np.testing.assert_allclose(fleet["head.weight"], weight, rtol=1e-6, atol=1e-6 * np.abs(weight).max())
    np.testing.assert_allclose(fleet["head.bias"], bias, rtol=1e-6, atol=1e-6 * np.abs(bias).max())
    for state in states:
        with Adapter(bundle_dir, state, head_learner="slda") as adapter:
            assert adopted_version(adapter.meta) == 1 and adapter.meta["head_version"] == adapter.version
            assert adapter.predict(x) == central_predictions
            others = adapter.fleet_statistics()
            assert others is not None
            fleet_view = adapter.class_statistics().merged(others)  # own + the other devices' = everything
            np.testing.assert_array_equal(fleet_view.counts, expected.counts)
            np.testing.assert_allclose(fleet_view.moment, expected.moment, rtol=1e-6)
