"""Reading samples from files: .npz/.npy arrays, image folders, and every way such files can be bad."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, make_dataset
from PIL import Image
from tiny_models import CHANNELS, SIZE

from edgeft.bundle import Bundle, Manifest, Preprocessing, TensorSpec
from edgeft.data.readers import read_image, read_path
from edgeft.errors import DataError
from edgeft.runtime.adapter import Adapter

COLOURS = {"red": (200, 10, 30), "green": (5, 180, 60), "blue": (0, 40, 250)}


def _gray(manifest: Manifest, layout: str) -> Manifest:
    """The manifest of a single-channel image bundle in ``layout`` (same 8x8 size)."""
    shape: list[int | str] = ["batch", 1, SIZE, SIZE] if layout == "NCHW" else ["batch", SIZE, SIZE, 1]
    return replace(
        manifest,
        input=TensorSpec("image", shape),
        preprocessing=replace(manifest.preprocessing, color="L", layout=layout),
    )


def _write_png(path: Path, colour: tuple[int, ...] | int, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> Path:
    """A solid-colour PNG written with Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format="PNG")
    return path


def _image_folders(root: Path, per_class: int = 2) -> Path:
    """root/LABEL/*.png with solid images of each label's colour, in varied sizes."""
    sizes = [(16, 16), (8, 8), (20, 5)]
    for label, colour in COLOURS.items():
        for i in range(per_class):
            _write_png(root / label / f"{i}.png", colour, sizes[i % len(sizes)])
    return root


@pytest.fixture()
def manifest(bundle: Bundle) -> Manifest:
    """The session bundle's manifest (RGB, NCHW, 8x8, pixels/255)."""
    return bundle.manifest


def test_npz_with_inputs_and_named_labels(manifest: Manifest, tmp_path: Path) -> None:
    x, y = make_dataset(10, seed=5)
    names = np.array(CLASSES)[y]
    np.savez(tmp_path / "batch.npz", x=x, y=names)
    (samples,) = read_path(tmp_path / "batch.npz", manifest)
    np.testing.assert_array_equal(samples.x, x)
    np.testing.assert_array_equal(samples.y, names)
    assert samples.origin == str(tmp_path / "batch.npz")


def test_npz_with_index_labels_and_upper_case_suffix(manifest: Manifest, tmp_path: Path) -> None:
    x, y = make_dataset(6, seed=5)
    np.savez(tmp_path / "batch.npz", x=x, y=y)
    (tmp_path / "batch.npz").rename(tmp_path / "BATCH.NPZ")
    (samples,) = read_path(tmp_path / "BATCH.NPZ", manifest)
    np.testing.assert_array_equal(samples.y, y)


def test_npz_without_labels(manifest: Manifest, tmp_path: Path) -> None:
    x, _ = make_dataset(4, seed=5)
    np.savez(tmp_path / "x.npz", x=x)
    with pytest.raises(DataError, match="x.npz: missing array 'y'"):
        read_path(tmp_path / "x.npz", manifest)
    (samples,) = read_path(tmp_path / "x.npz", manifest, need_labels=False)
    assert samples.y is None
    np.testing.assert_array_equal(samples.x, x)


def test_npz_without_inputs(manifest: Manifest, tmp_path: Path) -> None:
    np.savez(tmp_path / "y.npz", y=np.arange(3), images=np.zeros(3))
    with pytest.raises(DataError, match=r"y.npz: missing array 'x' \(found: y, images\)"):
        read_path(tmp_path / "y.npz", manifest)


