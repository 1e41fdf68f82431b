"""The one place that imports ONNX Runtime's training API (optional: ``edgeft[ort]``), without pulling in torch.

``edgeft._ort_shell`` (run by ``import edgeft``, before onnxruntime is imported) makes
``onnxruntime.training``'s submodules importable without the package ``__init__`` that imports torch.
This module also turns a ``--provider`` choice into concrete execution providers.
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
            "ONNX Runtime training is not installed: use the portable trainer (--trainer auto, the default, or onnx), or "
            "pip install 'edgeft[ort]' (onnxruntime-training-cpu 1.19.2: x86_64, Python <= 3.12 only)"
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
    """Turn ``auto``, ``cpu``, ``cuda``, any provider name or a comma-separated list of them (in order of
    preference) into a Placement, with the CPU provider last as the fallback; or fail clearly."""
    available = available_providers()
    wanted = [name.strip().lower() for name in ep.split(",") if name.strip()] or ["auto"]
    if wanted == ["auto"]:
        wanted = ["cuda" if "CUDAExecutionProvider" in available else "cpu"]
    chosen: list[str] = []
    for name in wanted:
        matches = [p for p in available if name in (p.lower(), _short_name(p))]
        if not matches:
            offered = ", ".join(_short_name(p) for p in available)
            raise EdgeftError(
                f"execution provider '{name}' is not offered by the installed onnxruntime build; available: "
                f"{offered} (other providers come with other onnxruntime packages, e.g. onnxruntime-gpu for cuda)"
            )
        chosen.extend(p for p in matches if p not in chosen)
    providers = tuple(p for p in chosen if p != "CPUExecutionProvider") + ("CPUExecutionProvider",)
    training_device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
    return Placement(providers=providers, training_device=training_device)
