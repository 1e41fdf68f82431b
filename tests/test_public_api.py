"""What ``import edgeft`` offers: every public name resolves, and the import itself loads no engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers import SUBPROCESS_TIMEOUT

import edgeft


def test_every_public_name_resolves() -> None:
    for name in edgeft.__all__:
        assert getattr(edgeft, name) is not None, name
    assert issubclass(edgeft.DataError, edgeft.EdgeftError)
    assert edgeft.GuardPolicy().tolerance >= 0


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


def test_the_export_side_and_the_shared_modules_never_import_the_runtime() -> None:
    """The arrow points one way: edgeft.runtime may use edgeft.export's neighbours, never the reverse. The one
    exception left is the data readers (edgeft.runtime.sources), which the exporter's int8 calibration reads with."""
    package = Path(edgeft.__file__).parent
    sources = [
        *package.glob("export/*.py"),
        *package.glob("common/*.py"),
        package / "bundle.py",
        package / "head_state.py",
    ]
    backwards = {
        f"{path.relative_to(package)}: {name}"
        for path in sources
        for name in _edgeft_imports(path)
        if name.startswith("edgeft.runtime") and name != "edgeft.runtime.sources"
    }
    assert not backwards
    assert not any(
        name.startswith("edgeft.runtime") for path in package.glob("common/*.py") for name in _edgeft_imports(path)
    )
