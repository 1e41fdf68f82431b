"""Continual learning: classes arriving over time, prequential metrics, the promotion guard, the logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from conftest import TEST_DEFAULTS
from helpers import CLASSES, make_dataset

from edgeft.bundle import Bundle
from edgeft.errors import DataError, EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy, decide
from edgeft.runtime.history import read_lines
from edgeft.runtime.merge import write_merged_model
from edgeft.runtime.schedule import learning_rates
from edgeft.runtime.trainer import feature_normaliser

Data = tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def open_bundle(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A bundle that knows only 'red' and reserves outputs for 3 more classes."""
    out = tmp_path_factory.mktemp("open") / "bundle"
    return export_bundle(ExportConfig(tiny_model, out, classes=["red"], max_classes=4, defaults=TEST_DEFAULTS))


def _names(y: np.ndarray) -> np.ndarray:
    return np.array(CLASSES)[y]


def _only(x: np.ndarray, y: np.ndarray, *keep: int) -> Data:
    mask = np.isin(y, keep)
    return x[mask], y[mask]


def test_new_label_names_take_free_outputs_and_unseen_ones_are_masked(
    open_bundle: Bundle, state_dir: Path, train_data: Data, test_data: Data
) -> None:
    x, y = train_data
    with Adapter(open_bundle, state_dir) as adapter:
        assert (adapter.classes, adapter.capacity) == (["red"], 4)
        first = adapter.learn(*_only(x, _names(y), "red", "green"))
        assert first.new_classes == ["green"] and adapter.classes == ["red", "green"]
        assert adapter.predict_proba(x[:5]).shape == (5, 2)
        second = adapter.learn(x, _names(y))
        assert second.new_classes == ["blue"] and adapter.classes == ["red", "green", "blue"]
        probabilities = adapter.predict_proba(x[:5])
        assert probabilities.shape == (5, 3)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    reopened = Adapter(open_bundle, state_dir)
    assert reopened.classes == ["red", "green", "blue"]
    assert reopened.evaluate(test_data[0], _names(test_data[1])) >= 0.8
    meta = json.loads((state_dir / "versions" / "000002.json").read_text())
    assert meta["classes"] == ["red", "green", "blue"]


def test_integer_labels_beyond_known_classes_are_new_class_names(open_bundle: Bundle, state_dir: Path) -> None:
    x, _ = make_dataset(6, seed=9)
    with Adapter(open_bundle, state_dir) as adapter:
        encoded = adapter.encode(np.array([0, 5, 7, 5]))
        assert encoded.indices.tolist() == [0, 1, 2, 1] and encoded.classes == ["red", "5", "7"]


def test_labels_beyond_capacity_are_refused_and_nothing_is_committed(
    open_bundle: Bundle, state_dir: Path, train_data: Data
) -> None:
    x, _ = train_data
    labels = np.array(["red", "a", "b", "c", "d", "red"])
    with Adapter(open_bundle, state_dir) as adapter:
        encoded = adapter.encode(labels)
        assert encoded.fits.tolist() == [True, True, True, True, False, True] and encoded.overflow == ["d"]
        with pytest.raises(DataError, match=r"unknown label\(s\) \['d'\] do not fit: the head has 4 outputs"):
            adapter.learn(x[:6], labels, origin="batch.npz")
        assert adapter.version == 0 and adapter.classes == ["red"]


def test_open_set_bundle_without_classes_predicts_only_after_learning(
    tiny_model: Path, tmp_path: Path, train_data: Data
) -> None:
    bundle = export_bundle(ExportConfig(tiny_model, tmp_path / "b", max_classes=3, defaults=TEST_DEFAULTS))
    x, y = train_data
    with Adapter(bundle, tmp_path / "state") as adapter:
        with pytest.raises(Exception, match="knows no classes yet"):
            adapter.predict(x[:2])
        result = adapter.learn(x, _names(y))
        assert result.prequential_accuracy is None  # nothing to predict with before the first arrival
        assert sorted(adapter.classes) == sorted(CLASSES)
        assert set(adapter.predict(x[:10])) <= set(CLASSES)


def test_prequential_metrics_are_logged_per_arrival(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir) as adapter:
        first = adapter.learn(x[:60], y[:60])
        second = adapter.learn(x[60:], y[60:])
    # Predicted before learning: the untrained head is near chance, the trained one is not.
    assert first.prequential_accuracy < 0.6 < 0.7 <= second.prequential_accuracy
    rows = list(read_lines(state_dir / "metrics.jsonl"))
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[1]["prequential"]["accuracy"] == pytest.approx(second.prequential_accuracy)
    assert rows[1]["prequential"]["samples"] == 60 and rows[1]["promoted"] is True
    assert sum(rows[1]["class_counts"].values()) == 120
    assert rows[1]["trained"] + rows[1]["held_out"] == 60


