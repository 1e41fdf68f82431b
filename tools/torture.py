"""Crash torture: SIGKILL a real ``edgeft adapt --watch`` process again and again, and check the state after every kill.

Each cycle drops new files into the inbox (written under a temporary name, then renamed), starts
``edgeft adapt BUNDLE -s STATE --watch INBOX`` in a subprocess and kills it with SIGKILL: either at a named crash point
(``EDGEFT_CRASH_AT``, see edgeft/common/faults.py: a progress tick of feature extraction or training, an atomic
rename of a replay segment/checkpoint/buffer index/metadata/CURRENT file, a journal append, an inbox move — the N-th time, N random) or
after a random delay. After every kill, with the process dead, the invariants are checked (``check``): the state
loads and verifies; every retained version's checkpoint and replay buffer parse and belong together; every input is
learned exactly once or still waits in the inbox (none lost, none double-counted, by the journal and the versions'
metadata); bad files are never learned and always have a reason; the logs hold no line twice; every attempt record
parses. Kills land on whatever entry is in progress, so a good file killed ``--max-attempts`` times is rightly set
aside as poison (quarantined with its attempts record and a reason that says the learner died on it): that is
counted, not a violation. A last clean run drains the inbox and the final check demands everything else learned.

Usage: ``PYTHONPATH=. python tools/torture.py --kills 200 [--seed 0] [--workdir DIR] [--json]``
(exit status 1 if any invariant was ever violated). tests/test_crash.py runs a short version of it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeft.bundle import Bundle, sha256_file
from edgeft.common.faults import ENV, POINTS
from edgeft.errors import EdgeftError
from edgeft.runtime import replay_store
from edgeft.runtime.attempts import ATTEMPTS_DIR, AttemptLedger
from edgeft.runtime.history import JOURNAL_FILE, METRICS_FILE, read_lines
from edgeft.runtime.inbox import ATTEMPTS_SUFFIX, DONE_DIR, PENDING_DIR, QUARANTINE_DIR, pending_name
from edgeft.runtime.replay import ReplayBuffer
from edgeft.runtime.store import StateStore
from edgeft.runtime.trainer import parameters_finite, stored_state

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("red", "green", "blue")
UNKNOWN_LABEL = "violet"  # beyond the tiny bundle's three outputs: such samples go to pending/
# The N-th arrival at a crash point to die at, drawn from 1..MAX; about two arrivals are queued each cycle.
MAX_COUNT = {"tick": 24, "rename": 10, "append": 4, "move": 2, "attempt": 6}
WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Fed:
    """A file dropped into the inbox: its sha256, how many of its samples can be learned, and its kind."""

    name: str
    sha256: str
    learnable: int
    unknown: int
    kind: str  # "good", "mixed" (some labels beyond the head's capacity) or "bad" (unreadable)


@dataclass
class Report:
    """What a torture run did and every invariant violation it saw."""

    kills: int = 0
    by: dict[str, int] = field(default_factory=dict)  # "POINT:N" (it killed itself there), "delay", "idle"
    files_fed: int = 0
    set_aside: int = 0  # good files quarantined as poison: killed --max-attempts times while in progress
    versions: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    fed: list[Fed] = field(default_factory=list, repr=False)


def tiny_bundle(directory: Path) -> Path:
    """Export the tests' tiny classifier ([N, 3, 8, 8] images, classes red/green/blue) as a bundle."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import classifier, save

    from edgeft.bundle import Defaults
    from edgeft.export import ExportConfig, export_bundle

    model = save(classifier(), directory / "tiny.onnx")
    return export_bundle(
        ExportConfig(
            model, directory / "bundle", classes=list(CLASSES), defaults=Defaults(epochs=10, batch_size=16, lr=0.05)
        )
    ).path


