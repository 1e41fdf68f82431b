"""Closed-form head learners (streaming LDA, nearest class mean) on a real exported bundle and real ORT sessions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, make_dataset, one_error_line, run_cli, run_onnx
from tiny_models import classifier, save

from edgeft.bundle import sha256_file
from edgeft.common.positive_definite import BLOCK
from edgeft.errors import EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.class_statistics import STATISTICS_FILE, ClassStatistics
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.slda import DEFAULT_SHRINKAGE, UNSEEN_BIAS, ClosedFormHead
from edgeft.runtime.statistics_log import load_statistics

NO_GUARD = GuardPolicy(enabled=False)


@pytest.fixture(scope="module")
def features(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Backbone features of the training and test images, computed once with the real bundle."""
    train_x, train_y = make_dataset(150, seed=1)
    test_x, test_y = make_dataset(90, seed=2)
    with Adapter(bundle_dir, tmp_path_factory.mktemp("embed") / "s") as adapter:
        return {"train": adapter.embed(train_x), "train_y": train_y, "test": adapter.embed(test_x), "test_y": test_y}


def learned(bundle_dir: Path, state: Path, arrivals: list[tuple[np.ndarray, np.ndarray]], learner: str) -> Adapter:
    """An Adapter (closed again) that learned ``arrivals`` of (features, class indices) in order, guard off."""
    with Adapter(bundle_dir, state, policy=NO_GUARD, head_learner=learner) as adapter:
        for f, y in arrivals:
            result = adapter.learn_features(f, np.array(CLASSES)[y])
            assert result.promoted and result.epochs == 0 and result.replayed == 0
    return adapter


def numpy_lda_scores(x: np.ndarray, y: np.ndarray, queries: np.ndarray, shrinkage: float) -> np.ndarray:
    """Streaming LDA's decision scores computed directly from the samples (float64, no edgeft code)."""
    x, queries = x.astype(np.float64), queries.astype(np.float64)
    means = np.stack([x[y == k].mean(axis=0) for k in range(len(CLASSES))])
    centred = x - means[y]
    covariance = centred.T @ centred / len(x)
    variance = np.trace(covariance) / x.shape[1]
    precision = np.linalg.inv((1 - shrinkage) * covariance + shrinkage * variance * np.eye(x.shape[1]))
    return queries @ precision @ means.T - 0.5 * np.einsum("kd,de,ke->k", means, precision, means)


def relative(scores: np.ndarray) -> np.ndarray:
    """Scores relative to the first class's (a per-sample constant does not change a softmax or an argmax)."""
    return scores - scores[:, :1]


def test_slda_head_is_the_closed_form_lda_and_order_independent(
    bundle_dir: Path, features: dict[str, np.ndarray], tmp_path: Path
) -> None:
    f, y, test = features["train"], features["train_y"], features["test"]
    in_two = learned(bundle_dir, tmp_path / "two", [(f[:70], y[:70]), (f[70:], y[70:])], "slda")
    order = np.random.default_rng(0).permutation(len(y))
    in_one = learned(bundle_dir, tmp_path / "one", [(f[order], y[order])], "slda")
    expected = numpy_lda_scores(f, y, test, DEFAULT_SHRINKAGE)
    for adapter in (in_two, in_one):
        with Adapter(bundle_dir, adapter.store.root) as reopened:
            logits = reopened._predictor.logits(test, reopened.parameters())
            predicted = reopened.predict_proba_features(test).argmax(axis=1)
        scale = np.abs(relative(expected)).max()
        np.testing.assert_allclose(relative(logits), relative(expected), atol=1e-4 * scale)
        np.testing.assert_array_equal(predicted, expected.argmax(axis=1))
    assert (expected.argmax(axis=1) == features["test_y"]).mean() > 0.8  # it learned (chance: 1/3)


def read_statistics(state: Path, bundle_dir: Path) -> ClassStatistics:
    with Adapter(bundle_dir, state) as adapter:
        version = adapter.store.current()
        head = adapter.bundle.manifest.head
        assert version is not None
        path = version.files[STATISTICS_FILE]
        return load_statistics(adapter.store, version, path, head.num_outputs, head.feature_dim, full=True)[0]


