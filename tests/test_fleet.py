"""Fleet learning without Flower: class alignment, the pooled normaliser, the server's store, a device's rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, make_dataset
from tiny_models import classifier, save

from edgeft.bundle import Bundle, Defaults
from edgeft.errors import EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.fleet.alignment import device_view, extend_registry, row_order, to_device, to_global
from edgeft.fleet.device import FleetDevice, adopted_version
from edgeft.fleet.normaliser import moments, pooled_normaliser
from edgeft.fleet.store import GlobalStore
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.trainer import feature_normaliser

OPTIONS = LearnOptions(epochs=5, batch_size=16, lr=0.05, seed=0)


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported with 5 outputs for red/green/blue, so devices can add two classes of their own."""
    root = tmp_path_factory.mktemp("wide")
    model = save(classifier(), root / "tiny.onnx")
    defaults = Defaults(epochs=10, batch_size=16, lr=0.05, seed=0)
    return export_bundle(
        ExportConfig(model, root / "bundle", classes=list(CLASSES), max_classes=5, defaults=defaults)
    ).path


def test_registry_keeps_old_outputs_and_adds_new_names_sorted() -> None:
    registry = ["red", "green", "blue"]
    assert extend_registry(registry, [["red", "zebra"], ["ant", "green"]], 5) == [
        "red",
        "green",
        "blue",
        "ant",
        "zebra",
    ]
    assert extend_registry(registry, [["zebra"], ["ant"]], 5) == extend_registry(registry, [["ant"], ["zebra"]], 5)
    with pytest.raises(EdgeftError, match="6 classes but the head has 5 outputs"):
        extend_registry(registry, [["a", "b", "c"]], 5)


def test_rows_move_between_device_and_fleet_order() -> None:
    fleet = ["red", "green", "blue", "ant"]
    device = ["blue", "red", "purple"]  # purple is not registered yet: it takes the spare fifth row
    order = row_order(device, fleet, 5)
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4]
    assert device_view(device, fleet) == ["blue", "red", "purple", "green", "ant"]
    weight = np.arange(5, dtype=np.float32)[:, None] * np.ones((5, 2), np.float32)
    params = {"head.weight": weight, "head.bias": np.arange(5, dtype=np.float32), "head.feature_mean": np.zeros(2)}
    mine = to_device(params, order)
    assert mine["head.bias"].tolist() == [2, 0, 4, 1, 3]  # blue, red, spare, green, ant
    back = to_global(mine, order)
    for name, value in params.items():
        np.testing.assert_array_equal(back[name], value)
    with pytest.raises(EdgeftError, match="do not fit the head's 4 outputs"):
        row_order(["purple"], fleet, 4)


def test_pooled_normaliser_equals_the_one_fitted_on_all_features() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(i, 1 + i, (20 + 7 * i, 6)).astype(np.float32) for i in range(3)]
    mean, scale = pooled_normaliser([moments(p) for p in parts] + [moments(np.empty((0, 6), np.float32))])
    expected_mean, expected_scale = feature_normaliser(np.concatenate(parts))
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scale, expected_scale, rtol=1e-5)
    assert pooled_normaliser([moments(np.empty((0, 6), np.float32))]) is None


def test_global_store_saves_versions_and_refuses_another_bundle(
    bundle: Bundle, wide_bundle: Path, tmp_path: Path
) -> None:
    store = GlobalStore(tmp_path / "fleet", bundle)
    assert store.registry() == list(CLASSES) and store.latest() is None
    store.save_registry([*CLASSES, "ant"])
    head = {"head.weight": np.ones((3, 6), np.float32), "head.bias": np.zeros(3, np.float32)}
    store.save(1, head, [*CLASSES, "ant"], {"round": 1})
    latest = store.latest()
    assert latest is not None and latest.version == 1 and latest.classes == [*CLASSES, "ant"]
    np.testing.assert_array_equal(latest.parameters["head.weight"], head["head.weight"])
    assert store.meta(1)["round"] == 1
    with pytest.raises(EdgeftError, match="belongs to another bundle"):
        GlobalStore(tmp_path / "fleet", Bundle.load(wide_bundle)).registry()


