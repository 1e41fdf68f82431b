"""The consumed-inputs map (edgeft.runtime.consumed) against a plain dict, the journal's old form."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgeft.runtime import consumed
from edgeft.runtime.consumed import ConsumedInputs
from edgeft.runtime.history import History


def digest(i: int, ending: str = "") -> str:
    """A sha256 in hex; ``ending`` replaces its last characters (e.g. "00": a digest ending in a zero byte)."""
    text = hashlib.sha256(str(i).encode()).hexdigest()
    return text[: len(text) - len(ending)] + ending


def pairs_with_repeats(count: int, seed: int) -> list[tuple[str, int]]:
    """Pairs in journal order: some digests again later (learned, then rolled back), some ending in zero bytes."""
    rng = np.random.default_rng(seed)
    pairs = [(digest(i, "00" * int(rng.integers(0, 3))), i // 3 + 1) for i in range(count)]
    again = rng.choice(count, count // 5, replace=False)
    return pairs + [(pairs[i][0], count + int(k)) for k, i in enumerate(again)]


@pytest.mark.parametrize("merge_every", [3, consumed.MERGE_EVERY])
def test_it_answers_as_the_dict_of_the_same_pairs(merge_every: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built at once and then updated commit by commit (merged into the arrays every ``merge_every``), it holds
    exactly the dict's pairs: a later pair for a digest wins, digests ending in zero bytes and odd keys included."""
    monkeypatch.setattr(consumed, "MERGE_EVERY", merge_every)
    pairs = pairs_with_repeats(300, seed=1) + [("not-a-sha256", 7), ("A" * 64, 8), ("a b" * 21 + "c", 9)]
    built = ConsumedInputs(pairs[:200])
    for start in range(200, len(pairs), 4):  # commits of up to 4 inputs each
        built.update(dict(pairs[start : start + 4]))
    reference = dict(pairs)
    assert dict(built.items()) == reference and len(built) == len(reference)
    for key, version in reference.items():
        assert key in built and built[key] == version
    for absent in (digest(10_000), digest(5, "00"), "f" * 64, "zz", ""):
        assert absent not in reference and absent not in built
        with pytest.raises(KeyError):
            built[absent]


def test_nothing_consumed_yet_then_one_commit() -> None:
    empty = ConsumedInputs()
    assert len(empty) == 0 and digest(1) not in empty and dict(empty) == {}
    empty.update({digest(1): 3})
    assert empty == {digest(1): 3}


def test_history_reads_the_journal_into_it(tmp_path: Path) -> None:
    pairs = pairs_with_repeats(50, seed=2)
    lines = [{"name": f"{i}.npz", "sha256": d, "version": v, "status": "learned"} for i, (d, v) in enumerate(pairs)]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"torn'  # a crash's torn last line is skipped
    (tmp_path / "journal.jsonl").write_text(text)
    read = History(tmp_path).consumed()
    assert isinstance(read, ConsumedInputs) and read == dict(pairs)
