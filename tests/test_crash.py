"""Crash safety with real processes: ``edgeft adapt --watch`` SIGKILLed at every crash point, state checked after each.

A short run of tools/torture.py (its long run: ``python tools/torture.py --kills 200``), and proof that its checker
does catch a broken state.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from edgeft.bundle import Bundle

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import torture  # noqa: E402

# Every crash point at least once: a progress tick of feature extraction (the first) and of training, the atomic
# rename of the checkpoint (1), replay buffer (2), version metadata (4) and CURRENT (5), the journal and metrics
# appends, the move to done/, and a kill after a random-looking delay.
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


def test_sigkill_at_every_crash_point_loses_nothing_and_learns_nothing_twice(
    tortured: tuple[torture.Report, Path],
) -> None:
    report, workdir = tortured
    assert report.violations == []
    assert report.kills == len(PLAN)
    # Each planned crash point was reached: the process killed itself there (not killed by the harness when idle).
    assert report.by == {step: 1 for step in PLAN if not step.startswith("delay")} | {"delay": 1}
    assert report.versions >= 5 and report.files_fed >= len(PLAN)
    events = [json.loads(line)["event"] for line in (workdir / "events.jsonl").read_text().splitlines()]
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
        replay = sorted((copy / "state" / "versions").glob("*.replay.npz"))[-1]
        replay.write_bytes(replay.read_bytes()[:-10])

    def learn_a_file_again(copy: Path) -> None:
        done = next((copy / "inbox" / "done").glob("*.npz"))
        shutil.copy(done, copy / "inbox" / done.name)

    assert any("journal holds version" in p for p in problems(duplicate_journal_line))
    assert any("no place at all" in p for p in problems(lose_a_file))
    assert any("does not load" in p and "sha256" in p for p in problems(tear_the_replay_buffer))
    assert any("expected exactly one" in p for p in problems(learn_a_file_again))