def test_guard_refuses_a_flood_of_mislabelled_data(bundle: Bundle, state_dir: Path) -> None:
    x, y = make_dataset(240, seed=11)
    flood_x, flood_y = make_dataset(400, seed=12)
    policy = GuardPolicy(holdout_fraction=0.25)
    with Adapter(bundle, state_dir, policy=policy) as adapter:
        adapter.learn(x[:120], y[:120])
        good = adapter.learn(x[120:], y[120:])
        assert good.promoted and "holdout accuracy" in good.reason
        before = adapter.parameters()
        flood = adapter.learn(flood_x, (flood_y + 1) % 3, origin="flood.npz")  # every label wrong
        assert not flood.promoted and "would fall" in flood.reason, flood
        assert flood.version == 3 and adapter.meta["head_version"] == 2
        for name, value in before.items():
            np.testing.assert_array_equal(adapter.parameters()[name], value, err_msg=name)
        assert (state_dir / "rejected" / "000003.head.npz").is_file()
        assert adapter.meta["samples_accepted"] == 240 and adapter.meta["samples_received"] == 640
        recovered = adapter.learn(*make_dataset(60, seed=13))
        assert recovered.promoted and recovered.version == 4
    journal = list(read_lines(state_dir / "metrics.jsonl"))
    assert [r["promoted"] for r in journal] == [True, True, False, True]
    assert journal[2]["guard"]["candidate_accuracy"] < journal[2]["guard"]["current_accuracy"] - policy.tolerance


