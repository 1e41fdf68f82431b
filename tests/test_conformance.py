"""Conformance checks run over every learner the device runtime offers (after river's ``checks``): each trainer x
head learner x task the exporter makes must leave its inputs alone, learn the same head from the same seed, reload a
committed version to the same head, change nothing by predicting, keep its head through a refused bad arrival, and
refuse an empty one. The closed-form heads must also not care about arrival order."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DEFAULTS
from helpers import CLASSES, make_dataset, needs_ort

from edgeft.data.targets import MULTILABEL, REGRESSION
from edgeft.errors import DataError
from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy

NO_GUARD = GuardPolicy(enabled=False)
CLASSIFICATION = "classification"

# (task, trainer, head learner): every head learner on the portable trainer, the trained ones on ORT training too,
# and the trained learner on the exporter's other tasks (closed-form heads are for classification only).
CASES = [
    *[(CLASSIFICATION, "onnx", learner) for learner in ("sgd", "slda", "ncm", "slda+sgd")],
    pytest.param(CLASSIFICATION, "ort", "sgd", marks=needs_ort),
    pytest.param(CLASSIFICATION, "ort", "slda+sgd", marks=needs_ort),
    (MULTILABEL, "onnx", "sgd"),
    (REGRESSION, "onnx", "sgd"),
]


@pytest.fixture(scope="module")
def task_bundles(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One bundle per task the exporter makes, from the tiny real classifier."""
    root = tmp_path_factory.mktemp("conformance")
    bundles = {}
    for task in (CLASSIFICATION, MULTILABEL, REGRESSION):
        bundles[task] = root / task
        export_bundle(ExportConfig(tiny_model, bundles[task], classes=list(CLASSES), defaults=TEST_DEFAULTS, task=task))
    return bundles


def arrivals(task: str, seeds: tuple[int, ...] = (21, 22)) -> list[tuple[np.ndarray, np.ndarray]]:
    """Arrivals of 48 images each with the task's labels: class index, 'channel is bright' sets, channel means."""
    out = []
    for seed in seeds:
        x, y = make_dataset(48, seed)
        levels = x.mean(axis=(2, 3)).astype(np.float32)
        if task == MULTILABEL:
            out.append((x, (levels > 0).astype(np.uint8)))
        elif task == REGRESSION:
            out.append((x, levels))
        else:
            out.append((x, y))
    return out


def adapter(bundle: Path, state: Path, trainer: str, learner: str) -> Adapter:
    return Adapter(bundle, state, trainer=trainer, head_learner=learner, policy=NO_GUARD, threads=1)


def learned(bundle: Path, state: Path, trainer: str, learner: str, data: list) -> dict[str, np.ndarray]:
    """The head parameters after learning ``data`` one arrival at a time with seed 0."""
    with adapter(bundle, state, trainer, learner) as model:
        for x, y in data:
            model.learn(x, y, seed=0)
        return {name: value.copy() for name, value in model.parameters().items()}


def scores(model: Adapter, x: np.ndarray) -> np.ndarray:
    """What the head says for raw inputs, for any task (class probabilities, label scores or values)."""
    if model.task == CLASSIFICATION:
        return model.predict_proba(x)
    return model.outputs_features(model.embed(x))


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_same_parameters(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize(("task", "trainer", "learner"), CASES)
def test_learning_leaves_the_arrays_it_is_given_untouched(
    task_bundles: dict[str, Path], tmp_path: Path, task: str, trainer: str, learner: str
) -> None:
    (x, y), (x2, y2) = arrivals(task)
    kept = [a.copy() for a in (x, y, x2, y2)]
    with adapter(task_bundles[task], tmp_path / "s", trainer, learner) as model:
        model.learn(x, y, seed=0)
        features = model.embed(x2)
        features_kept = features.copy()
        model.learn_features(features, y2, seed=0)
        scores(model, x)
    for given, copy in zip((x, y, x2, y2), kept, strict=True):
        np.testing.assert_array_equal(given, copy)
    np.testing.assert_array_equal(features, features_kept)


@pytest.mark.parametrize(("task", "trainer", "learner"), CASES)
def test_the_same_seed_learns_the_same_head_and_a_committed_version_reloads_to_it(
    task_bundles: dict[str, Path], tmp_path: Path, task: str, trainer: str, learner: str
) -> None:
    bundle, data = task_bundles[task], arrivals(task)
    first = learned(bundle, tmp_path / "a", trainer, learner, data)
    again = learned(bundle, tmp_path / "b", trainer, learner, data)
    assert_same_parameters(first, again)
    with adapter(bundle, tmp_path / "a", trainer, learner) as reopened:
        assert reopened.version == 2
        assert_same_parameters(first, reopened.parameters())
    untrained = learned(bundle, tmp_path / "c", trainer, learner, [])
    assert any(not np.array_equal(first[name], untrained[name]) for name in first), "learning changed nothing"


@pytest.mark.parametrize(("task", "trainer", "learner"), CASES)
def test_predicting_writes_nothing_and_gives_the_same_scores_in_a_new_process_view(
    task_bundles: dict[str, Path], tmp_path: Path, task: str, trainer: str, learner: str
) -> None:
    bundle, state = task_bundles[task], tmp_path / "s"
    (x, y), (queries, _) = arrivals(task)
    with adapter(bundle, state, trainer, learner) as model:
        model.learn(x, y, seed=0)
        said = scores(model, queries)
    before = tree_digest(state)
    with adapter(bundle, state, trainer, learner) as reader:
        np.testing.assert_array_equal(scores(reader, queries), said)
        reader.predictions(queries)
    assert tree_digest(state) == before


@pytest.mark.parametrize(("task", "trainer", "learner"), CASES)
def test_a_bad_arrival_is_refused_whole_and_the_head_stays(
    task_bundles: dict[str, Path], tmp_path: Path, task: str, trainer: str, learner: str
) -> None:
    bundle, state = task_bundles[task], tmp_path / "s"
    (x, y), (x2, y2) = arrivals(task)
    with adapter(bundle, state, trainer, learner) as model:
        model.learn(x, y, seed=0)
        head = {name: value.copy() for name, value in model.parameters().items()}
        broken = x2.copy()
        broken[-1, 0, 0, 0] = np.nan  # bad in its last sample only
        with pytest.raises(DataError, match="not finite|NaN|nan"):
            model.learn(broken, y2, seed=0)
        with pytest.raises(DataError, match="no samples"):
            model.learn_features(np.zeros((0, model.embed(x[:1]).shape[1]), np.float32), y2[:0])
        assert model.version == 1
        assert_same_parameters(head, model.parameters())
        model.learn(x2, y2, seed=0)  # and it still learns afterwards
        assert model.version == 2


@pytest.mark.parametrize("learner", ["slda", "ncm"])
def test_closed_form_heads_do_not_depend_on_arrival_order(
    task_bundles: dict[str, Path], tmp_path: Path, learner: str
) -> None:
    bundle = task_bundles[CLASSIFICATION]
    *data, (queries, _) = arrivals(CLASSIFICATION, seeds=(31, 32, 33, 34))
    said = {}
    for name, order in (("forward", data), ("backward", data[::-1])):
        learned(bundle, tmp_path / name, "onnx", learner, order)
        with adapter(bundle, tmp_path / name, "onnx", learner) as model:
            said[name] = model.predict_proba(queries)  # (W, b) is unique only up to a row added to every class
    np.testing.assert_allclose(said["backward"], said["forward"], rtol=0, atol=1e-6)
    assert len(set(said["forward"].argmax(axis=1))) == len(CLASSES)  # a head that learned, not a constant one