def test_devices_with_different_label_orders_train_and_adopt_one_fleet_head(wide_bundle: Path, tmp_path: Path) -> None:
    x, y = make_dataset(240, seed=3)
    names = np.array(["red", "green", "blue"])[y]
    with Adapter(wide_bundle, tmp_path / "a") as a, Adapter(wide_bundle, tmp_path / "b") as b:
        a.learn(x[:120], np.where(y[:120] == 2, "teal", names[:120]))  # calls blue "teal"
        first = 120 + np.argsort(y[120:] != 0, kind="stable")  # b meets "purple" before "teal"
        b.learn(x[first], np.where(y[first] == 0, "purple", np.where(y[first] == 2, "teal", names[first])))
        fleet = extend_registry(list(CLASSES), [a.classes, b.classes], a.capacity)
        assert fleet == ["red", "green", "blue", "purple", "teal"]
        assert a.classes == ["red", "green", "blue", "teal"]  # not a prefix of the fleet's order: rows are permuted
        start = b.parameters()  # any head with the right names and shapes
        outcomes = [FleetDevice(d).train(start, fleet, OPTIONS) for d in (a, b)]
        assert [o.samples for o in outcomes] == [len(FleetDevice(d).replay()) for d in (a, b)]
        total = sum(o.samples for o in outcomes)
        averaged = {
            name: sum(o.parameters[name] * (o.samples / total) for o in outcomes).astype(np.float32) for name in start
        }
        for device in (a, b):
            result = FleetDevice(device).adopt(averaged, fleet, version=7)
            assert result.promoted, result.reason
            assert adopted_version(device.meta) == 7
            assert set(device.classes) == set(fleet)
        assert b.classes == fleet and a.classes == ["red", "green", "blue", "teal", "purple"]  # a keeps its order
        # Both devices give each class name the same probability, whatever order they met the names in.
        pa, pb = a.predict_proba(x[:10]), b.predict_proba(x[:10])
        for name in fleet:
            np.testing.assert_allclose(pa[:, a.classes.index(name)], pb[:, b.classes.index(name)], atol=1e-5)


def test_a_device_refuses_a_garbage_fleet_head_and_keeps_its_own(bundle: Bundle, tmp_path: Path) -> None:
    x, y = make_dataset(300, seed=5)
    with Adapter(bundle, tmp_path / "d") as adapter:
        adapter.learn(x, y)
        own = adapter.parameters()
        garbage = {k: np.random.default_rng(1).normal(0, 5, v.shape).astype(np.float32) for k, v in own.items()}
        garbage.update({k: own[k] for k in ("head.feature_mean", "head.feature_scale")})
        result = FleetDevice(adapter).adopt(garbage, list(CLASSES), version=3)
        assert not result.promoted and "would fall" in result.reason
        assert adopted_version(adapter.meta) == 3
        for name, value in own.items():
            np.testing.assert_array_equal(adapter.parameters()[name], value)


def test_a_device_with_no_data_does_not_train(bundle: Bundle, tmp_path: Path) -> None:
    with Adapter(bundle, tmp_path / "empty") as adapter:
        with pytest.raises(EdgeftError, match="has learned nothing yet"):
            FleetDevice(adapter).train(adapter.parameters(), list(CLASSES), OPTIONS)


