"""Read samples from files: .npz (x, y), .npy (x), .csv (features + label column), .jsonl, images, and folders.

Image folders are ``LABEL/*.png|jpg``; images are converted, resized and normalised as the bundle's
manifest says. CSV files have a header; the label column (default ``label``) holds names or indices and every
other column is a number. JSON lines hold one object per line: ``{"x": [...], "y": label}``. Multi-label and
regression bundles read their labels as float targets (``edgeft.runtime.tasks.parse_targets``): a multi-hot or
numeric ``y`` in .npz, a list of names or numbers in JSON, ``;``-separated names or numbers in a CSV cell.
Every problem raises DataError naming the file. What a read may cost is bounded by ``ArrivalLimits``: each file
is charged before it is unpacked or parsed, so a decompression bomb is refused from its headers.
"""

from __future__ import annotations

import csv
import io
import json
import tokenize
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from edgeft.bundle import Manifest
from edgeft.errors import DataError
from edgeft.runtime.limits import COPIES, TEXT_COST, ArrivalLimits
from edgeft.runtime.tasks import cell_targets, is_target_task, json_label_ok, parse_targets

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
ARRAY_SUFFIXES = frozenset({".npz", ".npy"})
TEXT_SUFFIXES = frozenset({".csv", ".jsonl"})
LABEL_COLUMN = "label"
MAX_IMAGE_PIXELS = 50_000_000  # a 50-megapixel photo; larger declared sizes are refused before decoding
MAX_LABEL_LENGTH = 200


@dataclass(frozen=True)
class Samples:
    """Inputs read from one place, with their raw labels (names or indices) when the source has them."""

    x: np.ndarray
    y: np.ndarray | None
    origin: str


def _numpy_load_problem(exc: ValueError, kind: str) -> str:
    """Explain numpy's refusal: object arrays inside, or a file that is not numpy's format at all."""
    text = str(exc)
    if "Object arrays" in text:
        return "holds object arrays (pickled Python objects), which edgeft never loads"
    if "pickle" in text:
        return f"not a readable {kind} file (neither a zip archive nor a .npy array; edgeft never unpickles files)"
    return f"not a readable {kind} file ({text})"


def _check_npy_header(handle: IO[bytes], holds: int, path: Path, limits: ArrivalLimits, member: str = "") -> None:
    """Refuse an array before numpy allocates it: object dtype, more data declared than ``holds`` bytes, or more
    than ``limits`` allow (``x``'s first axis counts as samples)."""
    kind, inside = (".npz", f" (array '{member}')") if member else (".npy", "")
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = readers[version](handle)
    except (ValueError, EOFError, SyntaxError, tokenize.TokenError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: not a readable {kind} file{inside}: its header is corrupt ({type(exc).__name__})"
        ) from None
    if dtype.hasobject:
        raise DataError(f"{path}: holds object arrays (pickled Python objects), which edgeft never loads{inside}")
    elements = int(np.prod(shape, dtype=object))
    declared = elements * dtype.itemsize
    if declared > holds:
        raise DataError(
            f"{path}: not a readable {kind} file{inside}: its header declares shape {list(shape)} ({declared} bytes) "
            f"but it holds {holds} bytes"
        )
    if declared > limits.array_bytes:
        raise DataError(
            f"{path}: an array of {declared} bytes{inside} is more than edgeft reads ({limits.array_bytes}: "
            f"{limits.why_array_bytes()})"
        )
    if member in ("", "x") and shape:
        limits.count(str(path), int(shape[0]))
    limits.charge(str(path), COPIES * max(declared, elements * 4), f"array '{member or 'x'}' {list(shape)} {dtype}")


