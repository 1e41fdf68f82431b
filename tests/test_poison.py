"""One bad file never puts the learner in a crash loop: poison entries, the memory budget, a queue that keeps moving.

Real processes and real files: a file that kills the learner every time it is read (``EDGEFT_CRASH_READING``), a
decompression bomb under a real memory limit (RLIMIT_AS, and a memory cgroup where one can be made: there the
kernel's OOM killer ends the learner), restarted after every exit as systemd does.
"""

from __future__ import annotations

import json
import os
import resource
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
    address_space_limit_problem,
    edgeft_lines,
    invoke_cli,
    limited,
    make_dataset,
    one_error_line,
    run_cli,
)

from edgeft.bundle import Bundle
from edgeft.common.budget import MemoryBudget, cgroup_limit, detect_budget, parse_size
from edgeft.common.faults import READING_ENV
from edgeft.data.limits import ArrivalLimits
from edgeft.data.readers import read_path
from edgeft.errors import DataError
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.attempts import AttemptLedger, Attempts, poison_reason
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.history import JOURNAL_FILE, read_lines
from edgeft.runtime.inbox import Inbox
from edgeft.runtime.watch import StopFlag, watch
from edgeft.service.metrics import collect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import crash_loop  # noqa: E402
import torture  # noqa: E402


def _npz(path: Path, seed: int, n: int = 30) -> Path:
    x, y = make_dataset(n, seed)
    staged = path.with_name(f".{path.name}.part")
    with staged.open("wb") as handle:
        np.savez(handle, x=x, y=np.array(CLASSES)[y])
    os.replace(staged, path)
    return path


def _fed(path: Path, n: int = 30) -> torture.Fed:
    return torture.Fed(path.name, torture.sha256_file(path), n, 0, "good")


def _journal(state: Path) -> list[str]:
    return [row["name"] for row in read_lines(state / JOURNAL_FILE)]


# ---- the memory budget ----------------------------------------------------------------------------------------


