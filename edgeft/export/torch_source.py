"""PyTorch modules as export sources: ``package.module:factory`` specs and ``nn.Module`` objects to ONNX files.

torch is an optional extra (``pip install 'edgeft[torch]'``); nothing else in edgeft imports it.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeft.errors import EdgeftError

TORCH_VERSION = "2.13.0"
TORCH_OPSET = 17
INPUT_NAME = "input"


def import_torch() -> types.ModuleType:
    """``torch``, or an EdgeftError saying how to install it."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise EdgeftError(
            f"exporting a PyTorch model needs torch: pip install 'edgeft[torch]' (torch=={TORCH_VERSION}, CPU build)"
        ) from None


def module_from_spec(spec: str) -> Any:
    """Call the factory named by ``package.module:factory`` and return the nn.Module it builds."""
    torch = import_torch()
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise EdgeftError(f"--torch expects package.module:factory, got '{spec}'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EdgeftError(f"--torch {spec}: cannot import {module_name} ({exc})") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise EdgeftError(f"--torch {spec}: {module_name} has no callable '{factory_name}'")
    built = factory()
    if not isinstance(built, torch.nn.Module):
        raise EdgeftError(f"--torch {spec}: {factory_name}() returned {type(built).__name__}, not a torch.nn.Module")
    return built


def torch_to_onnx(module: Any, example_input: Any, path: Path) -> None:
    """Export ``module`` in eval mode to ``path`` (opset 17, dynamic batch); outputs ``output`` or ``output_0..``."""
    torch = import_torch()
    if not isinstance(module, torch.nn.Module):
        raise EdgeftError(f"expected a model file or a torch.nn.Module, got {type(module).__name__}")
    example = example_input if isinstance(example_input, torch.Tensor) else None
    if example is None:
        raise EdgeftError("exporting a torch.nn.Module needs an example input tensor (example_input=, --input-shape)")
    module.eval()
    with torch.no_grad():
        result = module(example)
    count = len(result) if isinstance(result, (tuple, list)) else 1
    names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *names)}
    try:
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes,
            opset_version=TORCH_OPSET,
            dynamo=False,
        )
    except Exception as exc:  # torch raises many exception types from tracing and export
        raise EdgeftError(f"torch.onnx.export failed for {type(module).__name__}: {str(exc).splitlines()[0]}") from None


def example_from_shape(shape: Sequence[int]) -> Any:
    """A seeded random float32 example input of ``shape``."""
    torch = import_torch()
    generator = torch.Generator().manual_seed(0)
    return torch.rand(*shape, generator=generator)
