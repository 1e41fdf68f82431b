"""Read samples from files: .npz (x, y), .npy (x), .csv (features + label column), .jsonl, images, and folders.

Image folders are ``LABEL/*.png|jpg``; images are converted, resized and normalised as the bundle's
manifest says. CSV files have a header; the label column (default ``label``) holds names or indices and every
other column is a number. JSON lines hold one object per line: ``{"x": [...], "y": label}``. Multi-label and
regression bundles read their labels as float targets (``edgeft.data.targets.parse_targets``): a multi-hot or
numeric ``y`` in .npz, a list of names or numbers in JSON, ``;``-separated names or numbers in a CSV cell.
Every problem raises DataError naming the file. What a read may cost is bounded by ``ArrivalLimits``: each file
is charged before it is unpacked or parsed, so a decompression bomb is refused from its headers.

``stream_path`` reads the same sources in batches of ``READ_BATCH`` samples, holding one batch at a time: .npz
members are read incrementally from the zip, .npy files in slices, image folders image by image, CSV and JSON
lines row by row. A streamed arrival is charged for what learning keeps of it (its features), not its raw size.
"""

from __future__ import annotations

import csv
import json
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from edgeft.bundle import Manifest
from edgeft.data.label_kind import OneLabelKind
from edgeft.data.limits import COPIES, TEXT_COST, ArrivalLimits, OverBudget
from edgeft.data.targets import cell_targets, is_target_task, json_label_ok, parse_targets
from edgeft.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
ARRAY_SUFFIXES = frozenset({".npz", ".npy"})
TEXT_SUFFIXES = frozenset({".csv", ".jsonl"})
LABEL_COLUMN = "label"
MAX_IMAGE_PIXELS = 50_000_000  # a 50-megapixel photo; larger declared sizes are refused before decoding
MAX_LABEL_LENGTH = 200
READ_BATCH = 16  # samples per streamed batch: the backbone's batch, so reading holds no more than embedding
NPY_HEADER_ROOM = 1 << 16  # a .npy member may hold this much beyond its declared data (its header, padding)


@dataclass(frozen=True)
class Samples:
    """Inputs read from one place, with their raw labels (names or indices) when the source has them; a streamed
    batch also says how many samples its source declared in all (``total``), where the source says so up front."""

    x: np.ndarray
    y: np.ndarray | None
    origin: str
    total: int | None = None


def _numpy_load_problem(exc: ValueError, kind: str) -> str:
    """Explain numpy's refusal: object arrays inside, or a file that is not numpy's format at all."""
    text = str(exc)
    if "Object arrays" in text:
        return "holds object arrays (pickled Python objects), which edgeft never loads"
    if "pickle" in text:
        return f"not a readable {kind} file (neither a zip archive nor a .npy array; edgeft never unpickles files)"
    return f"not a readable {kind} file ({text})"