@pytest.mark.parametrize("y", [np.arange(3), np.zeros((4, 1), np.int64)], ids=["too-few", "two-dimensional"])
def test_npz_labels_must_be_one_per_sample(y: np.ndarray, manifest: Manifest, tmp_path: Path) -> None:
    x, _ = make_dataset(4, seed=5)
    np.savez(tmp_path / "b.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"b.npz: 'y' has shape .*one label per sample \(4\)"):
        read_path(tmp_path / "b.npz", manifest)


def test_npz_with_no_samples(manifest: Manifest, tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", x=np.zeros((0, CHANNELS, SIZE, SIZE), np.float32), y=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="holds no samples"):
        read_path(tmp_path / "e.npz", manifest)


def test_npy_holds_inputs_for_prediction_only(manifest: Manifest, tmp_path: Path) -> None:
    x, _ = make_dataset(3, seed=5)
    np.save(tmp_path / "x.npy", x)
    (samples,) = read_path(tmp_path / "x.npy", manifest, need_labels=False)
    np.testing.assert_array_equal(samples.x, x)
    assert samples.y is None
    with pytest.raises(DataError, match=r"\.npy file has no labels"):
        read_path(tmp_path / "x.npy", manifest)


def test_npy_with_upper_case_suffix(manifest: Manifest, tmp_path: Path) -> None:
    x, _ = make_dataset(3, seed=5)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "x.npy").rename(tmp_path / "X.NPY")
    (samples,) = read_path(tmp_path / "X.NPY", manifest, need_labels=False)
    np.testing.assert_array_equal(samples.x, x)


def test_npz_with_object_array_is_refused(manifest: Manifest, tmp_path: Path) -> None:
    x, _ = make_dataset(2, seed=5)
    np.savez(tmp_path / "obj.npz", x=x, y=np.array(["red", {"evil": 1}], dtype=object))
    with pytest.raises(DataError, match="obj.npz: holds object arrays.*pickled"):
        read_path(tmp_path / "obj.npz", manifest)


def test_npy_with_object_array_is_refused(manifest: Manifest, tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([1, "two", None], dtype=object))
    with pytest.raises(DataError, match="obj.npy: holds object arrays.*pickled"):
        read_path(tmp_path / "obj.npy", manifest, need_labels=False)


def test_truncated_npz(manifest: Manifest, tmp_path: Path) -> None:
    x, y = make_dataset(8, seed=5)
    np.savez(tmp_path / "full.npz", x=x, y=y)
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.npz: not a readable .npz file"):
        read_path(tmp_path / "cut.npz", manifest)


def test_truncated_npy(manifest: Manifest, tmp_path: Path) -> None:
    np.save(tmp_path / "full.npy", make_dataset(8, seed=5)[0])
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.npy: not a readable .npy file"):
        read_path(tmp_path / "cut.npy", manifest, need_labels=False)


@pytest.mark.parametrize("name", ["empty.npz", "empty.npy"])
def test_zero_byte_array_file(name: str, manifest: Manifest, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=f"{name}: not a readable"):
        read_path(tmp_path / name, manifest, need_labels=False)


@pytest.mark.parametrize("name", ["text.npz", "text.npy"])
def test_file_that_is_no_array_at_all(name: str, manifest: Manifest, tmp_path: Path) -> None:
    (tmp_path / name).write_text("label,value\nred,1\n" * 20)
    with pytest.raises(DataError, match=f"{name}: "):
        read_path(tmp_path / name, manifest, need_labels=False)


@pytest.mark.parametrize("name", ["text.npz", "text.npy"])
def test_file_that_is_no_array_is_not_called_pickled(name: str, manifest: Manifest, tmp_path: Path) -> None:
    (tmp_path / name).write_text("label,value\nred,1\n" * 20)
    with pytest.raises(DataError, match=f"{name}: not a readable"):
        read_path(tmp_path / name, manifest, need_labels=False)


def test_single_channel_arrays_get_a_channel_axis(manifest: Manifest, tmp_path: Path) -> None:
    x = np.random.default_rng(0).uniform(size=(5, SIZE, SIZE)).astype(np.float32)
    np.savez(tmp_path / "g.npz", x=x, y=np.zeros(5, np.int64))
    (nchw,) = read_path(tmp_path / "g.npz", _gray(manifest, "NCHW"))
    (nhwc,) = read_path(tmp_path / "g.npz", _gray(manifest, "NHWC"))
    np.testing.assert_array_equal(nchw.x, x[:, None])
    np.testing.assert_array_equal(nhwc.x, x[..., None])


@pytest.mark.parametrize("shape", [(5, SIZE, SIZE), (5, SIZE, SIZE, CHANNELS), (5, 1, SIZE, SIZE)])
def test_wrong_array_shape_for_an_rgb_bundle_fails(
    shape: tuple[int, ...], bundle: Bundle, tmp_path: Path, state_dir: Path
) -> None:
    np.savez(tmp_path / "w.npz", x=np.zeros(shape, np.float32), y=np.zeros(5, np.int64))
    (samples,) = read_path(tmp_path / "w.npz", bundle.manifest)
    # An RGB bundle never adds a channel axis; the adapter refuses the shape, naming the file.
    assert samples.x.shape == shape
    with Adapter(bundle, state_dir) as adapter, pytest.raises(DataError, match=r"w.npz: inputs have shape"):
        adapter.learn(samples.x, samples.y, origin=samples.origin)
    assert adapter.version == 0


def test_image_folders_are_labelled_and_scaled(manifest: Manifest, tmp_path: Path) -> None:
    root = _image_folders(tmp_path / "images")
    (samples,) = read_path(root, manifest)
    assert samples.x.shape == (6, CHANNELS, SIZE, SIZE)
    assert samples.x.dtype == np.float32
    assert sorted(samples.y.tolist()) == sorted([*COLOURS] * 2)
    for x, label in zip(samples.x, samples.y, strict=True):
        expected = np.array(COLOURS[str(label)], np.float32) / 255.0
        np.testing.assert_allclose(x, np.broadcast_to(expected[:, None, None], x.shape), atol=1e-6)


def test_image_preprocessing_follows_the_manifest(manifest: Manifest, tmp_path: Path) -> None:
    prep = Preprocessing(color="RGB", layout="NCHW", scale=2.0 / 255.0, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 2.0])
    path = _write_png(tmp_path / "one.png", (100, 50, 255))
    x = read_image(path, replace(manifest, preprocessing=prep))
    expected = (np.array([100, 50, 255]) * 2.0 / 255.0 - np.array(prep.mean)) / np.array(prep.std)
    assert x.shape == (CHANNELS, SIZE, SIZE)
    np.testing.assert_allclose(x, np.broadcast_to(expected[:, None, None], x.shape), rtol=1e-6)


