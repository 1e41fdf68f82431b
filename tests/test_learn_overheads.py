"""What a small arrival costs beyond its embedding, cut without changing what is learned (issues 18 and 19):
the replay buffer grows into reserved room instead of being copied whole each arrival, training gathers its
feature rows a block at a time yet steps on exactly the batches it did before, and sessions stop spinning between
runs."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.runtime import replay
from edgeft.runtime.epochs import BLOCK_ROWS, EpochTrainer
from edgeft.runtime.features import session_options
from edgeft.runtime.replay import ReplayBuffer, Rows, grown


def _concatenated(array: np.ndarray, rows: int, limit: int | None = None) -> np.ndarray:
    """The former ``grown``: a new array every time."""
    return np.concatenate([array, np.empty((rows, *array.shape[1:]), array.dtype)]) if rows else array


def test_grown_keeps_rows_and_moves_them_o_log_n_times() -> None:
    array, moves, expected = np.empty((0, 3), np.float32), 0, []
    for i in range(100):
        before = array.ctypes.data
        array = grown(array, 1, limit=150)
        array[-1] = i
        expected.append([i] * 3)
        moves += array.ctypes.data != before
        assert np.array_equal(array, np.array(expected, np.float32))
    assert moves <= 8  # 1, 2, 4, ... 128: not one copy per added row
    assert len(array.base) <= 150  # never more room than the limit (the buffer's most rows)


def test_grown_never_writes_into_an_array_it_did_not_make() -> None:
    base = np.zeros((10, 2))
    prefix = base[:4]
    longer = grown(prefix, 2)
    longer[:] = 7.0
    assert (base == 0).all() and longer.shape == (6, 2)


def test_a_buffer_grown_in_room_holds_what_concatenation_held(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    arrivals = [(rng.standard_normal((5, 4)).astype(np.float32), rng.integers(0, 3, 5)) for _ in range(60)]

    def fill() -> ReplayBuffer:
        buffer, draws = ReplayBuffer(4, 3, per_class=40), np.random.default_rng(1)
        for features, labels in arrivals:
            buffer.add(features, labels, draws)
        return buffer

    ours = fill()
    monkeypatch.setattr(replay, "grown", _concatenated)
    reference = fill()
    assert np.array_equal(ours.features, reference.features) and np.array_equal(ours.labels, reference.labels)
    assert np.array_equal(ours.seen, reference.seen) and np.array_equal(ours.stored, reference.stored)
    assert len(ours) == 120


class _Recorder(EpochTrainer):
    def __init__(self) -> None:
        self.batches: list[tuple[np.ndarray, np.ndarray, float]] = []

    def step(self, features: np.ndarray, labels: np.ndarray, lr: float) -> float:
        self.batches.append((np.array(features), np.array(labels), lr))
        return float(labels.sum())


@pytest.mark.parametrize("batch_size", [16, 24, BLOCK_ROWS + 3])
def test_fit_steps_on_the_batches_it_stepped_on_one_gather_a_batch(batch_size: int) -> None:
    rng = np.random.default_rng(2)
    arrival, buffer = rng.standard_normal((30, 8)).astype(np.float32), rng.standard_normal((1200, 8)).astype(np.float32)
    positions = np.concatenate([np.arange(30), 30 + rng.choice(1200, 1100, replace=False)])
    rows, labels = Rows([arrival, buffer], positions), rng.integers(0, 5, len(positions))
    recorder = _Recorder()
    loss = recorder.fit(rows, labels, epochs=3, batch_size=batch_size, schedule=lambda k: 0.1 * k, seed=7)
    order_rng, expected, count = np.random.default_rng(7), [], 0  # the loop as it was: a gather per batch
    for _ in range(3):
        order = order_rng.permutation(len(positions))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            expected.append((rows[idx], labels[idx], 0.1 * count))
            count += 1
    assert len(recorder.batches) == len(expected)
    for (features, y, lr), (want_features, want_y, want_lr) in zip(recorder.batches, expected, strict=True):
        assert np.array_equal(features, want_features) and np.array_equal(y, want_y) and lr == want_lr
    last = expected[-((len(positions) + batch_size - 1) // batch_size) :]
    assert loss == pytest.approx(sum(float(y.sum()) * len(y) for _f, y, _lr in last) / len(positions))


def test_sessions_stop_spinning_when_a_run_returns() -> None:
    assert session_options(2).get_session_config_entry("session.force_spinning_stop") == "1"