def test_fixed_holdout_is_used_instead_of_a_share(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    holdout = make_dataset(40, seed=21)
    with Adapter(bundle, state_dir, holdout=holdout) as adapter:
        first = adapter.learn(x[:60], y[:60])
        assert first.held_out == 0 and first.trained == 60
        assert "too small" in first.reason  # nothing learned yet: no class of the fixed set to judge on
        second = adapter.learn(*make_dataset(60, seed=23))
        assert second.promoted and "holdout accuracy" in second.reason and second.held_out == 0
        flood_x, flood_y = make_dataset(300, seed=22)
        flood = adapter.learn(flood_x, (flood_y + 1) % 3)
        assert not flood.promoted and flood.held_out == 0


def test_guard_disabled_trains_on_everything(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir, policy=GuardPolicy(enabled=False)) as adapter:
        result = adapter.learn(x, y)
    assert (result.trained, result.held_out, result.promoted, result.reason) == (120, 0, True, "guard disabled")


def test_logs_catch_up_after_a_crash_between_commit_and_append(
    bundle: Bundle, state_dir: Path, train_data: Data
) -> None:
    x, y = train_data
    inputs = [{"name": "a.npz", "sha256": "a" * 64, "samples": 60}]
    with Adapter(bundle, state_dir) as adapter:
        adapter.learn(x[:60], y[:60], inputs=inputs)
    journal, metrics = state_dir / "journal.jsonl", state_dir / "metrics.jsonl"
    assert len(list(read_lines(journal))) == 1
    # A crash after the commit of version 2 but before (or in the middle of) its log lines:
    journal.write_bytes(journal.read_bytes() + b'{"version": 2, "na')
    metrics.write_bytes(b"")
    with Adapter(bundle, state_dir) as adapter:
        adapter.learn(x[60:], y[60:], inputs=[{"name": "b.npz", "sha256": "b" * 64, "samples": 60}])
        assert adapter.consumed_inputs() == {"a" * 64: 1, "b" * 64: 2}
    assert [r["version"] for r in read_lines(metrics)] == [1, 2]
    assert [(r["version"], r["name"]) for r in read_lines(journal)] == [(1, "a.npz"), (2, "b.npz")]


def test_cosine_schedule_warms_up_then_decays() -> None:
    rate = learning_rates("cosine", 1.0, 100)
    rates = [rate(step) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and max(rates) == pytest.approx(1.0, abs=0.01)
    assert rates.index(max(rates)) <= 11 and rates[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert learning_rates("constant", 0.3, 5)(4) == 0.3
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        learning_rates("step", 1.0, 5)


def test_cosine_schedule_learns(bundle: Bundle, state_dir: Path, train_data: Data, test_data: Data) -> None:
    with Adapter(bundle, state_dir, schedule="cosine") as adapter:
        adapter.learn(*train_data)
        assert adapter.evaluate(*test_data) >= 0.8
        assert adapter.meta["arrival"]["schedule"] == "cosine"


def test_replay_memory_cap(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    head = bundle.manifest.head
    one_per_class_mb = 4 * head.feature_dim * head.num_outputs / 2**20
    with Adapter(bundle, state_dir, replay_mb=one_per_class_mb * 7.5) as adapter:
        adapter.learn(*train_data)
    with Adapter(bundle, state_dir, replay_mb=one_per_class_mb * 7.5) as reopened:  # the buffer as committed
        replay = reopened.replay_buffer()
        assert np.bincount(replay.labels).tolist() == [7, 7, 7]
        assert replay.features.nbytes <= one_per_class_mb * 7.5 * 2**20


def test_guard_lets_a_new_class_in(open_bundle: Bundle, state_dir: Path) -> None:
    x, y = make_dataset(600, seed=31)
    names = _names(y)
    old = np.isin(names, ["red", "green"])
    with Adapter(open_bundle, state_dir, policy=GuardPolicy(holdout_fraction=0.3)) as adapter:
        adapter.learn(x[old][:150], names[old][:150])
        adapter.learn(x[old][150:], names[old][150:])
        assert adapter.meta["arrival"]["guard"]["holdout_samples"] >= 20
        arrival = adapter.learn(x[~old], names[~old])
    assert arrival.promoted and arrival.new_classes == ["blue"], arrival.reason
    assert "holdout accuracy" in arrival.reason


@pytest.mark.parametrize(
    ("lost", "won", "promoted"),
    [(3, 1, True), (12, 0, False), (14, 6, True), (40, 10, False), (0, 0, True)],
)
def test_guard_refuses_only_a_significant_fall(lost: int, won: int, promoted: bool) -> None:
    current = np.array([True] * lost + [False] * won + [True] * 60 + [False] * 10)
    candidate = np.array([False] * lost + [True] * won + [True] * 60 + [False] * 10)
    decision = decide(GuardPolicy(tolerance=0.02), current, candidate)
    assert decision.promoted is promoted, decision
    assert decision.current_accuracy == pytest.approx(current.mean())


def test_normaliser_centres_features_and_shares_one_scale() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(5.0, 1.0, (400, 3)) * np.array([1.0, 10.0, 0.001])
    mean, scale = feature_normaliser(features.astype(np.float32))
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-4)
    assert np.all(scale == scale[0])
    standardised = (features - mean) * scale
    assert np.mean(standardised.var(axis=0)) == pytest.approx(1.0, rel=1e-3)


def test_merged_model_has_outputs_for_learned_classes_only(
    open_bundle: Bundle, state_dir: Path, train_data: Data, tmp_path: Path
) -> None:
    x, y = train_data
    with Adapter(open_bundle, state_dir) as adapter:
        adapter.learn(*_only(x, _names(y), "red", "blue"))
        write_merged_model(adapter.bundle, adapter.parameters(), adapter.classes, tmp_path / "merged.onnx")
        expected = adapter.predict_proba(x[:7])
    session = onnxruntime.InferenceSession(str(tmp_path / "merged.onnx"), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(None, {"image": x[:7]})
    assert logits.shape == probabilities.shape == (7, 2)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["edgeft.classes"]) == ["red", "blue"]


def test_adopting_a_head_trained_elsewhere_goes_through_the_guard(
    bundle: Bundle, tmp_path: Path, train_data: Data, test_data: Data
) -> None:
    x, y = train_data
    policy = GuardPolicy(holdout_fraction=0.3)
    with Adapter(bundle, tmp_path / "other") as other:
        other.learn(x, y)
        trained = other.parameters()
    with Adapter(bundle, tmp_path / "device", policy=policy) as device:
        device.learn(*make_dataset(80, seed=41), epochs=1, lr=1e-3)
        weak = device.evaluate(*test_data)
        adopted = device.adopt(trained, list(CLASSES), origin="fleet round 1")
        assert adopted.promoted and adopted.version == 2, adopted.reason
        np.testing.assert_allclose(device.predict_proba(x[:5]), other.predict_proba(x[:5]), atol=1e-6)
        assert device.evaluate(*test_data) > weak
        garbage = {
            name: np.random.default_rng(1).normal(0, 5, value.shape).astype(np.float32)
            for name, value in trained.items()
        }
        garbage.update({k: trained[k] for k in ("head.feature_mean", "head.feature_scale")})
        refused = device.adopt(garbage, list(CLASSES), origin="fleet round 2")
        assert not refused.promoted and refused.version == 3
        np.testing.assert_allclose(device.predict_proba(x[:5]), other.predict_proba(x[:5]), atol=1e-6)
        with pytest.raises(EdgeftError, match="do not extend this device's"):
            device.adopt(trained, ["green", "red", "blue"], origin="fleet round 3")
        with pytest.raises(EdgeftError, match="fleet round 4: parameters"):
            device.adopt({"head.weight": trained["head.weight"]}, list(CLASSES), origin="fleet round 4")
        assert device.version == 3
    rows = list(read_lines(tmp_path / "device" / "metrics.jsonl"))
    assert [(r["version"], r.get("adopted", False), r["promoted"]) for r in rows] == [
        (1, False, True),
        (2, True, True),
        (3, True, False),
    ]
