"""Power-cut torture: ``edgeft adapt --watch`` on the power-cut filesystem, the power cut again and again.

Each cycle mounts the filesystem (fusefs.py) from its durable image, delivers new files into the inbox (good ones,
mixed ones with labels beyond the head, truncated ones, and cases of the bad-input corpus), starts
``edgeft adapt BUNDLE -s MOUNT/state --watch MOUNT/inbox`` and cuts the power: at a random mutating filesystem
operation of the learner (most cycles), after a random delay, or once it has gone idle. The cut kills the process,
drops what was not durable (model.py), unmounts and keeps the rest as the next cycle's disk. After every cut the
durable image is checked (tools/torture.py's invariants, plus the corpus: every bad entry waits in the inbox or is
quarantined with its reason, and is never learned). At the end a clean run drains the inbox; then everything good
must be learned exactly once, ``status`` and ``predict`` must work, and the head must equal the one a run without
cuts learns from the same accepted inputs in the same order and the same (coalesced) arrivals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeft.bundle import Bundle
from edgeft.runtime.history import JOURNAL_FILE, read_lines
from edgeft.runtime.inbox import DONE_DIR, QUARANTINE_DIR
from powercut.mount import Mount, deliver

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]
import torture  # noqa: E402
from test_bad_inputs import CORPUS  # noqa: E402
from tiny_models import classifier, save  # noqa: E402

from powercut.exports import cut_export_inference, cut_exports  # noqa: E402

CLI = [sys.executable, "-m", "edgeft.cli"]
WAIT_SECONDS = 60.0
IDLE_SECONDS = 1.0
# Paths a third of the cuts aim at (the power goes out at the 1st to 6th operation on one): the delicate moments.
TARGETS = ("journal.jsonl", "metrics.jsonl", "/done", "quarantine", "/pending", "CURRENT", "/segments/", ".head.npz")


@dataclass
class Report:
    """What a power-cut run did and every invariant violation it saw."""

    cuts: int = 0
    by: dict[str, int] = field(default_factory=dict)  # where the power went out: commit, journal, move, ... idle
    files_fed: int = 0
    corpus_fed: int = 0
    versions: int = 0
    lost: dict[str, int] = field(default_factory=dict)  # what the cuts dropped: metadata ops, writes, torn writes
    head_max_diff: float | None = None  # largest |probability difference| to a run without cuts
    samples_fed: int = 0  # learnable samples in the good and mixed files fed
    samples_learned: int = 0  # samples the final state says it received (each file counted once)
    export_cuts: int = 0  # cuts inside `export` and, as many again, inside `export-inference`
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


def where(op: dict) -> str:
    """Which part of edgeft's work a cut operation belongs to."""
    path = op.get("path") or ""
    for fragment, name in (
        (QUARANTINE_DIR, "quarantine"),
        ("/pending", "pending"),
        (f"/{DONE_DIR}", "inbox move"),
        ("/lock", "taking the lock"),
        (JOURNAL_FILE, "journal append"),
        ("metrics.jsonl", "metrics append"),
        ("/segments", "replay segment write"),
        (".buffers.npz", "buffer index write"),
        (".head.npz", "head-state write"),
        (".json", "version metadata"),
        ("CURRENT", "CURRENT"),
        ("/versions", "commit other"),
    ):
        if fragment in path:
            return name
    directory = {"/state": "state directory fsync", "/inbox": "inbox directory fsync"}.get(path)
    return directory or f"other ({op.get('op')} {path})"


class Feeds:
    """Files and bad-corpus entries written on real disk (the outbox), then delivered into the inbox."""

    def __init__(self, outbox: Path, rng: np.random.Generator) -> None:
        outbox.mkdir(parents=True, exist_ok=True)
        self.outbox, self.rng = outbox, rng
        self.feeder = torture.Feeder(outbox / "files", rng)
        self.feeder.inbox.mkdir(exist_ok=True)
        self.corpus: dict[str, str] = {}  # entry name -> fragment its reason must contain
        self._cases = list(CORPUS.items())
        rng.shuffle(self._cases)

    def deliver(self, inbox: Path, files: int, corpus: int) -> None:
        """Write ``files`` new files and ``corpus`` corpus cases and deliver them."""
        for _ in range(files):
            deliver(self.outbox / "files" / self.feeder.drop().name, inbox)
        for _ in range(min(corpus, len(self._cases))):
            case, (build, fragment) = self._cases.pop()
            staging, outside = self.outbox / "corpus" / case, self.outbox / "outside" / case
            staging.mkdir(parents=True)
            outside.mkdir(parents=True)
            name = build(staging, outside)
            deliver(staging / name, inbox)
            self.corpus[name] = fragment


