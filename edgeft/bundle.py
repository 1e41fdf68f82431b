"""The bundle format: a read-only directory shipped to devices, described by ``manifest.json``.

Layout::

    manifest.json           format version, input, preprocessing, cut, head, classes, defaults, sha256 of files,
                            and (int8 bundles only) how the backbone was quantised
    backbone.onnx           the frozen part of the original model, inference only (float, or int8 QDQ)
    float_backbone.onnx     (int8 bundles exported with the float fallback) the float backbone, used where the
                            int8 one fails its self-check (edgeft.runtime.int8_check)
    head.onnx               the head for inference, parameters as inputs (fed from a checkpoint)
    train/train_step.onnx   the portable train step (standard ONNX ops only: forward, loss, backward, optimizer)
    train/initial_head.npz  the head's starting parameters (edgeft.head_state format)
    train/*                 optionally, ORT training artifacts: training/eval/optimizer models, checkpoint

``head.trainers`` says which of the two a bundle carries (bundles made before the portable step: ORT only).

Loading verifies every file's sha256 before anything is handed to onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgeft.errors import EdgeftError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
BACKBONE_FILE = "backbone.onnx"
FLOAT_BACKBONE_FILE = "float_backbone.onnx"
HEAD_FILE = "head.onnx"
TRAIN_DIR = "train"
TRAIN_ARTIFACTS = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")
TRAIN_STEP_FILE = "train_step.onnx"
INITIAL_HEAD_FILE = "initial_head.npz"
PORTABLE_FILES = (TRAIN_STEP_FILE, INITIAL_HEAD_FILE)
TRAINER_FILES = {"onnx": PORTABLE_FILES, "ort": TRAIN_ARTIFACTS}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints, or strings for dynamic axes) and element type of a tensor."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"


@dataclass(frozen=True)
class Preprocessing:
    """How image files become the backbone's input: ``(pixels * scale - mean) / std`` in ``layout``."""

    color: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    note: str = ""


@dataclass(frozen=True)
class HeadInfo:
    """The trainable head: kind, sizes, parameter names, task, loss and optimizer.

    ``normaliser`` names the frozen feature mean and scale a runtime sets once from the first data; it is empty
    when the head must see the original features (unfrozen layers, or the original head kept). ``task`` is
    ``classification`` (labels: int64 class indices [N]), ``multilabel`` (float32 0/1 matrix [N, num_outputs])
    or ``regression`` (float32 targets [N, num_outputs]). ``unfrozen`` lists the original nodes moved into the
    trainable part; their parameters are in ``trainable`` too. ``trainers`` lists the training backends whose
    files the bundle carries: ``onnx`` (the portable train step) and/or ``ort`` (ORT training artifacts).
    ``momentum`` is SGD's heavy-ball momentum (portable trainer only).
    """

    kind: str
    feature_dim: int
    num_outputs: int
    trainable: list[str]
    frozen: list[str]
    normaliser: dict[str, str]
    loss: str = "cross_entropy"
    optimizer: str = "adamw"
    task: str = "classification"
    hidden: list[int] = field(default_factory=list)
    activation: str = ""
    dropout: float = 0.0
    pool: str = "none"
    weight_decay: float = 0.0
    unfrozen: list[str] = field(default_factory=list)
    trainers: list[str] = field(default_factory=lambda: ["ort"])
    momentum: float = 0.0


