"""Watch mode: an inbox of real files, learned exactly once, bad ones quarantined; a real process stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, CLI, TIME_SCALE, edgeft_lines, make_dataset
from PIL import Image

from edgeft.bundle import Bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.history import read_lines
from edgeft.runtime.inbox import Inbox
from edgeft.runtime.watch import StopFlag, WatchSummary, watch


def _npz(path: Path, n: int, seed: int, **override: np.ndarray) -> Path:
    x, y = make_dataset(n, seed)
    arrays = {"x": x, "y": np.array(CLASSES)[y], **override}
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def _events() -> tuple[list[tuple[str, dict]], object]:
    seen: list[tuple[str, dict]] = []
    return seen, lambda event, **fields: seen.append((event, fields))


def _run(bundle: Bundle, state: Path, inbox: Path) -> tuple[WatchSummary, list[tuple[str, dict]]]:
    seen, emit = _events()
    with Adapter(bundle, state) as adapter:
        summary = watch(adapter, Inbox(inbox), emit=emit, stop=StopFlag(), poll_seconds=0.01, once=True)
    return summary, seen


def test_inbox_entries_are_learned_once_and_bad_ones_quarantined(bundle: Bundle, tmp_path: Path) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    good = _npz(inbox / "a.npz", 60, seed=1)
    (inbox / "copy-of-a.npz").write_bytes(good.read_bytes())
    x, y = make_dataset(20, seed=2)
    header = ",".join(f"v{i}" for i in range(x[0].size)) + ",label\n"
    rows = "".join(",".join(map(str, r.ravel())) + f",{CLASSES[v]}\n" for r, v in zip(x, y, strict=True))
    (inbox / "b.csv").write_text(header + rows)
    for label, colour in (("red", (220, 0, 0)), ("blue", (0, 0, 220))):
        (inbox / "photos" / label).mkdir(parents=True)
        Image.new("RGB", (8, 8), colour).save(inbox / "photos" / label / "1.png")
    _npz(inbox / ".half-written.npz.tmp", 5, seed=3)
    (inbox / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    _npz(inbox / "nan.npz", 4, seed=4, x=np.full((4, 3, 8, 8), np.nan, np.float32))
    _npz(inbox / "shape.npz", 4, seed=5, x=np.zeros((4, 3, 5, 5), np.float32))
    _npz(inbox / "pickled.npz", 2, seed=6, y=np.array([{"a": 1}, None], dtype=object))
    outside = _npz(tmp_path / "outside.npz", 4, seed=7)
    (inbox / "link.npz").symlink_to(outside)

    summary, seen = _run(bundle, state, inbox)

    assert (summary.learned, summary.skipped, summary.quarantined) == (3, 1, 5), seen
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["a.npz", "b.csv", "copy-of-a.npz", "photos"]
    quarantined = {p.name for p in (inbox / "quarantine").iterdir()}
    for name in ("garbage.npz", "nan.npz", "shape.npz", "pickled.npz", "link.npz"):
        assert {name, f"{name}.reason.txt"} <= quarantined
        reason = (inbox / "quarantine" / f"{name}.reason.txt").read_text()
        assert name in reason and "\n" == reason[-1] and reason.count("\n") == 1
    assert "object arrays" in (inbox / "quarantine" / "pickled.npz.reason.txt").read_text()
    assert "symbolic link" in (inbox / "quarantine" / "link.npz.reason.txt").read_text()
    assert outside.exists()  # the link was moved, not what it points to
    assert [p.name for p in inbox.iterdir() if p.is_file()] == [".half-written.npz.tmp"]
    journal = list(read_lines(state / "journal.jsonl"))
    assert sorted(r["name"] for r in journal) == ["a.npz", "b.csv", "photos"]
    assert sum(r["samples"] for r in journal) == 60 + 20 + 2
    skipped = [f for e, f in seen if e == "skipped"]
    assert skipped == [{"entry": "copy-of-a.npz", "reason": f"already learned in version {journal[0]['version']}"}]


def test_an_entry_left_in_the_inbox_after_its_commit_is_not_learned_again(bundle: Bundle, tmp_path: Path) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    entry = _npz(inbox / "a.npz", 30, seed=1)
    saved = entry.read_bytes()
    _run(bundle, state, inbox)
    # As if the process died after committing version 1 but before moving the entry to done/:
    (inbox / "done" / "a.npz").unlink()
    entry.write_bytes(saved)
    summary, seen = _run(bundle, state, inbox)
    assert (summary.learned, summary.skipped) == (0, 1), seen
    assert Adapter(bundle, state).version == 1
    assert (inbox / "done" / "a.npz").exists() and not entry.exists()


def test_labels_beyond_capacity_are_kept_pending_and_the_rest_learned(bundle: Bundle, tmp_path: Path) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    x, y = make_dataset(30, seed=1)
    labels = np.array(CLASSES)[y].astype("<U8")
    labels[:4] = "violet"
    _npz(inbox / "a.npz", 30, seed=1, y=labels)
    summary, seen = _run(bundle, state, inbox)
    assert (summary.learned, summary.pending_samples) == (1, 4), seen
    with np.load(inbox / "pending" / "a.npz", allow_pickle=False) as kept:
        np.testing.assert_array_equal(kept["x"], x[:4])
        assert kept["y"].tolist() == ["violet"] * 4
    assert sum(Adapter(bundle, state).meta["class_counts"].values()) == 26


def _wait_for(predicate, seconds: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds * TIME_SCALE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_watch_process_learns_dropped_files_and_stops_cleanly(
    signum: signal.Signals, bundle_dir: Path, tmp_path: Path
) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    args = [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--watch", str(inbox), "--poll", "0.05", "--json"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for i in range(2):
            staged = _npz(inbox / f".chunk{i}.npz.tmp", 40, seed=i)
            os.replace(staged, inbox / f"chunk{i}.npz")  # write, then rename: the documented way to drop a file
            _wait_for(lambda i=i: (inbox / "done" / f"chunk{i}.npz").exists())
        process.send_signal(signum)
        out, err = process.communicate(timeout=30 * TIME_SCALE)
    finally:
        process.kill()
    assert process.returncode == 0, err
    events = [json.loads(line) for line in edgeft_lines(err)]
    assert [e["event"] for e in events] == ["watching", "learned", "learned", "stopped"]
    assert {k: events[-1][k] for k in ("event", "signal", "version")} == {
        "event": "stopped",
        "signal": signum.name,
        "version": 2,
    }
    assert json.loads(out)["learned"] == 2
    assert Adapter(bundle_dir, state).version == 2