def check_corpus(inbox: Path, state: Path, corpus: dict[str, str], final: bool) -> list[str]:
    """Every corpus entry waits in the inbox or is quarantined with its reason; none is ever learned."""
    learned = {row.get("name") for row in read_lines(state / JOURNAL_FILE)}
    problems = []
    for name, fragment in corpus.items():
        places = [d for d in ("", DONE_DIR, QUARANTINE_DIR) if os.path.lexists(inbox / d / name)]
        if places not in ([""], [QUARANTINE_DIR]) or (final and places != [QUARANTINE_DIR]):
            problems.append(f"corpus entry {name!r} is in {places or 'no place at all'}")
        if name in learned:
            problems.append(f"corpus entry {name!r} was learned")
        if places == [QUARANTINE_DIR]:
            reason = inbox / QUARANTINE_DIR / f"{name}.reason.txt"
            if not reason.is_file() or fragment not in reason.read_text():
                problems.append(f"corpus entry {name!r} is quarantined without its reason ({fragment!r})")
    return problems


def _learner(launcher: list[str], bundle: Path, state: Path, inbox: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [*launcher, "adapt", str(bundle), "-s", str(state), "--watch", str(inbox), "--poll", "0.05", "--json"]
    env = {k: v for k, v in os.environ.items() if k != "EDGEFT_CRASH_AT"}
    with log.open("ab") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)


def _waiting(inbox: Path, feeds: Feeds) -> bool:
    names = [f.name for f in feeds.feeder.fed] + list(feeds.corpus)
    return any(os.path.lexists(inbox / name) for name in names)


def _run_until_cut(process: subprocess.Popen[bytes], mount: Mount, inbox: Path, feeds: Feeds, delay: float) -> str:
    """Let the learner work until the power goes out (or the delay passes, or it goes idle); kill it."""
    started = time.monotonic()
    cause = "timeout"
    while time.monotonic() - started < WAIT_SECONDS:
        op = mount.cut_reached()
        if op:
            cause = where(op)
            break
        elapsed = time.monotonic() - started
        if delay and elapsed > delay:
            cause = "delay"
            break
        if process.poll() is not None:
            cause = f"exited {process.returncode}"
            break
        if elapsed > IDLE_SECONDS and not _waiting(inbox, feeds):
            cause = "idle"
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=WAIT_SECONDS)
    return cause


