"""Benchmark edgeft adapt against plain inference, whole-graph ORT training and PyTorch, side by side.

Every contender runs in its own process (torch-free venv for edgeft and ORT, ``--torch-python`` for PyTorch) on
the same data (the default bundle's demo stream: raw 8x8 scans the backbone resizes to 224x224), with the same
intra-op thread count; contenders alternate over ``--rounds`` rounds, in a fixed order that runs each
pair compared by a goal close together in time (other jobs share the machine), and the report gives medians
and per-round ratios. Also measured: head steps on cached features, cold start to the first
committed version, checkpoint write time and size, and the runtime's install footprint.

With ``--int8``, ``tools/bench_int8.py`` also runs (same rounds and threads): the int8 default bundle against the
float one, adapt throughput, main-job accuracy and backbone size.

Usage: ``python tools/bench.py [--quick] [--rounds 3] [--threads 2] [--ep cpu] [--int8] [--out report.md]``
(run it with the torch-free venv's python; ``--torch-python`` defaults to /work/venv-build/bin/python).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_report as report
import numpy as np
from bench_common import BUNDLE, RESULT_PREFIX, ROOT, stream_chunks

TOOLS = Path(__file__).resolve().parent
ORT_SCRIPT, TORCH_SCRIPT = TOOLS / "bench_ort.py", TOOLS / "bench_torch.py"
ORDER = ("inference", "edgeft", "edgeft-small", "ort-whole", "torch")


def run_contender(python: str, name: str, extra: list[str], args: argparse.Namespace) -> dict:
    """Run one contender process; return its JSON result (raises with its stderr if it failed)."""
    script = TORCH_SCRIPT if name == "torch" else ORT_SCRIPT
    contender = "edgeft" if name == "edgeft-small" else name
    cmd = [python, str(script), contender, "--threads", str(args.threads), "--ep", args.ep, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TOOLS)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    result["contender"] = name
    return result


def plan(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(scenario, contender, extra arguments) for one round."""
    # Five arrivals like the demo stream's, smaller (PyTorch runs at ~8 samples/s here): the same replay-to-new ratio.
    full = ["--limit", "80", "--arrival", "16"] if args.quick else ["--limit", "480", "--arrival", "96"]
    small = ["--warm-chunks", "1", "--limit", "32"] if args.quick else ["--warm-chunks", "4", "--limit", "128"]
    one = ["--limit", "16" if args.quick else "32"]
    steps = [("batch 16", name, ["--batch", "16", *full]) for name in ("inference", "edgeft", "ort-whole", "torch")]
    steps.append(("batch 16", "edgeft-small", ["--batch", "16", "--arrival", "16", *small]))
    steps += [("batch 1", name, ["--batch", "1", *one]) for name in ("inference", "edgeft", "ort-whole", "torch")]
    steps.append(("replay", "replay", []))
    if args.torch_python is None:
        steps = [s for s in steps if s[1] != "torch"]
    return steps


def cold_start(args: argparse.Namespace, python: str, tmp: Path, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """Seconds from spawning ``edgeft adapt`` (16 samples, fresh state) to its exit with version 1 committed."""
    x, y = stream_chunks()[0]
    data = tmp / "first16.npz"
    np.savez(data, x=x[:16], y=y[:16])
    state = tmp / "cold-state"
    shutil.rmtree(state, ignore_errors=True)
    code = "import sys; from edgeft.cli import run; sys.argv[0] = 'edgeft'; run()"
    cmd = [python, "-c", code, "adapt", str(BUNDLE), "--data", str(data), "--state", str(state)]
    cmd += ["--threads", str(args.threads), "--ep", args.ep, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    seconds = time.perf_counter() - start
    if json.loads((state / "CURRENT").read_text())["version"] != 1:
        raise RuntimeError("cold start: no version 1 committed")
    probe = "import edgeft, onnxruntime"
    start = time.perf_counter()
    subprocess.run([python, "-c", probe], check=True, capture_output=True, env=env)
    return {"adapt_s": seconds, "import_s": time.perf_counter() - start}


def venv_size(tmp: Path, pip_options: tuple[str, ...] = (), extras: str = "") -> dict[str, object]:
    """MiB of a fresh venv of this Python with ``pip install [OPTIONS] .[EXTRAS]``, and its largest packages."""
    venv, source = tmp / "venv", tmp / "source"  # a copy: pip's build leaves build/ in the source tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "edgeft"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    command = [
        str(venv / "bin" / "pip"),
        "install",
        "-q",
        *pip_options,
        f"{source}[{extras}]" if extras else str(source),
    ]
    subprocess.run(command, check=True, capture_output=True)
    total = int(subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True).stdout.split()[0])
    site = next((venv / "lib").glob("python*/site-packages"))
    sizes = subprocess.run(["du", "-sm", *map(str, site.iterdir())], capture_output=True, text=True).stdout
    parts = sorted(((int(s), Path(p).name) for s, p in (line.split("\t") for line in sizes.splitlines())), reverse=True)
    shutil.rmtree(venv)
    shutil.rmtree(source)
    return {"total_mb": total, "largest": [f"{name} {mb}" for mb, name in parts[:8]]}


