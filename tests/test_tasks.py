"""Multi-label and regression heads on the device runtime, end to end through the CLI on the tiny real model:
export -> adapt -> predict -> eval -> export-inference, the guard refusing a garbage arrival, bad labels named."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import CLASSES, invoke_cli, make_dataset, needs_ort, one_error_line, run_onnx

from edgeft.bundle import Bundle, Defaults
from edgeft.common.paired_test import significantly_worse
from edgeft.data.readers import read_path
from edgeft.data.targets import MULTILABEL, REGRESSION
from edgeft.errors import DataError
from edgeft.export import ExportConfig, export_bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.inbox import Inbox
from edgeft.runtime.replay import NOT_STORED
from edgeft.runtime.target_replay import TargetBuffer
from edgeft.runtime.tasks import judge, micro_f1, tuned_thresholds
from edgeft.runtime.watch import StopFlag, watch

LEARN = ("--lr", "0.05", "--epochs", "10")


def _levels(x: np.ndarray) -> np.ndarray:
    """Per image, the mean of each channel: what the tasks below learn (labels 'channel is bright', or values)."""
    return x.mean(axis=(2, 3)).astype(np.float32)


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def _export(tiny_model: Path, out: Path, task: str, loss: str | None = None, classes: str = ",".join(CLASSES)) -> Path:
    args = ["export", tiny_model, "-o", out, "--classes", classes, "--task", task]
    done = invoke_cli(*args, *(["--loss", loss] if loss else []))
    assert done.exit_code == 0, done.stderr
    return out


def _json(*args: object) -> dict:
    done = invoke_cli(*args, "--json")
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_multilabel_head_adapts_predicts_and_exports(tiny_model: Path, tmp_path: Path) -> None:
    bundle = _export(tiny_model, tmp_path / "bundle", MULTILABEL)
    state = tmp_path / "state"
    x, _ = make_dataset(360, seed=11)
    bright = (_levels(x) > 0).astype(np.uint8)  # each image's label set: the channels brighter than zero
    train = _save_npz(tmp_path / "train.npz", x=x[:240], y=bright[:240])
    holdout = _save_npz(tmp_path / "holdout.npz", x=x[240:300], y=bright[240:300])
    test = _save_npz(tmp_path / "test.npz", x=x[300:], y=bright[300:])

    prom = tmp_path / "edgeft.prom"
    first = _json(
        "adapt",
        bundle,
        "--state",
        state,
        "-d",
        train,
        "--holdout",
        holdout,
        "--eval",
        test,
        "--metrics-file",
        prom,
        *LEARN,
    )
    assert first["promoted"] and first["metric"] == "micro_f1", first
    gauges = dict(line.rsplit(" ", 1) for line in prom.read_text().splitlines() if line.startswith("edgeft_"))
    assert 0.8 < float(gauges['edgeft_holdout_metric{metric="micro_f1"}']) <= 1
    assert float(gauges['edgeft_prequential_metric{metric="micro_f1"}']) < 0.8  # before learning
    assert first["accuracy_after"] > 0.85 and first["accuracy_after"] > first["accuracy_before"] + 0.2, first

    predicted = _json("predict", bundle, test, "--state", state)
    rows = predicted["predictions"]
    assert predicted["task"] == MULTILABEL and len(rows) == 60
    scores = np.array([[row["scores"][name] for name in CLASSES] for row in rows])
    chosen = np.array([[name in row["labels"] for name in CLASSES] for row in rows])
    assert (chosen == (scores >= 0.5)).all()
    assert micro_f1(chosen, bright[300:] > 0) == pytest.approx(first["accuracy_after"])

    evaluated = _json("eval", bundle, "--state", state, "--data", test, "--per-version")
    assert evaluated["micro_f1"] == pytest.approx(first["accuracy_after"])
    assert set(evaluated["per_label"]) == set(CLASSES) and evaluated["per_version"][-1]["version"] == 1

    # A flood of garbage: every label set replaced by its complement, in JSON lines of label-name lists.
    flood, _ = make_dataset(600, seed=13)
    lines = [
        json.dumps({"x": xi.tolist(), "y": [n for n, b in zip(CLASSES, bi, strict=True) if b <= 0]})
        for xi, bi in zip(flood, _levels(flood), strict=True)
    ]
    (tmp_path / "garbage.jsonl").write_text("\n".join(lines) + "\n")
    refused = _json("adapt", bundle, "--state", state, "-d", tmp_path / "garbage.jsonl", "--holdout", holdout, *LEARN)
    assert refused["promoted"] is False and "micro_f1" in refused["reason"], json.dumps(refused)
    assert _json("predict", bundle, test, "--state", state)["predictions"] == rows  # the head stayed as it was

    merged = tmp_path / "merged.onnx"
    assert invoke_cli("export-inference", bundle, "--state", state, "-o", merged).exit_code == 0
    probabilities = run_onnx(merged, {"image": x[300:]}, ["probabilities"])[0]
    np.testing.assert_allclose(probabilities, scores, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(merged)).metadata_props}
    assert props["edgeft.task"] == MULTILABEL and json.loads(props["edgeft.thresholds"]) == [0.5] * 3


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "targets"), [("mse", 3), ("l1", 1)])
def test_regression_head_adapts_predicts_and_exports(loss: str, targets: int, tiny_model: Path, tmp_path: Path) -> None:
    names = CLASSES if targets == 3 else ("brightness",)
    bundle = _export(tiny_model, tmp_path / "bundle", REGRESSION, loss, ",".join(names))
    state = tmp_path / "state"
    x, _ = make_dataset(360, seed=12)
    values = _levels(x) if targets == 3 else _levels(x).mean(axis=1)  # [N, 3], or a scalar per sample [N]
    train = _save_npz(tmp_path / "train.npz", x=x[:240], y=values[:240])
    holdout = _save_npz(tmp_path / "holdout.npz", x=x[240:300], y=values[240:300])
    test = _save_npz(tmp_path / "test.npz", x=x[300:], y=values[300:])
    metric = "rmse" if loss == "mse" else "mae"

    first = _json("adapt", bundle, "--state", state, "-d", train, "--holdout", holdout, "--eval", test, *LEARN)
    assert first["promoted"] and first["metric"] == metric, first
    assert first["accuracy_after"] < 0.5 * first["accuracy_before"], first

    rows = _json("predict", bundle, test, "--state", state)["predictions"]
    predicted = np.array([[row["values"][n] for n in names] for row in rows])
    errors = predicted - values[300:].reshape(60, targets)
    found = np.sqrt((errors**2).mean()) if loss == "mse" else np.abs(errors).mean()
    assert found == pytest.approx(first["accuracy_after"], rel=1e-4)
    evaluated = _json("eval", bundle, "--state", state, "--data", test)
    assert evaluated[metric] == pytest.approx(first["accuracy_after"], rel=1e-4)

    # Garbage in CSV: the targets negated and scaled ("a;b;c" cells for several targets).
    header = ",".join(f"v{i}" for i in range(x[0].size)) + ",label\n"
    flood, _ = make_dataset(600, seed=13)
    wrong = _levels(flood) if targets == 3 else _levels(flood).mean(axis=1)
    cells = [";".join(f"{-5 * v:.6f}" for v in np.atleast_1d(row)) for row in wrong]
    rows_csv = "".join(",".join(map(str, xi.ravel())) + f",{c}\n" for xi, c in zip(flood, cells, strict=True))
    (tmp_path / "garbage.csv").write_text(header + rows_csv)
    refused = _json("adapt", bundle, "--state", state, "-d", tmp_path / "garbage.csv", "--holdout", holdout, *LEARN)
    assert refused["promoted"] is False and metric in refused["reason"], json.dumps(refused)

    merged = tmp_path / "merged.onnx"
    assert invoke_cli("export-inference", bundle, "--state", state, "-o", merged).exit_code == 0
    np.testing.assert_allclose(run_onnx(merged, {"image": x[300:]}, ["values"])[0], predicted, atol=1e-5)


@pytest.fixture(scope="module")
def task_bundles(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    root = tmp_path_factory.mktemp("task-bundles")
    defaults = Defaults(epochs=5, batch_size=16, lr=0.05, seed=0)
    return {
        task: export_bundle(ExportConfig(tiny_model, root / task, classes=list(CLASSES), task=task, defaults=defaults))
        for task in (MULTILABEL, REGRESSION)
    }


@pytest.mark.parametrize(
    ("task", "name", "content", "problem"),
    [
        (MULTILABEL, "wide.npz", {"y": np.ones((4, 5), np.uint8)}, "expected [samples, 3]"),
        (MULTILABEL, "counts.npz", {"y": np.full((4, 3), 2, np.uint8)}, "other than 0 and 1"),
        (MULTILABEL, "names.jsonl", '{"x": X, "y": ["red", "purple"]}\n', "unknown label(s) ['purple']"),
        (MULTILABEL, "names.csv", "red;purple", "unknown label(s) ['purple']"),
        (REGRESSION, "nan.npz", {"y": np.full((4, 3), np.nan, np.float32)}, "NaN or infinite"),
        (REGRESSION, "short.npz", {"y": np.zeros(4, np.float32)}, "expected [samples, 3]"),
        (REGRESSION, "fewer.npz", {"y": np.zeros(3, np.float32)}, "one target row per sample (4)"),
        (REGRESSION, "words.npz", {"y": np.array(["a", "b", "c", "d"])}, "give numbers"),
        (REGRESSION, "text.csv", "1;2;x", "not a number"),
        (REGRESSION, "two.jsonl", '{"x": X, "y": [1.0, 2.0]}\n', "expected [samples, 3]"),
        (REGRESSION, "flag.jsonl", '{"x": X, "y": true}\n', "does not fit a regression head"),
    ],
)
def test_bad_targets_are_refused_naming_the_file(
    task: str, name: str, content: object, problem: str, task_bundles: dict[str, Bundle], tmp_path: Path
) -> None:
    x, _ = make_dataset(4, seed=3)
    path = tmp_path / name
    if name.endswith(".npz"):
        _save_npz(path, x=x, **content)  # type: ignore[arg-type]
    elif name.endswith(".jsonl"):
        path.write_text("".join(str(content).replace("X", json.dumps(xi.tolist())) for xi in x))
    else:
        header = ",".join(f"v{i}" for i in range(x[0].size)) + ",label\n"
        path.write_text(header + "".join(",".join(map(str, xi.ravel())) + f",{content}\n" for xi in x))
    with pytest.raises(DataError) as caught:
        read_path(path, task_bundles[task].manifest)
    assert str(path) in str(caught.value) and problem in str(caught.value)


def test_bad_target_file_is_quarantined_and_good_ones_learned(task_bundles: dict[str, Bundle], tmp_path: Path) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    x, _ = make_dataset(40, seed=4)
    _save_npz(inbox / "good.npz", x=x, y=_levels(x))
    _save_npz(inbox / "nan.npz", x=x[:4], y=np.full((4, 3), np.nan, np.float32))
    with Adapter(task_bundles[REGRESSION], state) as adapter:
        summary = watch(adapter, Inbox(inbox), emit=lambda *a, **k: None, stop=StopFlag(), poll_seconds=0.01, once=True)
        assert (summary.learned, summary.quarantined) == (1, 1)
        assert adapter.version == 1 and adapter.meta["class_counts"] == dict.fromkeys(CLASSES, 40)
    reason = (inbox / "quarantine" / "nan.npz.reason.txt").read_text()
    assert "nan.npz" in reason and "NaN" in reason


def test_cli_names_the_file_with_unknown_labels(task_bundles: dict[str, Bundle], tmp_path: Path) -> None:
    x, _ = make_dataset(4, seed=5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"x": xi.tolist(), "y": ["teal"]}) + "\n" for xi in x))
    done = invoke_cli("adapt", task_bundles[MULTILABEL].path, "--state", tmp_path / "s", "-d", bad)
    assert done.exit_code == 1 and one_error_line(done.stderr).startswith(f"edgeft: error: {bad}: sample 1 has unknown")
    assert not (tmp_path / "s" / "CURRENT").exists()


def test_multilabel_replay_keeps_rare_labels() -> None:
    rng = np.random.default_rng(0)
    buffer = TargetBuffer(MULTILABEL, feature_dim=2, outputs=3, per_class=8)  # 24 samples over 4 buckets of 6
    common = np.tile([1.0, 0.0, 0.0], (500, 1)).astype(np.float32)
    rare = np.array([[1.0, 0.0, 1.0]] * 4 + [[0.0, 0.0, 0.0]] * 3, np.float32)  # 'blue' (with 'red'), and none
    targets = np.concatenate([common[:250], rare, common[250:]])
    buffer.add(rng.normal(size=(len(targets), 2)).astype(np.float32), targets, rng)
    kept = buffer.labels
    assert len(kept) <= 24 and (kept[:, 2] == 1).sum() == 4 and (kept.sum(axis=1) == 0).sum() == 3
    assert (kept[:, 0] == 1).sum() == 6 + 4  # the common label fills its bucket, no more


def test_regression_replay_is_one_reservoir() -> None:
    rng = np.random.default_rng(1)
    buffer = TargetBuffer(REGRESSION, feature_dim=2, outputs=2, per_class=10)
    firsts = []
    for _ in range(200):  # each sample of 100 should be kept with probability 20/100
        trial = TargetBuffer(REGRESSION, feature_dim=1, outputs=2, per_class=10)
        values = np.arange(100, dtype=np.float32)
        trial.add(values[:, None], np.stack([values, values], axis=1), rng)
        firsts.append((trial.labels[:, 0] < 50).mean())
    assert len(trial) == 20 and abs(float(np.mean(firsts)) - 0.5) < 0.05
    buffer.add(np.ones((3, 2), np.float32), np.zeros((3, 2), np.float32), rng)
    assert len(buffer) == 3 and (buffer.stored == NOT_STORED).all()  # new rows, for the next commit's segment


def test_thresholds_are_tuned_per_label_on_the_holdout(task_bundles: dict[str, Bundle], tmp_path: Path) -> None:
    scores = np.array([[0.3], [0.35], [0.4], [0.2], [0.1], [0.32], [0.05], [0.6]], np.float32)
    truth = np.array([[1], [1], [1], [0], [0], [1], [0], [1]], np.float32)
    # 0.25 and 0.3 both split positives from negatives; the tie goes to the one nearer 0.5
    assert tuned_thresholds(scores, truth, ["a"]) == {"a": 0.3}
    x, _ = make_dataset(300, seed=6)
    bright = (_levels(x) > 0).astype(np.float32)
    with Adapter(task_bundles[MULTILABEL], tmp_path / "s", tune_thresholds=True) as adapter:
        adapter.learn(x, bright)
        assert set(adapter.meta["thresholds"]) == set(CLASSES)
        assert adapter.thresholds.tolist() == [adapter.meta["thresholds"][n] for n in CLASSES]
        scores = adapter.outputs_features(adapter.embed(x[:20]))
        for row, predicted in zip(scores, adapter.predictions(x[:20]), strict=True):
            assert predicted["labels"] == [
                n for n, s, t in zip(CLASSES, row, adapter.thresholds, strict=True) if s >= t
            ]
        tuned = adapter.meta["thresholds"]
        adapter.learn(make_dataset(100, seed=8)[0], bright[:100])
        adapter.rollback(1)  # the thresholds belong to the head: they come back with it
        assert adapter.version == 3 and adapter.meta["thresholds"] == tuned


def test_predictions_of_a_classifier_are_its_predict(bundle: Bundle, train_data: tuple, tmp_path: Path) -> None:
    x, y = train_data
    with Adapter(bundle, tmp_path / "s") as adapter:
        adapter.learn(x, y)
        rows = adapter.predictions(x[:10])
        assert [r["label"] for r in rows] == adapter.predict(x[:10]) and adapter.metric == "accuracy"
        assert adapter.score(x, y) == adapter.evaluate(x, y)


def test_regression_output_starts_at_the_targets_centre(tiny_model: Path, tmp_path: Path) -> None:
    """Targets far from zero: the first training starts the output bias at their mean, so a small lr suffices."""
    bundle = export_bundle(
        ExportConfig(tiny_model, tmp_path / "b", classes=["price"], task=REGRESSION)
    )  # lr 1e-3 by default
    x, _ = make_dataset(200, seed=7)
    price = 1000 + 10 * _levels(x)[:, 0]
    with Adapter(bundle, tmp_path / "s", policy=GuardPolicy(enabled=False)) as adapter:
        adapter.learn(x[:150], price[:150], epochs=2)
        assert abs(adapter.score(x[150:], price[150:]) - np.sqrt(np.mean((price[150:] - price[:150].mean()) ** 2))) < 3


def test_bench_tasks_labels_and_reference() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import bench_tasks

    rows = bench_tasks.label_sets(np.array([0, 7]))
    assert [bench_tasks.LABELS[i] for i in np.flatnonzero(rows[0])] == ["0", "even"]
    assert [bench_tasks.LABELS[i] for i in np.flatnonzero(rows[1])] == ["7", ">=5"]
    truth = bench_tasks.label_sets(np.array([1, 3, 5, 7, 2]))
    # 8 positives; the best constant set is every label that occurs (7 of 12): 8 right, 27 false alarms, F1 16/43
    # (just ">=5", the most frequent: 4/13; all 12 labels: 16/68).
    assert bench_tasks.constant_reference("multilabel", None, truth, truth) == pytest.approx(16 / 43)
    values = np.array([1.0, 2.0, 6.0])
    assert bench_tasks.constant_reference("regression", "l1", values, values) == pytest.approx(5 / 3)


def test_regression_guard_weighs_how_much_worse(task_bundles: dict[str, Bundle]) -> None:
    """A candidate much worse on 28 of 48 holdout samples and a little better on the rest is refused (a sign test
    alone would let it through); one that differs only by small noise is promoted."""
    head = replace(task_bundles[REGRESSION].manifest.head, loss="l1")
    rng = np.random.default_rng(0)
    targets = rng.uniform(0, 9, (48, 3)).astype(np.float32)
    current = targets + rng.choice([-1.0, 1.0], targets.shape).astype(np.float32)  # MAE 1 per target
    worse = current.copy()
    worse[:28] += np.sign(current[:28] - targets[:28]) * 2.0  # 28 samples 3 off per target
    worse[28:] -= np.sign(current[28:] - targets[28:]) * 0.1  # 20 samples a little nearer
    refused = judge(head, GuardPolicy(), current, worse, targets, np.zeros(0))
    assert not refused.promoted and "per-sample error rise" in refused.reason
    assert guard_sign_test_would_pass(current, worse, targets)
    noisy = current + rng.normal(0, 0.02, targets.shape).astype(np.float32)
    assert judge(head, GuardPolicy(), current, noisy, targets, np.zeros(0)).promoted


def guard_sign_test_would_pass(current: np.ndarray, candidate: np.ndarray, targets: np.ndarray) -> bool:
    before, after = np.abs(current - targets).sum(axis=1), np.abs(candidate - targets).sum(axis=1)
    return not significantly_worse(int((after > before).sum()), int((after < before).sum()))


@needs_ort
@pytest.mark.parametrize("task", [MULTILABEL, REGRESSION])
def test_ort_trainer_learns_these_heads(task: str, tiny_model: Path, tmp_path: Path) -> None:
    bundle = export_bundle(
        ExportConfig(tiny_model, tmp_path / "b", classes=list(CLASSES), task=task, ort_artifacts=True)
    )
    x, _ = make_dataset(300, seed=9)
    targets = (_levels(x) > 0).astype(np.float32) if task == MULTILABEL else _levels(x)
    with Adapter(bundle, tmp_path / "s", trainer="ort") as adapter:
        before = adapter.score(x[200:], targets[200:])
        result = adapter.learn(x[:200], targets[:200], lr=0.02)
        after = adapter.score(x[200:], targets[200:])
        assert adapter.trainer_kind == "ort" and result.promoted and "ckpt" in adapter.store.current().files
    assert after > before + 0.2 if task == MULTILABEL else after < 0.5 * before
