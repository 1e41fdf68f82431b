"""edgeft: fine-tune a frozen model's new head on edge devices with ONNX Runtime training.

The device side (``Adapter``, ``Bundle``) needs onnxruntime-training and numpy only; ``export_bundle``
(the workstation side) also needs onnx and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeft import _ort_shell  # noqa: F401  (first: keeps torch out when onnxruntime is imported)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgeft.bundle import Bundle
    from edgeft.export import export_bundle
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.evaluation import evaluate

__all__ = ["Adapter", "Bundle", "evaluate", "export_bundle", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Adapter":
        from edgeft.runtime.adapter import Adapter

        return Adapter
    if name == "Bundle":
        from edgeft.bundle import Bundle

        return Bundle
    if name == "export_bundle":
        from edgeft.export import export_bundle

        return export_bundle
    if name == "evaluate":
        from edgeft.runtime.evaluation import evaluate

        return evaluate
    raise AttributeError(name)
