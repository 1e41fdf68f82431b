"""The device runtime: Adapter learning and prediction, versioned state, the lock, merged export, imports."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from helpers import CLASSES, SUBPROCESS_TIMEOUT, flip_byte, softmax

from edgeft.bundle import Bundle, Defaults
from edgeft.errors import DataError, EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.head_state import HeadState
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.merge import write_merged_model

PARAMETER_NAMES = {"head.weight", "head.bias", "head.feature_mean", "head.feature_scale"}

Data = tuple[np.ndarray, np.ndarray]


def _versions(state: Path) -> list[int]:
    """Numbers of the versions whose files are in a state directory's versions/ folder."""
    folder = state / "versions"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    numbers = sorted({int(n[:6]) for n in names if n[:6].isdigit()})
    for number in numbers:
        assert {f"{number:06d}.head.npz", f"{number:06d}.json"} <= set(names), names
    return numbers


def _assert_same_parameters(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Both parameter sets hold the same names and bit-identical values."""
    assert set(a) == set(b) == PARAMETER_NAMES
    for name in PARAMETER_NAMES:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _python(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=SUBPROCESS_TIMEOUT,
    )


def test_learning_raises_held_out_accuracy(bundle: Bundle, state_dir: Path, train_data: Data, test_data: Data) -> None:
    (x, y), (x_test, y_test) = train_data, test_data
    with Adapter(bundle, state_dir) as adapter:
        assert adapter.version == 0
        before = adapter.evaluate(x_test, y_test)
        result = adapter.learn(x, y)
        after = adapter.evaluate(x_test, y_test)
        train_accuracy = adapter.evaluate(x, y)
    assert (result.samples, result.epochs, result.version) == (len(x), bundle.manifest.defaults.epochs, 1)
    assert np.isfinite(result.loss) and result.loss > 0
    assert after >= 0.8, (before, after)
    assert after >= before + 0.1, (before, after)
    assert train_accuracy >= 0.8
    assert json.loads((state_dir / "CURRENT").read_text()) == {"version": 1}
    assert _versions(state_dir) == [1]
    meta = json.loads((state_dir / "versions" / "000001.json").read_text())
    assert meta["samples_accepted"] == meta["samples_received"] == len(x)
    assert result.promoted and result.trained + result.held_out == len(x)
    assert meta["class_counts"] == {CLASSES[i]: int(n) for i, n in enumerate(np.bincount(y, minlength=3)) if n}
    assert meta["bundle"] == bundle.fingerprint
    assert meta["parent"] is None


def test_predict_matches_predict_proba_and_probabilities_sum_to_one(
    bundle: Bundle, state_dir: Path, train_data: Data
) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir) as adapter:
        adapter.learn(x[:60], y[:60], epochs=3)
        probs = adapter.predict_proba(x[60:])
        labels = adapter.predict(x[60:])
    assert probs.shape == (60, len(CLASSES))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert labels == [CLASSES[i] for i in probs.argmax(axis=1)]


def test_learning_continues_from_last_checkpoint(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir) as first:
        first_result = first.learn(x[:60], y[:60], epochs=3)
        committed = first.parameters()
    _assert_same_parameters(committed, HeadState.load(state_dir / "versions" / "000001.head.npz").parameters)

    with Adapter(bundle, state_dir) as second:
        assert second.version == 1
        _assert_same_parameters(second.parameters(), committed)
        # Shifted data: a fresh head would standardise with other statistics; a continued one keeps v1's.
        result = second.learn(x[60:] * 3.0 + 1.0, y[60:], epochs=3)
        continued = second.parameters()
    assert (result.version, result.samples, result.replayed) == (2, 60, first_result.trained)
    np.testing.assert_array_equal(continued["head.feature_mean"], committed["head.feature_mean"])
    np.testing.assert_array_equal(continued["head.feature_scale"], committed["head.feature_scale"])
    assert not np.array_equal(continued["head.weight"], committed["head.weight"])

    meta = json.loads((state_dir / "versions" / "000002.json").read_text())
    assert (meta["parent"], meta["samples_accepted"]) == (1, len(x))
    assert sum(meta["class_counts"].values()) == len(x)
    third = Adapter(bundle, state_dir)
    assert third.version == 2
    _assert_same_parameters(third.parameters(), continued)

    with Adapter(bundle, state_dir.parent / "fresh") as fresh:
        fresh.learn(x[60:] * 3.0 + 1.0, y[60:], epochs=3)
        assert not np.allclose(fresh.parameters()["head.feature_mean"], continued["head.feature_mean"])


def test_old_versions_are_pruned(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir) as adapter:
        for _ in range(7):
            adapter.learn(x[:12], y[:12], epochs=1)
    assert adapter.version == 7
    assert _versions(state_dir) == [3, 4, 5, 6, 7]
    assert Adapter(bundle, state_dir).version == 7


def test_replay_buffer_keeps_at_most_per_class_samples(
    tiny_model: Path, tmp_path: Path, state_dir: Path, train_data: Data
) -> None:
    per_class = 4
    small = export_bundle(
        ExportConfig(
            tiny_model,
            tmp_path / "small",
            classes=list(CLASSES),
            defaults=Defaults(epochs=1, replay_per_class=per_class),
        )
    )
    x, y = train_data
    seen = np.zeros(len(CLASSES), np.int64)
    for number, chunk in enumerate((slice(0, 9), slice(9, 30), slice(30, 60)), start=1):
        # A new Adapter each time: the buffer must come back from the committed version.
        with Adapter(small, state_dir, policy=GuardPolicy(enabled=False)) as adapter:
            result = adapter.learn(x[chunk], y[chunk])
        assert (result.version, result.samples) == (number, len(x[chunk]))
        assert result.replayed == int(np.minimum(seen, per_class).sum())
        seen += np.bincount(y[chunk], minlength=len(CLASSES))
    meta = json.loads((state_dir / "versions" / "000003.json").read_text())
    assert meta["samples_accepted"] == 60
    assert meta["class_counts"] == {CLASSES[i]: int(n) for i, n in enumerate(seen)}


def test_labels_as_names_or_indices_train_identically(
    bundle: Bundle, tmp_path: Path, train_data: Data, test_data: Data
) -> None:
    x, y = train_data
    names = np.array(CLASSES)[y]
    with Adapter(bundle, tmp_path / "by_index") as by_index, Adapter(bundle, tmp_path / "by_name") as by_name:
        by_index.learn(x, y, epochs=2)
        by_name.learn(x, list(names), epochs=2)
        for name, value in by_index.parameters().items():
            np.testing.assert_allclose(by_name.parameters()[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
        assert by_name.evaluate(*test_data) == by_index.evaluate(test_data[0], np.array(CLASSES)[test_data[1]])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["red", "green", "purple", "blue"], r"unknown label\(s\) \[.*purple"),
        ([0, 1, 3, 2], r"unknown label\(s\) \['3'\]"),
        ([0, -1, 1, 2], "label index -1 is negative"),
        ([0.0, 1.0, 2.0, 0.0], "use class names or integer indices"),
    ],
)
def test_bad_labels_raise_data_error_and_commit_nothing(
    labels: list, message: str, bundle: Bundle, state_dir: Path, train_data: Data
) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir) as adapter:
        adapter.learn(x[:12], y[:12], epochs=1)
        with pytest.raises(DataError, match=message):
            adapter.learn(x[:4], np.array(labels), origin="batch.npz")
        with pytest.raises(DataError, match=message):
            adapter.evaluate(x[:4], np.array(labels))
        assert adapter.version == 1
    assert json.loads((state_dir / "CURRENT").read_text()) == {"version": 1}
    assert _versions(state_dir) == [1]


def test_bad_labels_on_fresh_state_leave_no_version(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, _ = train_data
    with Adapter(bundle, state_dir) as adapter, pytest.raises(DataError, match="batch.npz: unknown label"):
        adapter.learn(x[:3], np.array(["red", "red", "mauve"]), origin="batch.npz")
    assert not (state_dir / "CURRENT").exists()
    assert _versions(state_dir) == []


def test_unknown_label_message_shows_plain_names(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    with pytest.raises(DataError) as info:
        Adapter(bundle, state_dir).evaluate(train_data[0][:2], np.array(["red", "purple"]))
    assert "unknown label(s) ['purple']" in str(info.value)


@pytest.mark.parametrize("shape", [(4, 3, 4, 4), (4, 8, 8, 3), (4, 8, 8), (3, 8, 8), (4, 1, 8, 8)])
def test_wrong_input_shape_is_a_data_error(shape: tuple[int, ...], bundle: Bundle, state_dir: Path) -> None:
    x = np.zeros(shape, np.float32)
    with Adapter(bundle, state_dir) as adapter:
        with pytest.raises(DataError, match=r"shape.*expects \[3, 8, 8\]"):
            adapter.learn(x, np.zeros(len(x), np.int64))
        with pytest.raises(DataError, match="shape"):
            adapter.predict(x)
    assert not (state_dir / "CURRENT").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_a_data_error(bad: float, bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    x = x[:8].copy()
    x[5, 1, 2, 3] = bad
    with Adapter(bundle, state_dir) as adapter:
        with pytest.raises(DataError, match="NaN or infinite"):
            adapter.learn(x, y[:8], origin="sensor.npz")
        with pytest.raises(DataError, match="NaN or infinite"):
            adapter.predict_proba(x)
        assert adapter.version == 0
    assert not (state_dir / "CURRENT").exists()


def test_non_numeric_inputs_are_a_data_error(bundle: Bundle, state_dir: Path) -> None:
    with pytest.raises(DataError, match="dtype"):
        Adapter(bundle, state_dir).predict(np.full((2, 3, 8, 8), "a"))


def test_integer_inputs_are_accepted(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x = np.rint(train_data[0][:4] * 10).astype(np.int32)
    adapter = Adapter(bundle, state_dir)
    np.testing.assert_allclose(adapter.predict_proba(x), adapter.predict_proba(x.astype(np.float32)), atol=1e-7)


@pytest.mark.parametrize("extra", [-1, 2])
def test_labels_must_match_sample_count(extra: int, bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir) as adapter:
        with pytest.raises(DataError):
            adapter.learn(x[:10], y[: 10 + extra], epochs=1)
        assert adapter.version == 0


def test_invalid_training_options(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir) as adapter:
        for options in ({"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"lr": float("nan")}):
            with pytest.raises(EdgeftError, match="epochs and batch size"):
                adapter.learn(x[:4], y[:4], **options)
        with pytest.raises(DataError, match="no samples"):
            adapter.learn(x[:0], y[:0])
        assert adapter.version == 0


def test_diverged_learning_leaves_the_committed_head_in_use(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir) as adapter:
        initial = adapter.predict_proba(x[:8])
        diverged = adapter.learn(x[:30] * 100, y[:30], epochs=5, lr=1e38)
        assert (diverged.version, diverged.promoted) == (1, False) and "diverged" in diverged.reason
        np.testing.assert_allclose(adapter.predict_proba(x[:8]), initial, atol=1e-6)
        assert adapter.meta["head_version"] == 0 and adapter.meta["samples_accepted"] == 0
        assert (state_dir / "rejected" / "000001.head.npz").is_file()
        healthy = adapter.learn(x[:30], y[:30], epochs=2, lr=0.05)
        assert (healthy.version, healthy.promoted) == (2, True)
    np.testing.assert_allclose(Adapter(bundle, state_dir).predict_proba(x[:8]), adapter.predict_proba(x[:8]))
    assert not np.allclose(adapter.predict_proba(x[:8]), initial, atol=1e-3)


def test_second_writer_is_refused_while_lock_is_held(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    first = Adapter(bundle, state_dir)
    first.learn(x[:12], y[:12], epochs=1)
    second = Adapter(bundle, state_dir)
    with pytest.raises(EdgeftError, match=rf"in use by another edgeft process \(pid {os.getpid()}\)"):
        second.learn(x[:12], y[:12], epochs=1)
    assert second.version == 1
    # Readers need no lock.
    assert len(second.predict(x[:3])) == 3
    first.close()
    assert second.learn(x[:12], y[:12], epochs=1).version == 2
    second.close()


LOCK_HOLDER = """
import sys, time
import numpy as np
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy
x = np.random.default_rng(0).normal(size=(9, 3, 8, 8)).astype(np.float32)
adapter = Adapter(sys.argv[1], sys.argv[2])
adapter.learn(x, np.arange(9) % 3, epochs=1)
print("locked", flush=True)
time.sleep(120)
"""


def test_lock_of_killed_process_is_recovered(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(bundle.path), str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], SUBPROCESS_TIMEOUT)
        assert ready, "the lock-holding subprocess never reported"
        line = holder.stdout.readline()
        assert line.strip() == "locked", holder.stderr.read() if holder.stderr else ""
        with Adapter(bundle, state_dir) as adapter:
            assert adapter.version == 1
            with pytest.raises(EdgeftError, match=rf"in use .*\(pid {holder.pid}\)"):
                adapter.learn(x[:12], y[:12], epochs=1)
            os.kill(holder.pid, signal.SIGKILL)
            assert holder.wait(timeout=SUBPROCESS_TIMEOUT) == -signal.SIGKILL
            assert (state_dir / "lock").read_text() == str(holder.pid)
            assert adapter.learn(x[:12], y[:12], epochs=1).version == 2
            assert (state_dir / "lock").read_text() == str(os.getpid())
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout:
            holder.stdout.close()
        if holder.stderr:
            holder.stderr.close()


def test_state_of_another_bundle_is_refused(
    bundle: Bundle, tiny_model: Path, tmp_path: Path, state_dir: Path, train_data: Data
) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir) as adapter:
        adapter.learn(x[:12], y[:12], epochs=1)
    other = export_bundle(ExportConfig(tiny_model, tmp_path / "other", classes=["a", "b", "c"]))
    assert other.fingerprint != bundle.fingerprint
    with pytest.raises(EdgeftError, match="belongs to another bundle"):
        Adapter(other, state_dir)
    # The original bundle still opens it.
    assert Adapter(bundle, state_dir).version == 1


def test_corrupt_state_is_refused(bundle: Bundle, state_dir: Path, train_data: Data) -> None:
    x, y = train_data
    with Adapter(bundle, state_dir) as adapter:
        adapter.learn(x[:12], y[:12], epochs=1)
    checkpoint = state_dir / "versions" / "000001.head.npz"
    flip_byte(checkpoint)
    with pytest.raises(EdgeftError, match="000001.head.npz is corrupt"):
        Adapter(bundle, state_dir)
    flip_byte(checkpoint)
    assert Adapter(bundle, state_dir).version == 1

    flip_byte(state_dir / "versions" / "000001.buffers.npz")
    with pytest.raises(EdgeftError, match="000001.buffers.npz is corrupt"):
        Adapter(bundle, state_dir)

    (state_dir / "versions" / "000001.json").write_text("{oops")
    with pytest.raises(EdgeftError, match="000001.json is corrupt"):
        Adapter(bundle, state_dir)


@pytest.mark.parametrize(
    ("current", "message"),
    [
        ('{"version": "x"}', "CURRENT is corrupt"),
        ("[]", "CURRENT is corrupt"),
        ('{"version": 9}', "version 9 "),
    ],
)
def test_bad_current_pointer(current: str, message: str, bundle: Bundle, state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / "CURRENT").write_text(current)
    with pytest.raises(EdgeftError, match=message):
        Adapter(bundle, state_dir)


def test_state_path_that_is_a_file(bundle: Bundle, tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("")
    with pytest.raises(EdgeftError, match="not a directory"):
        Adapter(bundle, path)


def test_unknown_execution_provider(bundle: Bundle, state_dir: Path) -> None:
    with pytest.raises(EdgeftError, match="execution provider 'tpu9'"):
        Adapter(bundle, state_dir, ep="tpu9")


def test_merged_model_equals_adapter(bundle: Bundle, state_dir: Path, train_data: Data, test_data: Data) -> None:
    x, y = train_data
    x_test = test_data[0][:20]
    initial = Adapter(bundle, state_dir).predict_proba(x_test)
    with Adapter(bundle, state_dir) as adapter:
        adapter.learn(x, y, epochs=3)
        expected = adapter.predict_proba(x_test)
        out = state_dir.parent / "out" / "merged.onnx"
        write_merged_model(adapter.bundle, adapter.parameters(), adapter.classes, out)
    assert not np.allclose(expected, initial, atol=1e-3), "learning should have changed the head"
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    logits, probabilities = session.run(None, {"image": x_test})
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(softmax(logits.astype(np.float64)), probabilities, atol=1e-5)
    assert json.loads(session.get_modelmeta().custom_metadata_map["edgeft.classes"]) == list(CLASSES)
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged.onnx"]


RUNTIME_ONLY = """
import json, sys
{prelude}
import numpy as np
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy
rng = np.random.default_rng(0)
x = rng.normal(size=(12, 3, 8, 8)).astype(np.float32)
with Adapter(sys.argv[1], sys.argv[2]) as adapter:
    version = adapter.learn(x, np.arange(12) % 3, epochs=2).version
    labels = adapter.predict(x)
print(json.dumps({{
    "version": version,
    "labels": labels,
    "torch": repr(sys.modules.get("torch", "absent")),
    "export": sorted(m for m in sys.modules if m.startswith("edgeft.export")),
}}))
"""


@pytest.mark.parametrize(
    ("prelude", "torch_entry"),
    [("", "'absent'"), ("sys.modules['torch'] = None  # any import of torch now raises ImportError", "None")],
    ids=["plain", "torch-blocked"],
)
@pytest.mark.slow
def test_runtime_path_needs_neither_torch_nor_export(
    prelude: str, torch_entry: str, bundle: Bundle, state_dir: Path
) -> None:
    done = _python(RUNTIME_ONLY.format(prelude=prelude), str(bundle.path), str(state_dir))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["version"] == 1
    assert len(report["labels"]) == 12 and set(report["labels"]) <= set(CLASSES)
    assert report["torch"] == torch_entry
    assert report["export"] == []


FAKE_TORCH = """
import os, traceback
with open(os.environ["EDGEFT_TEST_TORCH_LOG"], "a") as log:
    log.write("".join(traceback.format_stack()) + "----\\n")
raise ImportError("torch is blocked by the edgeft test suite")
"""


def test_runtime_path_never_imports_torch_even_where_installed(bundle: Bundle, state_dir: Path, tmp_path: Path) -> None:
    # A stand-in "torch" first on the path records every real import (a find_spec probe does not count),
    # whether or not the real torch is installed, then fails like a missing torch would.
    (tmp_path / "fake" / "torch").mkdir(parents=True)
    (tmp_path / "fake" / "torch" / "__init__.py").write_text(FAKE_TORCH)
    log = tmp_path / "torch-imports.txt"
    path = os.pathsep.join(filter(None, [str(tmp_path / "fake"), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "EDGEFT_TEST_TORCH_LOG": str(log)}
    done = _python(RUNTIME_ONLY.format(prelude=""), str(bundle.path), str(state_dir), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["version"] == 1
    assert not log.exists(), "torch was imported from:\n" + log.read_text()


def test_learn_reports_progress_for_every_sample_and_epoch(
    bundle: Bundle, state_dir: Path, train_data: tuple[np.ndarray, np.ndarray]
) -> None:
    """The progress callback covers the whole call: each embedded sample, then each epoch."""
    x, y = train_data
    ticks: list[int] = []
    with Adapter(bundle, state_dir, ep="cpu") as adapter:
        adapter.learn(x, y, epochs=3, progress=ticks.append)
    assert sum(ticks) == len(x) + 3
