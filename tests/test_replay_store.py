"""The append-only replay store (edgeft.runtime.replay_store): an arrival writes what it adds, not the whole buffer;
rollback gives back exactly a version's buffers; a kill mid-commit or a damaged segment never loses what was learned;
states written before segments still load.

tests/data/state-before-segments was written by edgeft's code before segments (commit c19ac6b: a whole replay.npz
and holdout.npz per version) on the tests' tiny classifier: three arrivals of 60, 60 and 30 samples, holdout 20 %.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, CLI, SUBPROCESS_TIMEOUT, flip_byte, make_dataset
from tiny_models import classifier, save

from edgeft.bundle import Bundle
from edgeft.data.targets import MULTILABEL, REGRESSION
from edgeft.errors import EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime import replay_store
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.replay import ReplayBuffer
from edgeft.runtime.store import StateStore
from edgeft.runtime.target_replay import TargetBuffer

BEFORE_SEGMENTS = Path(__file__).parent / "data" / "state-before-segments"
GUARD_OFF = GuardPolicy(enabled=False)
WIDE = 256  # features of the wide bundle: 1 KiB a sample, so a buffer's features dwarf its index (8 bytes a row)


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    folder = tmp_path_factory.mktemp("wide")
    model = save(classifier(hidden=WIDE), folder / "wide.onnx")
    return export_bundle(ExportConfig(model, folder / "bundle", classes=list(CLASSES)))


def _features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-separable features of the wide bundle, with label names."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    centres = np.random.default_rng(0).normal(0, 1, (len(CLASSES), WIDE))
    return (centres[labels] + rng.normal(0, 0.5, (n, WIDE))).astype(np.float32), np.array(CLASSES)[labels]


def _files(root: Path) -> dict[Path, tuple[int, int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def _bytes_written(before: dict[Path, tuple[int, int, int]], after: dict[Path, tuple[int, int, int]]) -> int:
    """Bytes of new or replaced files, plus what appended files grew by."""
    written = 0
    for path, (inode, mtime, size) in after.items():
        old = before.get(path)
        if old is None or old[0] != inode:
            written += size
        elif old[1] != mtime:
            written += size - old[2]
    return written


def _arrival_bytes(bundle: Bundle, state: Path, buffered: int) -> tuple[int, int, int]:
    """Fill a state's replay buffer with ``buffered`` samples, then learn one arrival of 16: the bytes that arrival
    wrote, the buffer's length and the size of the segment the arrival wrote."""
    with Adapter(bundle, state, policy=GUARD_OFF, replay_per_class=buffered // len(CLASSES)) as adapter:
        adapter.learn_features(*_features(3 * buffered, seed=1), epochs=1)
        before = _files(state)
        result = adapter.learn_features(*_features(16, seed=2), epochs=1)
        assert result.promoted
        segment = state / "segments" / f"{result.version:06d}.npz"
        return _bytes_written(before, _files(state)), len(adapter.replay_buffer()), segment.stat().st_size


def test_a_small_arrival_writes_what_it_adds_not_the_buffer(wide_bundle: Bundle, tmp_path: Path) -> None:
    full_bytes, full_rows, full_segment = _arrival_bytes(wide_bundle, tmp_path / "full", 1200)
    small_bytes, small_rows, small_segment = _arrival_bytes(wide_bundle, tmp_path / "small", 60)
    assert (full_rows, small_rows) == (1200, 60)
    row = 4 * WIDE + 8  # features and label of one sample
    assert max(full_segment, small_segment) <= 16 * row + 1024  # at most the arrival's rows, and an npz's headers
    # 1,140 more buffered samples (1.1 MiB of features) cost the arrival only their index entries: 8 bytes each.
    assert full_bytes - small_bytes <= 16 * (full_rows - small_rows)
    assert full_bytes < 0.1 * full_rows * row  # the old layout wrote the whole buffer: more than 10x this


def _buffers(bundle: Bundle, state: Path, number: int) -> dict[str, ReplayBuffer]:
    """Version ``number``'s replay buffer and holdout as read from disk (no lock: a reader)."""
    store = StateStore(state, bundle.fingerprint)
    head = bundle.manifest.head
    buffers = {name: ReplayBuffer(head.feature_dim, head.num_outputs, 10**6) for name in ("replay", "holdout")}
    replay_store.load(store, store.load(number), buffers)
    return buffers


def _assert_same(a: ReplayBuffer | TargetBuffer, b: ReplayBuffer | TargetBuffer) -> None:
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    for key, value in a.bookkeeping().items():
        np.testing.assert_array_equal(value, b.bookkeeping()[key])


def test_many_small_arrivals_keep_few_segments_and_the_exact_buffers(bundle: Bundle, state_dir: Path) -> None:
    x, y = make_dataset(300, seed=4)
    names = np.array(CLASSES)[y]
    with Adapter(bundle, state_dir, replay_per_class=20, policy=GuardPolicy(holdout_fraction=0.25)) as adapter:
        most = 0
        for start in range(0, 300, 6):
            adapter.learn(x[start : start + 6], names[start : start + 6], epochs=1)
            version = adapter.store.current()
            assert version is not None
            listed = version.meta["segments"]
            live = sum(len(buffer) for buffer in _buffers(bundle, state_dir, version.number).values())
            on_disk = {p.name for p in (state_dir / "segments").iterdir()}
            retained = {n for v in adapter.store.retained() for n in adapter.store.load(v).meta["segments"]}
            assert on_disk == retained  # nothing stray, nothing a retained version lists is missing
            most = max(most, len(listed))
            assert sum(entry["rows"] for entry in listed.values()) <= 2 * live  # at least half of each is live
        assert most <= 8  # fifty arrivals, at most 60 + 150 rows buffered: a few segments, not one per arrival
        in_memory = {"replay": adapter.replay_buffer(), "holdout": adapter._holdout}
        number = adapter.version
    assert len(in_memory["replay"]) == 60 and len(in_memory["holdout"]) > 0
    from_disk = _buffers(bundle, state_dir, number)
    for name in ("replay", "holdout"):
        _assert_same(from_disk[name], in_memory[name])


def test_rollback_gives_back_exactly_the_versions_buffers(bundle: Bundle, state_dir: Path) -> None:
    x, y = make_dataset(240, seed=6)
    names = np.array(CLASSES)[y]
    policy = GuardPolicy(holdout_fraction=0.25, min_holdout=1, tolerance=1.0)  # every arrival is promoted
    with Adapter(bundle, state_dir, replay_per_class=15, policy=policy) as adapter:
        for start in range(0, 240, 30):
            assert adapter.learn(x[start : start + 30], names[start : start + 30], epochs=1).promoted
        assert adapter.version == 8
        kept = {number: _buffers(bundle, state_dir, number) for number in (5, 6, 7)}
        adapter.rollback(5)
        assert adapter.version == 9 and _buffers(bundle, state_dir, 9).keys() == kept[5].keys()
        for name, buffer in _buffers(bundle, state_dir, 9).items():
            _assert_same(buffer, kept[5][name])
        _assert_same(adapter.replay_buffer(), kept[5]["replay"])  # and learning goes on from it
        adapter.learn(x[:30], names[:30], epochs=1)
        adapter.rollback(7)
    for name, buffer in _buffers(bundle, state_dir, 11).items():
        _assert_same(buffer, kept[7][name])


def test_a_damaged_or_missing_segment_is_an_error_naming_it(bundle: Bundle, state_dir: Path) -> None:
    x, y = make_dataset(80, seed=7)
    with Adapter(bundle, state_dir) as adapter:
        adapter.learn(x[:60], y[:60], epochs=1)
        adapter.learn(x[60:], y[60:], epochs=1)  # fewer rows than segment 1 holds: it stays, not merged
        assert adapter.meta["segments"].keys() == {"000001.npz", "000002.npz"}
    segment = state_dir / "segments" / "000001.npz"
    flip_byte(segment)
    with Adapter(bundle, state_dir) as adapter, pytest.raises(EdgeftError) as caught:
        adapter.learn(x[:8], y[:8], epochs=1)
    assert str(caught.value) == f"{segment} is corrupt: its sha256 does not match 000002.json"
    assert Adapter(bundle, state_dir).version == 2  # nothing was committed
    flip_byte(segment)
    segment.rename(segment.with_suffix(".away"))
    with pytest.raises(EdgeftError, match="version 2 is missing segments/000001.npz"):
        Adapter(bundle, state_dir)
    segment.with_suffix(".away").rename(segment)
    with Adapter(bundle, state_dir) as adapter:
        assert adapter.learn(x[:8], y[:8], epochs=1).version == 3


@pytest.mark.slow
@pytest.mark.parametrize("point", ["rename:2", "rename:5"])  # segment durable; all but CURRENT durable
def test_a_kill_between_segment_and_commit_leaves_a_loadable_state(
    bundle_dir: Path, tmp_path: Path, point: str
) -> None:
    state = tmp_path / "state"
    x, y = make_dataset(80, seed=8)
    for name, part in (("a.npz", slice(0, 40)), ("b.npz", slice(40, 80))):
        np.savez(tmp_path / name, x=x[part], y=np.array(CLASSES)[y[part]])
    adapt = [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--no-guard"]
    assert subprocess.run([*adapt, "--data", str(tmp_path / "a.npz")], timeout=SUBPROCESS_TIMEOUT).returncode == 0
    bundle = Bundle.load(bundle_dir)
    before = _buffers(bundle, state, 1)
    env = {**os.environ, "EDGEFT_CRASH_AT": point}
    killed = subprocess.run([*adapt, "--data", str(tmp_path / "b.npz")], env=env, timeout=SUBPROCESS_TIMEOUT)
    assert killed.returncode == -9
    assert (state / "segments" / "000002.npz").is_file()  # written, durable, listed by no committed version
    assert json.loads((state / "CURRENT").read_text()) == {"version": 1}
    for name, buffer in _buffers(bundle, state, 1).items():
        _assert_same(buffer, before[name])
    done = subprocess.run([*adapt, "--data", str(tmp_path / "b.npz"), "--json"], capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)["version"] == 2, done.stderr
    assert len(_buffers(bundle, state, 2)["replay"]) == 80
    store = StateStore(state, bundle.fingerprint)
    listed = {n for v in store.retained() for n in store.load(v).meta["segments"]}
    assert {p.name for p in (state / "segments").iterdir()} == listed == {"000001.npz", "000002.npz"}


def test_a_stray_segment_is_pruned_by_the_next_commit(bundle: Bundle, state_dir: Path) -> None:
    x, y = make_dataset(40, seed=9)
    with Adapter(bundle, state_dir) as adapter:
        adapter.learn(x[:20], y[:20], epochs=1)
        stray = state_dir / "segments" / "000007.npz"  # as a commit that died before its version would leave it
        shutil.copyfile(state_dir / "segments" / "000001.npz", stray)
        adapter.learn(x[20:], y[20:], epochs=1)
    assert not stray.exists() and (state_dir / "segments" / "000001.npz").exists()


def test_a_state_written_before_segments_loads_learns_and_rolls_back(tmp_path: Path) -> None:
    folder = shutil.copytree(BEFORE_SEGMENTS, tmp_path / "old")
    bundle, state = Bundle.load(folder / "bundle"), folder / "state"
    head = bundle.manifest.head
    whole = {}
    for number in (2, 3):
        whole[number] = {
            name: ReplayBuffer(head.feature_dim, head.num_outputs, 10**6) for name in ("replay", "holdout")
        }
        for name, buffer in whole[number].items():
            buffer.load_file(state / "versions" / f"{number:06d}.{name}.npz")
    for name, buffer in _buffers(bundle, state, 3).items():
        _assert_same(buffer, whole[3][name])
    x, y = make_dataset(30, seed=10)
    with Adapter(bundle, state, policy=GuardPolicy(holdout_fraction=0.2, tolerance=1.0)) as adapter:
        _assert_same(adapter.replay_buffer(), whole[3]["replay"])
        assert adapter.learn(x, np.array(CLASSES)[y], epochs=1).promoted
        now = adapter.store.current()
        assert now is not None and now.number == 4 and set(now.files) == {"head.npz", "buffers.npz"}
        assert list(now.meta["segments"]) == ["000004.npz"]  # the old buffers, written into the new segment
        assert len(adapter.replay_buffer()) == len(whole[3]["replay"]) + 24
        adapter.rollback(2)
    assert set(StateStore(state, bundle.fingerprint).load(5).files) >= {"replay.npz", "holdout.npz"}
    for name, buffer in _buffers(bundle, state, 5).items():
        _assert_same(buffer, whole[2][name])


@pytest.mark.parametrize("task", [REGRESSION, MULTILABEL])
def test_target_buffers_come_back_whole_from_their_segments(task: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    store = StateStore(tmp_path / "state", "a bundle")
    store.acquire()
    parent = None
    for _ in range(4):
        buffers = {name: TargetBuffer(task, 5, 3, 6) for name in ("replay", "holdout")}
        replay_store.load(store, parent, buffers)
        for buffer in buffers.values():
            buffer.add(rng.normal(size=(9, 5)), (rng.random((9, 3)) > 0.6).astype(np.float32), rng)
        number = (parent.number if parent else 0) + 1
        writer, listed = replay_store.persist(store, number, buffers, parent)
        parent = store.commit({replay_store.BUFFERS_FILE: writer}, {"segments": listed}, parent)
    loaded = {name: TargetBuffer(task, 5, 3, 6) for name in ("replay", "holdout")}
    replay_store.load(store, parent, loaded)
    for name in buffers:
        _assert_same(loaded[name], buffers[name])
        assert len(loaded[name]) > 9
    store.release()