def assert_same_statistics(a: ClassStatistics, b: ClassStatistics) -> None:
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a.moment, b.moment, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_statistics_continue_across_processes_and_cli_predicts_with_the_lda_head(
    bundle_dir: Path, tmp_path: Path
) -> None:
    x, y = make_dataset(100, seed=5)
    names = np.array(CLASSES)[y]
    np.savez(tmp_path / "a.npz", x=x[:40], y=names[:40])
    np.savez(tmp_path / "b.npz", x=x[40:], y=names[40:])
    np.save(tmp_path / "query.npy", x[:10])
    for part in ("a", "b"):  # two arrivals, two processes
        done = run_cli(
            "adapt", bundle_dir, "-s", tmp_path / "cli", "--data", tmp_path / f"{part}.npz", "--head-learner", "slda",
            "--no-guard", "--json",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[-1])["head_learner"] == "slda"
    with Adapter(bundle_dir, tmp_path / "one", policy=NO_GUARD, head_learner="slda") as adapter:
        adapter.learn(x[:40], names[:40])
        adapter.learn(x[40:], names[40:])
        expected = adapter.predict(x[:10])
    with Adapter(bundle_dir, tmp_path / "both", policy=NO_GUARD, head_learner="slda") as adapter:
        adapter.learn(x, names)
    cli = read_statistics(tmp_path / "cli", bundle_dir)
    assert_same_statistics(cli, read_statistics(tmp_path / "one", bundle_dir))
    assert_same_statistics(cli, read_statistics(tmp_path / "both", bundle_dir))
    assert cli.counts.sum() == 100
    done = run_cli("predict", bundle_dir, tmp_path / "query.npy", "-s", tmp_path / "cli", "--json")
    assert done.returncode == 0, done.stderr
    assert [row["label"] for row in json.loads(done.stdout)["predictions"]] == expected
    done = run_cli("export-inference", bundle_dir, "-s", tmp_path / "cli", "-o", tmp_path / "merged.onnx")
    assert done.returncode == 0, done.stderr
    probabilities = run_onnx(tmp_path / "merged.onnx", {"image": x[:10]}, ["probabilities"])[0]
    assert [CLASSES[i] for i in probabilities.argmax(axis=1)] == expected  # the merged model: the same LDA head


def test_ncm_predicts_the_nearest_class_mean(bundle_dir: Path, features: dict[str, np.ndarray], tmp_path: Path) -> None:
    f, y, test = features["train"], features["train_y"], features["test"]
    adapter = learned(bundle_dir, tmp_path / "s", [(f[:50], y[:50]), (f[50:], y[50:])], "ncm")
    means = np.stack([f[y == k].astype(np.float64).mean(axis=0) for k in range(len(CLASSES))])
    nearest = ((test[:, None, :] - means[None]) ** 2).sum(axis=2).argmin(axis=1)
    with Adapter(bundle_dir, adapter.store.root) as reopened:
        np.testing.assert_array_equal(reopened.predict_proba_features(test).argmax(axis=1), nearest)
    assert read_statistics(adapter.store.root, bundle_dir).moment.shape == ()  # only the trace: no D x D matrix


def test_classes_without_samples_are_never_predicted(
    bundle_dir: Path, features: dict[str, np.ndarray], tmp_path: Path
) -> None:
    f, y = features["train"], features["train_y"]
    seen = y != 2  # the bundle names red, green and blue, but no blue sample arrives
    adapter = learned(bundle_dir, tmp_path / "s", [(f[seen], y[seen])], "slda")
    with Adapter(bundle_dir, adapter.store.root) as reopened:
        assert reopened.parameters()["head.bias"][2] == UNSEEN_BIAS
        assert set(reopened.predict_proba_features(features["test"]).argmax(axis=1)) <= {0, 1}


