"""Append-only class statistics (edgeft.runtime.statistics_log) on a real bundle, real files and real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, CLI, SUBPROCESS_TIMEOUT, make_dataset
from tiny_models import classifier, save

from edgeft.bundle import sha256_file
from edgeft.errors import EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.class_statistics import STATISTICS_FILE, ClassStatistics
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.statistics_log import load_statistics
from edgeft.runtime.store import SEGMENTS_DIR, read_current_record, stored_numbers

NO_GUARD = GuardPolicy(enabled=False)
FEATURES = 64  # 16 rows of the log fit in half a snapshot (the moment's 2,080 numbers and 3 × 64 sums)


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wide")
    out = folder / "bundle"
    export_bundle(ExportConfig(save(classifier(hidden=FEATURES), folder / "wide.onnx"), out, classes=list(CLASSES)))
    return out


@pytest.fixture(scope="module")
def arrivals(wide_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[np.ndarray, np.ndarray]]:
    """Eight arrivals of backbone features: one of 30 samples, then seven of 5 (names as labels)."""
    x, y = make_dataset(65, seed=11)
    with Adapter(wide_bundle, tmp_path_factory.mktemp("embed") / "s") as adapter:
        features = adapter.embed(x)
    names = np.array(CLASSES)[y]
    cuts = [0, 30, 35, 40, 45, 50, 55, 60, 65]
    return [(features[a:b], names[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]


def copy(statistics: ClassStatistics) -> ClassStatistics:
    return ClassStatistics(statistics.counts.copy(), statistics.sums.copy(), statistics.moment.copy())


def assert_identical(a: ClassStatistics, b: ClassStatistics) -> None:
    """Bit for bit: the log must give back exactly what was learned, not something close."""
    for mine, theirs in ((a.counts, b.counts), (a.sums, b.sums), (a.moment, b.moment)):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)


def learn(bundle: Path, state: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], learner: str = "slda") -> Adapter:
    """An Adapter (closed again) that learned ``arrivals`` in order into ``state``, guard off."""
    with Adapter(bundle, state, policy=NO_GUARD, head_learner=learner) as adapter:
        for features, names in arrivals:
            adapter.learn_features(features, names)
    return adapter


def chain(state: Path, number: int) -> list[str]:
    with np.load(state / "versions" / f"{number:06d}.{STATISTICS_FILE}") as index:
        return index["chain"].tolist()


def test_arrivals_write_their_rows_and_read_back_bit_for_bit(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path
) -> None:
    state = tmp_path / "s"
    learned = []
    with Adapter(wide_bundle, state, policy=NO_GUARD, head_learner="slda", keep_versions=20) as adapter:
        for features, names in arrivals:
            adapter.learn_features(features, names)
            statistics = adapter.class_statistics()
            assert statistics is not None
            learned.append(copy(statistics))
        parameters = adapter.parameters()
    snapshot_bytes = (state / SEGMENTS_DIR / "000001.statistics.npz").stat().st_size
    assert chain(state, 1) == ["000001.statistics.npz"]  # 30 rows: more than half a snapshot, so a snapshot
    for number in range(2, 5):  # then each arrival's 5 rows, appended
        assert chain(state, number) == [f"{n:06d}.statistics.npz" for n in range(1, number + 1)]
        written = (state / SEGMENTS_DIR / f"{number:06d}.statistics.npz").stat().st_size
        assert written < snapshot_bytes / 4  # 5 rows of 64 float64 and 5 labels, not the 64 × 64 moment
    assert chain(state, 5) == ["000005.statistics.npz"]  # 20 rows would pass half a snapshot: folded
    assert chain(state, 8) == [f"{n:06d}.statistics.npz" for n in (5, 6, 7, 8)]
    with Adapter(wide_bundle, state, head_learner="slda", keep_versions=20) as reopened:
        for number, expected in enumerate(learned, start=1):
            version = reopened.store.load(number)
            head = reopened.bundle.manifest.head
            statistics, _ = load_statistics(
                reopened.store, version, version.files[STATISTICS_FILE], head.num_outputs, head.feature_dim, True
            )
            assert_identical(statistics, expected)
        assert all(np.array_equal(reopened.parameters()[k], v) for k, v in parameters.items())


def test_a_process_that_continues_a_log_learns_what_one_process_learns(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path
) -> None:
    one = learn(wide_bundle, tmp_path / "one", arrivals)
    expected, expected_head = copy(one.class_statistics()), one.parameters()
    for features, names in arrivals:  # an Adapter (a reload of the log) per arrival
        with Adapter(wide_bundle, tmp_path / "many", policy=NO_GUARD, head_learner="slda") as adapter:
            adapter.learn_features(features, names)
    with Adapter(wide_bundle, tmp_path / "many", head_learner="slda") as adapter:
        assert_identical(adapter.class_statistics(), expected)
        for name, value in expected_head.items():
            np.testing.assert_array_equal(adapter.parameters()[name], value)


def test_rollback_gives_back_a_versions_statistics_exactly_and_pruning_keeps_what_versions_use(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path
) -> None:
    state = tmp_path / "s"
    learned = {}
    with Adapter(wide_bundle, state, policy=NO_GUARD, head_learner="slda", keep_versions=6) as adapter:
        for features, names in arrivals[:6]:
            adapter.learn_features(features, names)
            learned[adapter.version] = copy(adapter.class_statistics())
        adapter.rollback(3)  # a version of rows on a snapshot (1), past the fold at 5
        assert_identical(adapter.class_statistics(), learned[3])
        for features, names in arrivals[6:]:
            adapter.learn_features(features, names)
        after_rollback = copy(adapter.class_statistics())
    with Adapter(wide_bundle, state, head_learner="slda", keep_versions=6) as reopened:
        assert_identical(reopened.class_statistics(), after_rollback)
        expected = copy(learned[3])
        for features, names in arrivals[6:]:
            expected.add(features, np.array([CLASSES.index(n) for n in names]))
        np.testing.assert_array_equal(after_rollback.counts, expected.counts)
        np.testing.assert_allclose(after_rollback.moment, expected.moment, rtol=1e-12)
        retained = stored_numbers(state)
        listed = set()
        for number in retained:
            listed |= set(reopened.store.load(number).record.segments or {})
    assert retained == list(range(4, 10))
    on_disk = {p.name for p in (state / SEGMENTS_DIR).iterdir()}
    assert on_disk == listed  # pruning removed what only pruned versions used, and nothing a retained one uses
    assert {"000001.statistics.npz", "000003.statistics.npz"} <= on_disk  # the rollback's chain (1, 2, 3) lives on


def test_a_damaged_or_missing_segment_is_a_clear_error(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path
) -> None:
    state = tmp_path / "s"
    learn(wide_bundle, state, arrivals[:3])
    segment = state / SEGMENTS_DIR / "000002.statistics.npz"
    segment.write_bytes(segment.read_bytes()[:-1] + b"x")
    with Adapter(wide_bundle, state, head_learner="slda") as adapter:
        with pytest.raises(EdgeftError, match=r"000002\.statistics\.npz is corrupt: its sha256 does not match"):
            adapter.class_statistics()
    segment.unlink()
    with pytest.raises(EdgeftError, match=r"version 3 is missing segments/000002\.statistics\.npz"):
        Adapter(wide_bundle, state, head_learner="slda")


@pytest.mark.slow
def test_sigkill_at_every_rename_of_a_commit_leaves_the_old_or_the_new_statistics(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path
) -> None:
    """A real ``edgeft adapt`` process killed at each atomic rename of one arrival's commit (a row segment)."""
    start = tmp_path / "start"
    before = copy(learn(wide_bundle, start, arrivals[:2]).class_statistics())
    x, y = make_dataset(4, seed=12)
    np.savez(tmp_path / "arrival.npz", x=x, y=np.array(CLASSES)[y])

    def adapt(state: Path, crash: str | None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **({"EDGEFT_CRASH_AT": crash} if crash else {})}
        args = ["adapt", wide_bundle, "-s", state, "--data", tmp_path / "arrival.npz", "--head-learner", "slda",
                "--no-guard"]  # fmt: skip
        return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env,
                               timeout=SUBPROCESS_TIMEOUT)  # fmt: skip

    def current(state: Path) -> ClassStatistics:
        with Adapter(wide_bundle, state, head_learner="slda") as adapter:
            return copy(adapter.class_statistics())

    reference = tmp_path / "reference"
    shutil.copytree(start, reference)
    assert adapt(reference, None).returncode == 0
    after = current(reference)
    assert chain(reference, 3) == [f"{n:06d}.statistics.npz" for n in (1, 2, 3)]  # the arrival wrote its rows
    assert after.total == before.total + 4
    killed = 0
    for n in range(1, 40):
        state = tmp_path / f"kill{n}"
        shutil.copytree(start, state)
        done = adapt(state, f"rename:{n}")
        if done.returncode == 0:
            break  # fewer than n renames in the whole run
        assert done.returncode == -9, done.stderr
        killed += 1
        seen = current(state)
        assert seen.total in (before.total, after.total)
        assert_identical(seen, before if seen.total == before.total else after)
        assert adapt(state, None).returncode == 0  # the arrival again: learned exactly once
        assert_identical(current(state), after)
    assert killed >= 5  # the statistics segment, head, buffers, index, metadata, CURRENT: each was a kill point