class Feeder:
    """Writes distinct labelled .npz files (and now and then a mixed or a corrupt one) into the inbox."""

    def __init__(self, inbox: Path, rng: np.random.Generator) -> None:
        self.inbox, self.rng, self.fed = inbox, rng, []

    def drop(self) -> Fed:
        """Write one file under a temporary name, then rename it into the inbox."""
        number = len(self.fed)
        name = f"{number:05d}.npz"
        staged = self.inbox / f".{name}.part"
        roll = self.rng.random()
        n = int(self.rng.integers(8, 48))
        x = (self.rng.uniform(-1, 1, (n, 3, 1, 1)) + self.rng.normal(0, 0.1, (n, 3, 8, 8))).astype(np.float32)
        labels = np.array(CLASSES)[x.mean(axis=(2, 3)).argmax(axis=1)].astype("<U8")
        unknown = int(self.rng.integers(1, n // 2)) if 0.8 <= roll < 0.9 else 0
        labels[:unknown] = UNKNOWN_LABEL
        with staged.open("wb") as handle:
            np.savez(handle, x=x, y=labels)
        kind = "mixed" if unknown else "good"
        if roll >= 0.9:
            data = staged.read_bytes()
            staged.write_bytes(data[: len(data) // 2])  # truncated: unreadable
            kind = "bad"
        fed = Fed(name, sha256_file(staged), 0 if kind == "bad" else n - unknown, unknown, kind)
        os.replace(staged, self.inbox / name)
        self.fed.append(fed)
        return fed


def start(bundle: Path, state: Path, inbox: Path, log: Path, crash_at: str | None) -> subprocess.Popen[bytes]:
    """``edgeft adapt --watch`` in a subprocess, JSON events to ``log``, with or without a crash point."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if crash_at:
        env[ENV] = crash_at
    command = [sys.executable, "-m", "edgeft.cli", "adapt", str(bundle), "-s", str(state), "--watch", str(inbox)]
    with log.open("ab") as err:
        return subprocess.Popen(
            [*command, "--poll", "0.05", "--json"], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT
        )


def _waiting(inbox: Path, fed: list[Fed]) -> bool:
    return any((inbox / f.name).exists() for f in fed)


def run_until_killed(
    process: subprocess.Popen[bytes], inbox: Path, feeder: Feeder, delay: float | None
) -> tuple[int | None, str]:
    """Let the process work, then make sure it dies by SIGKILL: its exit status and who killed it.

    With a crash point (``delay`` None) it kills itself (``"itself"``); if it goes idle first (the inbox drained)
    it is killed then (``"idle"``). Without one it is killed after ``delay`` seconds (``"delay"``), with one more
    file dropped half-way. The status is None if it outlived the wait.
    """
    started = time.monotonic()
    dropped_more, killer = delay is None, "itself"
    while process.poll() is None:
        elapsed = time.monotonic() - started
        if not dropped_more and elapsed > delay / 2:
            feeder.drop()
            dropped_more = True
        if delay is None and elapsed > 1.0 and not _waiting(inbox, feeder.fed):
            killer = "idle"
        elif delay is not None and elapsed > delay:
            killer = "delay"
        elif elapsed > WAIT_SECONDS:
            killer = "timeout"
        if killer != "itself":
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    try:
        return process.wait(timeout=WAIT_SECONDS), killer
    except subprocess.TimeoutExpired:
        return None, killer


def _check_versions(store: StateStore, bundle: Bundle, problems: list[str]) -> dict[int, dict]:
    """Every retained version verifies; its checkpoint and replay buffer parse and fit its classes."""
    head = bundle.manifest.head
    metas = {}
    for number in store.retained():
        try:
            version = store.load(number)
            parameters = stored_state(bundle, version.files).parameters
            replay = ReplayBuffer(head.feature_dim, head.num_outputs, 10**6)
            replay_store.load(store, version, {"replay": replay})  # every segment it uses, sha256 checked
        except (EdgeftError, KeyError, RuntimeError) as exc:
            problems.append(f"version {number} does not load whole: {type(exc).__name__}: {exc}")
            continue
        if not parameters_finite(parameters):
            problems.append(f"version {number} holds a head with NaN or infinite parameters")
        if len(replay.labels) and replay.labels.max() >= len(version.meta["classes"]):
            problems.append(f"version {number}: its replay buffer holds labels its head does not know")
        metas[number] = version.meta
    return metas


def _consumed(journal: list[dict], metas: dict[int, dict], problems: list[str]) -> dict[str, int]:
    """sha256 -> version from the journal and the retained versions; a sha256 in two versions is a violation."""
    pairs = Counter((int(r["version"]), r["sha256"]) for r in journal)
    problems += [f"journal holds version {v}, {s[:12]} {n} times" for (v, s), n in pairs.items() if n > 1]
    for number, meta in metas.items():
        pairs.update({(number, item["sha256"]): 1 for item in meta.get("arrival", {}).get("inputs", [])})
    consumed: dict[str, int] = {}
    for version, digest in sorted(pairs):
        if digest in consumed and consumed[digest] != version:
            problems.append(f"input {digest[:12]} learned twice: versions {consumed[digest]} and {version}")
        consumed.setdefault(digest, version)
    return consumed


def _check_file(fed: Fed, inbox: Path, consumed: dict[str, int], journaled: set[str], final: bool) -> list[str]:
    """Where one fed file is, and whether that agrees with the journal."""
    places = [d for d in ("", DONE_DIR, QUARANTINE_DIR) if (inbox / d / fed.name).exists()]
    if len(places) != 1:
        return [f"{fed.name} ({fed.kind}) is in {places or 'no place at all'}; expected exactly one"]
    place, problems = places[0], []
    if fed.kind == "bad":
        if fed.sha256 in consumed or place == DONE_DIR:
            problems.append(f"{fed.name} is unreadable but was learned")
        if place == QUARANTINE_DIR and not (inbox / QUARANTINE_DIR / f"{fed.name}.reason.txt").is_file():
            problems.append(f"{fed.name} is quarantined without a reason file")
    elif place == QUARANTINE_DIR and not set_aside(inbox, fed.name):
        problems.append(f"{fed.name} is a good file but was quarantined")
    elif place == DONE_DIR and fed.sha256 not in journaled:
        problems.append(f"{fed.name} is in done/ but the journal does not hold it")
    if fed.kind == "mixed" and fed.sha256 in consumed:
        pending = inbox / PENDING_DIR / pending_name(fed.name)
        with np.load(pending, allow_pickle=False) as kept:
            if len(kept["y"]) != fed.unknown:
                problems.append(f"{pending.name} holds {len(kept['y'])} samples, expected {fed.unknown}")
    if final and place == "":
        problems.append(f"{fed.name} is still in the inbox after the final run")
    return problems


def set_aside(inbox: Path, name: str) -> bool:
    """Whether ``name`` was quarantined as poison because the learner died on it (its record says so)."""
    record = AttemptLedger.read(inbox / QUARANTINE_DIR / f"{name}{ATTEMPTS_SUFFIX}")
    reason = inbox / QUARANTINE_DIR / f"{name}.reason.txt"
    return record is not None and record.unfinished > 0 and reason.is_file() and "died" in reason.read_text()


def check(bundle: Bundle, state: Path, inbox: Path, fed: list[Fed], final: bool = False) -> list[str]:
    """Every invariant violation in the state and inbox as a crash (or the final run) left them."""
    store = StateStore(state, bundle.fingerprint)
    try:
        current = store.current()
    except EdgeftError as exc:
        return [f"the state does not load: {exc}"]
    if current is None:
        return ["nothing learned at the end"] if final else []
    problems: list[str] = []
    metas = _check_versions(store, bundle, problems)
    journal = list(read_lines(state / JOURNAL_FILE))
    consumed = _consumed(journal, metas, problems)
    if any(int(r["version"]) > current.number for r in journal):
        problems.append("the journal holds a version newer than CURRENT")
    metrics = Counter(int(r["version"]) for r in read_lines(state / METRICS_FILE))
    problems += [f"metrics.jsonl holds version {v} {n} times" for v, n in metrics.items() if n > 1]
    journaled = {r["sha256"] for r in journal}
    for item in fed:
        problems += _check_file(item, inbox, consumed, journaled, final)
    expected = sum(f.learnable for f in fed if f.sha256 in consumed)
    if current.meta["samples_received"] != expected:
        problems.append(
            f"version {current.number} counts {current.meta['samples_received']} samples, expected {expected}"
        )
    problems += [
        f"attempt record {path.name} does not parse"
        for path in (inbox / ATTEMPTS_DIR).glob("*.json")
        if AttemptLedger.read(path) is None
    ]
    learnable = sum(f.kind != "bad" and not set_aside(inbox, f.name) for f in fed)
    if final and len(journal) != learnable:
        problems.append(f"the journal holds {len(journal)} lines for {learnable} good files not set aside")
    return problems


def torture(
    kills: int, seed: int, workdir: Path, bundle_dir: Path | None = None, plan: list[str] | None = None
) -> Report:
    """Kill ``kills`` times (crash points drawn at random, or taken from ``plan``: "POINT:N" or "delay:S")."""
    began = time.monotonic()
    rng = np.random.default_rng(seed)
    bundle_path = bundle_dir or tiny_bundle(workdir)
    bundle = Bundle.load(bundle_path)
    state, inbox, log = workdir / "state", workdir / "inbox", workdir / "events.jsonl"
    inbox.mkdir(parents=True, exist_ok=True)
    feeder, report, points = Feeder(inbox, rng), Report(), Counter()
    cycle = 0
    while report.kills < kills:
        step = plan[cycle % len(plan)] if plan else _draw(rng)
        cycle += 1
        for _ in range(1 if _waiting(inbox, feeder.fed) else 2):
            feeder.drop()
        point, _, value = step.partition(":")
        delay = float(value) if point == "delay" else None
        process = start(bundle_path, state, inbox, log, None if delay is not None else step)
        status, killer = run_until_killed(process, inbox, feeder, delay)
        if status != -signal.SIGKILL:
            report.violations.append(f"cycle {cycle} ({step}): the process ended with status {status}, not SIGKILL")
            break
        report.kills += 1
        points[step if killer == "itself" else killer] += 1
        report.violations += [
            f"after kill {report.kills} ({step}): {p}" for p in check(bundle, state, inbox, feeder.fed)
        ]
        if report.violations:
            break
    if not report.violations:
        report.violations += _final_run(bundle_path, bundle, state, inbox, log, feeder.fed)
    report.by, report.files_fed, report.fed = dict(points), len(feeder.fed), feeder.fed
    report.set_aside = sum(f.kind != "bad" and set_aside(inbox, f.name) for f in feeder.fed)
    current = StateStore(state, bundle.fingerprint).current()
    report.versions = current.number if current else 0
    report.seconds = round(time.monotonic() - began, 1)
    return report


def _draw(rng: np.random.Generator) -> str:
    point = str(rng.choice([*POINTS, "delay"]))
    if point == "delay":
        return f"delay:{rng.uniform(0.2, 2.5):.2f}"
    return f"{point}:{int(rng.integers(1, MAX_COUNT[point] + 1))}"


def _final_run(bundle_path: Path, bundle: Bundle, state: Path, inbox: Path, log: Path, fed: list[Fed]) -> list[str]:
    """Drain the inbox with ``--once`` and no crash point; then everything good must be learned exactly once."""
    command = [sys.executable, "-m", "edgeft.cli", "adapt", str(bundle_path), "-s", str(state)]
    env = {k: v for k, v in os.environ.items() if k != ENV}
    with log.open("ab") as err:
        done = subprocess.run(
            [*command, "--watch", str(inbox), "--once", "--json"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            timeout=WAIT_SECONDS,
            cwd=ROOT,
        )
    problems = [] if done.returncode == 0 else [f"the final run exited with status {done.returncode}"]
    events = Counter(json.loads(line)["event"] for line in log.read_text().splitlines() if line.startswith("{"))
    if events["error"]:
        problems.append(f"{events['error']} error events in {log}")
    return problems + [f"final: {p}" for p in check(bundle, state, inbox, fed, final=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs to survive (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the bundle, state, inbox and event log here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        report = torture(args.kills, args.seed, workdir)
    if args.json:
        print(json.dumps({k: v for k, v in asdict(report).items() if k != "fed"}))
    else:
        by = Counter()
        for key, count in report.by.items():
            by[key.partition(":")[0]] += count
        print(
            f"{report.kills} SIGKILLs ({', '.join(f'{p} {n}' for p, n in sorted(by.items()))}), "
            f"{report.files_fed} files fed ({report.set_aside} good ones set aside as poison), "
            f"{report.versions} versions committed, {report.seconds} s: "
            f"{len(report.violations)} invariant violations"
        )
        for problem in report.violations:
            print(f"  {problem}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