def render(runs: list[dict], extras: dict, args: argparse.Namespace) -> str:
    """The markdown report."""
    out = [f"### edgeft benchmark ({'quick' if args.quick else 'full'}), {args.ep}, {args.threads} threads", ""]
    out.append(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average before/after: {extras['load_before']} / {extras['load_after']}; {extras['wall_s']:.0f} s."
    )
    for scenario in ("batch 16", "batch 1"):
        mine = [r for r in runs if r["scenario"] == scenario]
        if mine:
            samples = sorted({(r["contender"], r["samples"]) for r in mine})
            out += [
                "",
                f"**{scenario}** (samples per contender: "
                + ", ".join(f"{c} {n}" for c, n in samples)
                + f"; 1-min load average after each run {min(r['load'] for r in mine):.1f}–"
                + f"{max(r['load'] for r in mine):.1f})",
                "",
                *report.contender_table(mine, ORDER),
            ]
    main = [r for r in runs if r["scenario"] == "batch 16"]
    out += ["", "| goal (batch 16, median of per-round ratios) | measured | met |", "|---|---|---|"]
    out += [f"| {text} | {value:.2f} | {'yes' if ok else 'no'} |" for text, value, ok in report.goal_rows(main)]
    if "int8" in extras:
        out += ["", "| int8 goal (tools/bench_int8.py, same thresholds) | measured |", "|---|---|"]
        out += [f"| {text} | {value:.3f} |" for text, value in extras["int8"]["goals"].items()]
    replay = [r for r in runs if r["contender"] == "replay"]
    edge = [r for r in main if r["contender"] == "edgeft"]

    def med(rows: list[dict], key: str) -> float:
        return report.median(float(r[key]) for r in rows if key in r)

    out += [
        "",
        f"- replay head steps on cached features: {med(replay, 'samples_per_s'):,.0f} samples/s "
        f"({med(replay, 'steps_per_s'):,.0f} steps of 16/s) with the head's Module on "
        f"{med(replay, 'head_threads'):.0f} thread, {med(replay, 'samples_per_s_at_threads'):,.0f} samples/s on "
        f"{args.threads}; backbone rows per absorbed sample in edgeft adapt: "
        f"{med(edge, 'backbone_rows_per_sample'):.2f}",
    ]
    for name in ("edgeft", "ort-whole", "torch"):
        rows = [r for r in main if r["contender"] == name]
        if rows:
            out.append(
                f"- {name} checkpoint per arrival: {med(rows, 'commit_s_median') * 1000:.1f} ms, "
                f"{med(rows, 'checkpoint_bytes') / 1024:.0f} KiB"
                + (f" + replay {med(rows, 'replay_bytes') / 1024:.0f} KiB" if name == "edgeft" else "")
            )
    setups = {
        n: med([r for r in main if r["contender"] == n], "setup_s")
        for n in ("inference", "edgeft", "ort-whole", "torch")
    }
    out.append("- setup before the first sample (s): " + ", ".join(f"{n} {s:.2f}" for n, s in setups.items()))
    if "cold" in extras:
        out.append(
            f"- cold start, spawn of `edgeft adapt` (16 samples) to exit with version 1 committed: "
            f"{report.median(c['adapt_s'] for c in extras['cold']):.2f} s (median of {len(extras['cold'])}); "
            f"`import edgeft, onnxruntime` alone: {report.median(c['import_s'] for c in extras['cold']):.2f} s"
        )
    if "venv" in extras:
        out.append(
            f"- runtime venv (fresh venv + `pip install .`): {extras['venv']['total_mb']} MiB; largest: "
            + ", ".join(extras["venv"]["largest"])
        )
    if "venv_no_compile" in extras:
        out.append(
            f"- runtime venv installed with `pip install --no-compile .` (no .pyc written for modules never "
            f"imported): {extras['venv_no_compile']['total_mb']} MiB"
        )
    return "\n".join(out) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, one round, no venv size (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of alternating contenders (3; quick: 1)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for every contender (2)")
    parser.add_argument("--ep", default="cpu", help="execution provider: cpu or cuda (cpu)")
    parser.add_argument("--python", default=sys.executable, help="torch-free interpreter for edgeft and ORT")
    default_torch = "/work/venv-build/bin/python" if Path("/work/venv-build/bin/python").exists() else None
    parser.add_argument("--torch-python", default=default_torch, help="interpreter with torch (omit: no PyTorch)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch contender")
    parser.add_argument("--no-venv", action="store_true", help="skip the install-footprint measurement")
    parser.add_argument(
        "--int8", action="store_true", help="also compare the int8 default bundle with the float one (bench_int8.py)"
    )
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--json", type=Path, help="write every raw result here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.no_venv = 1, True
    if args.no_torch:
        args.torch_python = None
    return args


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    extras: dict = {"load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()), "cold": []}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for scenario, name, extra in plan(args):
                result = run_contender(args.torch_python if name == "torch" else args.python, name, extra, args)
                runs.append({**result, "scenario": scenario, "round": k, "load": os.getloadavg()[0]})
                print(
                    f"round {k} {scenario:8} {name:12} {result['samples_per_s']:10.1f} samples/s "
                    f"{result['peak_rss_mb']:6.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            extras["cold"].append(cold_start(args, args.python, Path(tmp)))
        if not args.no_venv:
            extras["venv"] = venv_size(Path(tmp))
            extras["venv_no_compile"] = venv_size(Path(tmp), ("--no-compile",))
    if args.int8:
        import bench_int8

        extras["int8"] = bench_int8.run(args.rounds, args.threads)
    extras["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    extras["wall_s"] = time.perf_counter() - start
    text = render(runs, extras, args)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "extras": extras}, indent=1))


if __name__ == "__main__":
    main()
