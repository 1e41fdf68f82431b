"""Bundle integrity: every file onnxruntime may open is listed in the manifest and verified before any session starts;
the manifest is validated data (JSON, checked types), never code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import BUNDLE_FILES, copy_tree

from edgeft.bundle import MANIFEST_FILE, Bundle, sha256_file
from edgeft.errors import EdgeftError
from edgeft.runtime.adapter import Adapter


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_FILE).read_text())


def _rewrite(bundle: Path, data: dict) -> None:
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))


@pytest.mark.parametrize("name", sorted(BUNDLE_FILES))
def test_a_replaced_bundle_file_is_refused_before_onnxruntime_reads_it(
    name: str, bundle_dir: Path, tmp_path: Path
) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    assert name in _manifest(copy)["files"]
    (copy / name).write_bytes(b"not an onnx model at all")  # onnxruntime would fail on it with its own error
    with pytest.raises(EdgeftError, match=rf"bundle file {copy / name} is corrupt: its sha256 does not match"):
        Adapter(copy, tmp_path / "state")


@pytest.mark.parametrize("listed", ["../outside.bin", "/etc/hostname"], ids=["relative", "absolute"])
def test_a_manifest_listing_files_outside_the_bundle_is_refused(listed: str, bundle_dir: Path, tmp_path: Path) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    data = _manifest(copy)
    data["files"][listed] = sha256_file(outside)
    _rewrite(copy, data)
    with pytest.raises(EdgeftError, match=f"lists '{listed}', a path outside the bundle"):
        Bundle.load(copy)


def test_a_file_the_manifest_does_not_list_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    (copy / "backbone.onnx.data").write_bytes(b"\0" * 64)  # e.g. external weights slipped in beside a model
    with pytest.raises(
        EdgeftError, match=r"backbone.onnx.data is not listed in manifest.json, so it cannot be verified"
    ):
        Bundle.load(copy)


@pytest.mark.parametrize(
    ("field", "value"),
    [("classes", "red,green,blue"), ("classes", [1, 2, 3]), ("input.shape", "1x3x8x8"), ("input.shape", [1, None])],
)
def test_manifest_fields_of_the_wrong_type_are_refused(
    field: str, value: object, bundle_dir: Path, tmp_path: Path
) -> None:
    copy = copy_tree(bundle_dir, tmp_path / "b")
    data = _manifest(copy)
    *parents, key = field.split(".")
    target = data
    for parent in parents:
        target = target[parent]
    target[key] = value
    _rewrite(copy, data)
    with pytest.raises(EdgeftError, match=f"is not a valid edgeft manifest .*'{field}'"):
        Bundle.load(copy)
