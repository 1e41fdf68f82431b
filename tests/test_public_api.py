"""What ``import edgeft`` offers: every public name resolves, and the import itself loads no engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SUBPROCESS_TIMEOUT

import edgeft


def test_every_public_name_resolves() -> None:
    for name in edgeft.__all__:
        assert getattr(edgeft, name) is not None, name
    assert issubclass(edgeft.DataError, edgeft.EdgeftError)
    assert edgeft.GuardPolicy().tolerance >= 0


def test_learn_options_take_the_bundles_defaults_where_unset_and_refuse_bad_values() -> None:
    from edgeft.bundle import Defaults

    defaults = Defaults(epochs=10, batch_size=16, lr=1e-3, seed=0)
    assert edgeft.LearnOptions(epochs=3).resolved(defaults) == edgeft.LearnOptions(3, 16, 1e-3, 0)
    with pytest.raises(edgeft.EdgeftError, match="lr positive"):
        edgeft.LearnOptions(lr=0.0).resolved(defaults)


def test_importing_edgeft_loads_neither_onnxruntime_nor_onnx() -> None:
    probe = "import sys, edgeft; print(sorted(m for m in ('onnxruntime', 'onnx', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _edgeft_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return {name for name in names if name.startswith("edgeft.")}


def _neutral_sources(package: Path) -> list[Path]:
    """The export side and the modules both sides share."""
    return [
        *package.glob("export/*.py"),
        *package.glob("common/*.py"),
        *package.glob("data/*.py"),
        package / "bundle.py",
        package / "head_state.py",
    ]


def test_the_export_side_and_the_shared_modules_never_import_the_runtime() -> None:
    """The arrow points one way: edgeft.runtime may use the export side's neighbours, never the reverse; the data
    readers the exporter's int8 calibration uses live in edgeft.data, shared by both sides."""
    package = Path(edgeft.__file__).parent
    backwards = {
        f"{path.relative_to(package)}: {name}"
        for path in _neutral_sources(package)
        for name in _edgeft_imports(path)
        if name.startswith("edgeft.runtime")
    }
    assert not backwards


def test_importing_every_export_and_shared_module_loads_no_runtime_module() -> None:
    """The same, as Python sees it: import each of those modules in a fresh interpreter, then look for
    edgeft.runtime in sys.modules (catches imports the source check cannot see, e.g. through a package)."""
    package = Path(edgeft.__file__).parent
    modules = sorted(
        "edgeft." + ".".join(path.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
        for path in _neutral_sources(package)
    )
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('edgeft.runtime')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert "edgeft.export.quantize" in modules and "edgeft.data.readers" in modules
    assert out.stdout.strip() == "[]"
