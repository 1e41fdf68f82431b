"""Steering the learner: history, rollback (append-only, exactly-once journal, retention), eval."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DEFAULTS
from helpers import CLASSES, CLI, SUBPROCESS_TIMEOUT, make_dataset, one_error_line, run_cli, usage_message

from edgeft.bundle import Bundle
from edgeft.errors import DataError, EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime import drift
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.continual_metrics import summarise
from edgeft.runtime.evaluation import evaluate
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.history import read_lines
from edgeft.runtime.trainer import stored_state
from edgeft.service.metrics import collect
from edgeft.service.status import collect_status, format_status

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
        rows = adapter.history()
    assert [(r["version"], r["retained"], r["current"], r["kind"]) for r in rows] == [
        (1, False, False, "arrival"),
        (2, False, False, "arrival"),
        (3, True, False, "arrival"),
        (4, True, True, "rollback"),
    ]
    assert rows[0]["origin"] == "part0.npz" and rows[0]["samples"] == 30
    assert all(0 <= r["prequential_accuracy"] <= 1 for r in rows[:3]) and rows[2]["promoted"]
    assert rows[3]["origin"] == "rollback to 2" and "rolled back to version 2" in rows[3]["reason"]


@pytest.mark.slow
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


def test_continual_metrics_by_their_definitions() -> None:
    matrix = [[0.9, None, None], [0.6, 0.8, None], [0.5, 0.7, 0.95]]
    figures = summarise([[0.9, 0.0, 0.0], [0.6, 0.8, 0.0], [0.5, 0.7, 0.95]])
    assert figures["average_accuracy"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert figures["backward_transfer"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert figures["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert figures["max_forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    # task 1 peaked after task 2 was learned: Avalanche's forgetting starts from right after task 1, Chaudhry's peak
    rising = summarise([[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.6, 0.7, 0.9]])
    assert rising["forgetting"] == pytest.approx(((0.5 - 0.6) + (0.8 - 0.7)) / 2)
    assert rising["max_forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.7)) / 2)
    assert summarise([[None, None], [0.5, 0.6]])["backward_transfer"] is None
    assert summarise(matrix)["average_accuracy"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)


@pytest.fixture()
def open_bundle(tiny_model: Path, tmp_path: Path) -> Bundle:
    return export_bundle(
        ExportConfig(tiny_model, tmp_path / "open", classes=["red"], max_classes=4, defaults=TEST_DEFAULTS)
    )


def test_eval_tasks_matrix_matches_each_heads_accuracy(open_bundle: Bundle, state_dir: Path) -> None:
    names = np.array(CLASSES)
    x, y = make_dataset(150, seed=11)
    tx, ty = make_dataset(150, seed=12)
    first, second = np.isin(y, [0, 1]), y == 2
    t1, t2 = np.isin(ty, [0, 1]), ty == 2
    with Adapter(open_bundle, state_dir, policy=NO_GUARD, replay_per_class=0) as adapter:
        adapter.learn(x[first], names[y[first]])
        after_first = adapter.evaluate(tx[t1], names[ty[t1]])
        adapter.learn(x[second], names[y[second]])
        now = [adapter.evaluate(tx[t1], names[ty[t1]]), adapter.evaluate(tx[t2], names[ty[t2]])]
        overall = adapter.evaluate(tx, names[ty])
        result = evaluate(adapter, tx, names[ty], per_version=True, tasks=True)
    assert [t["classes"] for t in result["tasks"]] == [["red", "green"], ["blue"]]
    assert result["task_matrix"]["after_version"] == [1, 2]
    (r00, r01), (r10, r11) = result["task_matrix"]["matrix"]
    assert (r00, r01) == (pytest.approx(after_first), 0.0)  # the first head cannot know blue
    assert (r10, r11) == (pytest.approx(now[0]), pytest.approx(now[1]))
    assert result["accuracy"] == pytest.approx(overall)
    assert result["forgetting"] == pytest.approx(after_first - now[0])
    assert result["backward_transfer"] == pytest.approx(now[0] - after_first)
    assert result["average_accuracy"] == pytest.approx(sum(now) / 2)
    assert [row["version"] for row in result["per_version"]] == [1, 2]
    assert result["per_version"][1]["accuracy"] == pytest.approx(overall)
    confusion = result["confusion"]
    assert confusion["predicted"] == ["red", "green", "blue"] and sum(map(sum, confusion["counts"])) == 150
    diagonal = sum(confusion["counts"][i][confusion["predicted"].index(n)] for i, n in enumerate(confusion["true"]))
    assert diagonal / 150 == pytest.approx(overall)
    assert {n: c["samples"] for n, c in result["per_class"].items()} == {
        n: int((ty == i).sum()) for i, n in enumerate(CLASSES)
    }


@pytest.mark.slow
def test_cli_eval_in_a_subprocess(bundle_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    x, y = make_dataset(60, seed=21)
    np.savez(tmp_path / "train.npz", x=x, y=np.array(CLASSES)[y])
    tx, ty = make_dataset(40, seed=22)
    np.savez(tmp_path / "test.npz", x=tx, y=np.array(CLASSES)[ty])
    assert run_cli("adapt", bundle_dir, "--state", state, "--data", tmp_path / "train.npz").returncode == 0
    done = run_cli("eval", bundle_dir, "--state", state, "--data", tmp_path / "test.npz", "--tasks", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    with Adapter(bundle_dir, state) as adapter:
        assert result["accuracy"] == pytest.approx(adapter.evaluate(tx, ty))
    assert result["task_matrix"]["matrix"] == [[result["accuracy"]]] and result["forgetting"] is None
    text = run_cli("eval", bundle_dir, "--state", state, "--data", tmp_path / "test.npz", "--per-version")
    assert text.returncode == 0 and text.stdout.startswith("version 1: accuracy ")
    empty = run_cli("eval", bundle_dir, "--state", tmp_path / "none", "--data", tmp_path / "test.npz")
    assert empty.returncode == 1 and "has no committed version" in one_error_line(empty.stderr)


def test_page_hinkley_by_hand() -> None:
    state, signal = drift.update(None, 0.9)  # error 0.1: mean 0.1, m = 0.1 - 0.1 - 0.05
    assert signal == {
        "test": "page-hinkley",
        "error": pytest.approx(0.1),
        "statistic": 0.0,
        "detected": False,
        "delta": 0.05,
        "threshold": 0.5,
    }
    state, signal = drift.update(state, 0.1)  # error 0.9: mean 0.5, m = -0.05 + 0.9 - 0.5 - 0.05 = 0.3, M = -0.05
    assert signal["statistic"] == pytest.approx(0.35) and not signal["detected"]
    state, signal = drift.update(state, 0.1)  # mean 0.6333, m = 0.3 + 0.9 - 0.6333 - 0.05 = 0.5167
    assert signal["statistic"] == pytest.approx(0.5667, abs=1e-4) and signal["detected"]
    assert state == drift.fresh(1)
    assert drift.update(state, None) == (state, None)


def test_page_hinkley_constants_change_when_it_raises_an_alarm() -> None:
    """The errors of the test above (0.1, 0.9, 0.9): threshold 0.3 alarms one arrival sooner, min_arrivals 3 and
    delta 0.25 (m = 0.1, 0.15 after the second: statistic 0.15, 0.25 below it) not at the second."""
    sooner = drift.PageHinkley(threshold=0.3)
    state, _ = drift.update(None, 0.9, sooner)
    state, signal = drift.update(state, 0.1, sooner)  # statistic 0.35 > 0.3
    assert signal["detected"] and signal["threshold"] == 0.3 and state == drift.fresh(1)
    for patient in (drift.PageHinkley(threshold=0.3, min_arrivals=3), drift.PageHinkley(delta=0.25, threshold=0.3)):
        state, _ = drift.update(None, 0.9, patient)
        state, signal = drift.update(state, 0.1, patient)
        assert not signal["detected"] and signal["delta"] == patient.delta
    for wrong in ({"delta": 1.0}, {"delta": -0.1}, {"threshold": 0.0}, {"min_arrivals": 0}):
        with pytest.raises(ValueError, match="drift"):
            drift.PageHinkley(**wrong)


def test_adapt_takes_the_drift_constants_and_each_arrival_records_them(bundle_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    for i in range(2):
        x, y = make_dataset(30, seed=100 + i)
        np.savez(tmp_path / f"part{i}.npz", x=x, y=np.array(CLASSES)[y])
        done = run_cli(
            "adapt", bundle_dir, "-s", state, "--data", tmp_path / f"part{i}.npz", "--drift-threshold", "0.25",
            "--drift-delta", "0.01", "--drift-min-arrivals", "3",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    signals = [row["drift"] for row in read_lines(state / "metrics.jsonl") if "drift" in row]
    assert signals and all((s["delta"], s["threshold"]) == (0.01, 0.25) for s in signals)
    refused = run_cli("adapt", bundle_dir, "-s", state, "--data", tmp_path / "part0.npz", "--drift-threshold", "0")
    assert refused.returncode == 2 and "drift threshold must be above 0" in usage_message(refused)


def test_a_changed_world_raises_a_drift_alarm_in_metrics(bundle: Bundle, state_dir: Path, tmp_path: Path) -> None:
    names = np.array(CLASSES)
    with Adapter(bundle, state_dir) as adapter:
        for i in range(7):
            x, _ = make_dataset(40, seed=300 + i)
            means = x.mean(axis=(2, 3))
            y = means.argmax(axis=1) if i < 5 else means.argmin(axis=1)  # the world changes at arrival 6
            adapter.learn(x, names[y])
    rows = list(read_lines(state_dir / "metrics.jsonl"))
    detected = [row["drift"]["detected"] for row in rows]
    assert detected[:5] == [False] * 5 and any(detected[5:]), [row["drift"] for row in rows]
    assert all(0 <= row["drift"]["statistic"] for row in rows)
    families = {name: samples for name, _, _, samples in collect(state_dir)}
    assert families["edgeft_drift_alarms_total"] == [("", 1)]
    assert families["edgeft_drift_statistic"][0][1] == rows[-1]["drift"]["statistic"]
    status = collect_status(state_dir)
    assert status["drift_alarms"] == 1 and status["last_arrival"]["drift"] == rows[-1]["drift"]
    (line,) = [line for line in format_status(status).splitlines() if line.startswith("drift")]
    assert line.endswith("1 alarms so far") and "Page-Hinkley" in line and "alarm above 0.5)" in line


# a rollback commit renames head, buffers' index, metadata, then CURRENT (4th), then appends journal and metrics
@pytest.mark.slow
@pytest.mark.parametrize("point", ["rename:1", "rename:4", "append:2"])
def test_a_rollback_killed_anywhere_leaves_a_consistent_state(point: str, bundle_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Adapter(bundle_dir, state, policy=NO_GUARD) as adapter:
        _arrivals(adapter, 3)
    command = [*CLI, "rollback", str(bundle_dir), "--state", str(state)]
    environment = {**os.environ, "EDGEFT_CRASH_AT": point}
    killed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=SUBPROCESS_TIMEOUT)
    assert killed.returncode == -9, killed.stderr  # SIGKILLed at the crash point
    with Adapter(bundle_dir, state) as adapter:
        before_current = point.startswith("rename")  # killed before CURRENT moved: the rollback never happened
        assert adapter.version == (3 if before_current else 4)
    if before_current:
        assert run_cli("rollback", bundle_dir, "--state", state).returncode == 0
    else:  # committed; its log lines are caught up when the state is next opened for writing
        with Adapter(bundle_dir, state) as adapter:
            adapter.consumed_inputs()
    journal = [(row["version"], row["status"]) for row in read_lines(state / "journal.jsonl")]
    assert journal == [(1, "learned"), (2, "learned"), (3, "learned"), (4, "rolled_back")]
    assert [row["version"] for row in read_lines(state / "metrics.jsonl")] == [1, 2, 3, 4]
    assert json.loads((state / "CURRENT").read_text()) == {"version": 4}


def test_eval_of_a_folder_streamed_in_batches_equals_eval_of_the_arrays(open_bundle: Bundle, tmp_path: Path) -> None:
    """``evaluate_path`` reads and embeds test data a batch at a time; the figures are those of the whole arrays."""
    from edgeft.data.readers import READ_BATCH
    from edgeft.runtime.evaluation import evaluate_path

    x, y = make_dataset(60, seed=3)
    tx, ty = make_dataset(2 * READ_BATCH + 5, seed=4)  # over two files, several batches each
    names = np.array(CLASSES)
    test = tmp_path / "test"
    test.mkdir()
    half = len(tx) // 2
    np.savez(test / "a.npz", x=tx[:half], y=names[ty[:half]])
    np.savez(test / "b.npz", x=tx[half:], y=names[ty[half:]])
    with Adapter(open_bundle, tmp_path / "state", policy=NO_GUARD) as adapter:
        adapter.learn(x[:30], names[y[:30]])
        adapter.learn(x[30:], names[y[30:]])
        whole = evaluate(adapter, tx, names[ty], per_version=True, tasks=True)
        streamed = evaluate_path(adapter, test, per_version=True, tasks=True)
    assert streamed == whole
    np.savez(test / "c.npz", x=tx[:4], y=ty[:4])  # indices where the others have names
    with Adapter(open_bundle, tmp_path / "state") as adapter, pytest.raises(DataError, match="names, others indices"):
        evaluate_path(adapter, test)
