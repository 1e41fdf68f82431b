"""Crash safety with real processes: ``edgeft adapt --watch`` SIGKILLed at every crash point, state checked after each.

A short run of tools/torture.py (its long run: ``python tools/torture.py --kills 200``), proof that its checker
does catch a broken state; a full disk during a checkpoint (a file size limit on a real process); the lock between
two real processes, and after one was killed.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from helpers import (
    CLASSES,
    CLI,
    SUBPROCESS_TIMEOUT,
    edgeft_lines,
    file_size_limit_problem,
    limited,
    make_dataset,
    one_error_line,
    run_cli,
)

from edgeft.bundle import Bundle
from edgeft.runtime.history import read_lines
from edgeft.runtime.store import StateStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import torture  # noqa: E402

# Every crash point at least once: a progress tick of feature extraction (the first) and of training, the atomic
# rename of the replay segment (1), checkpoint (2), version metadata (4) and CURRENT (5) (3: the buffers' index),
# the journal and metrics appends, the move to done/, and a kill after a random-looking delay.
PLAN = [
    "tick:1",
    "rename:1",
    "rename:2",
    "tick:6",
    "rename:4",
    "rename:5",
    "append:1",
    "append:2",
    "move:1",
    "delay:1.2",
]


@pytest.fixture(scope="module")
def tortured(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[torture.Report, Path]:
    workdir = tmp_path_factory.mktemp("torture")
    return torture.torture(len(PLAN), seed=3, workdir=workdir, bundle_dir=bundle_dir, plan=PLAN), workdir


@pytest.mark.slow
def test_sigkill_at_every_crash_point_loses_nothing_and_learns_nothing_twice(
    tortured: tuple[torture.Report, Path],
) -> None:
    report, workdir = tortured
    assert report.violations == []
    assert report.kills == len(PLAN)
    # Each planned crash point was reached: the process killed itself there (not killed by the harness when idle).
    assert report.by == {step: 1 for step in PLAN if not step.startswith("delay")} | {"delay": 1}
    assert report.versions >= 5 and report.files_fed >= len(PLAN)
    events = [json.loads(line)["event"] for line in edgeft_lines((workdir / "events.jsonl").read_text())]
    assert "skipped" in events  # some entry was committed but not yet moved when killed: it was not learned again


def _damaged(workdir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    return copy


def test_the_checker_catches_a_broken_state(
    tortured: tuple[torture.Report, Path], bundle_dir: Path, tmp_path: Path
) -> None:
    report, workdir = tortured
    fed = report.fed
    bundle = Bundle.load(bundle_dir)
    assert torture.check(bundle, workdir / "state", workdir / "inbox", fed, final=True) == []

    def problems(damage) -> list[str]:  # noqa: ANN001
        copy = _damaged(workdir, tmp_path / damage.__name__)
        damage(copy)
        return torture.check(bundle, copy / "state", copy / "inbox", fed, final=True)

    def duplicate_journal_line(copy: Path) -> None:
        journal = copy / "state" / "journal.jsonl"
        journal.write_text(journal.read_text() + journal.read_text().splitlines()[-1] + "\n")

    def lose_a_file(copy: Path) -> None:
        next((copy / "inbox" / "done").glob("*.npz")).unlink()

    def tear_the_replay_buffer(copy: Path) -> None:
        replay = sorted((copy / "state" / "segments").glob("*.npz"))[-1]
        replay.write_bytes(replay.read_bytes()[:-10])

    def learn_a_file_again(copy: Path) -> None:
        done = next((copy / "inbox" / "done").glob("*.npz"))
        shutil.copy(done, copy / "inbox" / done.name)

    assert any("journal holds version" in p for p in problems(duplicate_journal_line))
    assert any("no place at all" in p for p in problems(lose_a_file))
    assert any("does not load" in p and "sha256" in p for p in problems(tear_the_replay_buffer))
    assert any("expected exactly one" in p for p in problems(learn_a_file_again))


def _learn_once(bundle_dir: Path, state: Path, tmp_path: Path, name: str, seed: int) -> Path:
    data = _npz(tmp_path / name, seed)
    done = run_cli("adapt", bundle_dir, "-s", state, "--data", data, "--no-guard")
    assert done.returncode == 0, done.stderr
    return data


def _npz(path: Path, seed: int) -> Path:
    x, y = make_dataset(40, seed)
    with path.open("wb") as handle:
        np.savez(handle, x=x, y=np.array(CLASSES)[y])
    return path


def _file_size_limit(limit: int) -> Callable[[], None]:
    """For ``preexec_fn``: files the child writes may not grow past ``limit`` bytes (as on a nearly full disk); skips
    the test where onnxruntime itself cannot run under that limit (qemu-user)."""
    problem = file_size_limit_problem(limit)
    if problem:
        pytest.skip(problem)
    return limited(resource.RLIMIT_FSIZE, limit)


# Smaller than the replay segment of 40 samples (the first file a commit writes, about 1.3 kB) and a checkpoint with
# optimizer state (about 1 kB for the tiny head), larger than CURRENT and the lock.
FULL_DISK = 600


def _intact_at_version_1(bundle_dir: Path, state: Path) -> None:
    current = StateStore(state, Bundle.load(bundle_dir).fingerprint).current()  # verifies every file's sha256
    assert current is not None and current.number == 1
    assert sorted(p.name for p in (state / "versions").iterdir()) == [
        "000001.buffers.npz",
        "000001.head.npz",
        "000001.json",
    ]  # nothing torn, no temp files left behind
    assert [p.name for p in (state / "segments").iterdir()] == ["000001.npz"]
    assert [r["version"] for r in read_lines(state / "journal.jsonl")] == [1]


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_keeps_the_previous_one_and_exits_1(bundle_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    _learn_once(bundle_dir, state, tmp_path, "a.npz", seed=1)
    more = _npz(tmp_path / "b.npz", seed=2)
    done = subprocess.run(
        [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--data", str(more), "--no-guard"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        preexec_fn=_file_size_limit(FULL_DISK),
    )
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert f"{state / 'segments' / '000002.npz'}: cannot write it" in line and "the previous file stays" in line
    _intact_at_version_1(bundle_dir, state)
    # Space again: the same data is learned (nothing of it was journaled).
    again = run_cli("adapt", bundle_dir, "-s", state, "--data", more, "--no-guard", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["version"] == 2, again.stderr


def _events(stream: IO[str], until: Callable[[list[dict]], bool]) -> list[dict]:
    events: list[dict] = []
    while not until(events):
        ready, _, _ = select.select([stream], [], [], SUBPROCESS_TIMEOUT)
        assert ready, f"no event within {SUBPROCESS_TIMEOUT} s; so far {events}"
        line = stream.readline()
        assert line, f"the process ended; events so far {events}"
        if edgeft_lines(line):
            events.append(json.loads(line))
    return events


@pytest.mark.slow
def test_full_disk_in_watch_mode_commits_nothing_and_retries(bundle_dir: Path, tmp_path: Path) -> None:
    state, inbox = tmp_path / "state", tmp_path / "inbox"
    _learn_once(bundle_dir, state, tmp_path, "a.npz", seed=1)
    inbox.mkdir()
    args = [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--watch", str(inbox), "--poll", "0.05", "--json"]
    process = subprocess.Popen(
        [*args, "--no-guard"], stderr=subprocess.PIPE, text=True, preexec_fn=_file_size_limit(FULL_DISK)
    )
    try:
        assert process.stderr is not None
        _events(process.stderr, lambda seen: len(seen) == 1)
        os.replace(_npz(tmp_path / ".b.npz.part", seed=2), inbox / "b.npz")
        errors = _events(process.stderr, lambda seen: len(seen) == 3)
        _intact_at_version_1(bundle_dir, state)
        process.send_signal(signal.SIGTERM)  # SIGXFSZ did not kill it; SIGTERM stops it cleanly
        assert process.wait(timeout=SUBPROCESS_TIMEOUT) == 0
    finally:
        process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()
    assert [e["event"] for e in errors] == ["error"] * 3  # the same entry, tried again and again
    assert all(str(state / "segments" / "000002.npz") in e["reason"] for e in errors), errors
    assert (inbox / "b.npz").is_file() and not any((inbox / "done").iterdir())
    _intact_at_version_1(bundle_dir, state)
    drained = subprocess.run([*args, "--once"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert drained.returncode == 0 and json.loads(drained.stdout)["learned"] == 1, drained.stderr


@pytest.mark.slow
def test_a_second_adapt_on_the_same_state_is_refused_until_the_first_is_killed(
    bundle_dir: Path, tmp_path: Path
) -> None:
    state, inbox = tmp_path / "state", tmp_path / "inbox"
    inbox.mkdir()
    watch = [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--watch", str(inbox), "--poll", "0.05", "--json"]
    first = subprocess.Popen(watch, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stderr is not None
        assert _events(first.stderr, lambda seen: len(seen) == 1)[0]["event"] == "watching"
        data = _npz(tmp_path / "b.npz", seed=2)
        second = run_cli("adapt", bundle_dir, "-s", state, "--data", data)
        assert second.returncode == 1
        line = one_error_line(second.stderr)
        assert line == f"edgeft: error: state {state} is in use by another edgeft process (pid {first.pid})"
        os.kill(first.pid, signal.SIGKILL)  # the lock file stays behind, holding the dead pid
        assert first.wait(timeout=SUBPROCESS_TIMEOUT) == -signal.SIGKILL
    finally:
        first.kill()
        first.wait()
        if first.stderr:
            first.stderr.close()
    assert (state / "lock").read_text() == str(first.pid)
    third = run_cli("adapt", bundle_dir, "-s", state, "--data", data, "--json")
    assert third.returncode == 0 and json.loads(third.stdout)["version"] == 1, third.stderr
    assert (state / "lock").read_text() != str(first.pid)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["rename:1", "move:1"])
def test_a_kill_while_quarantining_never_leaves_an_entry_without_its_reason(
    point: str, bundle_dir: Path, tmp_path: Path
) -> None:
    state, inbox = tmp_path / "state", tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "bad.npz").write_bytes(b"not a zip archive")
    args = [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--watch", str(inbox), "--once", "--json"]
    killed = subprocess.run(
        args, capture_output=True, timeout=SUBPROCESS_TIMEOUT, env={**os.environ, "EDGEFT_CRASH_AT": point}
    )
    assert killed.returncode == -signal.SIGKILL
    assert (inbox / "bad.npz").is_file() and not (inbox / "quarantine" / "bad.npz").exists()  # not moved yet
    done = subprocess.run(args, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (inbox / "quarantine").iterdir()) == ["bad.npz", "bad.npz.reason.txt"]
    assert "bad.npz: not a readable .npz file" in (inbox / "quarantine" / "bad.npz.reason.txt").read_text()