def test_pooled_device_statistics_give_the_central_lda_head(bundle_dir: Path, tmp_path: Path) -> None:
    """Three devices that each saw other classes (and one class on two devices) add up to one central device."""
    from edgeft.fleet.pooled_statistics import global_head, normaliser, pooled
    from edgeft.runtime.class_statistics import FLEET_STATISTICS_FILE
    from edgeft.runtime.guard import GuardPolicy
    from edgeft.runtime.slda import DEFAULT_SHRINKAGE, ClosedFormHead

    x, y = make_dataset(240, seed=21)
    names = np.array(CLASSES)[y]
    even = np.arange(len(y)) % 2 == 0
    # red+green (even samples), green+blue (odd samples), and every blue sample again: overlapping, non-IID
    splits = [np.isin(y, (0, 1)) & even, np.isin(y, (1, 2)) & ~even, y == 2]
    off = GuardPolicy(enabled=False)
    parts = []
    for i, mask in enumerate(splits):
        with Adapter(bundle_dir, tmp_path / f"device{i}", policy=off, head_learner="slda") as adapter:
            adapter.learn(x[mask], names[mask])
            parts.append(FleetDevice(adapter).statistics(list(CLASSES)))
    everything = np.concatenate([np.flatnonzero(mask) for mask in splits])  # a sample on two devices counts twice
    with Adapter(bundle_dir, tmp_path / "central", policy=off, head_learner="slda") as central:
        central.learn(x[everything], names[everything])
        expected = central.class_statistics()
        probabilities = central.predict_proba(x)
    total = pooled(parts)
    np.testing.assert_array_equal(total.counts, expected.counts)
    np.testing.assert_allclose(total.sums, expected.sums, rtol=1e-6)
    np.testing.assert_allclose(total.moment, expected.moment, rtol=1e-6)
    bundle = Bundle.load(bundle_dir)
    head = global_head(bundle, total, DEFAULT_SHRINKAGE)
    weight, bias = ClosedFormHead("slda", DEFAULT_SHRINKAGE).linear_head(expected, *normaliser(expected))
    np.testing.assert_allclose(head["head.weight"], weight, rtol=1e-6, atol=1e-6 * np.abs(weight).max())
    np.testing.assert_allclose(head["head.bias"], bias, rtol=1e-6, atol=1e-6 * np.abs(bias).max())
    more_x, more_y = make_dataset(90, seed=22)  # a later local arrival of red scans on device 0 (it saw no blue)
    new_x, new_y = more_x[more_y == 0], more_y[more_y == 0]
    with Adapter(bundle_dir, tmp_path / "device0", policy=off, head_learner="slda") as device:
        assert FleetDevice(device).adopt(head, list(CLASSES), 1, total).promoted
        np.testing.assert_array_equal(device.predict_proba(x).argmax(axis=1), probabilities.argmax(axis=1))
        device.learn(new_x, np.array(CLASSES)[new_y])
        after = device.predict_proba(x).argmax(axis=1)
    with Adapter(bundle_dir, tmp_path / "central", policy=off, head_learner="slda") as central:
        central.learn(new_x, np.array(CLASSES)[new_y])
        expected_after = central.predict_proba(x).argmax(axis=1)
    with Adapter(bundle_dir, tmp_path / "device0") as reopened:  # the others' statistics are part of the version
        version = reopened.store.current()
        assert version is not None and FLEET_STATISTICS_FILE in version.files
    assert (after == 2).any()  # the fleet's blue is still predicted after a local arrival
    np.testing.assert_array_equal(after, expected_after)


