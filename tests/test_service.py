"""Running as a service: sd_notify over a real socket, JSON logs, Prometheus textfile, status, config precedence."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, CLI, TIME_SCALE, edgeft_lines, make_dataset, run_cli
from typer.testing import CliRunner, Result

from edgeft.cli import app
from edgeft.service.logs import event_logger
from edgeft.service.notify import Notifier


def _npz(path: Path, n: int, seed: int) -> Path:
    x, y = make_dataset(n, seed)
    with path.open("wb") as handle:
        np.savez(handle, x=x, y=np.array(CLASSES)[y])
    return path


@pytest.fixture()
def notify_socket(tmp_path: Path):  # noqa: ANN201
    """A datagram socket playing systemd's notification socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    yield path, sock
    sock.close()


def _drain(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            return messages


def test_notifier_speaks_the_protocol(notify_socket: tuple[Path, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
    assert notifier.enabled and notifier.watchdog_interval == pytest.approx(0.4)
    notifier.ready("watching inbox")
    notifier.status("learned a.npz")
    notifier.watchdog()
    notifier.watchdog()  # within half the interval: not sent again
    time.sleep(0.25)
    notifier.watchdog()
    notifier.stopping("bye")
    messages = _drain(sock)
    assert messages[0] == f"READY=1\nSTATUS=watching inbox\nMAINPID={os.getpid()}"
    assert messages[1:] == ["STATUS=learned a.npz", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1\nSTATUS=bye"]


def test_notifier_is_silent_outside_systemd_and_ignores_another_pids_watchdog() -> None:
    assert not Notifier({}).enabled and Notifier({}).send("READY=1") is False
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_abstract_namespace_socket() -> None:
    name = f"edgeft-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(1)
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(100) == b"STATUS=hello"


@pytest.mark.slow
def test_watch_under_a_fake_systemd(
    notify_socket: tuple[Path, socket.socket], bundle_dir: Path, tmp_path: Path
) -> None:
    path, sock = notify_socket
    inbox, state, metrics = tmp_path / "inbox", tmp_path / "state", tmp_path / "textfile" / "edgeft.prom"
    inbox.mkdir()
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    args = [
        *CLI,
        "adapt",
        str(bundle_dir),
        "-s",
        str(state),
        "--watch",
        str(inbox),
        "--poll",
        "0.05",
        "--metrics-file",
        str(metrics),
        "--log-file",
        str(tmp_path / "log" / "edgeft.jsonl"),
    ]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _npz(inbox / ".a.npz.tmp", 40, seed=1).rename(inbox / "a.npz")
        (inbox / "broken.npz").write_bytes(b"not an archive")
        deadline = time.monotonic() + 60 * TIME_SCALE
        while not (inbox / "done" / "a.npz").exists() or not (inbox / "quarantine" / "broken.npz").exists():
            assert time.monotonic() < deadline, process.stderr
            time.sleep(0.05)
        time.sleep(0.3)  # idle: watchdog pings keep coming
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30 * TIME_SCALE)
    finally:
        process.kill()
    assert process.returncode == 0
    messages = _drain(sock)
    assert messages[0].startswith("READY=1\nSTATUS=watching")
    assert any(m.startswith("STATUS=learned a.npz") for m in messages)
    assert any(m.startswith("STATUS=quarantined broken.npz") for m in messages)
    assert messages.count("WATCHDOG=1") >= 2
    assert messages[-1].startswith("STOPPING=1")
    events = [json.loads(line) for line in (tmp_path / "log" / "edgeft.jsonl").read_text().splitlines()]
    # in either order: a bad entry waiting beside a good one is quarantined while the arrival is gathered
    assert sorted(e["event"] for e in events[1:3]) == ["learned", "quarantined"]
    assert [e["event"] for e in (events[0], events[3])] == ["watching", "stopped"]
    assert all({"ts", "level", "event"} <= set(e) for e in events)
    (bad,) = [e for e in events if e["event"] == "quarantined"]
    assert bad["level"] == "warning" and "broken.npz" in bad["reason"]
    assert metrics.stat().st_mode & 0o777 == 0o644  # node_exporter, another user, must read it
    samples = _prometheus(metrics.read_text())
    assert samples["edgeft_version"] == 1 and samples['edgeft_updates_total{result="promoted"}'] == 1
    assert samples["edgeft_quarantined_files"] == 1 and samples["edgeft_samples_received_total"] == 40
    assert 0 < samples["edgeft_last_update_timestamp_seconds"] <= time.time()


def _prometheus(text: str) -> dict[str, float]:
    """Parse the exposition format strictly enough to catch malformed lines."""
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter")
            typed.add(name)
        elif not line.startswith("# HELP "):
            name, value = line.rsplit(" ", 1)
            assert name.split("{")[0] in typed, line
            samples[name] = float(value)
    return samples


def test_json_log_file_rotates_by_size(tmp_path: Path) -> None:
    log_file = tmp_path / "edgeft.jsonl"
    log = event_logger("json", log_file, max_bytes=400, backups=2)
    for i in range(20):
        log("learned", entry=f"file{i}.npz", samples=i, version=i)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["edgeft.jsonl", "edgeft.jsonl.1", "edgeft.jsonl.2"]
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert all(row["event"] == "learned" and row["level"] == "info" for row in rows)
    assert rows[0]["entry"] == "file19.npz" or any(row["entry"] == "file19.npz" for row in rows)


def test_text_log_and_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = event_logger("text", level="warning")
    log("learned", entry="a.npz", samples=3, version=1, reason="ok")
    log("quarantined", entry="b.npz", reason="b.npz: not a readable .npz file")
    assert capsys.readouterr().err == "edgeft: quarantined b.npz: b.npz: not a readable .npz file\n"
    with pytest.raises(ValueError, match="unknown log format"):
        event_logger("xml")


def _invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process (same app object as the console script)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_status_command(bundle_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = _invoke("status", "-s", state)
    assert done.exit_code == 1 and "does not exist" in done.stderr
    state.mkdir()
    assert "nothing learned yet" in _invoke("status", "-s", state).stdout
    assert _invoke("adapt", bundle_dir, "-s", state, "-d", _npz(tmp_path / "a.npz", 30, seed=1)).exit_code == 0
    done = _invoke("status", "-s", state)
    assert done.exit_code == 0, done.stderr
    assert "version     1 (head from version 1)" in done.stdout and "updates     1 promoted, 0 refused" in done.stdout
    assert f"learner     running (pid {os.getpid()})" in done.stdout  # this process learned, and lives
    summary = json.loads(_invoke("status", "-s", state, "--json").stdout)
    assert summary["samples_received"] == 30 and summary["classes"] == list(CLASSES)
    (state / "lock").write_text("999999999")  # a learner that has exited
    assert "learner     not running" in _invoke("status", "-s", state).stdout


def test_config_file_environment_and_command_line_precedence(bundle_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "edgeft.toml"
    config.write_text(
        f'[adapt]\nbundle = "{bundle_dir}"\nstate = "{tmp_path / "state"}"\nepochs = 2\nlr = 0.01\n'
        "holdout-fraction = 0.2\njson = true\n"
    )
    env = {"EDGEFT_CONFIG": str(config), "EDGEFT_ADAPT_LR": "0.02"}
    shown = {row["name"]: row for row in json.loads(_invoke("config", "show", "adapt", "--json", env=env).stdout)}
    assert (shown["epochs"]["value"], shown["epochs"]["source"]) == (2, "config file")
    assert (shown["lr"]["value"], shown["lr"]["source"]) == (0.02, "environment")
    assert (shown["holdout-fraction"]["value"], shown["tolerance"]["source"]) == (0.2, "default")
    assert shown["lr"]["envvar"] == "EDGEFT_ADAPT_LR" and shown["bundle"]["envvar"] is None
    data = _npz(tmp_path / "a.npz", 30, seed=1)
    done = _invoke("adapt", "-d", data, "--epochs", "3", env=env)  # bundle and state from the file
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["epochs"], report["version"]) == (3, 1)
    meta = json.loads((tmp_path / "state" / "versions" / "000001.json").read_text())
    assert meta["arrival"]["lr"] == 0.02


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[adapt\n", "is not valid TOML"),
        ("[train]\nepochs = 1\n", "[train] is not a command"),
        ("[adapt]\nepoch = 1\n", "[adapt] has no option 'epoch'"),
    ],
)
def test_bad_config_is_one_clear_error(text: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "edgeft.toml"
    config.write_text(text)
    done = _invoke("--config", config, "status", "-s", tmp_path)
    assert done.exit_code == 1
    assert done.stderr.startswith("edgeft: error: config file") and message in done.stderr, done.stderr


def test_quiet_watch_prints_only_warnings(bundle_dir: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _npz(inbox / "a.npz", 20, seed=1)
    (inbox / "bad.npz").write_bytes(b"")
    done = run_cli(
        "--quiet", "adapt", bundle_dir, "-s", tmp_path / "s", "--watch", inbox, "--once", "--log-format", "text"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and edgeft_lines(done.stderr)[0].startswith("edgeft: quarantined bad.npz")
    assert len(edgeft_lines(done.stderr)) == 1


def test_json_output_of_export_and_export_inference(tiny_model: Path, bundle_dir: Path, tmp_path: Path) -> None:
    done = _invoke("export", tiny_model, "-o", tmp_path / "b", "--classes", "a,b", "--json")
    assert done.exit_code == 0, done.stderr
    exported = json.loads(done.stdout)
    assert exported["bundle"] == str(tmp_path / "b") and exported["manifest"]["classes"] == ["a", "b"]
    state = tmp_path / "state"
    assert _invoke("adapt", bundle_dir, "-s", state, "-d", _npz(tmp_path / "a.npz", 20, seed=1)).exit_code == 0
    done = _invoke("export-inference", bundle_dir, "-s", state, "-o", tmp_path / "m.onnx", "--json")
    assert json.loads(done.stdout) == {"out": str(tmp_path / "m.onnx"), "version": 1, "classes": list(CLASSES)}
