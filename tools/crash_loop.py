"""Crash loop: a learner under a real memory limit, restarted after every exit like systemd does, fed a bomb first.

The device of issue #23: ``edgeft adapt --watch`` in a memory cgroup (``memory.max``/``memory.limit_in_bytes``, as
systemd's ``MemoryMax=`` sets it; or, where no cgroup can be made, an address-space limit, as ``prlimit --as``
sets it), restarted after every failure (``Restart=on-failure``; here a run with ``--once`` per start), with a
decompression bomb — a ~1 MB .npz whose labels ``y`` unpack to ``--bomb`` bytes of zeros — in the inbox before the good
files; one more good file arrives after every start. The scenario ends when a start drains the inbox and exits 0.

With the budget detected (``--budget auto``, the default) the bomb is refused from its header on the first start.
With ``--budget 64G --max-arrival-samples 0`` (an operator who overrode both guards) the bomb really exhausts the
memory: the OOM killer ends the learner (cgroup; under RLIMIT_AS numpy raises MemoryError instead) and, after
``--max-attempts`` deaths (or the same error as often), the bomb is set aside as poison. Either way every good
file is learned exactly once, and nothing needs a person.

Usage: ``PYTHONPATH=. python tools/crash_loop.py [--limit 1.5G] [--bomb 1.9G] [--budget auto] [--rlimit] [--json]``
(exit status 1 if a good file is not learned exactly once, the bomb is not set aside, or more starts were needed
than ``--max-starts``). The learner runs with ``--threads 2``, as the shipped config has it. A cgroup limit needs root
and a writable memory controller; ``--rlimit`` uses RLIMIT_AS even then.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torture import CLASSES, tiny_bundle  # noqa: E402

from edgeft.common.budget import format_size, parse_size  # noqa: E402
from edgeft.runtime.history import JOURNAL_FILE, read_lines  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SHAPE = (3, 8, 8)  # the tiny bundle's input
RUN_TIMEOUT = 300


def write_bomb(path: Path, unpacked: int) -> Path:
    """A .npz of 40 samples whose labels ``y`` are ``unpacked`` bytes of zeros, deflated to about 1/1000 of it.

    Inputs are streamed in batches whatever their size; labels are read whole, so that is where a bomb still aims.
    """
    x = np.zeros((40, *SAMPLE_SHAPE), np.float32)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("x.npy", "w") as member:
            np.lib.format.write_array(member, x)
        with archive.open("y.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": (unpacked,)})
            zeros = bytes(16 << 20)
            left = unpacked
            while left:
                member.write(zeros[: min(left, len(zeros))])
                left -= min(left, len(zeros))
    return path


def write_good(path: Path, seed: int, n: int = 40) -> Path:
    """A small labelled .npz the tiny bundle learns, written under a temporary name and renamed."""
    rng = np.random.default_rng(seed)
    x = (rng.uniform(-1, 1, (n, 3, 1, 1)) + rng.normal(0, 0.1, (n, *SAMPLE_SHAPE))).astype(np.float32)
    staged = path.with_name(f".{path.name}.part")
    with staged.open("wb") as handle:
        np.savez(handle, x=x, y=np.array(CLASSES)[x.mean(axis=(2, 3)).argmax(axis=1)])
    os.replace(staged, path)
    return path


def _own_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory folder, or its cgroup v2 folder, where one can be found."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, relative = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / relative.lstrip("/")
        if hierarchy == "0" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path("/sys/fs/cgroup") / relative.lstrip("/")
    return None


@contextmanager
def memory_cgroup(limit: int, wanted: bool = True) -> Iterator[Path | None]:
    """A fresh child memory cgroup limited to ``limit`` bytes (swap included), or None where none can be made (or
    none is ``wanted``)."""
    parent = _own_memory_cgroup()
    if not wanted or parent is None or os.geteuid() != 0:
        yield None
        return
    folder = parent / f"edgeft-crash-loop-{os.getpid()}"
    v1 = (parent / "memory.limit_in_bytes").exists()
    try:
        folder.mkdir()
        if v1:
            (folder / "memory.limit_in_bytes").write_text(str(limit))
            if (folder / "memory.memsw.limit_in_bytes").exists():
                (folder / "memory.memsw.limit_in_bytes").write_text(str(limit))
        else:
            (folder / "memory.max").write_text(str(limit))
            (folder / "memory.swap.max").write_text("0")
    except OSError:
        if folder.exists():
            folder.rmdir()
        yield None
        return
    try:
        yield folder
    finally:
        folder.rmdir()


def cgroup_available() -> bool:
    """Whether a memory cgroup can be made here (root, a writable memory controller)."""
    with memory_cgroup(64 * 2**20) as folder:
        return folder is not None


def in_limit(cgroup: Path | None, limit: int) -> Callable[[], None]:
    """For ``preexec_fn``: join ``cgroup``, or (without one) cap the address space at ``limit``."""

    def enter() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return enter


@dataclass
class Start:
    """One start of the learner: how it ended, its peak resident memory, what it did."""

    status: int
    peak_rss: str
    events: list[str]


@dataclass
class Outcome:
    """What the crash loop did."""

    limit: str
    limit_kind: str
    bomb: str
    starts: list[Start] = field(default_factory=list)
    bomb_reason: str = ""
    learned: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _start(command: list[str], preexec: Callable[[], None], log: Path) -> Start:
    """Run one start to its end; its status (negative: the signal) and peak RSS from wait4."""
    before = log.stat().st_size if log.exists() else 0
    with log.open("ab") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=preexec, cwd=ROOT)
        try:
            _pid, status, usage = os.wait4(process.pid, 0)
        finally:
            process.returncode = -1  # reaped by wait4 above: Popen must not wait for it again
    with log.open("rb") as handle:
        handle.seek(before)
        events = [json.loads(line)["event"] for line in handle if line.startswith(b"{")]
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return Start(code, format_size(usage.ru_maxrss * 1024), events)


def crash_loop(
    workdir: Path,
    *,
    limit: int,
    bomb: int,
    budget: str = "auto",
    max_arrival_samples: int | None = None,
    max_attempts: int = 3,
    max_starts: int = 8,
    bundle_dir: Path | None = None,
    cgroup: bool = True,
) -> Outcome:
    """Run the scenario in ``workdir``; the outcome lists every problem found."""
    bundle = bundle_dir or tiny_bundle(workdir)
    state, inbox, log = workdir / "state", workdir / "inbox", workdir / "events.jsonl"
    inbox.mkdir(parents=True, exist_ok=True)
    write_bomb(inbox / "bomb.npz", bomb)
    os.utime(inbox / "bomb.npz", (1e9, 1e9))  # the oldest entry: first in the queue
    good = [write_good(inbox / "good-0.npz", seed=0).name]
    command = [sys.executable, "-m", "edgeft.cli", "adapt", str(bundle), "-s", str(state), "--watch", str(inbox)]
    command += ["--once", "--json", "--threads", "2", "--memory-budget", budget, "--max-attempts", str(max_attempts)]
    if max_arrival_samples is not None:
        command += ["--max-arrival-samples", str(max_arrival_samples)]
    with memory_cgroup(limit, cgroup) as folder:
        outcome = Outcome(format_size(limit), "cgroup" if folder else "RLIMIT_AS", format_size(bomb))
        for number in range(1, max_starts + 1):
            start = _start(command, in_limit(folder, limit), log)
            outcome.starts.append(start)
            if start.status == 0 and not any(p.is_file() for p in inbox.iterdir()):
                break
            good.append(write_good(inbox / f"good-{number}.npz", seed=number).name)  # data keeps arriving
        else:
            outcome.problems.append(f"the inbox was not drained after {max_starts} starts")
    reason = inbox / "quarantine" / "bomb.npz.reason.txt"
    outcome.bomb_reason = reason.read_text().strip() if reason.exists() else ""
    if not outcome.bomb_reason:
        outcome.problems.append("the bomb was not set aside")
    journal = [row["name"] for row in read_lines(state / JOURNAL_FILE)]
    outcome.learned = journal
    if sorted(journal) != sorted(good):
        outcome.problems.append(f"learned {sorted(journal)}, expected each of {sorted(good)} exactly once")
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", default="1.5G", help="memory limit of the learner (default 1.5G)")
    parser.add_argument("--bomb", default="1.9G", help="what the bomb's labels unpack to (default 1.9G)")
    parser.add_argument("--budget", default="auto", help="the learner's --memory-budget (default auto)")
    parser.add_argument("--max-arrival-samples", type=int, help="the learner's --max-arrival-samples")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--max-starts", type=int, default=8)
    parser.add_argument("--rlimit", action="store_true", help="limit RLIMIT_AS even where a cgroup can be made")
    parser.add_argument("--workdir", type=Path, help="keep the bundle, state, inbox and event log here")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        outcome = crash_loop(
            workdir,
            limit=parse_size(args.limit),
            bomb=parse_size(args.bomb),
            budget=args.budget,
            max_arrival_samples=args.max_arrival_samples,
            max_attempts=args.max_attempts,
            max_starts=args.max_starts,
            cgroup=not args.rlimit,
        )
    if args.json:
        print(json.dumps(asdict(outcome)))
    else:
        print(f"limit {outcome.limit} ({outcome.limit_kind}), bomb {outcome.bomb} unpacked, budget {args.budget}")
        for number, start in enumerate(outcome.starts, start=1):
            print(f"  start {number}: exit {start.status}, peak RSS {start.peak_rss}, events {start.events}")
        print(f"bomb: {outcome.bomb_reason or 'not set aside'}")
        print(f"learned: {', '.join(outcome.learned)}")
        for problem in outcome.problems:
            print(f"  PROBLEM: {problem}")
    return 1 if outcome.problems else 0


if __name__ == "__main__":
    sys.exit(main())
