"""What ``import edgeft`` offers: every public name resolves, and the import itself loads no engine."""

from __future__ import annotations

import subprocess
import sys

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