def test_nearest_class_mean_keeps_its_small_statistics_whole_in_the_version(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path
) -> None:
    state = tmp_path / "s"
    learned = copy(learn(wide_bundle, state, arrivals[:3], "ncm").class_statistics())
    assert not list((state / SEGMENTS_DIR).glob("*.statistics.npz"))  # counts, sums and a trace: no log
    with np.load(state / "versions" / f"000003.{STATISTICS_FILE}") as data:
        assert set(data.files) == {"counts", "sums", "moment"} and data["moment"].shape == ()
    with Adapter(wide_bundle, state, head_learner="ncm") as reopened:
        assert_identical(reopened.class_statistics(), learned)
    with Adapter(wide_bundle, state, head_learner="slda") as adapter:
        with pytest.raises(EdgeftError, match="holds nearest-class-mean statistics"):
            adapter.class_statistics()


def test_records_listing_statistics_segments_are_format_2_which_a_format_1_edgeft_calls_too_new(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A format-1 edgeft would take the statistics segments for corrupt replay segments: their records are format 2,
    so that edgeft (simulated: reading formats up to 1) says to upgrade instead; SGD's records stay format 1."""
    formats = {}
    for learner in ("sgd", "slda"):
        learn(wide_bundle, tmp_path / learner, arrivals[:2], learner)
        formats[learner] = json.loads((tmp_path / learner / "versions" / "000002.json").read_text())["format_version"]
    assert formats == {"sgd": 1, "slda": 2}
    monkeypatch.setattr("edgeft.runtime.version_record.RECORD_FORMAT_VERSION", 1)
    with pytest.raises(EdgeftError, match=r"000002.json: version metadata format 2; this edgeft reads formats 1 to 1"):
        read_current_record(tmp_path / "slda")
    assert read_current_record(tmp_path / "sgd") is not None


def test_a_commit_makes_its_replay_and_statistics_segments_durable_with_one_fsync_of_segments(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each arrival of slda+sgd writes a replay segment and a statistics segment: segments/ is fsynced once per
    commit, after both are written and before the version listing them is, not once per segment."""
    state = tmp_path / "state"
    learn(wide_bundle, state, arrivals[:1], "slda+sgd")  # segments/ exists: the next commits only add to it
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with Adapter(wide_bundle, state, policy=NO_GUARD, head_learner="slda+sgd") as adapter:
        for features, names in arrivals[1:4]:
            before = len(synced)
            adapter.learn_features(features, names)
            written = synced[before:]
            segments = str((state / SEGMENTS_DIR).resolve())
            versions = str((state / "versions").resolve())
            segment_files = [i for i, path in enumerate(written) if path.startswith(segments + "/")]
            assert len(segment_files) == 2, written  # this arrival's replay rows and statistics rows
            assert written.count(segments) == 1, written
            assert segment_files[-1] < written.index(segments) < written.index(versions), written


def adopted_fleet(
    bundle: Path, state: Path, others: ClassStatistics, arrivals: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    """Adopt the device's own head as a fleet head that comes with ``others``, then learn ``arrivals``."""
    with Adapter(bundle, state, policy=NO_GUARD, head_learner="slda") as adapter:
        assert adapter.adopt(adapter.parameters(), adapter.classes, origin="fleet", fleet_statistics=others).promoted
        for features, names in arrivals:
            adapter.learn_features(features, names)


def test_the_fleets_statistics_are_one_segment_written_at_adoption_and_listed_by_every_later_version(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each version of a device in a fleet used to copy the other devices' whole statistics; now the adopting
    commit writes them once, each later version's fleet_statistics.npz names that segment, they read back bit for
    bit, a rollback past the adoption drops them and one to after it brings them back, and an edgeft that reads
    formats up to 2 calls the records listing the segment too new."""
    others = copy(learn(wide_bundle, tmp_path / "other", arrivals[:1] + arrivals[5:]).class_statistics())
    state = tmp_path / "state"
    learn(wide_bundle, state, arrivals[:1])
    adopted_fleet(wide_bundle, state, others, arrivals[1:4])  # versions 2 (the adoption) to 5
    segment = state / SEGMENTS_DIR / "000002.fleet.statistics.npz"
    assert sorted(p.name for p in (state / SEGMENTS_DIR).glob("*.fleet.*")) == [segment.name]
    for number in range(2, 6):
        record = json.loads((state / "versions" / f"{number:06d}.json").read_text())
        assert record["segments"][segment.name]["sha256"] == sha256_file(segment)
        assert record["format_version"] == 3
        index = state / "versions" / f"{number:06d}.fleet_statistics.npz"
        assert 50 * index.stat().st_size < segment.stat().st_size  # a name, not 2,080 + 192 numbers
    with Adapter(wide_bundle, state, policy=NO_GUARD, head_learner="slda") as adapter:
        assert_identical(adapter.fleet_statistics(), others)
        adapter.rollback(1)
        assert adapter.fleet_statistics() is None
        adapter.rollback(4)
        assert_identical(adapter.fleet_statistics(), others)
    monkeypatch.setattr("edgeft.runtime.version_record.RECORD_FORMAT_VERSION", 2)
    with pytest.raises(EdgeftError, match=r"000007.json: version metadata format 3; this edgeft reads formats 1 to 2"):
        read_current_record(state)


def test_fleet_statistics_an_older_edgeft_kept_whole_still_load_and_the_next_arrival_writes_their_segment(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path
) -> None:
    others = copy(learn(wide_bundle, tmp_path / "other", arrivals[:1] + arrivals[5:]).class_statistics())
    state = tmp_path / "state"
    learn(wide_bundle, state, arrivals[:1])
    adopted_fleet(wide_bundle, state, others, [])
    record_file, fleet_file = (state / "versions" / f"000002.{kind}" for kind in ("json", "fleet_statistics.npz"))
    record = json.loads(record_file.read_text())  # version 2 as an older edgeft wrote it: the whole file, no segment
    others.save(fleet_file)
    record["sha256"]["fleet_statistics.npz"] = sha256_file(fleet_file)
    record["segments"] = {name: entry for name, entry in record["segments"].items() if ".fleet." not in name}
    record_file.write_text(json.dumps({**record, "format_version": 2}))
    (state / SEGMENTS_DIR / "000002.fleet.statistics.npz").unlink()
    with Adapter(wide_bundle, state, policy=NO_GUARD, head_learner="slda") as adapter:
        assert_identical(adapter.fleet_statistics(), others)
        adapter.learn_features(*arrivals[1])
    assert sorted(p.name for p in (state / SEGMENTS_DIR).glob("*.fleet.*")) == ["000003.fleet.statistics.npz"]
    with Adapter(wide_bundle, state, head_learner="slda") as reopened:
        assert_identical(reopened.fleet_statistics(), others)


def test_a_learner_without_statistics_copying_their_index_lists_their_segments_too(
    wide_bundle: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], tmp_path: Path
) -> None:
    """An sgd learner opening an slda state keeps no statistics, but a head it adopts copies the parent's index
    files: its version must list the segments they name, or slda would find them missing (and pruning remove them)."""
    others = copy(learn(wide_bundle, tmp_path / "other", arrivals[:1] + arrivals[5:]).class_statistics())
    state = tmp_path / "state"
    learned = copy(learn(wide_bundle, state, arrivals[:2]).class_statistics())
    adopted_fleet(wide_bundle, state, others, [])  # version 3
    with Adapter(wide_bundle, state, policy=NO_GUARD, head_learner="sgd") as adapter:
        assert adapter.adopt(adapter.parameters(), adapter.classes, origin="elsewhere").promoted  # version 4
    with Adapter(wide_bundle, state, head_learner="slda", keep_versions=1) as adapter:
        assert adapter.version == 4
        assert_identical(adapter.class_statistics(), learned)
        assert_identical(adapter.fleet_statistics(), others)
        adapter.learn_features(*arrivals[2])  # version 5, keeping only itself: version 4's segments still listed
    with Adapter(wide_bundle, state, head_learner="slda") as reopened:
        assert_identical(reopened.fleet_statistics(), others)
