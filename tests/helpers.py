"""Shared helpers for the edgeft tests: a learnable tiny dataset, CLI runner, file corruption."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from tiny_models import CHANNELS, SIZE
from typer.testing import CliRunner, Result

from edgeft.bundle import TRAIN_ARTIFACTS, TRAIN_STEP_FILE, Bundle
from edgeft.cli import app
from edgeft.export.artifacts import ort_training_installed
from edgeft.head_state import HeadState

CLASSES = ("red", "green", "blue")
# Every file of an exported bundle besides manifest.json, as the manifest lists them: the ORT training
# artifacts are there when ORT training is installed (export's default).
ORT_ARTIFACTS = frozenset(f"train/{name}" for name in TRAIN_ARTIFACTS)
BUNDLE_FILES = frozenset(
    {"backbone.onnx", "head.onnx", "train/train_step.onnx", "train/initial_head.npz"}
    | (ORT_ARTIFACTS if ort_training_installed() else set())
)
needs_ort = pytest.mark.skipif(not ort_training_installed(), reason="needs ONNX Runtime training (edgeft[ort])")
CLI = [sys.executable, "-m", "edgeft.cli"]
# Hang guards, not speed limits: an emulated platform (qemu arm64, -cpu Haswell) runs 10-300x slower, so
# EDGEFT_TEST_TIME_SCALE multiplies every time limit the tests set (.ci/foreign.sh sets it).
TIME_SCALE = float(os.environ.get("EDGEFT_TEST_TIME_SCALE", "1"))
SUBPROCESS_TIMEOUT = 120 * TIME_SCALE


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose label (0..2) is the channel with the highest mean: a constant per channel plus noise."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(-1.0, 1.0, (n, CHANNELS)).astype(np.float32)
    noise = rng.normal(0.0, 0.1, (n, CHANNELS, SIZE, SIZE)).astype(np.float32)
    x = (level[:, :, None, None] + noise).astype(np.float32)
    return x, x.mean(axis=(2, 3)).argmax(axis=1).astype(np.int64)


def run_cli(*args: str | os.PathLike[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edgeft.cli ARGS`` in a real subprocess and capture its text output."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=SUBPROCESS_TIMEOUT)


def invoke_cli(*args: str | os.PathLike[str], stdin: str | bytes | None = None) -> Result:
    """Run ``edgeft ARGS`` in this process through typer's CliRunner (stdout and stderr apart); the run must end by
    exiting (any code), never by an exception the command line let escape."""
    result = CliRunner().invoke(app, [str(a) for a in args], input=stdin, prog_name="edgeft")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def usage_message(result: Result | subprocess.CompletedProcess[str]) -> str:
    """A usage error's text without the box rich draws around it, wrapped lines joined by single spaces."""
    text = "".join(" " if c in "│╭╮╰╯─" else c for c in result.stderr)
    return " ".join(text.split())


def float_weight_layers(backbone: onnx.ModelProto) -> list[str]:
    """The Conv, Gemm and MatMul nodes whose weight is a float initializer (not the output of a DequantizeLinear)."""
    floats = {i.name for i in backbone.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return [
        n.name
        for n in backbone.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in floats
    ]


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a bundle (or state) directory so a test can damage the copy."""
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Corrupt one byte of ``path`` in place (the middle byte unless ``offset`` is given)."""
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def run_onnx(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list:
    """Run a model (proto or file) in a plain onnxruntime InferenceSession on CPU."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def exposing(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """A copy of ``model`` with ``tensor`` added to its graph outputs (independent of edgeft's helper)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    return copy


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# What onnxruntime itself prints on stderr when it is imported where cpuinfo cannot name the CPU's vendor (under
# qemu-user the emulated arm64 process reads the x86 host's /proc/cpuinfo): the platform's line, not edgeft's.
ORT_CPU_VENDOR_WARNING = "onnxruntime cpuid_info warning: Unknown CPU vendor."


def edgeft_lines(stream: str) -> list[str]:
    """The lines of a process's stderr that edgeft wrote (all but onnxruntime's unknown-CPU-vendor warning)."""
    return [line for line in stream.splitlines() if not line.startswith(ORT_CPU_VENDOR_WARNING)]


def one_error_line(stderr: str) -> str:
    """Assert stderr is exactly one 'edgeft: error:' line with no traceback, and return it."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in edgeft_lines(stderr) if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("edgeft: error: "), stderr
    return lines[0]


def initial_parameters(bundle_path: Path) -> dict[str, np.ndarray]:
    """The starting head parameters an exported bundle carries (backend-neutral head state)."""
    return HeadState.load(bundle_path / "train" / "initial_head.npz").parameters


def trained_by_step(bundle: Bundle) -> set[str]:
    """Parameters the bundle's portable train step updates (its ``new.*`` outputs that are parameters)."""
    outputs = {o.name for o in onnx.load(str(bundle.train_path(TRAIN_STEP_FILE))).graph.output}
    return {name for name in initial_parameters(bundle.path) if "new." + name in outputs}


# Resource limits the crash and poison tests put on a child process, and whether this platform applies them as a
# kernel does. qemu-user does not: its guest sees RLIMIT_AS unlimited, and onnxruntime there aborts at exit under
# RLIMIT_FSIZE. Each probe shows it without edgeft, so a test skips only where the platform, not edgeft, fails it.
ADDRESS_SPACE_PROBE = "try:\n    bytearray(2 << 30)\nexcept MemoryError:\n    raise SystemExit(0)\nraise SystemExit(3)"
FILE_SIZE_PROBE = """
import sys, tempfile
import onnxruntime
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 2
onnxruntime.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
with tempfile.TemporaryFile() as handle:
    try:
        handle.write(bytes(1 << 16))
        handle.flush()
    except OSError:
        pass
"""
PROBE_MODEL = Path(__file__).resolve().parent.parent / "artifacts" / "default" / "head.onnx"


def limited(kind: int, limit: int) -> Callable[[], None]:
    """For ``preexec_fn``: the child runs under the resource limit ``kind`` (RLIMIT_*) of ``limit``."""
    return lambda: resource.setrlimit(kind, (limit, limit))


@cache
def address_space_limit_problem() -> str | None:
    """Why a child's RLIMIT_AS does not hold on this platform, or None where a 2 GiB allocation under 512 MiB fails."""
    probe = subprocess.run([sys.executable, "-c", ADDRESS_SPACE_PROBE], preexec_fn=limited(resource.RLIMIT_AS, 1 << 29))
    if probe.returncode == 0:
        return None
    return f"this platform does not apply RLIMIT_AS to a child: 2 GiB allocated under a 512 MiB limit (exit {probe.returncode})"


@cache
def file_size_limit_problem(limit: int) -> str | None:
    """Why onnxruntime cannot run under RLIMIT_FSIZE ``limit`` here, or None where a process holding a session writes
    past the limit, gets its error and exits 0."""
    probe = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_PROBE, str(PROBE_MODEL)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        preexec_fn=limited(resource.RLIMIT_FSIZE, limit),
    )
    if probe.returncode == 0:
        return None
    last = probe.stderr.strip().splitlines()[-1:] or [""]
    return f"onnxruntime alone exits {probe.returncode} under RLIMIT_FSIZE {limit} on this platform: {last[0]}"
