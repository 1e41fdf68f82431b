"""Streamed arrivals: read in batches whatever their size, embedded once, learned only when all of a file was read."""

from __future__ import annotations

import json
import os
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, CLI, SUBPROCESS_TIMEOUT, make_dataset

from edgeft.bundle import Bundle
from edgeft.common.budget import RESERVE, MemoryBudget
from edgeft.common.ort import resolve_placement
from edgeft.data.limits import ArrivalLimits
from edgeft.data.readers import READ_BATCH, read_path, stream_path
from edgeft.errors import DataError
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.history import JOURNAL_FILE, read_lines
from edgeft.runtime.inbox import Inbox
from edgeft.runtime.replay import REPLAY_PER_NEW, ReplayBuffer, training_set
from edgeft.runtime.streaming import FeatureBuffer
from edgeft.runtime.trainer import PREDICT_ROWS, HeadPredictor, stored_state
from edgeft.runtime.watch import StopFlag, watch


def _npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    with path.open("wb") as handle:
        np.savez(handle, x=x, y=y)
    return path


def _csv(path: Path, x: np.ndarray, labels: list[str]) -> Path:
    flat = x.reshape(len(x), -1)
    header = ",".join(f"v{i}" for i in range(flat.shape[1])) + ",label\n"
    rows = "".join(",".join(f"{v:.9g}" for v in row) + f",{label}\n" for row, label in zip(flat, labels, strict=True))
    path.write_text(header + rows)
    return path


def test_every_source_streams_in_batches_that_add_up_to_the_whole_read(bundle: Bundle, tmp_path: Path) -> None:
    x, y = make_dataset(40, seed=3)
    names = np.array(CLASSES)[y]
    _npz(tmp_path / "a.npz", x, names)
    _csv(tmp_path / "b.csv", x, names.tolist())
    lines = "".join(json.dumps({"x": row.tolist(), "y": label}) + "\n" for row, label in zip(x, names, strict=True))
    (tmp_path / "c.jsonl").write_text(lines)
    for name in ("a.npz", "b.csv", "c.jsonl"):
        batches = list(stream_path(tmp_path / name, bundle.manifest))
        assert [len(b.x) for b in batches] == [READ_BATCH, READ_BATCH, 40 - 2 * READ_BATCH], name
        (whole,) = read_path(tmp_path / name, bundle.manifest)
        np.testing.assert_allclose(np.concatenate([b.x for b in batches]), whole.x, rtol=1e-6)
        assert np.concatenate([b.y for b in batches]).tolist() == whole.y.tolist() == names.tolist()
    folder = list(stream_path(tmp_path, bundle.manifest))
    assert [b.origin for b in folder] == [str(tmp_path / n) for n in ("a.npz",) * 3 + ("b.csv",) * 3 + ("c.jsonl",) * 3]


def test_a_file_too_big_to_read_whole_streams_within_the_budget(bundle: Bundle, tmp_path: Path) -> None:
    x, y = make_dataset(400, seed=4)  # 400 x 768 bytes of inputs; their features are 400 x 6 floats
    _npz(tmp_path / "big.npz", x, y)
    in_use = MemoryBudget(0, "test").in_use()
    budget = MemoryBudget(int((in_use + 400 * 768) / 0.9), "a budget below three copies of the inputs")
    with pytest.raises(DataError, match="more than edgeft reads"):
        read_path(tmp_path / "big.npz", bundle.manifest, limits=ArrivalLimits(budget))
    batches = list(stream_path(tmp_path / "big.npz", bundle.manifest, limits=ArrivalLimits(budget)))
    assert max(len(b.x) for b in batches) == READ_BATCH
    np.testing.assert_array_equal(np.concatenate([b.x for b in batches]), x)


def test_a_source_declaring_more_samples_than_the_budget_keeps_is_refused_from_its_header(
    bundle: Bundle, tmp_path: Path
) -> None:
    x, y = make_dataset(400, seed=4)
    _npz(tmp_path / "big.npz", x, y)
    in_use = MemoryBudget(0, "test").in_use()
    tight = ArrivalLimits(MemoryBudget(int((in_use + 399 * (4 * 6 + 8)) / 0.9), "test"))
    with pytest.raises(DataError, match="big.npz: the features of 400 samples needs about .* memory budget"):
        next(stream_path(tmp_path / "big.npz", bundle.manifest, limits=tight))