@dataclass(frozen=True)
class Defaults:
    """Training defaults recorded at export; the CLI and API use them unless told otherwise."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    replay_per_class: int = 200


@dataclass(frozen=True)
class Manifest:
    """Everything a device needs to know about a bundle."""

    format_version: int
    producer: dict[str, str]
    source: dict[str, Any]
    input: TensorSpec
    preprocessing: Preprocessing
    feature: TensorSpec
    head: HeadInfo
    classes: list[str]
    defaults: Defaults
    validation: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The manifest as pretty, stable JSON; ``quantization`` is left out when empty (a float backbone)."""
        data = asdict(self)
        if not self.quantization:
            del data["quantization"]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Build a manifest from parsed JSON, raising KeyError/TypeError on a malformed one."""
        files = data["files"]
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise TypeError("'files' must map relative paths to sha256 strings")
        if not isinstance(data["classes"], list) or not all(isinstance(c, str) for c in data["classes"]):
            raise TypeError("'classes' must be a list of names")
        shape = data["input"]["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, (int, str)) for d in shape):
            raise TypeError("'input.shape' must be a list of sizes (numbers or axis names)")
        if not isinstance(data.get("quantization", {}), dict):
            raise TypeError("'quantization' must be an object")
        return cls(
            format_version=data["format_version"],
            producer=data["producer"],
            source=data["source"],
            input=TensorSpec(**data["input"]),
            preprocessing=Preprocessing(**data["preprocessing"]),
            feature=TensorSpec(**data["feature"]),
            head=HeadInfo(**data["head"]),
            classes=list(data["classes"]),
            defaults=Defaults(**data["defaults"]),
            validation=data["validation"],
            files=data["files"],
            quantization=data.get("quantization", {}),
        )


def _check_listing(root: Path, manifest_path: Path, listed: set[str]) -> None:
    """Every listed file lies inside the bundle, and every file in it is listed (so nothing unverified is opened)."""
    for rel in sorted(listed):
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            raise EdgeftError(f"{manifest_path} lists {rel!r}, a path outside the bundle")
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and path.name != MANIFEST_FILE and rel not in listed:
            raise EdgeftError(f"bundle file {path} is not listed in {MANIFEST_FILE}, so it cannot be verified")


def _fallback_file(manifest: Manifest) -> str | None:
    """The name of the float backbone an int8 bundle ships (quantization.float_backbone.file), or None."""
    record = manifest.quantization.get("float_backbone")
    name = record.get("file") if isinstance(record, dict) else None
    return name if isinstance(name, str) and name else None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest, keyed by POSIX relative path."""
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest
    fingerprint: str

    @property
    def backbone_path(self) -> Path:
        return self.path / BACKBONE_FILE

    @property
    def float_backbone_path(self) -> Path | None:
        """The float backbone an int8 bundle ships as its fallback, or None."""
        name = _fallback_file(self.manifest)
        return self.path / name if name else None

    @property
    def head_path(self) -> Path:
        return self.path / HEAD_FILE

    def train_path(self, name: str) -> Path:
        """Path of one training file (train_step.onnx, initial_head.npz, or an ORT artifact)."""
        return self.path / TRAIN_DIR / name

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Read the manifest and verify every file's sha256; raise EdgeftError naming what is wrong."""
        root = Path(path)
        manifest_path = root / MANIFEST_FILE
        if not root.is_dir():
            raise EdgeftError(f"bundle {root} does not exist or is not a directory")
        if not manifest_path.is_file():
            raise EdgeftError(f"{root} is not an edgeft bundle: {MANIFEST_FILE} is missing")
        raw = manifest_path.read_bytes()
        try:
            manifest = Manifest.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise EdgeftError(f"{manifest_path} is not a valid edgeft manifest ({type(exc).__name__}: {exc})") from None
        if manifest.format_version != FORMAT_VERSION:
            raise EdgeftError(
                f"{manifest_path} has bundle format {manifest.format_version}; this edgeft reads format {FORMAT_VERSION}"
            )
        unknown = sorted(set(manifest.head.trainers) - set(TRAINER_FILES))
        if unknown or not manifest.head.trainers:
            raise EdgeftError(f"{manifest_path} names unknown trainers {unknown} (known: onnx, ort)")
        trainer_files = [f"{TRAIN_DIR}/{n}" for t in manifest.head.trainers for n in TRAINER_FILES[t]]
        fallback = _fallback_file(manifest)
        for required in (BACKBONE_FILE, HEAD_FILE, *trainer_files, *([fallback] if fallback else [])):
            if required not in manifest.files:
                raise EdgeftError(f"{manifest_path} does not list the required file {required}")
        _check_listing(root, manifest_path, set(manifest.files))
        for rel, expected in manifest.files.items():
            file = root / rel
            if not file.is_file():
                raise EdgeftError(f"bundle file {file} is missing")
            if sha256_file(file) != expected:
                raise EdgeftError(f"bundle file {file} is corrupt: its sha256 does not match the manifest")
        return cls(root, manifest, hashlib.sha256(raw).hexdigest())
