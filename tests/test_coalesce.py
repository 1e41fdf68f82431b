"""Coalescing in watch mode: entries that wait together are learned as one arrival (one version), every sample once;
a bad entry among them is quarantined whole on its own; the cap holds; a real process killed mid-arrival and
restarted learns every entry exactly once; new classes met across entries and multi-label or regression entries are
learned as if the entries had come one by one or all at once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DEFAULTS
from helpers import CLASSES, CLI, SUBPROCESS_TIMEOUT, edgeft_lines, make_dataset

from edgeft.bundle import Bundle, sha256_file
from edgeft.common.budget import MemoryBudget
from edgeft.common.faults import ENV
from edgeft.data.targets import MULTILABEL, REGRESSION
from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.attempts import AttemptLedger
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.history import read_lines
from edgeft.runtime.inbox import Inbox
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.store import StateStore
from edgeft.runtime.watch import EntryPolicy, StopFlag, WatchSummary, watch

NO_GUARD = GuardPolicy(enabled=False)


def _drop(inbox: Path, name: str, n: int, seed: int, **override: np.ndarray) -> Path:
    """Write a labelled .npz under a temporary name, then rename it into the inbox (mtimes keep the order)."""
    x, y = make_dataset(n, seed)
    staged = inbox / f".{name}.part"
    with staged.open("wb") as handle:
        np.savez(handle, **{"x": x, "y": np.array(CLASSES)[y], **override})
    os.utime(staged, ns=(seed * 10**9, seed * 10**9))
    return staged.rename(inbox / name)


def _backlog(inbox: Path, files: int, samples: int) -> list[Path]:
    inbox.mkdir()
    return [_drop(inbox, f"f{i:02d}.npz", samples, seed=i + 1) for i in range(files)]


def _watch(
    bundle: Bundle | Path,
    state: Path,
    inbox: Path,
    coalesce: int,
    options: LearnOptions | None = None,
    **adapter_options: object,
) -> tuple[WatchSummary, list[tuple[str, dict]]]:
    seen: list[tuple[str, dict]] = []
    with Adapter(bundle, state, **adapter_options) as adapter:
        summary = watch(
            adapter,
            Inbox(inbox),
            emit=lambda event, **fields: seen.append((event, fields)),
            stop=StopFlag(),
            once=True,
            options=options,
            policy=EntryPolicy(coalesce=coalesce),
        )
    return summary, seen


def _inputs_by_version(state: Path) -> dict[int, list[str]]:
    """Version -> names of the inputs the journal says it consumed."""
    versions: dict[int, list[str]] = {}
    for row in read_lines(state / "journal.jsonl"):
        versions.setdefault(int(row["version"]), []).append(row["name"])
    return versions


@pytest.mark.parametrize(("coalesce", "versions"), [(0, 8), (32, 2), (1024, 1)])
def test_a_backlog_is_learned_in_fewer_versions_every_sample_once(
    bundle: Bundle, tmp_path: Path, coalesce: int, versions: int
) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    files = _backlog(inbox, 8, 10)
    summary, seen = _watch(bundle, state, inbox, coalesce)
    assert (summary.learned, summary.quarantined, summary.errors) == (8, 0, 0), seen
    assert len(summary.versions) == versions
    by_version = _inputs_by_version(state)
    assert len(by_version) == versions
    names = [name for version in sorted(by_version) for name in by_version[version]]
    assert names == [f.name for f in files]  # each once, in arrival order
    journal = list(read_lines(state / "journal.jsonl"))
    assert {r["sha256"] for r in journal} == {sha256_file(inbox / "done" / f.name) for f in files}
    meta = Adapter(bundle, state).meta
    assert meta["samples_received"] == 80 and sum(meta["class_counts"].values()) == 80
    learned = [f for e, f in seen if e == "learned"]
    assert [f["entry"] for f in learned] == names and all(f["samples"] == 10 for f in learned)
    assert [f["version"] for f in learned] == [v for v in sorted(by_version) for _ in by_version[v]]
    history = Adapter(bundle, state).history()
    assert [h["origin"].split(", ") for h in history] == [by_version[v] for v in sorted(by_version)]


def test_the_cap_is_respected(bundle: Bundle, tmp_path: Path) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    _backlog(inbox, 9, 10)
    summary, _ = _watch(bundle, state, inbox, coalesce=25)
    store = StateStore(state, bundle.fingerprint)
    sizes = [[i["samples"] for i in store.load(v).meta["arrival"]["inputs"]] for v in store.retained()]
    assert sizes == [[10, 10, 10]] * 3  # entries join while the arrival holds fewer than 25 samples
    assert all(sum(s[:-1]) < 25 for s in sizes) and summary.learned == 9


def test_a_bad_entry_is_quarantined_whole_and_the_others_learned_together(bundle: Bundle, tmp_path: Path) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    _drop(inbox, "a.npz", 20, seed=1)
    x, y = make_dataset(40, seed=2)
    x[37, 0, 0, 0] = np.nan  # found only in the third batch that is read
    _drop(inbox, "late-nan.npz", 40, seed=2, x=x)
    _drop(inbox, "c.npz", 20, seed=3)
    (inbox / "garbage.npz").write_bytes(b"PK\x03\x04 not a zip")
    os.utime(inbox / "garbage.npz", ns=(4 * 10**9, 4 * 10**9))
    _drop(inbox, "e.npz", 20, seed=5)
    summary, seen = _watch(bundle, state, inbox, coalesce=1024)
    assert (summary.learned, summary.quarantined, len(summary.versions)) == (3, 2, 1), seen
    assert _inputs_by_version(state) == {1: ["a.npz", "c.npz", "e.npz"]}
    assert Adapter(bundle, state).meta["samples_received"] == 60
    reason = (inbox / "quarantine" / "late-nan.npz.reason.txt").read_text()
    assert "late-nan.npz" in reason and "NaN" in reason
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["a.npz", "c.npz", "e.npz"]
    assert not list((inbox / "attempts").iterdir())  # every attempt record went with its entry


def test_a_refused_arrival_refuses_every_entry_and_records_each(bundle: Bundle, tmp_path: Path) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    for i in range(3):  # inputs and a learning rate that make training diverge: the guard refuses the head
        x, _ = make_dataset(12, seed=i + 1)
        _drop(inbox, f"f{i:02d}.npz", 12, seed=i + 1, x=x * 100)
    summary, seen = _watch(bundle, state, inbox, coalesce=1024, options=LearnOptions(epochs=5, lr=1e38))
    assert (summary.learned, summary.refused, summary.versions) == (0, 3, [1]), seen
    journal = list(read_lines(state / "journal.jsonl"))
    assert [(r["name"], r["version"], r["status"]) for r in journal] == [
        (f"f{i:02d}.npz", 1, "rejected") for i in range(3)
    ]
    refused = [f for e, f in seen if e == "refused"]
    assert [f["entry"] for f in refused] == ["f00.npz", "f01.npz", "f02.npz"]
    assert all(f["arrival_entries"] == 3 and f["arrival_samples"] == 36 for f in refused)
    assert all("diverged" in f["reason"] for f in refused)
    (row,) = Adapter(bundle, state).history()
    assert row["origin"] == "f00.npz, f01.npz, f02.npz" and not row["promoted"]


def test_a_copy_waiting_beside_its_original_is_skipped_not_learned_twice(bundle: Bundle, tmp_path: Path) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    files = _backlog(inbox, 2, 10)
    (inbox / "copy.npz").write_bytes(files[0].read_bytes())
    summary, _ = _watch(bundle, state, inbox, coalesce=1024)
    assert (summary.learned, summary.skipped) == (2, 1)
    assert Adapter(bundle, state).meta["samples_received"] == 20


def test_an_entry_over_the_memory_budget_waits_for_an_arrival_of_its_own(bundle: Bundle, tmp_path: Path) -> None:
    """Refused by the budget while another entry is held, it is not quarantined there: read alone next, then refused."""
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    _drop(inbox, "a.npz", 10, seed=1)
    big = np.zeros((25_000, 3, 8, 8), np.float32)  # inputs are streamed, labels read whole: 20 MB of them here,
    _drop(inbox, "big.npz", 10, seed=2, x=big, y=np.full(len(big), "red", "<U200"))  # more than 30 MiB allow
    _drop(inbox, "c.npz", 10, seed=3)
    in_use = MemoryBudget(0, "test").in_use()
    policy = EntryPolicy(budget=MemoryBudget(int((in_use + 30 * 2**20) / 0.9), "test"), coalesce=1024)
    seen: list[tuple[str, dict]] = []
    with Adapter(bundle, state) as adapter:
        summary = watch(
            adapter, Inbox(inbox), emit=lambda e, **f: seen.append((e, f)), stop=StopFlag(), once=True, policy=policy
        )
    events = [(e, f.get("entry")) for e, f in seen if e in ("learned", "quarantined")]
    assert events == [("learned", "a.npz"), ("quarantined", "big.npz"), ("learned", "c.npz")], seen
    assert _inputs_by_version(state) == {1: ["a.npz"], 2: ["c.npz"]} and summary.quarantined == 1
    assert "memory budget" in (inbox / "quarantine" / "big.npz.reason.txt").read_text()


def _run(bundle_dir: Path, state: Path, inbox: Path, crash: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV} | ({ENV: crash} if crash else {})
    command = [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--watch", str(inbox), "--once", "--json"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT)


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["tick:3", "rename:2", "rename:5", "append:1", "move:3"])
def test_a_kill_mid_coalesced_arrival_then_a_restart_learns_every_entry_exactly_once(
    bundle_dir: Path, tmp_path: Path, crash: str
) -> None:
    """SIGKILL while a 6-entry arrival is embedded or trained (tick), committed (rename 2: its checkpoint, 5: CURRENT),
    logged (append) or its entries moved to done/ (move 3); then a clean run."""
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    files = _backlog(inbox, 6, 10)
    digests = {f.name: sha256_file(f) for f in files}
    killed = _run(bundle_dir, state, inbox, crash)
    assert killed.returncode == -9, killed.stderr
    committed = (state / "CURRENT").exists() and StateStore(state, Bundle.load(bundle_dir).fingerprint).current()
    suspects = {record.name for record in AttemptLedger(inbox / "attempts").records()}
    drained = _run(bundle_dir, state, inbox, None)
    assert drained.returncode == 0, drained.stderr
    journal = list(read_lines(state / "journal.jsonl"))
    assert sorted(r["sha256"] for r in journal) == sorted(digests.values())  # every entry once
    assert sorted(p.name for p in (inbox / "done").iterdir()) == sorted(digests)
    assert not [p for p in inbox.iterdir() if p.is_file()] and not list((inbox / "attempts").iterdir())
    meta = Adapter(bundle_dir, state).meta
    assert meta["samples_received"] == 60
    events = [json.loads(line) for line in edgeft_lines(drained.stderr)]
    if committed:  # the arrival was committed before the kill: the restart only moves its entries
        assert {e["event"] for e in events} <= {"watching", "skipped", "stopped"}
        assert meta["updates"]["promoted"] + meta["updates"]["refused"] == 1
    else:  # nothing was committed: the entries it had read, suspects now, are learned one at a time
        assert suspects and all(
            names == [name] for names in _inputs_by_version(state).values() for name in names if name in suspects
        )
        assert sum(e["event"] in ("learned", "refused") for e in events) == 6


def _drop_labels(inbox: Path, name: str, seed: int, x: np.ndarray, y: np.ndarray) -> Path:
    """Write ``x`` with any labels ``y`` under a temporary name, then rename it into the inbox (mtime by seed)."""
    staged = inbox / f".{name}.part"
    with staged.open("wb") as handle:
        np.savez(handle, x=x, y=y)
    os.utime(staged, ns=(seed * 10**9, seed * 10**9))
    return staged.rename(inbox / name)


def test_new_classes_met_across_coalesced_entries_take_the_outputs_one_arrival_at_a_time_would(
    tiny_model: Path, tmp_path: Path
) -> None:
    bundle = export_bundle(ExportConfig(tiny_model, tmp_path / "b", classes=["red"], max_classes=4))
    x, y = make_dataset(90, seed=7)
    names = np.array(["red", "green", "blue"])[y]
    # the first entry meets red and blue, the second green too, the third a class no output is reserved for yet
    parts = [
        (x[:30], np.where(names[:30] == "green", "blue", names[:30])),
        (x[30:60], names[30:60]),
        (x[60:], names[60:]),
    ]
    parts[2] = (parts[2][0], np.where(parts[2][1] == "red", "violet", parts[2][1]))
    known = {}
    for coalesce in (0, 1024):
        inbox = tmp_path / f"inbox{coalesce}"
        inbox.mkdir()
        for seed, (part_x, part_y) in enumerate(parts, start=1):
            _drop_labels(inbox, f"e{seed}.npz", seed, part_x, part_y)
        state = tmp_path / f"state{coalesce}"
        summary, seen = _watch(bundle, state, inbox, coalesce, policy=NO_GUARD)
        assert (summary.learned, len(summary.versions)) == (3, 3 if coalesce == 0 else 1), seen
        with Adapter(bundle, state) as adapter:
            known[coalesce] = adapter.classes
    assert known[1024] == known[0] == ["red", "blue", "green", "violet"]


@pytest.mark.parametrize("task", [MULTILABEL, REGRESSION])
def test_coalesced_entries_of_a_target_task_are_one_version_equal_to_learning_them_at_once(
    tiny_model: Path, tmp_path: Path, task: str
) -> None:
    config = ExportConfig(tiny_model, tmp_path / "b", classes=list(CLASSES), task=task, defaults=TEST_DEFAULTS)
    bundle = export_bundle(config)
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    x, _ = make_dataset(90, seed=9)
    levels = x.mean(axis=(2, 3)).astype(np.float32)
    targets = (levels > 0).astype(np.uint8) if task == MULTILABEL else levels
    for seed, rows in enumerate((slice(0, 30), slice(30, 60), slice(60, 90)), start=1):
        _drop_labels(inbox, f"e{seed}.npz", seed, x[rows], targets[rows])
    summary, seen = _watch(bundle, state, inbox, 1024, policy=NO_GUARD, threads=1)
    assert (summary.learned, len(summary.versions)) == (3, 1), seen
    assert _inputs_by_version(state) == {1: ["e1.npz", "e2.npz", "e3.npz"]}
    with Adapter(bundle, tmp_path / "at-once", threads=1, policy=NO_GUARD) as at_once:
        at_once.learn(x, targets)
        expected = at_once.parameters()
        with Adapter(bundle, state, threads=1) as reopened:
            for name, value in reopened.parameters().items():
                np.testing.assert_array_equal(value, expected[name], err_msg=name)
    with Adapter(bundle, tmp_path / "none", threads=1) as untrained:
        assert any(not np.array_equal(expected[name], untrained.parameters()[name]) for name in expected)
