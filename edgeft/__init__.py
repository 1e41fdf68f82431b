"""edgeft: fine-tune a frozen model's new head on edge devices, with any onnxruntime.

The device side (``Adapter``, ``Bundle``, ``evaluate``, ``GuardPolicy``, ``LearnOptions``) needs onnxruntime and numpy only;
``export_bundle(ExportConfig(...))`` (the workstation side) also needs onnx. Each name is imported on first use,
so ``import edgeft`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeft import _ort_shell  # noqa: F401  (first: keeps torch out when onnxruntime is imported)
from edgeft.errors import DataError, EdgeftError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgeft.bundle import Bundle
    from edgeft.export import ExportConfig, export_bundle
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.evaluation import evaluate
    from edgeft.runtime.guard import GuardPolicy
    from edgeft.runtime.learn_options import LearnOptions

_LAZY = {
    "Adapter": "edgeft.runtime.adapter",
    "Bundle": "edgeft.bundle",
    "GuardPolicy": "edgeft.runtime.guard",
    "LearnOptions": "edgeft.runtime.learn_options",
    "evaluate": "edgeft.runtime.evaluation",
    "ExportConfig": "edgeft.export",
    "export_bundle": "edgeft.export",
}

__all__ = [
    "Adapter",
    "Bundle",
    "DataError",
    "EdgeftError",
    "ExportConfig",
    "GuardPolicy",
    "LearnOptions",
    "evaluate",
    "export_bundle",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
