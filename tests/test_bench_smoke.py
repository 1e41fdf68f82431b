"""The benchmark's pure helpers (tools/bench_common.py, tools/bench_report.py): workload split, ratios, goals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import SUBPROCESS_TIMEOUT

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_common  # noqa: E402
import bench_report  # noqa: E402


def _chunks(*sizes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    start = 0
    chunks = []
    for n in sizes:
        chunks.append((np.arange(start, start + n), np.arange(start, start + n) % 10))
        start += n
    return chunks


def test_split_keeps_chunks_cuts_limit_and_resplits() -> None:
    chunks = _chunks(5, 4, 3)
    assert [len(x) for x, _ in bench_common.split_arrivals(chunks, None, None)] == [5, 4, 3]
    assert [len(x) for x, _ in bench_common.split_arrivals(chunks, 7, None)] == [5, 2]
    resplit = bench_common.split_arrivals(chunks, None, 5)
    assert [len(x) for x, _ in resplit] == [5, 5, 2]
    assert np.concatenate([x for x, _ in resplit]).tolist() == list(range(12))


def test_batches_cover_every_index_once() -> None:
    got = bench_common.batches(35, 16, np.random.default_rng(0))
    assert [len(b) for b in got] == [16, 16, 3]
    assert sorted(np.concatenate(got).tolist()) == list(range(35))


def test_ratios_are_taken_within_rounds_and_goals_judged() -> None:
    runs = [
        {"round": 0, "contender": "inference", "samples_per_s": 100.0, "peak_rss_mb": 200.0},
        {"round": 0, "contender": "edgeft", "samples_per_s": 95.0, "peak_rss_mb": 230.0},
        {"round": 1, "contender": "inference", "samples_per_s": 50.0, "peak_rss_mb": 200.0},
        {"round": 1, "contender": "edgeft", "samples_per_s": 40.0, "peak_rss_mb": 220.0},
    ]
    assert bench_report.round_ratios(runs, "samples_per_s", "edgeft", "inference") == [0.95, 0.8]
    goals = {text: (value, met) for text, value, met in bench_report.goal_rows(runs)}
    assert goals["adapt ≥ 0.9× inference throughput"] == (0.875, False)
    assert goals["adapt peak RSS ≤ 1.2× inference"][1] is True
    assert "adapt ≥ 4× PyTorch" not in goals  # no PyTorch run: not judged
    table = bench_report.contender_table(runs, ["inference", "edgeft"])
    assert len(table) == 4 and "0.88" in table[3]


@pytest.mark.slow
def test_replay_contender_runs_against_the_current_runtime() -> None:
    """The replay probe drives the trainer directly: run it for real so an API change cannot break it unnoticed."""
    tools = Path(__file__).resolve().parent.parent / "tools"
    done = subprocess.run(
        [sys.executable, str(tools / "bench_ort.py"), "replay", "--threads", "2", "--ep", "cpu"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(tools.parent)},
    )
    assert done.returncode == 0, done.stderr
    line = next(row for row in done.stdout.splitlines() if row.startswith("BENCH_RESULT "))
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    assert result["contender"] == "replay" and result["samples_per_s"] > 0 and result["head_threads"] == 1


def test_int8_cross_validated_gap_pairs_folds_of_the_same_split() -> None:
    import bench_int8

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    features = rng.normal(0, 1, (120, 6)) + np.eye(3, 6)[y] * 3
    same = bench_int8.cross_validated_gap({"float": features, "int8": features.copy()}, y)
    assert same == {"mean": 0.0, "corrected_standard_error": 0.0, "folds": bench_int8.CV_FOLDS * bench_int8.CV_REPEATS}
    noisy = bench_int8.cross_validated_gap({"float": features, "int8": rng.normal(0, 1, features.shape)}, y)
    assert noisy["mean"] < -0.3  # features without the class signal lose most of the accuracy


def test_the_streaming_benchmark_builds_a_224_bundle_and_arrivals_edgeft_streams(tmp_path: Path) -> None:
    """tools/bench_stream.py's workload: the default backbone taking 224x224 inputs, and .npz arrivals it writes."""
    import bench_stream

    from edgeft.bundle import Bundle
    from edgeft.data.readers import READ_BATCH, stream_path

    bundle = Bundle.load(bench_stream.bundle_224(tmp_path / "bundle"))
    assert bundle.manifest.input.shape == ["batch", 1, 224, 224]
    data = bench_stream.write_arrival(tmp_path / "a.npz", 40, seed=0)
    batches = list(stream_path(data, bundle.manifest))
    assert [b.x.shape for b in batches] == [(READ_BATCH, 1, 224, 224)] * 2 + [(8, 1, 224, 224)]
    assert all(0 <= int(v) < 10 for b in batches for v in b.y)


def test_the_inbox_benchmark_writes_a_backlog_the_watch_takes_in_order(tmp_path: Path) -> None:
    """tools/bench_inbox.py's workload: files of the demo stream, oldest first by mtime, and its drain check."""
    import bench_inbox

    from edgeft.bundle import Bundle
    from edgeft.data.readers import stream_path
    from edgeft.runtime.inbox import ready_entries

    rest_x, _ = bench_inbox.write_inbox(tmp_path / "inbox", 5, 16)
    entries = ready_entries(tmp_path / "inbox")
    assert [p.name for p in entries] == [f"arrival-{i:03d}.npz" for i in range(5)]
    manifest = Bundle.load(bench_common.BUNDLE).manifest
    assert [len(b.x) for p in entries for b in stream_path(p, manifest, True)] == [16] * 5
    assert len(rest_x) == sum(len(x) for x, _ in bench_common.stream_chunks()) - 80
    (tmp_path / "inbox" / "done").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "journal.jsonl").write_text("")
    with pytest.raises(RuntimeError, match="0 of 5 files done"):
        bench_inbox.check_drained(tmp_path / "state", tmp_path / "inbox", 5)
