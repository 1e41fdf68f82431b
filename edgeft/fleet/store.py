"""The server's record of a fleet: its label registry and every global head, each saved as a numbered version.

``OUT/registry.json`` holds the bundle fingerprint and the fleet's label map (it only ever grows, so a class keeps
its output across runs). ``OUT/versions/NNNNNN.npz`` holds a global head's parameters (plain arrays, no pickles)
and ``NNNNNN.json`` its label map, round and metrics; each file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.bundle import Bundle
from edgeft.common.atomic import write_atomic, write_bytes_atomic
from edgeft.errors import EdgeftError
from edgeft.runtime.trainer import Parameters

REGISTRY = "registry.json"
VERSIONS = "versions"


@dataclass(frozen=True)
class GlobalHead:
    """One saved global head: its version number, parameters and label map."""

    version: int
    parameters: Parameters
    classes: list[str]


class GlobalStore:
    """The folder where a fleet server keeps its label registry and global head versions."""

    def __init__(self, root: str | Path, bundle: Bundle) -> None:
        self.root = Path(root)
        self.fingerprint = bundle.fingerprint
        (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)
        self._initial_classes = list(bundle.manifest.classes)

    def registry(self) -> list[str]:
        """The fleet's label map so far (the bundle's classes when nothing was registered)."""
        path = self.root / REGISTRY
        if not path.exists():
            return list(self._initial_classes)
        try:
            data = json.loads(path.read_text())
            fingerprint, classes = data["bundle"], list(data["classes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgeftError(f"{path} is not a fleet label registry ({type(exc).__name__}: {exc})") from None
        if fingerprint != self.fingerprint:
            raise EdgeftError(f"{path} belongs to another bundle; give each bundle its own fleet output folder")
        return classes

    def save_registry(self, classes: list[str]) -> None:
        """Replace the label registry atomically."""
        data = {"bundle": self.fingerprint, "classes": classes}
        write_bytes_atomic(self.root / REGISTRY, (json.dumps(data, indent=2) + "\n").encode())

    def versions(self) -> list[int]:
        """Numbers of the saved global heads, oldest first."""
        return sorted(int(path.stem) for path in (self.root / VERSIONS).glob("*.json") if path.stem.isdigit())

    def load(self, version: int) -> GlobalHead:
        """A saved global head."""
        meta = self.meta(version)
        path = self.root / VERSIONS / f"{version:06d}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                parameters = {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            raise EdgeftError(f"{path} is not a saved global head ({type(exc).__name__}: {exc})") from None
        return GlobalHead(version, parameters, list(meta["classes"]))

    def meta(self, version: int) -> dict[str, Any]:
        """A saved global head's label map, round and metrics."""
        path = self.root / VERSIONS / f"{version:06d}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise EdgeftError(f"{path} is not a global head's metadata ({type(exc).__name__}: {exc})") from None

    def latest(self) -> GlobalHead | None:
        """The newest saved global head, if any."""
        numbers = self.versions()
        return self.load(numbers[-1]) if numbers else None

    def save(self, version: int, parameters: Parameters, classes: list[str], info: dict[str, Any]) -> None:
        """Write global head ``version``: the parameters first, then the metadata that makes it visible."""
        folder = self.root / VERSIONS

        def arrays(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.savez(handle, **parameters)

        write_atomic(folder / f"{version:06d}.npz", arrays)
        meta = {
            "version": version,
            "bundle": self.fingerprint,
            "classes": classes,
            "created": datetime.now(timezone.utc).isoformat(),
            **info,
        }
        write_bytes_atomic(folder / f"{version:06d}.json", (json.dumps(meta, indent=2) + "\n").encode())
