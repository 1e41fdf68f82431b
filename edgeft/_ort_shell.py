"""Keep torch out of the process: register ``onnxruntime.training`` before onnxruntime is first imported.

``import onnxruntime.training`` runs that package's ``__init__``, which imports torch (ORT issue 22070), and
plain ``import onnxruntime`` does it too: its build check imports ``onnxruntime.training.ortmodule``. edgeft
registers an empty package object for ``onnxruntime.training`` that only knows where its submodules live (so
``api`` and ``artifacts`` import directly), and marks ``ortmodule`` (ORT's torch wrapper, unused by edgeft)
as absent so that the build check skips it. This module must not import onnxruntime itself; ``edgeft``'s
``__init__`` runs it first.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

TRAINING_PACKAGE = "onnxruntime.training"


def install() -> bool:
    """Register the shell; return False when ORT training is not installed or was imported already."""
    if TRAINING_PACKAGE in sys.modules:
        return sys.modules[TRAINING_PACKAGE] is not None
    spec = importlib.util.find_spec("onnxruntime")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return False
    training_dir = Path(next(iter(spec.submodule_search_locations))) / "training"
    if not (training_dir / "api").is_dir():
        return False
    shell = types.ModuleType(TRAINING_PACKAGE)
    shell.__path__ = [str(training_dir)]
    shell.__package__ = TRAINING_PACKAGE
    sys.modules[TRAINING_PACKAGE] = shell
    sys.modules.setdefault(TRAINING_PACKAGE + ".ortmodule", None)
    return True


install()
