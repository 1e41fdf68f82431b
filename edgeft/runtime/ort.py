"""The one place that imports ONNX Runtime's training API, without pulling in torch.

``edgeft._ort_shell`` (run by ``import edgeft``, before onnxruntime is imported) makes
``onnxruntime.training``'s submodules importable without the package ``__init__`` that imports torch.
This module also turns a ``--ep`` choice into concrete execution providers.
"""

from __future__ import annotations

import importlib
import types
from dataclasses import dataclass

import onnxruntime

from edgeft import _ort_shell
from edgeft.errors import EdgeftError

_TRAINING_PACKAGE = "onnxruntime.training"


def _install_training_shell() -> None:
    if not _ort_shell.install():
        raise EdgeftError(
            "ONNX Runtime training is not installed: install onnxruntime-training-cpu==1.19.2 "
            "(or onnxruntime-training for CUDA) in place of plain onnxruntime"
        )


def training_api() -> types.ModuleType:
    """Return ``onnxruntime.training.api`` (Module, Optimizer, CheckpointState), torch-free."""
    _install_training_shell()
    return importlib.import_module(_TRAINING_PACKAGE + ".api")


def training_artifacts() -> types.ModuleType:
    """Return ``onnxruntime.training.artifacts`` (generate_artifacts), torch-free."""
    _install_training_shell()
    return importlib.import_module(_TRAINING_PACKAGE + ".artifacts")


@dataclass(frozen=True)
class Placement:
    """Where edgeft runs: providers for inference sessions and the device for the training Module."""

    providers: tuple[str, ...]
    training_device: str

    @property
    def name(self) -> str:
        """Short human name of the chosen provider, e.g. ``cpu`` or ``cuda``."""
        return _short_name(self.providers[0])


def _short_name(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider").lower()


def available_providers() -> list[str]:
    """Execution providers offered by the installed ONNX Runtime build."""
    return list(onnxruntime.get_available_providers())


def resolve_placement(ep: str = "auto") -> Placement:
    """Turn ``auto``, ``cpu``, ``cuda`` or any provider name into a Placement, or fail clearly."""
    available = available_providers()
    wanted = ep.strip().lower()
    if wanted == "auto":
        wanted = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    matches = [p for p in available if wanted in (p.lower(), _short_name(p))]
    if not matches:
        offered = ", ".join(_short_name(p) for p in available)
        raise EdgeftError(
            f"execution provider '{ep}' is not offered by the installed onnxruntime build; "
            f"available: {offered} (for CUDA install onnxruntime-training instead of onnxruntime-training-cpu)"
        )
    chosen = matches[0]
    providers = (chosen,) if chosen == "CPUExecutionProvider" else (chosen, "CPUExecutionProvider")
    training_device = "cuda" if chosen == "CUDAExecutionProvider" else "cpu"
    return Placement(providers=providers, training_device=training_device)