def _check_npz(path: Path, limits: ArrivalLimits) -> None:
    """Look at every member's size and header without unpacking the data (a decompression bomb stays packed)."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise DataError(f"{path}: member '{info.filename}' is not a .npy array; .npz files hold only those")
            if info.file_size > limits.array_bytes:
                raise DataError(
                    f"{path}: member '{info.filename}' unpacks to {info.file_size} bytes, more than edgeft reads "
                    f"({limits.array_bytes}: {limits.why_array_bytes()})"
                )
            with archive.open(info) as member:
                _check_npy_header(member, info.file_size, path, limits, info.filename[: -len(".npy")])


def _load_npz(path: Path, limits: ArrivalLimits) -> dict[str, np.ndarray]:
    try:
        _check_npz(path, limits)
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise DataError(f"{path}: {_numpy_load_problem(exc, '.npz')}") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None


def _load_npy(path: Path, limits: ArrivalLimits) -> np.ndarray:
    try:
        with path.open("rb") as handle:
            _check_npy_header(handle, path.stat().st_size, path, limits)
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: {_numpy_load_problem(exc, '.npy')}") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({type(exc).__name__})") from None


def _with_channel_axis(x: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Accept [N, H, W] for single-channel image inputs by adding the channel axis."""
    shape = manifest.input.shape
    if len(shape) == 4 and x.ndim == 3 and manifest.preprocessing.color == "L":
        return x[:, None] if manifest.preprocessing.layout == "NCHW" else x[..., None]
    return x


def _labels(y: np.ndarray, count: int, path: Path) -> np.ndarray:
    if y.ndim != 1 or len(y) != count:
        raise DataError(f"{path}: 'y' has shape {list(y.shape)}, expected one label per sample ({count})")
    return _checked_names(y, str(path))


def _checked_names(y: np.ndarray, origin: str) -> np.ndarray:
    """Label names as text; refuse names that could pass for paths or break logs ('/', control characters, '..')."""
    if y.dtype.kind == "S":
        try:
            y = np.char.decode(y, "ascii")
        except UnicodeDecodeError:
            raise DataError(f"{origin}: labels are bytes that are not ASCII text") from None
    if y.dtype.kind != "U":
        return y
    for name in np.unique(y).tolist():
        if name in (".", "..") or len(name) > MAX_LABEL_LENGTH or any(c in "/\\" or not c.isprintable() for c in name):
            raise DataError(
                f"{origin}: label {name[:40]!r} is not a usable class name (at most {MAX_LABEL_LENGTH} printable "
                "characters, no '/' or '\\', not '.' or '..')"
            )
    return y


def read_array_file(path: Path, manifest: Manifest, need_labels: bool, limits: ArrivalLimits) -> Samples:
    """Samples from a .npz (``x``, optional ``y``) or a .npy (inputs only)."""
    if path.suffix.lower() == ".npy":
        if need_labels:
            raise DataError(f"{path}: a .npy file has no labels; use .npz with arrays 'x' and 'y'")
        return Samples(_with_channel_axis(_load_npy(path, limits), manifest), None, str(path))
    arrays = _load_npz(path, limits)
    if "x" not in arrays:
        raise DataError(f"{path}: missing array 'x' (found: {', '.join(arrays) or 'none'})")
    x = _with_channel_axis(arrays["x"], manifest)
    if x.ndim < 1 or len(x) == 0:
        raise DataError(f"{path}: 'x' holds no samples")
    y = arrays.get("y")
    if y is None and need_labels:
        raise DataError(f"{path}: missing array 'y' with the labels")
    if y is not None and is_target_task(manifest.head):
        if y.ndim == 0 or len(y) != len(x):
            raise DataError(f"{path}: 'y' has shape {list(y.shape)}, expected one target row per sample ({len(x)})")
        return Samples(x, parse_targets(y, manifest.head, manifest.classes, str(path)), str(path))
    return Samples(x, None if y is None else _labels(y, len(x), path), str(path))


def _fit_input_shape(x: np.ndarray, manifest: Manifest, origin: str) -> np.ndarray:
    """Reshape flat rows [N, D] to the bundle's per-sample input shape when the sizes agree."""
    shape = manifest.input.shape[1:]
    if all(isinstance(d, int) for d in shape) and x.ndim == 2 and len(shape) != 1:
        size = int(np.prod(shape))
        if x.shape[1] != size:
            raise DataError(f"{origin}: rows have {x.shape[1]} values, the bundle's input {shape} needs {size}")
        return x.reshape(len(x), *shape)
    return x


