"""Mount the power-cut filesystem in a subprocess, cut the power by unmounting it, and write files durably onto it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
MOUNT_SECONDS = 30.0


@dataclass
class Mount:
    """A running power-cut filesystem: IMAGE (real disk, durable) served at MOUNTPOINT."""

    image: Path
    mountpoint: Path
    process: subprocess.Popen[bytes]
    report: Path
    counts: Path

    @classmethod
    def start(cls, image: Path, mountpoint: Path, seed: int, cut_after: int = 0, match: str = "") -> Mount:
        """Mount ``image``; with ``cut_after`` K > 0 the power goes out at the K-th mutating operation (on a path
        containing ``match``)."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        report, counts = image.with_name("cut.json"), image.with_name("counts.json")
        report.unlink(missing_ok=True)
        counts.unlink(missing_ok=True)
        command = [sys.executable, "-m", "powercut.fusefs", str(image), str(mountpoint), "--seed", str(seed)]
        command += ["--cut-after", str(cut_after), "--report", str(report), "--counts", str(counts)]
        command += ["--spare", str(os.getpid()), "--match", match]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TOOLS), os.environ.get("PYTHONPATH", "")])}
        with image.with_name("fuse.log").open("ab") as log:
            process = subprocess.Popen(command, env=env, stderr=log)
        deadline = time.monotonic() + MOUNT_SECONDS
        while not os.path.ismount(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the power-cut filesystem did not mount at {mountpoint}; see fuse.log")
            time.sleep(0.02)
        return cls(image, mountpoint, process, report, counts)

    def cut_reached(self) -> dict | None:
        """The operation the power went out at, once it has."""
        try:
            return json.loads(self.report.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def cut(self) -> dict:
        """Power cut: unmount, let the filesystem drop what was not durable; what the cut kept and lost."""
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=True)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # the kernel may keep a lazily unmounted connection open: end the loop
            self.process.send_signal(signal.SIGTERM)
        if self.process.wait(timeout=MOUNT_SECONDS) != 0:
            raise RuntimeError(f"the power-cut filesystem failed (exit {self.process.returncode}); see fuse.log")
        return json.loads(self.counts.read_text())


def fsync_path(path: Path) -> None:
    """fsync a file or directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_durably(source: Path, target: Path) -> None:
    if source.is_symlink():
        target.symlink_to(os.readlink(source))
    elif source.is_dir():
        target.mkdir()
        for child in sorted(source.iterdir()):
            _copy_durably(child, target / child.name)
        fsync_path(target)
    elif source.is_file():
        target.write_bytes(source.read_bytes())
        fsync_path(target)
    else:
        os.mkfifo(target)


def deliver(source: Path, inbox: Path) -> None:
    """Put an entry into the inbox as a careful producer does: under a temporary name, durable, then renamed."""
    staged = inbox / f".{source.name}.part"
    _copy_durably(source, staged)
    fsync_path(inbox)
    os.replace(staged, inbox / source.name)
    fsync_path(inbox)