def test_sizes_parse_in_powers_of_1024() -> None:
    assert parse_size("1500000000") == 1_500_000_000
    assert parse_size("800M") == 800 * 2**20
    assert parse_size("1.5G") == parse_size("1.5GiB") == int(1.5 * 2**30)
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_cgroup_limit_is_the_smallest_up_the_hierarchy(version: str, tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    if version == "v2":
        proc.write_text("0::/system.slice/edgeft.service\n")
        leaf = tmp_path / "fs" / "system.slice" / "edgeft.service"
        limit_file, unlimited = "memory.max", "max"
    else:
        proc.write_text("4:memory:/box/edgeft\n1:cpu:/\n")
        leaf = tmp_path / "fs" / "memory" / "box" / "edgeft"
        limit_file, unlimited = "memory.limit_in_bytes", "9223372036854771712"
    leaf.mkdir(parents=True)
    (leaf / limit_file).write_text(unlimited + "\n")
    assert cgroup_limit(proc, tmp_path / "fs") is None
    (leaf.parent / limit_file).write_text("1610612736\n")  # MemoryMax=1.5G on the parent
    assert cgroup_limit(proc, tmp_path / "fs") == 1610612736
    (leaf / limit_file).write_text("1073741824\n")
    assert cgroup_limit(proc, tmp_path / "fs") == 1073741824


def test_an_explicit_budget_wins_and_a_bad_one_is_a_usage_error(bundle_dir: Path, tmp_path: Path) -> None:
    assert detect_budget("1G") == MemoryBudget(2**30, "--memory-budget")
    assert detect_budget("auto").bytes > 0
    done = invoke_cli("adapt", bundle_dir, "-s", tmp_path / "s", "--data", tmp_path, "--memory-budget", "lots")
    assert done.exit_code == 2 and "not a size" in done.stderr


def test_the_array_cap_follows_the_budget(bundle: Bundle, tmp_path: Path) -> None:
    x, y = make_dataset(40, seed=1)  # 40 x 768 bytes of inputs
    with (tmp_path / "a.npz").open("wb") as handle:
        np.savez(handle, x=x, y=y)
    in_use = MemoryBudget(0, "test").in_use()
    roomy = ArrivalLimits(MemoryBudget(in_use + 2**28, "test"))
    assert len(read_path(tmp_path / "a.npz", bundle.manifest, limits=roomy)[0].x) == 40
    tight = ArrivalLimits(MemoryBudget(int((in_use + 2 * 40 * 768) / 0.9), "a tight test budget"))
    assert tight.array_bytes < 40 * 768
    with pytest.raises(DataError, match="more than edgeft reads .*memory budget.*a tight test budget"):
        read_path(tmp_path / "a.npz", bundle.manifest, limits=tight)


def test_text_files_are_charged_by_their_size_before_they_are_parsed(bundle: Bundle, tmp_path: Path) -> None:
    x, y = make_dataset(20, seed=1)
    header = ",".join(f"v{i}" for i in range(x[0].size)) + ",label\n"
    rows = "".join(",".join(map(str, r.ravel())) + f",{CLASSES[v]}\n" for r, v in zip(x, y, strict=True))
    (tmp_path / "rows.csv").write_text(header + rows)
    size = (tmp_path / "rows.csv").stat().st_size
    in_use = MemoryBudget(0, "test").in_use()
    tight = ArrivalLimits(MemoryBudget(int((in_use + 15 * size) / 0.9), "test"))  # less than 16 bytes per byte
    with pytest.raises(DataError, match=f"{size} bytes of text needs about .* more than edgeft reads"):
        read_path(tmp_path / "rows.csv", bundle.manifest, limits=tight)
    roomy = ArrivalLimits(MemoryBudget(int((in_use + 32 * size) / 0.9), "test"))
    assert len(read_path(tmp_path / "rows.csv", bundle.manifest, limits=roomy)[0].x) == 20


@pytest.mark.slow
def test_an_arrival_over_the_sample_cap_is_refused_up_front(bundle_dir: Path, tmp_path: Path) -> None:
    data = _npz(tmp_path / "forty.npz", seed=1, n=40)
    done = run_cli("adapt", bundle_dir, "-s", tmp_path / "state", "--data", data, "--max-arrival-samples", "39")
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert f"{data}: 40 samples, more than one arrival may hold (39, --max-arrival-samples)" in line
    assert not (tmp_path / "state" / "CURRENT").exists()
    done = run_cli("adapt", bundle_dir, "-s", tmp_path / "state", "--data", data, "--max-arrival-samples", "40")
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_adapt_data_refuses_a_bomb_over_its_budget_with_one_clear_line(bundle_dir: Path, tmp_path: Path) -> None:
    bomb = crash_loop.write_bomb(tmp_path / "bomb.npz", 256 * 2**20)
    done = run_cli("adapt", bundle_dir, "-s", tmp_path / "state", "--data", bomb, "--memory-budget", "512M")
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert f"{bomb}: member 'y.npy' unpacks to 268435584 bytes, more than edgeft reads" in line
    assert "within the memory budget, 512.0 MiB (--memory-budget); a decompression bomb?" in line
    assert not (tmp_path / "state" / "CURRENT").exists()


def _address_space(extra: int) -> Callable[[], None]:
    """For ``preexec_fn``: the child may map ``extra`` bytes beyond what a started learner maps."""
    problem = address_space_limit_problem()
    if problem:
        pytest.skip(problem)
    baseline = 1 << 30  # Python, numpy and onnxruntime on one thread map about 0.5 GiB before any arrival (VmSize)
    return limited(resource.RLIMIT_AS, baseline + extra)


@pytest.mark.slow
def test_a_decompression_bomb_is_refused_from_its_header_within_a_real_memory_limit(
    bundle_dir: Path, tmp_path: Path
) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    bomb = crash_loop.write_bomb(inbox / "bomb.npz", 2**30)  # 1 GiB of zeros in about 1 MB
    assert bomb.stat().st_size < 2 * 2**20
    os.utime(bomb, (1e9, 1e9))
    _npz(inbox / "good.npz", seed=1)
    done = subprocess.run(
        [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--watch", str(inbox), "--once", "--json", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        preexec_fn=_address_space(256 * 2**20),  # no --memory-budget: the learner reads the limit itself
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in edgeft_lines(done.stderr)]
    assert [e["event"] for e in events] == ["watching", "quarantined", "learned", "stopped"]
    reason = (inbox / "quarantine" / "bomb.npz.reason.txt").read_text()
    assert "bomb.npz: member 'y.npy' unpacks to 1073741952 bytes, more than edgeft reads" in reason  # header too
    assert "address-space limit RLIMIT_AS" in reason and "decompression bomb" in reason
    assert _journal(state) == ["good.npz"]


# ---- poison entries -------------------------------------------------------------------------------------------


def test_an_attempt_is_counted_before_its_body_and_taken_back_only_when_it_ends(tmp_path: Path) -> None:
    ledger = AttemptLedger(tmp_path / "attempts")
    with ledger.attempt("a.npz", "sha", abandoned=KeyboardInterrupt, transient=OSError) as record:
        assert ledger.get("a.npz", "sha") == Attempts("a.npz", "sha", unfinished=1)  # durable before the body
        assert record.unfinished == 1
    assert ledger.get("a.npz", "sha").unfinished == 1  # finished: the caller clears it once the entry is moved
    for error in (KeyboardInterrupt(), OSError("disk full"), ValueError("broken at 0x1"), ValueError("broken at 0x1")):
        with pytest.raises(type(error)), ledger.attempt("a.npz", "sha", abandoned=KeyboardInterrupt, transient=OSError):
            raise error
    record = ledger.get("a.npz", "sha")
    assert (record.unfinished, record.transient, record.errors) == (1, 1, ["ValueError: broken at 0x1"] * 2)
    assert poison_reason(Path("a.npz"), record, 3) is None
    record.errors.append("ValueError: broken at 0x1")
    assert "failed 3 times on it with the same error: ValueError: broken at 0x1" in poison_reason(
        Path("a.npz"), record, 3
    )
    assert ledger.get("a.npz", "other content") is None  # a replaced file starts afresh
    ledger.clear("a.npz")
    assert ledger.records() == []


def test_an_attempt_whose_end_cannot_be_written_is_forgotten_not_counted_as_a_death(tmp_path: Path) -> None:
    ledger = AttemptLedger(tmp_path / "attempts")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, hard))  # the fresh record fits, one with an error does not
    try:
        with pytest.raises(ValueError), ledger.attempt("a.npz", "sha", abandoned=KeyboardInterrupt, transient=OSError):
            assert ledger.get("a.npz") == Attempts("a.npz", "sha", unfinished=1)
            raise ValueError("x" * 150)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert ledger.records() == []