def test_fleet_policy_decides_on_a_head_better_overall_but_worse_on_the_devices_own_classes(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """Device A knows red and green, device B only blue. The fleet head knows all three but confuses half of the
    red scans with green: the guard refuses it on A's holdout, ``overall`` adopts it, ``always`` adopts anything."""
    from edgeft.fleet.policy import overall_accuracies
    from edgeft.runtime.guard import GuardPolicy
    from edgeft.runtime.history import read_lines

    x, y = make_dataset(900, seed=31)
    names = np.array(CLASSES)[y]
    wide_holdout = GuardPolicy(holdout_fraction=0.3)
    with Adapter(bundle_dir, tmp_path / "central", policy=GuardPolicy(enabled=False)) as central:
        central.learn(x, names)
        assert central.classes == list(CLASSES)
        head = central.parameters()
        probabilities = central.predict_proba(x)
    red = y == 0
    head["head.bias"] = head["head.bias"].copy()
    head["head.bias"][0] -= np.median(np.log(probabilities[red, 0]) - np.log(probabilities[red, 1]))
    verdicts = {}
    for policy in ("guard", "overall", "always"):
        with (
            Adapter(bundle_dir, tmp_path / f"a-{policy}", policy=wide_holdout) as a,
            Adapter(bundle_dir, tmp_path / f"b-{policy}", policy=wide_holdout) as b,
        ):
            a.learn(x[y != 2], names[y != 2])
            b.learn(x[y == 2], names[y == 2])
            device_a, device_b = FleetDevice(a, fleet_policy=policy), FleetDevice(b, fleet_policy=policy)
            fleet_scores = device_a.score(head, list(CLASSES)).plus(device_b.score(head, list(CLASSES)))
            labels, right = a.holdout_correct(a.parameters(), a.classes)  # A's current head on its holdout
            held_by_b = len(b.holdout_correct(b.parameters(), b.classes)[0])
            assert fleet_scores.total.tolist() == [int((labels == 0).sum()), int((labels == 1).sum()), held_by_b]
            own = device_a.score(a.parameters(), list(CLASSES))
            result = device_a.adopt(head, list(CLASSES), 1, fleet_scores=fleet_scores)
            verdicts[policy] = result.promoted
            row = [r for r in read_lines(a.store.root / "metrics.jsonl") if r.get("adopted")][-1]
            record = row["fleet_policy"]
            assert record["policy"] == policy and record["guard_promoted"] is False, record
            assert "would fall" in row["guard"]["reason"]  # the guard alone refuses: A's red scans suffer
            if policy == "overall":
                assert record["decided_by"] == "overall" and record["classes"] == 3
                assert record["candidate_overall"] > record["current_overall"], record
                learned = np.array([True, True, False])
                own_accuracy = [right[labels == i].mean() for i in range(2)]
                assert record["current_overall"] == pytest.approx(sum(own_accuracy) / 3)
                assert overall_accuracies(fleet_scores, own, learned)[0] == record["candidate_overall"]
                assert record["current_scored_by"] == "device"
                # Now A holds global head 1, which knows blue: the fleet's scores of head 1 score it, on all classes.
                again = device_a.adopt(head, list(CLASSES), 2, fleet_scores=fleet_scores, previous=(1, fleet_scores))
                record = [r for r in read_lines(a.store.root / "metrics.jsonl") if r.get("adopted")][-1]["fleet_policy"]
                assert record["current_scored_by"] == "fleet" and again.promoted
                assert record["current_overall"] == record["candidate_overall"]
                # A head that is worse everywhere is refused by the same policy, and logged as such.
                garbage = {k: np.zeros_like(v) if k in ("head.weight", "head.bias") else v for k, v in head.items()}
                garbage["head.bias"][2] = 1.0  # predicts blue for everything
                zero_scores = device_a.score(garbage, list(CLASSES)).plus(device_b.score(garbage, list(CLASSES)))
                refused = device_a.adopt(
                    garbage, list(CLASSES), 3, fleet_scores=zero_scores, previous=(2, fleet_scores)
                )
                assert not refused.promoted and "fleet policy overall refused" in refused.reason
            if policy == "always":
                broken = {k: np.full_like(v, np.nan) if k == "head.weight" else v for k, v in head.items()}
                assert not device_a.adopt(broken, list(CLASSES), 2).promoted  # never a non-finite head
    assert verdicts == {"guard": False, "overall": True, "always": True}
    with pytest.raises(EdgeftError, match="unknown fleet policy 'lenient'"):
        FleetDevice(a, fleet_policy="lenient")


def test_fleet_device_refuses_an_unknown_policy_before_starting_flower(bundle_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeft.cli import app

    result = CliRunner().invoke(
        app, ["fleet", "device", str(bundle_dir), "--state", str(tmp_path / "s"), "--fleet-policy", "lenient"]
    )
    assert result.exit_code == 2 and "guard, overall, always" in result.output, result.output


def test_an_sgd_device_sends_the_lda_statistics_of_its_replay_buffer(bundle_dir: Path, tmp_path: Path) -> None:
    """What ``statistics+fedavg`` starts from on sgd devices: their replayed samples' statistics, in fleet rows."""
    x, y = make_dataset(200, seed=41)
    names = np.array(CLASSES)[y]
    with Adapter(bundle_dir, tmp_path / "sgd") as adapter:
        adapter.learn(x, names)
        assert adapter.class_statistics() is None
        replay = adapter.replay_buffer()
        statistics = FleetDevice(adapter).statistics(list(CLASSES))
    replayed = np.array(adapter.classes)[replay.labels]
    for row, name in enumerate(CLASSES):
        mine = replay.features[replayed == name].astype(np.float64)
        assert statistics.counts[row] == len(mine) > 0
        np.testing.assert_allclose(statistics.sums[row], mine.sum(axis=0), rtol=1e-9)
    everything = replay.features.astype(np.float64)
    np.testing.assert_allclose(statistics.moment, everything.T @ everything, rtol=1e-9)
