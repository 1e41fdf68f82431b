"""The portable ONNX trainer against ONNX Runtime training's, side by side in one run (issue: portable trainer).

Contenders, each in its own process (``tools/bench_ort.py``), alternating over ``--rounds`` rounds:
- ``replay``: head steps per second on cached features (10 epochs over 2,000 vectors, batch 16) with
  ``--trainer onnx`` (the bundle's train-step graph in an InferenceSession, state in bound OrtValues) and
  ``--trainer ort`` (ORT training's Module + Optimizer), both in the ORT-training venv (onnxruntime 1.19.2).
- ``edgeft``: whole-process ``Adapter.learn`` on the demo stream (480 samples in arrivals of 96, batch 16) with each
  trainer, against ``inference`` (the backbone alone) in the same venv: the ratio to the inference limit.
- With ``--plain-python``, the same ``replay`` / ``edgeft`` / ``inference`` for the portable trainer in a venv with
  plain onnxruntime (what ``pip install edgeft`` gives: no ORT training at all).
Also: cold start (spawn ``edgeft adapt`` on 16 samples with a fresh state until version 1 is committed) per trainer,
and the install footprint of ``pip install --no-compile .`` against ``.[ort]``.

Usage: ``python tools/bench_trainers.py --ort-python VENV_ORT/bin/python [--plain-python VENV/bin/python]
[--rounds 3] [--threads 2] [--quick] [--out report.md]``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
from bench import cold_start, run_contender, venv_size


def plan(args: argparse.Namespace) -> list[tuple[str, str, str, list[str]]]:
    """(label, python, contender, extra arguments) for one round; pairs compared by a ratio run back to back."""
    whole = ["--limit", "96", "--arrival", "32"] if args.quick else ["--limit", "480", "--arrival", "96"]
    venvs = [("ort venv", args.ort_python)] + ([("plain venv", args.plain_python)] if args.plain_python else [])
    steps = []
    for venv, python in venvs:
        trainers = ["onnx", "ort"] if python == args.ort_python else ["onnx"]
        steps.append((f"{venv}: inference", python, "inference", ["--batch", "16", *whole]))
        for trainer in trainers:
            steps.append(
                (f"{venv}: adapt {trainer}", python, "edgeft", ["--batch", "16", "--trainer", trainer, *whole])
            )
        for trainer in trainers:
            steps.append((f"{venv}: replay {trainer}", python, "replay", ["--trainer", trainer]))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort-python", required=True, help="python of a venv with edgeft[ort] installed")
    parser.add_argument("--plain-python", help="python of a venv with plain onnxruntime (pip install edgeft)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ep", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--no-venv", action="store_true", help="skip the install-footprint measurement")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {}
    for round_number in range(args.rounds):
        for label, python, contender, extra in plan(args):
            result = run_contender(python, contender, extra, args)
            if "samples_per_cpu_s" not in result:  # whole-process contenders report CPU ms per sample
                result["samples_per_cpu_s"] = 1000.0 / result["cpu_ms_per_sample"]
            runs.setdefault(label, []).append(result)
            print(f"round {round_number + 1} {label}: {result['samples_per_s']:.1f} samples/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cold = {
            f"{venv} {trainer}": cold_start(args, python, Path(tmp), ("--trainer", trainer))["adapt_s"]
            for venv, python, trainer in [
                ("ort venv", args.ort_python, "onnx"),
                ("ort venv", args.ort_python, "ort"),
                *([("plain venv", args.plain_python, "onnx")] if args.plain_python else []),
            ]
        }
        sizes = (
            {}
            if args.no_venv
            else {
                "pip install --no-compile .": venv_size(Path(tmp), ("--no-compile",)),
                "pip install --no-compile .[ort]": venv_size(Path(tmp), ("--no-compile",), "ort"),
            }
        )
    text = render(runs, cold, sizes, args)
    print(text)
    if args.out:
        args.out.write_text(text)


def _median(rows: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


def _ratios(runs: dict[str, list[dict]], top: str, bottom: str, key: str = "samples_per_s") -> list[float]:
    return [round(a[key] / b[key], 2) for a, b in zip(runs[top], runs[bottom], strict=True)]


def render(runs: dict[str, list[dict]], cold: dict[str, float], sizes: dict, args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {platform.machine()}, {args.threads} threads, {args.rounds} rounds, ep {args.ep}"
        + (" (quick)" if args.quick else ""),
        "",
        "| contender | samples/s (median) | samples per CPU-second (median) | peak RSS MiB (median) |",
        "|---|---|---|---|",
    ]
    for label, rows in runs.items():
        lines.append(
            f"| {label} | {_median(rows, 'samples_per_s'):.1f} | {_median(rows, 'samples_per_cpu_s'):.1f} "
            f"| {_median(rows, 'peak_rss_mb'):.0f} |"
        )
    lines += ["", "| ratio | wall clock, per round | median | CPU time, per round | median |", "|---|---|---|---|---|"]
    pairs = [
        ("ort venv: replay onnx", "ort venv: replay ort", "head steps/s, portable / ORT training"),
        ("ort venv: adapt onnx", "ort venv: adapt ort", "whole-process adapt, portable / ORT training"),
        ("ort venv: adapt onnx", "ort venv: inference", "adapt (portable) / inference limit, ORT 1.19.2"),
        ("ort venv: adapt ort", "ort venv: inference", "adapt (ORT training) / inference limit, ORT 1.19.2"),
        ("plain venv: adapt onnx", "plain venv: inference", "adapt (portable) / inference limit, plain onnxruntime"),
        (
            "plain venv: replay onnx",
            "ort venv: replay ort",
            "head steps/s, portable on plain onnxruntime / ORT training",
        ),
    ]
    for top, bottom, what in pairs:
        if top in runs and bottom in runs:
            wall, cpu = _ratios(runs, top, bottom), _ratios(runs, top, bottom, "samples_per_cpu_s")
            lines.append(
                f"| {what} | {', '.join(map(str, wall))} | {float(np.median(wall)):.2f} "
                f"| {', '.join(map(str, cpu))} | {float(np.median(cpu)):.2f} |"
            )
    lines += ["", "| cold start (spawn to version 1 committed) | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in cold.items()]
    if sizes:
        lines += ["", "| install | MiB | largest packages (MiB) |", "|---|---|---|"]
        lines += [f"| `{name}` | {s['total_mb']} | {', '.join(s['largest'][:5])} |" for name, s in sizes.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