def test_an_entry_tried_before_waits_behind_the_fresh_ones(bundle: Bundle, tmp_path: Path) -> None:
    inbox_dir = tmp_path / "inbox"
    inbox_dir.mkdir()
    for age, name in enumerate(["c.npz", "b.npz", "a.npz"], start=1):  # a.npz oldest
        _npz(inbox_dir / name, seed=age)
        os.utime(inbox_dir / name, (1e9 - age, 1e9 - age))
    inbox = Inbox(inbox_dir)
    inbox.attempts.save(Attempts("a.npz", "old", unfinished=1))
    inbox.attempts.save(Attempts("gone.npz", "old", unfinished=2))  # its entry left: pruned at the start
    seen: list[tuple[str, dict]] = []
    with Adapter(bundle, tmp_path / "state", policy=GuardPolicy(enabled=False)) as adapter:
        watch(adapter, inbox, emit=lambda e, **f: seen.append((e, f)), stop=StopFlag(), once=True)
    assert [f["entry"] for e, f in seen if e == "learned"] == ["b.npz", "c.npz", "a.npz"]
    assert inbox.attempts.records() == []


def _start(bundle_dir: Path, state: Path, inbox: Path, env: dict[str, str]) -> tuple[int, list[dict]]:
    """One start of ``adapt --watch --once`` (systemd restarts the service the same way after each exit)."""
    done = subprocess.run(
        [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--watch", str(inbox), "--once", "--json", "--no-guard"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env={**os.environ, **env},
    )
    return done.returncode, [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_a_file_that_kills_the_learner_is_set_aside_after_three_deaths_and_the_rest_learned_once(
    bundle_dir: Path, tmp_path: Path
) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    poison = _npz(inbox / "poison.npz", seed=9)
    os.utime(poison, (1e9, 1e9))  # first in the queue
    poison_fed = _fed(poison)
    fed = [_fed(_npz(inbox / "good-0.npz", seed=0))]
    kill = {READING_ENV: "poison.npz"}
    statuses, events = [], []
    for start in range(1, 5):
        status, seen = _start(bundle_dir, state, inbox, kill)
        statuses.append(status)
        events.append([e["event"] for e in seen])
        assert torture.check(Bundle.load(bundle_dir), state, inbox, fed) == []  # exactly once, after every death
        fed.append(_fed(_npz(inbox / f"good-{start}.npz", seed=start)))  # data keeps arriving
    assert statuses == [-signal.SIGKILL] * 3 + [0]
    assert events[0] == ["watching"]  # died on the poison, the oldest entry
    assert events[1] == ["watching", "learned", "learned"]  # the poison waited behind good-0, good-1
    assert events[2] == ["watching", "learned"]
    assert events[3] == ["watching", "learned", "quarantined", "stopped"]  # set aside without being read again
    reason = (inbox / "quarantine" / "poison.npz.reason.txt").read_text()
    assert f"{poison}: the learner died 3 times while processing it (out of memory or killed?)" in reason

    listing = run_cli("inbox", "list", "--inbox", inbox, "--json")
    assert listing.returncode == 0, listing.stderr
    listed = json.loads(listing.stdout)
    assert [i["name"] for i in listed["waiting"]] == ["good-4.npz"] and listed["retrying"] == []
    assert listed["quarantined"] == [{"name": "poison.npz", "reason": reason.strip(), "poison": True}]
    status = run_cli("status", "-s", state, "--inbox", inbox)
    assert "1 waiting, 0 retrying, 1 quarantined (1 as poison)" in status.stdout
    metrics = {name: samples for name, _, _, samples in collect(state, inbox)}
    assert metrics["edgeft_poisoned_files"] == [("", 1)] and metrics["edgeft_quarantined_files"] == [("", 1)]
    assert metrics["edgeft_inbox_entries"] == [('state="waiting"', 1), ('state="retrying"', 0)]

    requeued = run_cli("inbox", "requeue", "poison.npz", "--inbox", inbox)  # after a fix: here, no more fault
    assert requeued.returncode == 0, requeued.stderr
    assert sorted(p.name for p in (inbox / "quarantine").iterdir()) == []
    status, seen = _start(bundle_dir, state, inbox, {})
    assert status == 0 and [e["event"] for e in seen] == ["watching", "learned", "learned", "stopped"]
    fed.append(poison_fed)
    assert torture.check(Bundle.load(bundle_dir), state, inbox, fed, final=True) == []
    assert sorted(_journal(state)) == sorted(f.name for f in fed)


@pytest.mark.slow
def test_requeue_refuses_what_is_not_quarantined(tmp_path: Path) -> None:
    Inbox(tmp_path)
    (tmp_path / "quarantine" / "a.npz").write_bytes(b"x")
    (tmp_path / "a.npz").write_bytes(b"y")
    for args, message in (
        (["nope.npz"], "does not exist (quarantined entries: a.npz)"),
        (["a.npz.reason.txt"], "is not the name of an entry"),
        (["a.npz"], "exists; requeue under another name with --as"),
        (["a.npz", "--as", "done"], "cannot name an inbox entry"),
    ):
        done = run_cli("inbox", "requeue", *args, "--inbox", tmp_path)
        assert done.returncode == 1 and message in one_error_line(done.stderr), done.stderr
    done = run_cli("inbox", "requeue", "a.npz", "--as", "b.npz", "--inbox", tmp_path)
    assert done.returncode == 0 and (tmp_path / "b.npz").read_bytes() == b"x"


@pytest.mark.slow
def test_a_bomb_that_exhausts_a_real_address_space_limit_is_set_aside(bundle_dir: Path, tmp_path: Path) -> None:
    """With both guards overridden (a budget far above the real limit, no sample cap) numpy runs out of memory."""
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    os.utime(crash_loop.write_bomb(inbox / "bomb.npz", 2**31 - 2**20), (1e9, 1e9))  # under the 2 GiB array ceiling
    _npz(inbox / "good.npz", seed=1)
    args = [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--watch", str(inbox), "--once", "--json"]
    args += ["--memory-budget", "64G", "--max-arrival-samples", "0", "--threads", "1"]
    statuses, events = [], []
    for _ in range(4):
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, preexec_fn=_address_space(256 * 2**20)
        )
        statuses.append(done.returncode)
        events.append([json.loads(line)["event"] for line in edgeft_lines(done.stderr)])
    assert statuses == [1, 1, 1, 0], events  # --once exits 1 after an error event
    assert events[0] == ["watching", "error", "learned", "stopped"]
    assert events[3] == ["watching", "quarantined", "stopped"]
    reason = (inbox / "quarantine" / "bomb.npz.reason.txt").read_text()
    assert "the learner failed 3 times on it with the same error: MemoryError" in reason
    assert _journal(state) == ["good.npz"]


@pytest.mark.slow
@pytest.mark.skipif(not crash_loop.cgroup_available(), reason="needs root and a writable memory cgroup")
def test_a_bomb_killed_by_the_oom_killer_is_set_aside_and_the_good_data_learned(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """The issue's device: a real memory cgroup (as MemoryMax= sets it); the OOM killer ends the learner."""
    outcome = crash_loop.crash_loop(
        tmp_path,
        limit=400 * 2**20,
        bomb=600 * 2**20,
        budget="64G",
        max_arrival_samples=0,
        bundle_dir=bundle_dir,
    )
    assert outcome.problems == [] and outcome.limit_kind == "cgroup"
    assert [s.status for s in outcome.starts] == [-signal.SIGKILL] * 3 + [0]
    assert "the learner died 3 times while processing it" in outcome.bomb_reason
    detected = crash_loop.crash_loop(tmp_path / "detected", limit=400 * 2**20, bomb=600 * 2**20, bundle_dir=bundle_dir)
    assert detected.problems == [] and [s.status for s in detected.starts] == [0]
    assert "cgroup memory limit" in detected.bomb_reason


def _next_event(stream: IO[str]) -> dict:
    """The next JSON event line of a learner's stderr (past onnxruntime's own CPU-vendor warning)."""
    line = stream.readline()
    while line and not edgeft_lines(line):
        line = stream.readline()
    return json.loads(line)


@pytest.mark.slow
def test_a_write_error_never_makes_an_entry_poison_nor_blocks_the_entries_behind_it(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """Samples with unknown labels are parked in pending/; a file size limit makes that write fail for one entry."""
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    x, y = make_dataset(400, seed=3)
    labels = np.array(CLASSES)[y].astype("<U8")
    labels[:300] = "violet"  # 300 x 768 bytes to park: more than the limit below
    with (inbox / "mixed.npz").open("wb") as handle:
        np.savez(handle, x=x, y=labels)
    os.utime(inbox / "mixed.npz", (1e9, 1e9))
    args = [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--watch", str(inbox), "--poll", "0.05", "--json"]
    limit = 128 * 1024  # above the tiny head's checkpoint, replay buffer and holdout, below the parked samples
    process = subprocess.Popen(
        [*args, "--no-guard"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limited(resource.RLIMIT_FSIZE, limit),
    )
    try:
        assert process.stderr is not None
        events = [_next_event(process.stderr)]
        _npz(inbox / "good.npz", seed=4)  # arrives after the first failure
        while sum(e["event"] == "error" for e in events) < 4:
            events.append(_next_event(process.stderr))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=SUBPROCESS_TIMEOUT) == 0
    finally:
        process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()
    assert [(e["event"], e.get("entry")) for e in events if e["event"] == "learned"] == [("learned", "good.npz")]
    assert {e.get("entry") for e in events if e["event"] == "error"} == {"mixed.npz"}
    assert "pending" in next(e for e in events if e["event"] == "error")["reason"]
    assert (inbox / "mixed.npz").is_file() and not any((inbox / "quarantine").iterdir())  # retried, never poison
    record = Inbox(inbox).attempts.get("mixed.npz")
    assert record is not None and record.unfinished == 0 and record.transient >= 4 and record.errors == []
    assert _journal(state) == ["good.npz"]