def test_labels_that_change_kind_within_a_file_are_refused(bundle: Bundle, tmp_path: Path) -> None:
    x, y = make_dataset(40, seed=5)
    labels = [str(v) for v in y]
    labels[30] = "red"  # in the second batch: the first decided the labels are indices
    _csv(tmp_path / "mixed.csv", x, labels)
    with pytest.raises(DataError, match="mixed.csv: near line .* label 'red' is a name, the first label an index"):
        list(stream_path(tmp_path / "mixed.csv", bundle.manifest))


def test_the_feature_buffer_grows_in_place_and_keeps_every_row() -> None:
    buffer = FeatureBuffer(3)
    rows = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    for start in range(0, 1000, 7):
        buffer.append(rows[start : start + 7])
    np.testing.assert_array_equal(buffer.array(), rows)


@pytest.mark.parametrize("bad", ["nan", "shape"])
def test_a_file_bad_in_a_late_batch_is_quarantined_whole_with_nothing_learned_or_parked(
    bad: str, bundle: Bundle, tmp_path: Path
) -> None:
    """Its first batches were embedded and some of its labels do not fit; still nothing of it is kept."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    x, y = make_dataset(50, seed=6)
    labels = np.array(CLASSES)[y].astype("<U8")
    labels[:4] = "violet"  # beyond the head: would be parked if the file were good
    if bad == "nan":
        x[45, 0, 0, 0] = np.nan
        _npz(inbox / "late.npz", x, labels)
    else:
        (inbox / "late.jsonl").write_text(
            "".join(json.dumps({"x": r.tolist(), "y": str(v)}) + "\n" for r, v in zip(x, labels, strict=True))
            + json.dumps({"x": [1.0, 2.0], "y": "red"})
            + "\n"
        )
    entry = next(inbox.iterdir())
    os.utime(entry, (1e9, 1e9))
    good_x, good_y = make_dataset(30, seed=7)
    _npz(inbox / "good.npz", good_x, np.array(CLASSES)[good_y])
    seen: list[str] = []
    with Adapter(bundle, tmp_path / "state", policy=GuardPolicy(enabled=False)) as adapter:
        summary = watch(adapter, Inbox(inbox), emit=lambda e, **f: seen.append(e), stop=StopFlag(), once=True)
        assert (summary.quarantined, summary.learned, summary.pending_samples) == (1, 1, 0), seen
        assert adapter.meta["samples_received"] == 30
    assert [row["name"] for row in read_lines(tmp_path / "state" / JOURNAL_FILE)] == ["good.npz"]
    assert list((inbox / "pending").iterdir()) == []
    reason = (inbox / "quarantine" / f"{entry.name}.reason.txt").read_text()
    assert str(entry) in reason and ("NaN" in reason if bad == "nan" else "line 51 has x of shape" in reason)


@pytest.mark.slow
def test_json_lines_on_stdin_are_learned_once(bundle_dir: Path, tmp_path: Path) -> None:
    x, y = make_dataset(40, seed=8)
    text = "".join(json.dumps({"x": r.tolist(), "y": CLASSES[v]}) + "\n" for r, v in zip(x, y, strict=True))
    state = tmp_path / "state"
    command = [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--data", "-", "--json"]
    first = subprocess.run(command, input=text, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["samples"] == 40
    again = subprocess.run(command, input=text, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["skipped"] == ["- (already learned in version 1)"]
    assert sorted(p.name for p in state.iterdir() if p.name.startswith("tmp")) == []  # the spool left nothing


def test_an_arrival_rehearses_a_bounded_share_of_the_buffer(bundle: Bundle, tmp_path: Path) -> None:
    x, y = make_dataset(62, seed=9)
    names = np.array(CLASSES)[y]
    off = GuardPolicy(enabled=False)
    with Adapter(bundle, tmp_path / "bounded", policy=off) as bounded:
        bounded.learn(x[:60], names[:60], epochs=1)
        buffered = len(bounded.replay_buffer())
        assert buffered == 60 > 2 * REPLAY_PER_NEW
        result = bounded.learn(x[60:], names[60:], epochs=1)
        assert result.replayed == 2 * REPLAY_PER_NEW  # per new sample, not the whole buffer
        assert len(bounded.replay_buffer()) == 62  # the buffer itself still keeps every sample it may
    with Adapter(bundle, tmp_path / "whole", policy=off, replay_per_new=None) as whole:
        whole.learn(x[:60], names[:60], epochs=1)
        assert whole.learn(x[60:], names[60:], epochs=1).replayed == buffered


def test_bounded_rehearsal_draws_afresh_each_epoch_in_as_many_steps() -> None:
    buffer = ReplayBuffer(2, 3, 100)
    rng = np.random.default_rng(0)
    buffer.add(np.arange(600, dtype=np.float32).reshape(300, 2), np.arange(300) % 3, rng)
    features = np.full((5, 2), -1.0, np.float32)
    keep = np.array([True, True, False, True, True])
    x, y, passes, replayed = training_set(features, np.zeros(5, np.int64), keep, buffer, 3, rng, per_new=10)
    assert (passes, replayed, len(x)) == (1, 40, 3 * (4 + 40))  # one pass over 3 rounds = 3 epochs' steps
    assert (x[:4] == -1).all()  # the new samples come first
    rounds = [{tuple(row) for row in x[r * 44 + 4 : (r + 1) * 44]} for r in range(3)]
    assert all(len(r) == 40 for r in rounds) and rounds[0] != rounds[1]  # without replacement, drawn afresh
    x, _, passes, replayed = training_set(features, np.zeros(5, np.int64), keep, buffer, 3, rng, per_new=None)
    assert (passes, replayed, len(x)) == (3, 300, 304)


def test_the_training_set_reads_the_arrival_without_copying_it() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(20_000, 64)).astype(np.float32)  # 5 MB of arrival features
    labels = np.arange(20_000) % 3
    keep = rng.random(20_000) > 0.1
    buffer = ReplayBuffer(64, 3, 100)
    buffer.add(features[:300], labels[:300], rng)
    tracemalloc.start()
    x, y, passes, _ = training_set(features, labels, keep, buffer, 10, rng, per_new=None)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < features.nbytes / 4  # positions, labels and their temporaries, not the features (a copy: 4.6 MB)
    assert (len(x), passes) == (int(keep.sum()) + 300, 10)
    order = rng.permutation(len(x))[:50]
    expected = np.concatenate([features[keep], buffer.features])[order]
    np.testing.assert_array_equal(x[order], expected)  # the rows a batch reads are the same as a copy's
    np.testing.assert_array_equal(y, np.concatenate([labels[keep], buffer.labels]))


def test_the_feature_buffer_takes_a_declared_source_in_one_allocation() -> None:
    buffer = FeatureBuffer(3)
    buffer.append(np.ones((5, 3), np.float32))
    buffer.reserve(1000)
    before = buffer._data
    for start in range(0, 1000, 16):
        buffer.append(np.zeros((min(16, 1000 - start), 3), np.float32))
    assert buffer._data is before and len(before) == 1005  # no growth, no spare rows
    assert buffer.array().sum() == 15


def test_head_outputs_of_many_rows_are_computed_in_chunks_that_add_up(bundle: Bundle) -> None:
    predictor = HeadPredictor(bundle, resolve_placement("cpu"))
    parameters = stored_state(bundle, None).parameters
    rows = np.random.default_rng(0).normal(size=(2 * PREDICT_ROWS + 5, bundle.manifest.head.feature_dim))
    whole = predictor.logits(rows.astype(np.float32), parameters)
    assert len(whole) == len(rows)
    one_by_one = [predictor.logits(rows[i : i + 1].astype(np.float32), parameters)[0] for i in range(0, len(rows), 97)]
    np.testing.assert_allclose(whole[::97], np.stack(one_by_one), rtol=1e-5, atol=1e-6)


def test_samples_held_back_for_pending_are_charged_to_the_budget_as_raw_inputs(bundle: Bundle, tmp_path: Path) -> None:
    """Labels the head has no room for wait in memory as raw inputs until the file is read: the budget counts them,
    so a big arrival of new classes at a full head is refused instead of growing without bound."""
    from edgeft.runtime.arrivals import read_arrival

    x, _ = make_dataset(400, seed=6)  # 400 x 768 bytes of inputs, their features 400 x 6 floats
    _npz(tmp_path / "new.npz", x, np.array(["purple"] * 400))  # the head's three outputs are all named

    def leaving_for_the_arrival(room: int, source: str) -> ArrivalLimits:
        """A budget that leaves ``room`` bytes for an arrival beyond what this process holds now and the budget's
        reserve (a share of the whole: large where the process itself is, e.g. under an emulator)."""
        return ArrivalLimits(MemoryBudget(int((MemoryBudget(0, "test").in_use() + room) / (1 - RESERVE)), source))

    with Adapter(bundle, tmp_path / "state", ep="cpu") as adapter:
        tight = leaving_for_the_arrival(100 * 768, "a budget for a quarter of the inputs")
        with pytest.raises(DataError, match="new.npz: .* samples of labels the head has no room for needs about"):
            read_arrival(adapter, [str(tmp_path / "new.npz")], None, relearn=False, limits=tight)
        roomy = leaving_for_the_arrival(2**26, "test")
        arrival = read_arrival(adapter, [str(tmp_path / "new.npz")], None, relearn=False, limits=roomy)
        assert arrival.embedded is not None and arrival.embedded.unfit == 400


def test_one_shot_adapt_and_watch_mode_learn_an_arrival_alike(bundle: Bundle, tmp_path: Path) -> None:
    """Both go through one learn-an-arrival step: the same file, with labels the head cannot hold, gives the same
    head, the same journal record and the same parked samples either way."""
    from edgeft.runtime.arrivals import learn_arrival, read_arrival
    from edgeft.runtime.learn_options import LearnOptions

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    x, y = make_dataset(60, seed=11)
    labels = np.array(CLASSES)[y].astype("<U8")
    labels[:5] = "violet"  # the head's outputs are all named: these wait in pending/
    arrival_file = _npz(inbox / "arrival.npz", x, labels)
    options = LearnOptions(epochs=3, lr=0.01)
    with Adapter(bundle, tmp_path / "one-shot", policy=GuardPolicy(enabled=False)) as adapter:
        arrival = read_arrival(adapter, [str(arrival_file)], None, relearn=False)
        outcome = learn_arrival(adapter, arrival, options, None)
        one_shot = adapter.parameters()
        assert outcome.pending == 5 and outcome.pending_path is not None and outcome.result is not None
        with np.load(outcome.pending_path, allow_pickle=False) as parked:
            one_shot_parked = parked["x"].copy(), parked["y"].copy()
    with Adapter(bundle, tmp_path / "watched", policy=GuardPolicy(enabled=False)) as adapter:
        summary = watch(adapter, Inbox(inbox), emit=lambda e, **f: None, stop=StopFlag(), once=True, options=options)
        watched = adapter.parameters()
        assert (summary.learned, summary.pending_samples) == (1, 5)
    (parked_file,) = (inbox / "pending").iterdir()
    with np.load(parked_file, allow_pickle=False) as parked:
        np.testing.assert_array_equal(parked["x"], one_shot_parked[0])
        np.testing.assert_array_equal(parked["y"], one_shot_parked[1])
    assert one_shot.keys() == watched.keys()
    for name in one_shot:
        np.testing.assert_array_equal(one_shot[name], watched[name], err_msg=name)
    journals = [read_lines(tmp_path / s / JOURNAL_FILE) for s in ("one-shot", "watched")]
    records = [[(Path(r["name"]).name, r["sha256"], r["samples"]) for r in journal] for journal in journals]
    assert records[0] == records[1] == [("arrival.npz", records[0][0][1], 60)]  # one-shot names the path given


def test_stdin_is_spooled_only_while_the_disk_keeps_room_for_commits(tmp_path: Path) -> None:
    """More than the allowance is refused part-way with a clear error; within it, the spool holds stdin exactly."""
    import hashlib
    import io
    import shutil

    from edgeft.runtime.arrivals import SPOOL_CHUNK, SPOOL_RESERVE_BYTES, SPOOL_RESERVE_SHARE, spool, spool_allowance

    data = os.urandom(3 * SPOOL_CHUNK + 17)
    with (tmp_path / "spool").open("w+b") as spooled:
        assert spool(io.BytesIO(data), spooled, len(data)) == hashlib.sha256(data).hexdigest()
        assert spooled.read() == data
    with (tmp_path / "refused").open("w+b") as spooled:
        with pytest.raises(DataError, match=r"stdin: more than 2\.0 MiB, .* pass them with --data"):
            spool(io.BytesIO(data), spooled, 2 * SPOOL_CHUNK)
        assert spooled.tell() <= 2 * SPOOL_CHUNK  # stopped at the chunk that went over, not after the whole stream
    usage = shutil.disk_usage(tmp_path)
    reserve = max(SPOOL_RESERVE_BYTES, int(usage.total * SPOOL_RESERVE_SHARE))
    assert abs(spool_allowance(tmp_path) - max(0, usage.free - reserve)) < 64 << 20  # other writers move free space
