"""One label-kind check (edgeft.data.label_kind) for every reader of an arrival or test set: names and indices
never mix, and the error names where the data came from."""

from __future__ import annotations

import numpy as np
import pytest

from edgeft.data.label_kind import OneLabelKind
from edgeft.data.readers import Samples, concatenated
from edgeft.errors import DataError

MIXED = "some labels are class names, others indices; use one kind"


def test_the_first_batch_decides() -> None:
    names = OneLabelKind("inbox/a.npz")
    names.check(np.array(["red", "blue"]))
    names.check(np.array(["green"]))
    with pytest.raises(DataError, match=f"^inbox/a.npz: {MIXED}$"):
        names.check(np.array([0, 1]))
    indices = OneLabelKind("b.csv")
    indices.check(np.array([2, 0]))
    with pytest.raises(DataError, match=f"^b.csv: {MIXED}$"):
        indices.check(np.array(["red"]))


def test_concatenated_refuses_mixed_kinds() -> None:
    x = np.zeros((2, 3), np.float32)
    same = [Samples(x, np.array(["a", "b"]), "one"), Samples(x, np.array(["c", "a"]), "two")]
    assert concatenated(same, "folder")[1].tolist() == ["a", "b", "c", "a"]
    mixed = [Samples(x, np.array(["a", "b"]), "one"), Samples(x, np.array([0, 1]), "two")]
    with pytest.raises(DataError, match=f"^folder: {MIXED}$"):
        concatenated(mixed, "folder")
