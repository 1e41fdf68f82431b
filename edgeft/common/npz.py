"""Named arrays in .npz files: read from bytes already hash-checked, and written plainly (never pickled)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from edgeft.errors import EdgeftError


def read_arrays(data: bytes, path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of the .npz ``data`` (the bytes of ``path``); EdgeftError naming the file if it is not ``what``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise EdgeftError(f"{path} is not {what} ({type(exc).__name__})") from None


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed .npz (the caller makes it durable)."""
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
