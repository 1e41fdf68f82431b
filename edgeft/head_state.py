"""A head's trainable state in a backend-neutral file: parameters, optimizer state and step count in one .npz.

Both trainers (the portable ONNX one and ORT training's) read and write it, so a state trained by one continues
under the other. Members: ``param/<name>`` for every parameter (frozen ones too), ``state/<name>`` for each
optimizer-state tensor, ``step`` (optimizer steps taken so far). The file is written byte-for-byte
deterministically (fixed zip timestamps) and read without pickles.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeft.errors import EdgeftError

PARAM_PREFIX = "param/"
STATE_PREFIX = "state/"
STEP_KEY = "step"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def state_owner(state_name: str, parameters: Iterable[str]) -> str:
    """The parameter an optimizer-state tensor belongs to (``adamw.m.head.weight`` -> ``head.weight``)."""
    for name in sorted(parameters, key=len, reverse=True):
        if state_name.endswith("." + name):
            return name
    raise EdgeftError(f"optimizer state {state_name} belongs to no trainable parameter")


@dataclass
class HeadState:
    """Parameters by name, optimizer state by name (empty: a fresh optimizer), and steps taken."""

    parameters: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    step: int = 0

    def save(self, path: Path) -> None:
        """Write the state as an uncompressed .npz with fixed timestamps (same state, same bytes)."""
        members = {PARAM_PREFIX + k: v for k, v in self.parameters.items()}
        members.update({STATE_PREFIX + k: v for k, v in self.optimizer.items()})
        members[STEP_KEY] = np.array(self.step, np.int64)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for key in sorted(members):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asarray(members[key], order="C"), allow_pickle=False)
                info = zipfile.ZipInfo(key + ".npy", date_time=_EPOCH)
                info.external_attr = 0o600 << 16
                archive.writestr(info, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> HeadState:
        """Read a state written by ``save``; raise EdgeftError naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                members = {key: data[key] for key in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise EdgeftError(f"{path} is not a valid head state ({type(exc).__name__}: {exc})") from None
        if STEP_KEY not in members or not any(k.startswith(PARAM_PREFIX) for k in members):
            raise EdgeftError(f"{path} is not a valid head state (no parameters or step count)")
        parameters = {k[len(PARAM_PREFIX) :]: v for k, v in members.items() if k.startswith(PARAM_PREFIX)}
        optimizer = {k[len(STATE_PREFIX) :]: v for k, v in members.items() if k.startswith(STATE_PREFIX)}
        bad = [k for k, v in {**parameters, **optimizer}.items() if v.dtype != np.float32]
        if bad:
            raise EdgeftError(f"{path} is not a valid head state: {bad[:3]} are not float32")
        return cls(parameters, optimizer, int(members[STEP_KEY]))
