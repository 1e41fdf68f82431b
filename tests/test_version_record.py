"""``VersionRecord`` (edgeft.runtime.version_record): a version's metadata, typed, read and written only by the store.

Files written before the record had a format version still read (as format 1); a format this edgeft does not know,
or a field of the wrong type, is refused naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeft.errors import EdgeftError
from edgeft.runtime.store import StateStore, read_current_record, read_record
from edgeft.runtime.version_record import RECORD_FORMAT_VERSION, VersionRecord

BEFORE_SEGMENTS = Path(__file__).parent / "data" / "state-before-segments"


@pytest.fixture
def old_state(tmp_path: Path) -> Path:
    """A copy of a state written before records had a format version (and before segments)."""
    shutil.copytree(BEFORE_SEGMENTS / "state", tmp_path / "state")
    return tmp_path / "state"


def _fingerprint() -> str:
    return json.loads((BEFORE_SEGMENTS / "state" / "versions" / "000001.json").read_text())["bundle"]


def test_files_without_a_format_version_read_as_format_1(old_state: Path) -> None:
    on_disk = json.loads((old_state / "versions" / "000003.json").read_text())
    assert "format_version" not in on_disk
    record = read_current_record(old_state)
    assert record is not None and record.version == 3 and record.parent == 2
    assert record.classes == on_disk["classes"] and record.class_counts == on_disk["class_counts"]
    assert record.segments is None  # written before segments
    assert record.to_dict() == on_disk  # nothing read is lost or invented
    version = StateStore(old_state, _fingerprint()).current()
    assert version is not None and version.record == record and version.meta == on_disk


def test_round_trip_writes_the_format_version(old_state: Path) -> None:
    record = read_record(old_state, 2)
    text = record.to_json()
    assert json.loads(text)["format_version"] == 1  # no statistics segments: the format every edgeft reads
    assert VersionRecord.from_json(text, "copy") == record


def test_fields_an_early_edgeft_wrote_are_kept(tmp_path: Path) -> None:
    early = {"version": 1, "parent": None, "bundle": "b", "sha256": {}, "samples_seen": 7, "last_update": {"lr": 1}}
    record = VersionRecord.from_dict(early, "early.json")
    assert record.extra == {"samples_seen": 7, "last_update": {"lr": 1}}
    assert record.to_dict().items() >= early.items()  # with the defaults of the fields it lacked
    assert record.trained_head == 0 and record.classes is None and record.samples_accepted == 0


def test_a_newer_format_is_refused_naming_the_file(old_state: Path) -> None:
    path = old_state / "versions" / "000003.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": RECORD_FORMAT_VERSION + 1}))
    newer = RECORD_FORMAT_VERSION + 1
    with pytest.raises(EdgeftError, match=rf"{path}: version metadata format {newer}; this edgeft reads formats 1 to"):
        read_current_record(old_state)
    with pytest.raises(EdgeftError, match=f"000003.json: version metadata format {newer}"):
        StateStore(old_state, _fingerprint()).current()


@pytest.mark.parametrize(
    "change",
    [{"version": "3"}, {"sha256": ["x"]}, {"class_counts": []}, {"head_version": True}, {"arrival": None}, None],
)
def test_wrong_types_are_refused_naming_the_file(old_state: Path, change: dict | None) -> None:
    path = old_state / "versions" / "000003.json"
    data = {**json.loads(path.read_text()), **change} if change else ["not", "an", "object"]
    path.write_text(json.dumps(data))
    with pytest.raises(EdgeftError, match=rf"{path} is corrupt: not valid version metadata"):
        read_current_record(old_state)


def test_a_missing_record_names_the_version(old_state: Path) -> None:
    with pytest.raises(EdgeftError, match="version 9 has no metadata file 000009.json"):
        read_record(old_state, 9)
