"""Steering the learner: history, rollback (append-only, exactly-once journal, retention), eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, make_dataset, one_error_line, run_cli

from edgeft.bundle import Bundle
from edgeft.errors import EdgeftError
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.history import read_lines
from edgeft.runtime.trainer import stored_state
from edgeft.service.metrics import collect
from edgeft.service.versions import collect_history

NO_GUARD = GuardPolicy(enabled=False)


def _arrivals(adapter: Adapter, count: int) -> list[dict[str, object]]:
    """Learn ``count`` arrivals (each its own 'file' record); return the input records."""
    records = []
    for i in range(count):
        x, y = make_dataset(30, seed=100 + i)
        record = {"name": f"part{i}.npz", "sha256": f"{i:064x}", "samples": 30}
        adapter.learn(x, np.array(CLASSES)[y], origin=f"part{i}.npz", inputs=[record])
        records.append(record)
    return records


def _head(bundle: Bundle, state: Path, number: int) -> dict[str, np.ndarray]:
    with Adapter(bundle, state) as adapter:
        return stored_state(bundle, adapter.store.load(number).files).parameters


def test_rollback_restores_the_previous_head_as_a_new_version(bundle: Bundle, state_dir: Path) -> None:
    with Adapter(bundle, state_dir, policy=NO_GUARD) as adapter:
        records = _arrivals(adapter, 3)
        done = adapter.rollback()
        assert (adapter.version, done.target.number, done.undone_versions) == (4, 2, [3])
        assert [item["sha256"] for item in done.undone_inputs] == [records[2]["sha256"]]
        consumed = adapter.consumed_inputs()
    restored, target = _head(bundle, state_dir, 4), _head(bundle, state_dir, 2)
    assert restored.keys() == target.keys()
    for name, value in target.items():
        np.testing.assert_array_equal(restored[name], value)
    assert not all(np.array_equal(restored[k], v) for k, v in _head(bundle, state_dir, 3).items())
    # exactly once: every input, the rolled-back one included, stays consumed, and the journal says so
    assert set(consumed) == {r["sha256"] for r in records}
    journal = list(read_lines(state_dir / "journal.jsonl"))
    assert [(row["version"], row["status"]) for row in journal] == [
        (1, "learned"),
        (2, "learned"),
        (3, "learned"),
        (4, "rolled_back"),
    ]
    assert journal[-1]["learned_in"] == 3
    # append-only: the rolled-back version is still there
    assert sorted(p.name for p in (state_dir / "versions").glob("*.json")) == [f"{n:06d}.json" for n in (1, 2, 3, 4)]
    meta = json.loads((state_dir / "versions" / "000004.json").read_text())
    assert meta["arrival"]["rollback"]["to"] == 2 and meta["head_source"] == 2 and meta["parent"] == 3
    target_meta = json.loads((state_dir / "versions" / "000002.json").read_text())
    assert meta["sha256"] == target_meta["sha256"]  # head, replay buffer and holdout all come back
    assert meta["classes"] == target_meta["classes"] and meta["class_counts"] == target_meta["class_counts"]
    rollbacks = {name: value for name, _, _, samples in collect(state_dir) for _, value in samples}
    assert rollbacks["edgeft_rollbacks_total"] == 1


def test_repeated_default_rollbacks_walk_back_and_then_refuse(bundle: Bundle, state_dir: Path) -> None:
    with Adapter(bundle, state_dir, policy=NO_GUARD) as adapter:
        _arrivals(adapter, 3)
        assert adapter.rollback().target.number == 2
        assert adapter.rollback().target.number == 1
        with pytest.raises(EdgeftError, match="no earlier promoted head is retained"):
            adapter.rollback()
        with pytest.raises(EdgeftError, match="version 5's head .* is already current"):
            adapter.rollback(5)
        assert adapter.rollback(3).head_source == 3  # forward again, to a newer head
        x, y = make_dataset(30, seed=7)
        assert adapter.learn(x, np.array(CLASSES)[y]).version == 7  # learning continues from the restored head


def test_rollback_to_a_pruned_version_is_a_clear_error(bundle: Bundle, state_dir: Path) -> None:
    with Adapter(bundle, state_dir, policy=NO_GUARD, keep_versions=2) as adapter:
        _arrivals(adapter, 4)
        assert adapter.store.retained() == [3, 4]
        with pytest.raises(EdgeftError, match=r"version 1 was pruned \(retained: 3..4; keep more with --keep-versions"):
            adapter.rollback(1)
        with pytest.raises(EdgeftError, match="version 9 does not exist yet"):
            adapter.rollback(9)
        assert adapter.version == 4


def test_history_lists_pruned_versions_and_rollbacks(bundle: Bundle, state_dir: Path) -> None:
    with Adapter(bundle, state_dir, policy=NO_GUARD, keep_versions=2) as adapter:
        _arrivals(adapter, 3)
        adapter.rollback()
    rows = collect_history(state_dir)
    assert [(r["version"], r["retained"], r["current"], r["kind"]) for r in rows] == [
        (1, False, False, "arrival"),
        (2, False, False, "arrival"),
        (3, True, False, "arrival"),
        (4, True, True, "rollback"),
    ]
    assert rows[0]["origin"] == "part0.npz" and rows[0]["samples"] == 30
    assert all(0 <= r["prequential_accuracy"] <= 1 for r in rows[:3]) and rows[2]["promoted"]
    assert rows[3]["origin"] == "rollback to 2" and "rolled back to version 2" in rows[3]["reason"]


def test_cli_history_and_rollback_in_subprocesses(bundle_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    for i in range(3):
        x, y = make_dataset(30, seed=200 + i)
        np.savez(tmp_path / f"a{i}.npz", x=x, y=np.array(CLASSES)[y])
        done = run_cli("adapt", bundle_dir, "--state", state, "--data", tmp_path / f"a{i}.npz", "--no-guard")
        assert done.returncode == 0, done.stderr
    done = run_cli("rollback", bundle_dir, "--state", state, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["version"], report["to"], report["undone_versions"]) == (4, 2, [3])
    assert [Path(item["name"]).name for item in report["undone_inputs"]] == ["a2.npz"]
    again = run_cli("adapt", bundle_dir, "--state", state, "--data", tmp_path / "a2.npz")
    assert again.returncode == 0 and "skipped" in again.stdout and "--relearn" in again.stdout
    listing = run_cli("history", "--state", state)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[-2].startswith("*") and "rollback to 2" in lines[-2] and "a2.npz" in lines[-3]
    missing = run_cli("rollback", bundle_dir, "--state", state, "9")
    assert missing.returncode == 1
    assert "version 9 does not exist yet" in one_error_line(missing.stderr)
    empty = run_cli("history", "--state", tmp_path / "none")
    assert empty.returncode == 1 and "has no committed version" in one_error_line(empty.stderr)
