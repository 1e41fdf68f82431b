"""Read samples from files: .npz (x, y), .npy (x), image files, and folders of them.

Image folders are ``LABEL/*.png|jpg``; images are converted, resized and normalised as the bundle's
manifest says. Every problem raises DataError naming the file.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeft.bundle import Manifest
from edgeft.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
ARRAY_SUFFIXES = frozenset({".npz", ".npy"})


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


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise DataError(f"{path}: {_numpy_load_problem(exc, '.npz')}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None


def _load_npy(path: Path) -> np.ndarray:
    try:
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
    return y


def read_array_file(path: Path, manifest: Manifest, need_labels: bool) -> Samples:
    """Samples from a .npz (``x``, optional ``y``) or a .npy (inputs only)."""
    if path.suffix.lower() == ".npy":
        if need_labels:
            raise DataError(f"{path}: a .npy file has no labels; use .npz with arrays 'x' and 'y'")
        return Samples(_with_channel_axis(_load_npy(path), manifest), None, str(path))
    arrays = _load_npz(path)
    if "x" not in arrays:
        raise DataError(f"{path}: missing array 'x' (found: {', '.join(arrays) or 'none'})")
    x = _with_channel_axis(arrays["x"], manifest)
    if x.ndim < 1 or len(x) == 0:
        raise DataError(f"{path}: 'x' holds no samples")
    y = arrays.get("y")
    if y is None and need_labels:
        raise DataError(f"{path}: missing array 'y' with the labels")
    return Samples(x, None if y is None else _labels(y, len(x), path), str(path))


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
        with Image.open(path) as image:
            pixels = image.convert(prep.color).resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(pixels, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__})") from None
    if array.ndim == 2:
        array = array[..., None]
    array = (array * prep.scale - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return array.transpose(2, 0, 1) if prep.layout == "NCHW" else array


def read_image_folders(root: Path, manifest: Manifest) -> Samples | None:
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
    x = np.stack([read_image(p, manifest) for p in images])
    y = np.array([p.parent.name for p in images])
    return Samples(x, y, str(root))


def read_path(path: str | Path, manifest: Manifest, need_labels: bool = True) -> list[Samples]:
    """All samples at ``path``: a .npz/.npy file, an image file, or a folder of .npz files and image folders."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            return [read_array_file(root, manifest, need_labels)]
        if suffix in IMAGE_SUFFIXES:
            if need_labels:
                raise DataError(f"{root}: a single image has no label; put images in LABEL/ folders")
            return [Samples(read_image(root, manifest)[None], None, str(root))]
        raise DataError(f"{root}: unsupported file type '{root.suffix}' (use .npz, .npy, .png, .jpg)")
    found = [read_array_file(p, manifest, need_labels) for p in sorted(root.glob("*.npz"))]
    images = read_image_folders(root, manifest)
    if images is not None:
        found.append(images)
    if not found:
        raise DataError(f"{root}: no .npz files and no LABEL/ image folders found")
    return found