def test_gray_images_for_a_single_channel_bundle(manifest: Manifest, tmp_path: Path) -> None:
    path = _write_png(tmp_path / "g.png", 200, (12, 12), mode="L")
    nchw = read_image(path, _gray(manifest, "NCHW"))
    nhwc = read_image(path, _gray(manifest, "NHWC"))
    assert nchw.shape == (1, SIZE, SIZE) and nhwc.shape == (SIZE, SIZE, 1)
    np.testing.assert_allclose(nchw, 200 / 255.0, rtol=1e-6)
    np.testing.assert_allclose(nhwc, 200 / 255.0, rtol=1e-6)


def test_single_image_for_prediction(manifest: Manifest, tmp_path: Path) -> None:
    path = _write_png(tmp_path / "one.png", COLOURS["green"])
    (samples,) = read_path(path, manifest, need_labels=False)
    assert samples.x.shape == (1, CHANNELS, SIZE, SIZE)
    assert samples.y is None
    with pytest.raises(DataError, match="single image has no label"):
        read_path(path, manifest)


def test_folder_with_npz_files_and_image_folders(manifest: Manifest, tmp_path: Path) -> None:
    root = _image_folders(tmp_path / "data", per_class=1)
    x, y = make_dataset(4, seed=5)
    np.savez(root / "a.npz", x=x, y=y)
    np.savez(root / "b.npz", x=x[:2], y=y[:2])
    found = read_path(root, manifest)
    assert [s.origin for s in found] == [str(root / "a.npz"), str(root / "b.npz"), str(root)]
    assert [len(s.x) for s in found] == [4, 2, 3]


def test_learning_from_image_folders(bundle: Bundle, tmp_path: Path, state_dir: Path) -> None:
    (samples,) = read_path(_image_folders(tmp_path / "images"), bundle.manifest)
    with Adapter(bundle, state_dir) as adapter:
        result = adapter.learn(samples.x, samples.y, epochs=2, origin=samples.origin)
    assert (result.samples, result.version) == (6, 1)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + os.urandom(64), os.urandom(200)])
def test_corrupt_png_is_named(content: bytes, manifest: Manifest, tmp_path: Path) -> None:
    root = _image_folders(tmp_path / "images", per_class=1)
    bad = root / "red" / "broken.png"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="not a readable image") as info:
        read_path(root, manifest)
    assert str(bad) in str(info.value)


def test_truncated_png_is_named(manifest: Manifest, tmp_path: Path) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = tmp_path / "blue" / "t.png"
    path.parent.mkdir()
    image.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.png: not a readable image"):
        read_path(tmp_path, manifest)


def test_image_input_needs_an_image_bundle(manifest: Manifest, tmp_path: Path) -> None:
    flat = replace(manifest, input=TensorSpec("x", ["batch", 16]), preprocessing=Preprocessing("none", "none"))
    path = _write_png(tmp_path / "one.png", (1, 2, 3))
    with pytest.raises(DataError, match="input is not an image"):
        read_path(path, flat, need_labels=False)


