"""Power cuts while ``edgeft export`` writes a bundle and while ``edgeft export-inference`` writes a model.

After each cut: the bundle is absent or loads and verifies whole (never a torn one that loads); the merged model is
the file that was there before or the complete new one, byte for byte (never torn, never empty).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeft.bundle import Bundle
from edgeft.errors import EdgeftError
from powercut.mount import Mount

CLI = [sys.executable, "-m", "edgeft.cli"]
WAIT_SECONDS = 120.0
OLD_MODEL = b"the previous model.onnx\n"


def _run_until_cut(command: list[str], mount: Mount) -> str:
    """Run ``command`` until the power goes out (or it finishes); kill it; where it was."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    while process.poll() is None and time.monotonic() - started < WAIT_SECONDS:
        if mount.cut_reached():
            break
        time.sleep(0.01)
    process.kill()
    process.wait()
    op = mount.cut_reached()
    return f"{op['op']} {op['path']}" if op else "finished"


def _ops_of(workdir: Path, command: list[str], prepare: Callable[[Path], None]) -> int:
    """How many mutating operations ``command`` makes on a fresh image (prepared by ``prepare``)."""
    image = workdir / "image"
    shutil.rmtree(image, ignore_errors=True)
    image.mkdir(parents=True)
    prepare(image)
    mount = Mount.start(image, workdir / "mnt", seed=0)
    try:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        counts = mount.cut()
    return counts["ops"]


def cut_exports(cuts: int, rng: np.random.Generator, workdir: Path, model: Path, classes: str) -> list[str]:
    """Cut the power ``cuts`` times inside ``edgeft export MODEL -o MOUNT/out/bundle``; violations found."""
    mnt = workdir / "mnt"
    command = [*CLI, "export", str(model), "-o", str(mnt / "out" / "bundle"), "--classes", classes]
    total = _ops_of(workdir, command, lambda image: None)
    problems = []
    for number in range(cuts):
        image = workdir / "image"
        shutil.rmtree(image)
        image.mkdir()
        mount = Mount.start(image, mnt, seed=int(rng.integers(2**31)), cut_after=int(rng.integers(1, total + 1)))
        try:
            where = _run_until_cut(command, mount)
        finally:
            mount.cut()
        bundle = image / "out" / "bundle"
        if bundle.exists():
            try:
                Bundle.load(bundle)
            except EdgeftError as exc:
                problems.append(f"export cut {number + 1} ({where}): a bundle is there but does not load: {exc}")
    return problems


def cut_export_inference(cuts: int, rng: np.random.Generator, workdir: Path, bundle: Path, state: Path) -> list[str]:
    """Cut the power ``cuts`` times inside ``edgeft export-inference -o MOUNT/out/model.onnx`` over an old file."""
    mnt = workdir / "mnt"
    expected = workdir / "expected.onnx"
    subprocess.run(
        [*CLI, "export-inference", str(bundle), "-s", str(state), "-o", str(expected)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    command = [*CLI, "export-inference", str(bundle), "-s", str(state), "-o", str(mnt / "out" / "model.onnx")]

    def prepare(image: Path) -> None:
        (image / "out").mkdir()
        (image / "out" / "model.onnx").write_bytes(OLD_MODEL)

    total = _ops_of(workdir, command, prepare)
    allowed = {OLD_MODEL, expected.read_bytes()}
    problems = []
    for number in range(cuts):
        image = workdir / "image"
        shutil.rmtree(image)
        image.mkdir()
        prepare(image)
        mount = Mount.start(image, mnt, seed=int(rng.integers(2**31)), cut_after=int(rng.integers(1, total + 1)))
        try:
            where = _run_until_cut(command, mount)
        finally:
            mount.cut()
        out = image / "out" / "model.onnx"
        if not out.is_file() or out.read_bytes() not in allowed:
            state_of = f"{out.stat().st_size} bytes, neither old nor new" if out.is_file() else "gone"
            problems.append(f"export-inference cut {number + 1} ({where}): model.onnx is {state_of}")
    return problems