def _npy_header(handle: IO[bytes], holds: int, path: Path, member: str = "") -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a .npy header; refuse object dtype or more data declared than ``holds``."""
    kind, inside = (".npz", f" (array '{member}')") if member else (".npy", "")
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = readers[version](handle)
    except (ValueError, EOFError, SyntaxError, tokenize.TokenError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: not a readable {kind} file{inside}: its header is corrupt ({type(exc).__name__})"
        ) from None
    if dtype.hasobject:
        raise DataError(f"{path}: holds object arrays (pickled Python objects), which edgeft never loads{inside}")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > holds:
        raise DataError(
            f"{path}: not a readable {kind} file{inside}: its header declares shape {list(shape)} ({declared} bytes) "
            f"but it holds {holds} bytes"
        )
    return tuple(shape), bool(fortran), dtype


def _check_npy_header(handle: IO[bytes], holds: int, path: Path, limits: ArrivalLimits, member: str = "") -> None:
    """Refuse an array before numpy allocates it: object dtype, more data declared than ``holds`` bytes, or more
    than ``limits`` allow (``x``'s first axis counts as samples)."""
    shape, _, dtype = _npy_header(handle, holds, path, member)
    inside = f" (array '{member}')" if member else ""
    elements = int(np.prod(shape, dtype=object))
    declared = elements * dtype.itemsize
    if declared > limits.array_bytes:
        raise OverBudget(
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
                raise OverBudget(
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


def _labels_or_targets(y: np.ndarray, count: int, path: Path, manifest: Manifest) -> np.ndarray:
    """An array file's ``y``: class labels, or a multi-label/regression head's float targets."""
    if not is_target_task(manifest.head):
        return _labels(y, count, path)
    if y.ndim == 0 or len(y) != count:
        raise DataError(f"{path}: 'y' has shape {list(y.shape)}, expected one target row per sample ({count})")
    return parse_targets(y, manifest.head, manifest.classes, str(path))


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


def _npz_batches(path: Path, manifest: Manifest, need_labels: bool, limits: ArrivalLimits) -> Iterator[Samples]:
    """A .npz file's samples in batches: ``y`` (and every other member) checked and ``y`` read first, then ``x``
    read incrementally from its zip member; reading to the member's end checks its CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise DataError(f"{path}: member '{info.filename}' is not a .npy array; .npz files hold only those")
                members[info.filename[: -len(".npy")]] = info
            if "x" not in members:
                raise DataError(f"{path}: missing array 'x' (found: {', '.join(members) or 'none'})")
            x_info = members["x"]
            with archive.open(x_info) as member:
                header = _npy_header(member, x_info.file_size, path, "x")
            shape, _, dtype = header
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if x_info.file_size > declared + NPY_HEADER_ROOM:
                raise DataError(
                    f"{path}: member 'x.npy' unpacks to {x_info.file_size} bytes, more than edgeft reads for the "
                    f"{declared} bytes its header declares; a decompression bomb?"
                )
            for name, info in members.items():
                if name == "x":
                    continue
                if info.file_size > limits.array_bytes:
                    raise OverBudget(
                        f"{path}: member '{info.filename}' unpacks to {info.file_size} bytes, more than edgeft reads "
                        f"({limits.array_bytes}: {limits.why_array_bytes()})"
                    )
                with archive.open(info) as member:
                    _check_npy_header(member, info.file_size, path, limits, name)
            if "y" not in members and need_labels:
                raise DataError(f"{path}: missing array 'y' with the labels")
            y = None
            if "y" in members:
                with archive.open(members["y"]) as member:
                    y = np.lib.format.read_array(member, allow_pickle=False)
            with archive.open(x_info) as member:
                _npy_header(member, x_info.file_size, path, "x")  # past the header, to the data
                yield from _array_batches(member, header, y, path, manifest, limits)
                while member.read(1 << 20):  # to the end, where zipfile checks the CRC
                    pass
    except ValueError as exc:
        raise DataError(f"{path}: {_numpy_load_problem(exc, '.npz')}") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None


def _npy_batches(path: Path, manifest: Manifest, need_labels: bool, limits: ArrivalLimits) -> Iterator[Samples]:
    """A .npy file's samples (inputs only), read in slices."""
    if need_labels:
        raise DataError(f"{path}: a .npy file has no labels; use .npz with arrays 'x' and 'y'")
    try:
        with path.open("rb") as handle:
            header = _npy_header(handle, path.stat().st_size, path)
            yield from _array_batches(handle, header, None, path, manifest, limits)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({type(exc).__name__})") from None


def _array_batches(
    handle: IO[bytes],
    header: tuple[tuple[int, ...], bool, np.dtype],
    y: np.ndarray | None,
    path: Path,
    manifest: Manifest,
    limits: ArrivalLimits,
) -> Iterator[Samples]:
    """Rows of the array whose data follows in ``handle``, ``READ_BATCH`` at a time (a Fortran-ordered array,
    whose rows are not contiguous, is read whole within the array limit)."""
    shape, fortran, dtype = header
    if not shape or shape[0] == 0:
        raise DataError(f"{path}: 'x' holds no samples")
    count, row_shape = shape[0], shape[1:]
    labels = None if y is None else _labels_or_targets(y, count, path, manifest)
    _account(limits, str(path), count, manifest)
    row_bytes = int(np.prod(row_shape, dtype=object)) * dtype.itemsize
    whole = None
    if fortran and len(shape) > 1:
        if count * row_bytes > limits.array_bytes:
            raise OverBudget(
                f"{path}: a Fortran-ordered array of {count * row_bytes} bytes is more than edgeft reads whole "
                f"({limits.array_bytes}: {limits.why_array_bytes()}); save it in C order to stream it"
            )
        whole = np.frombuffer(_read_exactly(handle, count * row_bytes, path), dtype).reshape(shape, order="F")
    for start in range(0, count, READ_BATCH):
        n = min(READ_BATCH, count - start)
        if whole is not None:
            x = whole[start : start + n]
        else:
            x = np.frombuffer(_read_exactly(handle, n * row_bytes, path), dtype).reshape(n, *row_shape)
        y = None if labels is None else labels[start : start + n]
        yield Samples(_with_channel_axis(x, manifest), y, str(path), count)


def _read_exactly(handle: IO[bytes], size: int, path: Path) -> bytes:
    """``size`` bytes from ``handle``; EOFError when the data ends before."""
    data = handle.read(size)
    if len(data) != size:
        raise EOFError(f"{path}: the data ends {size - len(data)} bytes early")
    return data


def _fit_input_shape(x: np.ndarray, manifest: Manifest, origin: str) -> np.ndarray:
    """Reshape flat rows [N, D] to the bundle's per-sample input shape when the sizes agree."""
    shape = manifest.input.shape[1:]
    if all(isinstance(d, int) for d in shape) and x.ndim == 2 and len(shape) != 1:
        size = int(np.prod(shape))
        if x.shape[1] != size:
            raise DataError(f"{origin}: rows have {x.shape[1]} values, the bundle's input {shape} needs {size}")
        return x.reshape(len(x), *shape)
    return x


def read_csv(
    path: Path, manifest: Manifest, need_labels: bool, limits: ArrivalLimits, label_column: str = LABEL_COLUMN
) -> Samples:
    """Samples from a CSV file with a header: the label column, and numeric feature columns."""
    _charge_text(path, limits)
    return _collected(_csv_batches(path, manifest, need_labels, limits, None, label_column), str(path))


def _charge_text(path: Path, limits: ArrivalLimits) -> None:
    """Charge a text file read whole to ``limits`` by its size, before it is parsed."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    limits.charge(str(path), TEXT_COST * size, f"{size} bytes of text")


def _text_lines(path: Path) -> Iterator[str]:
    """A UTF-8 text file's lines, read as they are needed; DataError when it is not UTF-8."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            yield from handle
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


class _LabelKind:
    """Labels of one source are all indices or all names; its first label decides which."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.indices: bool | None = None

    def array(self, labels: list, line: int) -> np.ndarray:
        """One batch's labels as indices or checked names; DataError when they change kind within the source."""
        indices = [isinstance(v, int) or (isinstance(v, str) and v.isdigit()) for v in labels]
        if self.indices is None and labels:
            self.indices = indices[0]
        if self.indices:
            if not all(indices):
                raise DataError(
                    f"{self.origin}: near line {line} label {labels[indices.index(False)]!r} is a name, the first "
                    "label an index; use one kind"
                )
            return np.array([int(v) for v in labels], np.int64)
        return _checked_names(np.array([str(v) for v in labels]), self.origin)


def _csv_batches(
    path: Path,
    manifest: Manifest,
    need_labels: bool,
    limits: ArrivalLimits,
    hold: Manifest | None,
    label_column: str = LABEL_COLUMN,
) -> Iterator[Samples]:
    """A CSV file's samples, ``READ_BATCH`` rows at a time; with ``hold``, each batch is charged as it is kept."""
    reader = csv.reader(_text_lines(path))
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise DataError(f"{path}: empty CSV file (expected a header row)")
    if label_column not in header and need_labels:
        raise DataError(f"{path}: no '{label_column}' column in the header ({', '.join(header)})")
    label_at = header.index(label_column) if label_column in header else None
    kind = _LabelKind(str(path))
    rows: list[list[str]] = []
    seen = 0
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}: line {reader.line_num} has {len(row)} columns, the header has {len(header)}")
        rows.append(row)
        if len(rows) == READ_BATCH:
            yield _csv_batch(rows, label_at, kind, reader.line_num, path, manifest, limits, hold)
            seen, rows = seen + len(rows), []
    if rows:
        yield _csv_batch(rows, label_at, kind, reader.line_num, path, manifest, limits, hold)
    elif not seen:
        raise DataError(f"{path}: the CSV file has a header but no rows")


def _csv_batch(
    rows: list[list[str]],
    label_at: int | None,
    kind: _LabelKind,
    last_line: int,
    path: Path,
    manifest: Manifest,
    limits: ArrivalLimits,
    hold: Manifest | None,
) -> Samples:
    _account(limits, str(path), len(rows), hold)
    values = np.empty((len(rows), len(rows[0]) - (label_at is not None)), np.float32)
    for i, row in enumerate(rows):
        try:
            values[i] = [float(c) for j, c in enumerate(row) if j != label_at]
        except ValueError:
            line = last_line - len(rows) + 1 + i
            raise DataError(f"{path}: line {line} has a value that is not a number") from None
    if label_at is None:
        y = None
    elif is_target_task(manifest.head):
        y = cell_targets([row[label_at].strip() for row in rows], manifest.head, manifest.classes, str(path))
    else:
        y = kind.array([row[label_at].strip() for row in rows], last_line)
    return Samples(_fit_input_shape(values, manifest, str(path)), y, str(path))


def _account(limits: ArrivalLimits, origin: str, samples: int, hold: Manifest | None) -> None:
    """Count ``samples`` against the cap; with ``hold`` (streaming), charge what learning keeps of them."""
    limits.count(origin, samples)
    if hold is not None:
        kept = samples * (4 * hold.head.feature_dim + 8)
        limits.charge(origin, kept, f"the features of {samples} samples")


def _collected(batches: Iterable[Samples], origin: str) -> Samples:
    """One source's batches as one Samples."""
    parts = list(batches)
    x = np.concatenate([p.x for p in parts])
    y = None if parts[0].y is None else np.concatenate([p.y for p in parts])
    return Samples(x, y, origin)


def json_line_batches(
    lines: Iterable[str],
    origin: str,
    manifest: Manifest,
    need_labels: bool,
    limits: ArrivalLimits,
    hold: Manifest | None,
) -> Iterator[Samples]:
    """JSON lines ``{"x": [...], "y": label}`` as batches of ``READ_BATCH`` samples, parsed as they are read; with
    ``hold``, each batch is charged as it is kept. Either every line has a label or none has."""
    xs: list[np.ndarray] = []
    ys: list = []
    kind = _LabelKind(origin)
    first: tuple[tuple[int, ...], bool] | None = None
    number = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            x = np.asarray(row["x"], np.float32)
        except (ValueError, TypeError, KeyError):
            raise DataError(f"{origin}: line {number} is not an object with a numeric array 'x'") from None
        labelled = "y" in row
        if labelled and is_target_task(manifest.head):
            if not json_label_ok(row["y"], manifest.head):
                raise DataError(f"{origin}: line {number} has a label that does not fit a {manifest.head.task} head")
        elif labelled and (not isinstance(row["y"], (str, int)) or isinstance(row["y"], bool)):
            raise DataError(f"{origin}: line {number} has a label that is neither a name nor an index")
        if not labelled and need_labels:
            raise DataError(f"{origin}: line {number} has no label 'y'")
        if first is None:
            first = (x.shape, labelled)
        elif x.shape != first[0]:
            raise DataError(f"{origin}: line {number} has x of shape {list(x.shape)}, line 1 {list(first[0])}")
        elif labelled != first[1]:
            raise DataError(f"{origin}: line {number} {'has' if labelled else 'has no'} label 'y', line 1 the opposite")
        xs.append(x)
        if labelled:
            ys.append(row["y"])
        if len(xs) == READ_BATCH:
            yield _json_batch(xs, ys, kind, number, origin, manifest, limits, hold)
            xs, ys = [], []
    if xs:
        yield _json_batch(xs, ys, kind, number, origin, manifest, limits, hold)
    elif first is None:
        raise DataError(f'{origin}: no samples (expected JSON lines like {{"x": [...], "y": "cat"}})')


def _json_batch(
    xs: list[np.ndarray],
    ys: list,
    kind: _LabelKind,
    line: int,
    origin: str,
    manifest: Manifest,
    limits: ArrivalLimits,
    hold: Manifest | None,
) -> Samples:
    _account(limits, origin, len(xs), hold)
    x = _with_channel_axis(np.stack(xs), manifest)
    if ys and is_target_task(manifest.head):
        y = parse_targets(ys, manifest.head, manifest.classes, origin)
    else:
        y = kind.array(ys, line) if ys else None
    return Samples(_fit_input_shape(x, manifest, origin), y, origin)


def read_json_lines_file(path: Path, manifest: Manifest, need_labels: bool, limits: ArrivalLimits) -> Samples:
    """Samples from a ``.jsonl`` file."""
    _charge_text(path, limits)
    return _collected(json_line_batches(_text_lines(path), str(path), manifest, need_labels, limits, None), str(path))


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


def _image_files(root: Path) -> list[Path]:
    """``root/LABEL/*.png|jpg``, sorted."""
    return sorted(
        p
        for folder in sorted(root.iterdir())
        if folder.is_dir()
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES
    )


def read_image_folders(root: Path, manifest: Manifest, limits: ArrivalLimits) -> Samples | None:
    """Samples from ``root/LABEL/*.png|jpg``, labelled by folder name; None if there are none."""
    images = _image_files(root)
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


def _image_folder_batches(root: Path, manifest: Manifest, limits: ArrivalLimits) -> Iterator[Samples]:
    """``root/LABEL/*.png|jpg`` as batches of ``READ_BATCH`` images, each decoded when its batch is read."""
    images = _image_files(root)
    if not images:
        return
    if manifest.head.task == "regression":
        raise DataError(f"{root}: image folders name classes; a regression head needs numeric targets (.npz, .csv)")
    names = _checked_names(np.array([p.parent.name for p in images]), str(root))
    labels = names
    if is_target_task(manifest.head):  # multi-label: each folder names one label of its images
        labels = parse_targets([[name] for name in names.tolist()], manifest.head, manifest.classes, str(root))
    _account(limits, str(root), len(images), manifest)
    for start in range(0, len(images), READ_BATCH):
        chunk = images[start : start + READ_BATCH]
        x = np.stack([read_image(p, manifest) for p in chunk])
        yield Samples(x, labels[start : start + len(chunk)], str(root), len(images))


def concatenated(samples: list[Samples], origin: str) -> tuple[np.ndarray, np.ndarray]:
    """All inputs and labels of ``samples`` as two arrays; DataError if they differ in input shape or label kind."""
    if len(samples) == 1:  # no copy: an arrival's inputs may be most of the memory budget
        return samples[0].x, np.asarray(samples[0].y)
    shapes = {s.x.shape[1:] for s in samples}
    if len(shapes) > 1:
        raise DataError(f"{origin}: inputs of different shapes {sorted(map(list, shapes))}; use one shape")
    kind = OneLabelKind(origin)
    for s in samples:
        kind.check(s.y)
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


def stream_path(
    path: str | Path, manifest: Manifest, need_labels: bool = True, limits: ArrivalLimits | None = None
) -> Iterator[Samples]:
    """The samples ``read_path`` would find at ``path``, in batches of at most ``READ_BATCH`` (each naming its file
    in ``origin``), read as they are consumed: what is held is one batch, whatever the size of the data.

    ``limits`` counts the samples and charges what learning keeps of each (its features) as soon as a source
    declares how many it holds (.npz/.npy headers, image folders) or as its rows are read (CSV, JSON lines).
    Reading errors (including OSError) are DataErrors naming the file; they may come after earlier batches.
    """
    limits = limits or ArrivalLimits.for_reading()
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if root.is_file():
        yield from _named_read_errors(_file_batches(root, manifest, need_labels, limits), root)
        return
    found = False
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in {".npz", *TEXT_SUFFIXES}:
            found = True
            yield from stream_path(p, manifest, need_labels, limits)
    for batch in _named_read_errors(_image_folder_batches(root, manifest, limits), root):
        found = True
        yield batch
    if not found:
        raise DataError(f"{root}: no .npz, .csv or .jsonl files and no LABEL/ image folders found")


def _file_batches(path: Path, manifest: Manifest, need_labels: bool, limits: ArrivalLimits) -> Iterator[Samples]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _npz_batches(path, manifest, need_labels, limits)
    if suffix == ".npy":
        return _npy_batches(path, manifest, need_labels, limits)
    if suffix == ".csv":
        return _csv_batches(path, manifest, need_labels, limits, manifest)
    if suffix == ".jsonl":
        return json_line_batches(_text_lines(path), str(path), manifest, need_labels, limits, manifest)
    if suffix in IMAGE_SUFFIXES:
        if need_labels:
            raise DataError(f"{path}: a single image has no label; put images in LABEL/ folders")
        return iter([Samples(read_image(path, manifest)[None], None, str(path))])
    raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .npz, .npy, .csv, .jsonl, .png, .jpg)")


def _named_read_errors(batches: Iterator[Samples], path: Path) -> Iterator[Samples]:
    """``batches``, with an OSError while reading turned into a DataError naming ``path``."""
    try:
        yield from batches
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