@pytest.mark.parametrize("name", ["data.txt", "photo.bmp", "archive.zip", "noext"])
def test_unsupported_file_type(name: str, manifest: Manifest, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(b"whatever")
    with pytest.raises(DataError, match="unsupported file type"):
        read_path(tmp_path / name, manifest, need_labels=False)


def test_missing_path(manifest: Manifest, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        read_path(tmp_path / "nope.npz", manifest)


def test_folder_without_data(manifest: Manifest, tmp_path: Path) -> None:
    (tmp_path / "empty_label").mkdir()
    (tmp_path / "notes.txt").write_text("nothing to learn")
    with pytest.raises(DataError, match="no .npz, .csv or .jsonl files and no LABEL/ image folders"):
        read_path(tmp_path, manifest)


def _csv_text(x: np.ndarray, labels: list[str]) -> str:
    flat = x.reshape(len(x), -1)
    header = ",".join(f"f{i}" for i in range(flat.shape[1]))
    rows = [",".join(f"{v:.9g}" for v in row) + f",{label}" for row, label in zip(flat, labels, strict=True)]
    return "\n".join([header + ",label", *rows]) + "\n"


def test_csv_rows_become_inputs_and_labels(manifest: Manifest, tmp_path: Path) -> None:
    x, y = make_dataset(6, seed=3)
    names = [CLASSES[i] for i in y]
    (tmp_path / "sensor.csv").write_text(_csv_text(x, names))
    (samples,) = read_path(tmp_path / "sensor.csv", manifest)
    np.testing.assert_allclose(samples.x, x, rtol=1e-6)
    assert samples.y.tolist() == names
    (tmp_path / "indexed.csv").write_text(_csv_text(x, [str(i) for i in y]))
    assert read_path(tmp_path / "indexed.csv", manifest)[0].y.tolist() == y.tolist()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty CSV file"),
        ("f0,f1,label\n", "header but no rows"),
        ("f0,f1\n1,2\n", "no 'label' column"),
        ("f0,f1,label\n1,2\n", "line 2 has 2 columns, the header has 3"),
        ("f0,f1,label\n1,x,red\n", "line 2 has a value that is not a number"),
        ("f0,f1,label\n1,2,red\n", "rows have 2 values, the bundle's input"),
    ],
)
def test_bad_csv_is_a_data_error_naming_the_file(text: str, message: str, manifest: Manifest, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_path(path, manifest)
    assert str(path) in str(info.value)


def test_csv_that_is_not_utf8_is_a_data_error(manifest: Manifest, tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("f0,label\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_path(path, manifest)


def test_json_lines_file(manifest: Manifest, tmp_path: Path) -> None:
    x, y = make_dataset(4, seed=4)
    lines = [json.dumps({"x": row.tolist(), "y": CLASSES[label]}) for row, label in zip(x, y, strict=True)]
    (tmp_path / "batch.jsonl").write_text("\n".join(lines) + "\n\n")
    (samples,) = read_path(tmp_path / "batch.jsonl", manifest)
    np.testing.assert_allclose(samples.x, x)
    assert samples.y.tolist() == [CLASSES[i] for i in y]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no samples"),
        ("not json\n", "line 1 is not an object"),
        ('{"y": "red"}\n', "line 1 is not an object with a numeric array 'x'"),
        ('{"x": [1, 2], "y": "red"}\n{"x": [1], "y": "red"}\n', "line 2 has x of shape"),
        ('{"x": [1, 2]}\n', "line 1 has no label"),
        ('{"x": [1, 2], "y": [1]}\n', "neither a name nor an index"),
    ],
)
def test_bad_json_lines(text: str, message: str, manifest: Manifest, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_path(path, manifest)


def test_folder_reads_csv_jsonl_and_npz_together(manifest: Manifest, tmp_path: Path) -> None:
    x, y = make_dataset(6, seed=6)
    np.savez(tmp_path / "a.npz", x=x[:2], y=y[:2])
    (tmp_path / "b.csv").write_text(_csv_text(x[2:4], [CLASSES[i] for i in y[2:4]]))
    (tmp_path / "c.jsonl").write_text(
        "".join(json.dumps({"x": r.tolist(), "y": int(v)}) + "\n" for r, v in zip(x[4:], y[4:], strict=True))
    )
    found = read_path(tmp_path, manifest)
    assert [Path(s.origin).name for s in found] == ["a.npz", "b.csv", "c.jsonl"]
    np.testing.assert_allclose(np.concatenate([s.x for s in found]), x, rtol=1e-6)