def test_guard_refusal_keeps_the_previous_statistics(
    bundle_dir: Path, features: dict[str, np.ndarray], tmp_path: Path
) -> None:
    f, y = features["train"], features["train_y"]
    guard = GuardPolicy(holdout_fraction=0.3)
    with Adapter(bundle_dir, tmp_path / "s", head_learner="slda", policy=guard) as adapter:
        assert adapter.learn_features(f, np.array(CLASSES)[y]).promoted
        before = adapter.store.current()
        wrong = np.array(CLASSES)[(y + 1) % 3]  # every label wrong, twice as many: LDA's means move to other classes
        result = adapter.learn_features(np.concatenate([f, f]), np.concatenate([wrong, wrong]))
        after = adapter.store.current()
    assert not result.promoted, result.reason
    assert before is not None and after is not None and after.number == before.number + 1
    assert after.files[STATISTICS_FILE].read_bytes() == before.files[STATISTICS_FILE].read_bytes()


@pytest.mark.slow
def test_unsupported_heads_and_learners_are_clear_errors(
    bundle_dir: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    mlp = tmp_path / "mlp"
    export_bundle(ExportConfig(save(classifier(), tmp_path / "tiny.onnx"), mlp, classes=list(CLASSES), head="mlp:8"))
    with pytest.raises(EdgeftError, match="needs a linear head"):
        Adapter(mlp, tmp_path / "s", head_learner="slda")
    with pytest.raises(EdgeftError, match="unknown head learner 'lda'"):
        Adapter(bundle_dir, tmp_path / "s", head_learner="lda")
    done = run_cli("adapt", mlp, "-s", tmp_path / "s", "--data", tmp_path / "none.npz", "--head-learner", "ncm")
    assert done.returncode == 1 and "needs a linear head" in one_error_line(done.stderr)


def test_closed_form_learner_refuses_a_state_sgd_learned(bundle_dir: Path, tmp_path: Path) -> None:
    x, y = make_dataset(30, seed=3)
    with Adapter(bundle_dir, tmp_path / "s", policy=NO_GUARD) as adapter:
        adapter.learn(x, y, epochs=1)
    with Adapter(bundle_dir, tmp_path / "s", head_learner="slda") as adapter:
        with pytest.raises(EdgeftError, match="without class statistics"):
            adapter.learn(x, y)


def test_rollback_brings_the_statistics_back_and_learning_continues_from_them(
    bundle_dir: Path, features: dict[str, np.ndarray], tmp_path: Path
) -> None:
    f, y = features["train"], features["train_y"]
    names = np.array(CLASSES)[y]
    with Adapter(bundle_dir, tmp_path / "s", policy=NO_GUARD, head_learner="slda") as adapter:
        adapter.learn_features(f[:60], names[:60])
        first = adapter.store.current()
        adapter.learn_features(f[60:120], names[60:120])
        adapter.rollback(1)
        rolled = adapter.store.current()
        assert first is not None and rolled is not None and rolled.number == 3
        assert rolled.files[STATISTICS_FILE].read_bytes() == first.files[STATISTICS_FILE].read_bytes()
        adapter.learn_features(f[120:], names[120:])
        assert len(adapter.history()) == 4
    continued = read_statistics(tmp_path / "s", bundle_dir)
    assert continued.counts.sum() == 60 + len(f[120:])  # the rolled-back arrival is not in them


def direct_solve_head(
    statistics: ClassStatistics, mean: np.ndarray, scale: np.ndarray, shrinkage: float
) -> tuple[np.ndarray, np.ndarray]:
    """The LDA head as first written: covariance, shrinkage with np.eye and an LU solve (np.linalg.solve)."""
    centred = statistics.means() - mean
    variance = statistics.within_class_variance()
    covariance = statistics.within_class_scatter() / statistics.total
    shrunk = (1.0 - shrinkage) * covariance + shrinkage * variance * np.eye(len(covariance))
    weight = np.linalg.solve(shrunk, centred.T).T
    bias = -0.5 * np.einsum("kd,kd->k", centred, weight)
    weight[statistics.counts == 0], bias[statistics.counts == 0] = 0.0, UNSEEN_BIAS
    return (weight / scale).astype(np.float32), bias.astype(np.float32)


def test_the_cholesky_head_equals_the_direct_solve_after_many_arrivals_and_reloads(tmp_path: Path) -> None:
    """Many features (several solve blocks), fewer samples than features at first, saved and reloaded every time."""
    rng = np.random.default_rng(0)
    classes, dim = 10, 3 * BLOCK + 5
    centres = rng.standard_normal((classes, dim)) * np.geomspace(2.0, 0.01, dim)
    mixing = rng.standard_normal((dim, dim)) * np.geomspace(1.0, 1e-3, dim)  # correlated, spread spectrum
    mean, scale = rng.standard_normal(dim), rng.uniform(0.5, 2.0, dim)
    learner = ClosedFormHead("slda", DEFAULT_SHRINKAGE)
    statistics = ClassStatistics.empty(classes, dim, full=True)
    for arrival in range(40):
        labels = rng.integers(0, min(classes, 2 + arrival // 4), 16)  # classes keep arriving, some unseen for long
        statistics.add(centres[labels] + rng.standard_normal((16, dim)) @ mixing, labels)
        statistics.save(tmp_path / "statistics.npz")
        reloaded = ClassStatistics.load(tmp_path / "statistics.npz", classes, dim)
        np.testing.assert_array_equal(reloaded.moment, statistics.moment)  # the upper triangle loses nothing
        statistics = reloaded
        weight, bias = learner.linear_head(statistics, mean, scale)
        expected_weight, expected_bias = direct_solve_head(statistics, mean, scale, DEFAULT_SHRINKAGE)
        np.testing.assert_allclose(weight, expected_weight, rtol=1e-6, atol=1e-9 * np.abs(expected_weight).max())
        np.testing.assert_allclose(bias, expected_bias, rtol=1e-6)
    assert statistics.total > dim and (statistics.counts > 0).all()


def test_statistics_that_store_the_whole_moment_still_load_and_continue(
    bundle_dir: Path, features: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """A state whose statistics file holds the whole [D, D] moment (as edgeft wrote it before the upper triangle)."""
    f, names = features["train"], np.array(CLASSES)[features["train_y"]]
    with Adapter(bundle_dir, tmp_path / "old", policy=NO_GUARD, head_learner="slda") as adapter:
        adapter.learn_features(f[:70], names[:70])
        first = adapter.store.current()
    assert first is not None
    path, statistics = first.files[STATISTICS_FILE], read_statistics(tmp_path / "old", bundle_dir)
    with path.open("wb") as handle:  # the layout before: np.savez(counts, sums, moment) with the whole matrix
        np.savez(handle, counts=statistics.counts, sums=statistics.sums, moment=statistics.moment)
    metadata = path.with_name(f"{first.number:06d}.json")
    meta = json.loads(metadata.read_text())
    meta["sha256"][STATISTICS_FILE] = sha256_file(path)
    metadata.write_text(json.dumps(meta))
    with Adapter(bundle_dir, tmp_path / "old", policy=NO_GUARD, head_learner="slda") as adapter:
        adapter.learn_features(f[70:], names[70:])
        continued = adapter.parameters()
    with Adapter(bundle_dir, tmp_path / "new", policy=NO_GUARD, head_learner="slda") as adapter:
        adapter.learn_features(f[:70], names[:70])
        adapter.learn_features(f[70:], names[70:])
        expected = adapter.parameters()
    assert_same_statistics(read_statistics(tmp_path / "old", bundle_dir), read_statistics(tmp_path / "new", bundle_dir))
    for name in ("head.weight", "head.bias"):
        np.testing.assert_allclose(continued[name], expected[name], rtol=1e-5, atol=1e-6)
    with np.load(metadata.with_name(f"{first.number + 1:06d}.{STATISTICS_FILE}")) as index:
        assert index["chain"].tolist() == [f"{first.number + 1:06d}.statistics.npz"]  # a snapshot, not rows
    with np.load(tmp_path / "old" / "segments" / f"{first.number + 1:06d}.statistics.npz") as data:
        assert "moment_upper" in data and "moment" not in data  # the next version is written in the new layout


def test_a_statistics_file_with_a_wrong_triangle_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "statistics.npz"
    np.savez(path, counts=np.zeros(3, np.int64), sums=np.zeros((3, 6)), moment_upper=np.zeros(20))
    with pytest.raises(EdgeftError, match=r"statistics.npz is not valid class statistics .*upper triangle of \[6, 6\]"):
        ClassStatistics.load(path, 3, 6)