def power_cuts(
    cuts: int,
    seed: int,
    workdir: Path,
    bundle_dir: Path | None = None,
    launcher: list[str] | None = None,
    export_cuts: int = 0,
) -> Report:
    """Cut the power ``cuts`` times under a watching learner (stop at the first violation), then ``export_cuts``
    times inside ``export`` and as many inside ``export-inference``."""
    began = time.monotonic()
    rng = np.random.default_rng(seed)
    launcher = launcher or CLI
    bundle_path = bundle_dir or torture.tiny_bundle(workdir)
    bundle = Bundle.load(bundle_path)
    image, mountpoint, log = workdir / "image", workdir / "mnt", workdir / "events.jsonl"
    (image / "inbox").mkdir(parents=True, exist_ok=True)
    state, inbox = image / "state", image / "inbox"
    feeds, report, causes, lost = Feeds(workdir / "outbox", rng), Report(), Counter(), Counter()
    corpus_rate = max(1, -(-len(CORPUS) // max(1, cuts // 2)))
    cycle_ops = [60]  # mutating operations a whole cycle took (cycles that went idle): where to draw cuts from
    while report.cuts < cuts and not report.violations:
        roll = rng.random()
        delay = float(rng.uniform(0.3, 3.0)) if roll < 0.15 else 0.0
        match = str(rng.choice(TARGETS)) if roll > 0.67 else ""
        cut_after = int(rng.integers(1, 7 if match else int(np.median(cycle_ops[-9:])) + 1)) if not delay else 0
        mount = Mount.start(image, mountpoint, seed=int(rng.integers(2**31)), cut_after=cut_after, match=match)
        try:
            waiting = _waiting(mountpoint / "inbox", feeds)
            feeds.deliver(mountpoint / "inbox", 1 if waiting else 2, corpus_rate if rng.random() < 0.5 else 0)
            process = _learner(launcher, bundle_path, mountpoint / "state", mountpoint / "inbox", log)
            cause = _run_until_cut(process, mount, mountpoint / "inbox", feeds, delay)
        finally:
            counts = mount.cut()
        report.cuts += 1
        causes[cause] += 1
        lost.update({k: v for k, v in counts.items() if k != "ops"})
        if cause == "idle":
            cycle_ops.append(counts["ops"])
        fed = feeds.feeder.fed
        problems = torture.check(bundle, state, inbox, fed) + check_corpus(inbox, state, feeds.corpus, final=False)
        if cause.startswith("exited") or cause == "timeout":
            problems.append(f"the learner {cause} before the power went out (see {log})")
        at = f"op {cut_after} {match}".strip() if cut_after else "-"
        report.violations += [f"after cut {report.cuts} ({cause}, {at}): {p}" for p in problems]
    if not report.violations:
        report.violations += _final(launcher, bundle_path, bundle, image, mountpoint, feeds, log, report, workdir)
    if export_cuts and not report.violations:
        exports = workdir / "exports"
        exports.mkdir()
        model = save(classifier(), exports / "tiny.onnx")
        report.violations += cut_exports(export_cuts, rng, exports, model, ",".join(torture.CLASSES))
        report.violations += cut_export_inference(export_cuts, rng, exports, bundle_path, state)
        report.export_cuts = export_cuts
    report.by, report.lost = dict(causes), dict(lost)
    report.files_fed, report.corpus_fed = len(feeds.feeder.fed), len(feeds.corpus)
    current = json.loads((state / "CURRENT").read_text()) if (state / "CURRENT").is_file() else {"version": 0}
    report.versions = int(current["version"])
    if report.versions and not report.violations:  # a broken state may lack it
        meta = json.loads((state / "versions" / f"{report.versions:06d}.json").read_text())
        report.samples_learned = int(meta["samples_received"])
    report.samples_fed = sum(f.learnable for f in feeds.feeder.fed)
    report.seconds = round(time.monotonic() - began, 1)
    return report


def _final(
    launcher: list[str],
    bundle_path: Path,
    bundle: Bundle,
    image: Path,
    mountpoint: Path,
    feeds: Feeds,
    log: Path,
    report: Report,
    workdir: Path,
) -> list[str]:
    """Drain the inbox without a cut; then everything is learned once, the CLI works, the head is the clean one."""
    state, inbox = image / "state", image / "inbox"
    mount = Mount.start(image, mountpoint, seed=0)
    try:
        command = [*launcher, "adapt", str(bundle_path), "-s", str(mountpoint / "state")]
        with log.open("ab") as err:
            done = subprocess.run(
                [*command, "--watch", str(mountpoint / "inbox"), "--once", "--json"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=WAIT_SECONDS * 5,
                cwd=ROOT,
            )
    finally:
        mount.cut()
    problems = [] if done.returncode == 0 else [f"the final run exited with status {done.returncode}"]
    problems += [f"final: {p}" for p in torture.check(bundle, state, inbox, feeds.feeder.fed, final=True)]
    problems += [f"final: {p}" for p in check_corpus(inbox, state, feeds.corpus, final=True)]
    if problems:
        return problems
    status = subprocess.run([*CLI, "status", "-s", str(state), "--json"], capture_output=True, text=True, cwd=ROOT)
    if status.returncode != 0:
        return [f"status failed: {status.stderr.strip()}"]
    clean = _clean_run(bundle_path, state, feeds, workdir / "clean")
    diff, problems = compare_heads(bundle_path, state, clean, workdir / "probe.npz")
    report.head_max_diff = diff
    return problems


def _clean_run(bundle_path: Path, state: Path, feeds: Feeds, directory: Path) -> Path:
    """A fresh state that learns, without cuts, the inputs the journal accepted, in the journal's order and in the
    same arrivals: a run of single-entry versions in one process with ``--coalesce 0``, each coalesced version's
    entries in a process of their own that coalesces them all."""
    inbox = directory / "inbox"
    inbox.mkdir(parents=True)
    versions: dict[int, list[str]] = {}
    for row in read_lines(state / JOURNAL_FILE):
        versions.setdefault(int(row["version"]), []).append(row["name"])
    runs: list[tuple[str, list[str]]] = []
    for number in sorted(versions):
        names = versions[number]
        if len(names) == 1 and runs and runs[-1][0] == "0":
            runs[-1][1].append(names[0])
        else:
            runs.append(("0" if len(names) == 1 else str(10**9), list(names)))
    age = 0
    for coalesce, names in runs:
        for name in names:
            target = inbox / name
            shutil.copyfile(feeds.outbox / "files" / name, target)
            age += 1
            os.utime(target, (1_000_000_000 + age, 1_000_000_000 + age))
        command = [*CLI, "-q", "adapt", str(bundle_path), "-s", str(directory / "state"), "--watch", str(inbox)]
        subprocess.run(
            [*command, "--once", "--coalesce", coalesce],
            check=True,
            cwd=ROOT,
            timeout=WAIT_SECONDS * 5,
            stderr=subprocess.DEVNULL,
        )
    return directory / "state"


def compare_heads(bundle_path: Path, state: Path, clean: Path, probe: Path) -> tuple[float | None, list[str]]:
    """Both states' versions agree and ``predict`` gives the same probabilities (within 1e-6) on a probe."""
    x, _ = probe_samples()
    with probe.open("wb") as handle:
        np.savez(handle, x=x)
    results = []
    for directory in (state, clean):
        out = subprocess.run(
            [*CLI, "predict", str(bundle_path), str(probe), "-s", str(directory), "--top", "3", "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if out.returncode != 0:
            return None, [f"predict failed on {directory}: {out.stderr.strip()}"]
        results.append(json.loads(out.stdout))
    if results[0]["version"] != results[1]["version"]:
        return None, [f"version {results[0]['version']} after cuts, {results[1]['version']} without"]
    probs = [
        np.array([[t["probability"] for t in sorted(row["top"], key=lambda t: t["label"])] for row in r["predictions"]])
        for r in results
    ]
    diff = float(np.abs(probs[0] - probs[1]).max())
    return diff, [] if diff <= 1e-6 else [f"the head differs from a run without cuts by {diff:.3g}"]


def probe_samples() -> tuple[np.ndarray, np.ndarray]:
    """A fixed probe set for comparing heads."""
    from helpers import make_dataset

    return make_dataset(64, seed=12345)