def _decoded_lines(path: Path, limits: ArrivalLimits) -> str:
    """A text file's contents, charged to ``limits`` by its size before it is read."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    limits.charge(str(path), TEXT_COST * size, f"{size} bytes of text")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def read_csv(
    path: Path, manifest: Manifest, need_labels: bool, limits: ArrivalLimits, label_column: str = LABEL_COLUMN
) -> Samples:
    """Samples from a CSV file with a header: the label column, and numeric feature columns."""
    rows = list(csv.reader(io.StringIO(_decoded_lines(path, limits))))
    if not rows or not rows[0]:
        raise DataError(f"{path}: empty CSV file (expected a header row)")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if label_column not in header and need_labels:
        raise DataError(f"{path}: no '{label_column}' column in the header ({', '.join(header)})")
    if not body:
        raise DataError(f"{path}: the CSV file has a header but no rows")
    limits.count(str(path), len(body))
    label_at = header.index(label_column) if label_column in header else None
    values = np.empty((len(body), len(header) - (label_at is not None)), np.float32)
    labels = []
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} columns, the header has {len(header)}")
        cells = [c for i, c in enumerate(row) if i != label_at]
        try:
            values[line - 2] = [float(c) for c in cells]
        except ValueError:
            raise DataError(f"{path}: line {line} has a value that is not a number") from None
        if label_at is not None:
            labels.append(row[label_at].strip())
    if label_at is None:
        y = None
    elif is_target_task(manifest.head):
        y = cell_targets(labels, manifest.head, manifest.classes, str(path))
    else:
        y = _label_array(labels, str(path))
    return Samples(_fit_input_shape(values, manifest, str(path)), y, str(path))


def _label_array(labels: list, origin: str) -> np.ndarray:
    """Labels as integer indices when they all are, else as names."""
    if labels and all(isinstance(v, int) or (isinstance(v, str) and v.isdigit()) for v in labels):
        return np.array([int(v) for v in labels], np.int64)
    return _checked_names(np.array([str(v) for v in labels]), origin)


def read_json_lines(
    stream: IO[str], origin: str, manifest: Manifest, need_labels: bool, limits: ArrivalLimits | None = None
) -> Samples:
    """Samples from JSON lines ``{"x": [...], "y": label}`` (``y`` optional when labels are not needed)."""
    xs, ys = [], []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            x = np.asarray(row["x"], np.float32)
        except (ValueError, TypeError, KeyError):
            raise DataError(f"{origin}: line {number} is not an object with a numeric array 'x'") from None
        if xs and x.shape != xs[0].shape:
            raise DataError(f"{origin}: line {number} has x of shape {list(x.shape)}, line 1 {list(xs[0].shape)}")
        if "y" in row:
            if is_target_task(manifest.head):
                if not json_label_ok(row["y"], manifest.head):
                    raise DataError(
                        f"{origin}: line {number} has a label that does not fit a {manifest.head.task} head"
                    )
            elif not isinstance(row["y"], (str, int)) or isinstance(row["y"], bool):
                raise DataError(f"{origin}: line {number} has a label that is neither a name nor an index")
            ys.append(row["y"])
        elif need_labels:
            raise DataError(f"{origin}: line {number} has no label 'y'")
        xs.append(x)
    if not xs:
        raise DataError(f'{origin}: no samples (expected JSON lines like {{"x": [...], "y": "cat"}})')
    if ys and len(ys) != len(xs):
        raise DataError(f"{origin}: {len(xs) - len(ys)} of {len(xs)} lines have no label 'y'")
    if limits is not None:
        limits.count(origin, len(xs))
    x = _with_channel_axis(np.stack(xs), manifest)
    if ys and is_target_task(manifest.head):
        y = parse_targets(ys, manifest.head, manifest.classes, origin)
    else:
        y = _label_array(ys, origin) if ys else None
    return Samples(_fit_input_shape(x, manifest, origin), y, origin)


def read_json_lines_file(path: Path, manifest: Manifest, need_labels: bool, limits: ArrivalLimits) -> Samples:
    """Samples from a ``.jsonl`` file."""
    return read_json_lines(io.StringIO(_decoded_lines(path, limits)), str(path), manifest, need_labels, limits)


def read_image(path: Path, manifest: Manifest) -> np.ndarray:
    """One image file as a backbone input sample (without batch axis), preprocessed per the manifest."""
    from PIL import Image, UnidentifiedImageError

    prep = manifest.preprocessing
    shape = manifest.input.shape
    if prep.layout not in ("NCHW", "NHWC") or len(shape) != 4:
        raise DataError(f"{path}: this bundle's input is not an image; feed arrays in .npz files")
    height, width = (shape[2], shape[3]) if prep.layout == "NCHW" else (shape[1], shape[2])
    if not isinstance(height, int) or not isinstance(width, int):
        raise DataError(f"{path}: this bundle's input size is dynamic; feed arrays in .npz files")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by a lower limit
            image = Image.open(path)
        with image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{path}: declares {image.width}x{image.height} pixels, more than edgeft decodes "
                    f"({MAX_IMAGE_PIXELS}; a decompression bomb?)"
                )
            pixels = image.convert(prep.color).resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(pixels, dtype=np.float32)
    except Image.DecompressionBombError:
        raise DataError(
            f"{path}: declares more pixels than edgeft decodes ({MAX_IMAGE_PIXELS}; a decompression bomb?)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__})") from None
    if array.ndim == 2:
        array = array[..., None]
    array = (array * prep.scale - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return array.transpose(2, 0, 1) if prep.layout == "NCHW" else array


def read_image_folders(root: Path, manifest: Manifest, limits: ArrivalLimits) -> Samples | None:
    """Samples from ``root/LABEL/*.png|jpg``, labelled by folder name; None if there are none."""
    images = sorted(
        p
        for folder in sorted(root.iterdir())
        if folder.is_dir()
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        return None
    limits.count(str(root), len(images))
    sample_bytes = 4 * int(np.prod([d for d in manifest.input.shape[1:] if isinstance(d, int)]))
    limits.charge(str(root), COPIES * sample_bytes * len(images), f"{len(images)} images")
    if manifest.head.task == "regression":
        raise DataError(f"{root}: image folders name classes; a regression head needs numeric targets (.npz, .csv)")
    x = np.stack([read_image(p, manifest) for p in images])
    y = _checked_names(np.array([p.parent.name for p in images]), str(root))
    if is_target_task(manifest.head):  # multi-label: each folder names one label of its images
        y = parse_targets([[name] for name in y.tolist()], manifest.head, manifest.classes, str(root))
    return Samples(x, y, str(root))


def concatenated(samples: list[Samples], origin: str) -> tuple[np.ndarray, np.ndarray]:
    """All inputs and labels of ``samples`` as two arrays; DataError if they differ in input shape or label kind."""
    if len(samples) == 1:  # no copy: an arrival's inputs may be most of the memory budget
        return samples[0].x, np.asarray(samples[0].y)
    shapes = {s.x.shape[1:] for s in samples}
    if len(shapes) > 1:
        raise DataError(f"{origin}: inputs of different shapes {sorted(map(list, shapes))}; use one shape")
    if len({np.asarray(s.y).dtype.kind == "U" for s in samples}) > 1:
        raise DataError(f"{origin}: some labels are class names, others indices; use one kind")
    return np.concatenate([s.x for s in samples]), np.concatenate([np.asarray(s.y) for s in samples])


def read_path(
    path: str | Path, manifest: Manifest, need_labels: bool = True, limits: ArrivalLimits | None = None
) -> list[Samples]:
    """All samples at ``path``: a .npz/.npy file, an image file, or a folder of .npz files and image folders.

    ``limits`` bounds what the whole read may cost (default: the detected memory budget, no sample cap).
    """
    limits = limits or ArrivalLimits.for_reading()
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            return [read_array_file(root, manifest, need_labels, limits)]
        if suffix == ".csv":
            return [read_csv(root, manifest, need_labels, limits)]
        if suffix == ".jsonl":
            return [read_json_lines_file(root, manifest, need_labels, limits)]
        if suffix in IMAGE_SUFFIXES:
            if need_labels:
                raise DataError(f"{root}: a single image has no label; put images in LABEL/ folders")
            return [Samples(read_image(root, manifest)[None], None, str(root))]
        raise DataError(f"{root}: unsupported file type '{root.suffix}' (use .npz, .npy, .csv, .jsonl, .png, .jpg)")
    found = [
        sample
        for p in sorted(root.iterdir())
        if p.is_file() and p.suffix.lower() in {".npz", *TEXT_SUFFIXES}
        for sample in read_path(p, manifest, need_labels, limits)
    ]
    images = read_image_folders(root, manifest, limits)
    if images is not None:
        found.append(images)
    if not found:
        raise DataError(f"{root}: no .npz, .csv or .jsonl files and no LABEL/ image folders found")
    return found
