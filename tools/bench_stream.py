"""Cost against arrival size: whole-process ``edgeft adapt --data FILE`` next to plain inference of the same file.

The workload is raw 224x224 grey samples (float32 pixels 0..255, 196 KiB each) in one .npz per arrival, written
by this tool a block at a time (never held whole). The model is the default bundle's backbone (EfficientNet-Lite0)
taking 224x224 directly: ``artifacts/default`` copied with the graph's 8x8->224x224 Resize removed and the input
declared [N, 1, 224, 224] (head, trainers and classes unchanged; the manifest's sha256s recomputed).

For every arrival size, two processes run on the same file, each timed from spawn to exit, peak RSS from
``wait4`` (ru_maxrss), bytes written from ``/proc/self/io`` (wchar) read at exit:

- ``inference``: import numpy and onnxruntime, open the backbone's InferenceSession (same options and threads),
  read ``x`` from the .npz member 16 samples at a time and run them: the least a careful user's program holds.
- ``adapt``: ``python -m edgeft.cli adapt BUNDLE --data FILE --json`` into a state directory that already learned
  one earlier arrival of ``--warm`` samples (256: a replay buffer of about 230 features; 2400 fills the default
  bundle's 2,000, as on a device long in service), default options.

Reported per size: throughput ratio (inference seconds / adapt seconds, both whole process; by wall time and by
CPU time, user + system, which a busy machine disturbs less), peak RSS of each and their difference, bytes adapt
wrote. Rounds alternate the two contenders; medians are reported.

Usage: ``python tools/bench_stream.py [--sizes 96,960,9600] [--rounds 1] [--threads 2] [--memory-budget 1G]
[--warm 256] [--out report.md]``. ``--memory-budget`` is passed to adapt (a small board's budget): the largest files then
exceed what reading them whole would be allowed, so only a streaming reader learns them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = ROOT / "artifacts" / "default"
SIDE = 224
SAMPLE_BYTES = SIDE * SIDE * 4
EXIT_IO = (
    "import atexit, sys\n"
    "def _io():\n"
    "    fields = dict(line.split(': ') for line in open('/proc/self/io').read().splitlines())\n"
    "    sys.stderr.write('BENCH_IO ' + fields['wchar'] + '\\n')\n"
    "atexit.register(_io)\n"
)
INFER = """
import sys, zipfile
import numpy as np
import onnxruntime
bundle, data, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = onnxruntime.SessionOptions()
options.log_severity_level = 3
options.intra_op_num_threads = threads
session = onnxruntime.InferenceSession(bundle + '/backbone.onnx', options, providers=['CPUExecutionProvider'])
with zipfile.ZipFile(data) as archive, archive.open('x.npy') as member:
    np.lib.format.read_magic(member)
    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    row = int(np.prod(shape[1:])) * dtype.itemsize
    for start in range(0, shape[0], 16):
        n = min(16, shape[0] - start)
        x = np.frombuffer(member.read(n * row), dtype).reshape(n, *shape[1:])
        session.run(None, {'image': x})
"""


def bundle_224(out: Path) -> Path:
    """``artifacts/default`` taking [N, 1, 224, 224] raw grey pixels: the Resize to 224 dropped from the backbone."""
    import onnx

    from edgeft.bundle import hash_tree

    shutil.copytree(DEFAULT_BUNDLE, out)
    model = onnx.load(str(out / "backbone.onnx"))
    resize = next(n for n in model.graph.node if n.op_type == "Resize" and n.input[0] == "image")
    for node in model.graph.node:
        node.input[:] = ["image" if name == resize.output[0] else name for name in node.input]
    model.graph.node.remove(resize)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = SIDE
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "backbone.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["input"]["shape"] = ["batch", 1, SIDE, SIDE]
    manifest["preprocessing"]["note"] = "raw grey pixels 0..255 at 224x224; grey to RGB and (x-127)/128 in the graph"
    manifest["files"] = hash_tree(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def write_arrival(path: Path, samples: int, seed: int) -> Path:
    """An .npz (stored, as ``np.savez`` writes) of ``samples`` raw 224x224 grey samples and digit labels, written a
    block at a time."""
    rng = np.random.default_rng(seed)
    block = rng.integers(0, 256, (64, 1, SIDE, SIDE)).astype(np.float32)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (samples, 1, SIDE, SIDE)}
            np.lib.format.write_array_header_1_0(member, header)
            for start in range(0, samples, len(block)):
                member.write(block[: min(len(block), samples - start)].tobytes())
        with archive.open("y.npy", "w") as member:
            np.lib.format.write_array(member, rng.integers(0, 10, samples).astype(np.int64))
    return path


def run_child(command: list[str]) -> dict[str, float]:
    """Run ``command`` to its exit: wall seconds, peak RSS (MiB, the child's own rusage from ``wait4``) and the bytes
    it wrote (wchar, when it reports them)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        pid = os.posix_spawn(
            command[0], command, env, file_actions=[(os.POSIX_SPAWN_DUP2, err.fileno(), 2), _devnull_stdout()]
        )
        _pid, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - start
        err.seek(0)
        text = err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(command[:6])} ... failed:\n{text[-3000:]}")
    written = [int(line.split()[1]) for line in text.splitlines() if line.startswith("BENCH_IO ")]
    return {
        "s": seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "wchar": float(written[-1]) if written else float("nan"),
    }


def _devnull_stdout() -> tuple:
    return (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)


def adapt_command(python: str, bundle: Path, data: Path, state: Path, args: argparse.Namespace) -> list[str]:
    code = EXIT_IO + "from edgeft.cli import run\nsys.argv[0] = 'edgeft'\nrun()\n"
    command = [python, "-c", code, "adapt", str(bundle), "--data", str(data), "-s", str(state), "--json"]
    command += ["--threads", str(args.threads), "--ep", "cpu"]
    if args.memory_budget:
        command += ["--memory-budget", args.memory_budget]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="96,960,9600", help="arrival sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="rounds alternating inference and adapt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-budget", default="", help="--memory-budget for adapt (default: auto)")
    parser.add_argument("--warm", type=int, default=256, help="samples the state learned before each arrival")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--workdir", type=Path, help="where the bundle, data and states go (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-stream-", dir=args.workdir))
    try:
        bundle = bundle_224(work / "bundle")
        warm_data = write_arrival(work / "warm.npz", args.warm, seed=1)
        warm_state = work / "warm-state"
        run_child(adapt_command(args.python, bundle, warm_data, warm_state, args))
        rows = []
        for size in sizes:
            data = write_arrival(work / f"arrival-{size}.npz", size, seed=size)
            runs: dict[str, list[dict[str, float]]] = {"inference": [], "adapt": []}
            for _ in range(args.rounds):
                infer = [args.python, "-c", EXIT_IO + INFER, str(bundle), str(data), str(args.threads)]
                runs["inference"].append(run_child(infer))
                state = work / "state"
                shutil.rmtree(state, ignore_errors=True)
                shutil.copytree(warm_state, state)
                runs["adapt"].append(run_child(adapt_command(args.python, bundle, data, state, args)))
            rows.append(summarise(size, data.stat().st_size, runs))
            data.unlink()
            print(json.dumps(rows[-1]), flush=True)
        table = render(rows, args)
        print(table)
        if args.out:
            args.out.write_text(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarise(size: int, file_bytes: int, runs: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Medians over rounds; the throughput ratio is taken within each round."""
    ratios = [i["s"] / a["s"] for i, a in zip(runs["inference"], runs["adapt"], strict=True)]
    cpu_ratios = [i["cpu_s"] / a["cpu_s"] for i, a in zip(runs["inference"], runs["adapt"], strict=True)]

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    return {
        "samples": size,
        "file_mb": file_bytes / 2**20,
        "inference_s": med("inference", "s"),
        "adapt_s": med("adapt", "s"),
        "ratio": statistics.median(ratios),
        "cpu_ratio": statistics.median(cpu_ratios),
        "inference_rss_mb": med("inference", "rss_mb"),
        "adapt_rss_mb": med("adapt", "rss_mb"),
        "adapt_wchar_kib": med("adapt", "wchar") / 1024,
    }


def render(rows: list[dict[str, float]], args: argparse.Namespace) -> str:
    """The markdown table."""
    budget = args.memory_budget or "auto"
    out = [
        f"`tools/bench_stream.py --sizes {args.sizes} --rounds {args.rounds} --threads {args.threads}"
        + (f" --memory-budget {args.memory_budget}`" if args.memory_budget else "`")
        + f" ({os.cpu_count()} cores; adapt's memory budget {budget})",
        "",
        "| arrival (samples) | file | inference s | adapt s | throughput adapt/inference (wall) | (CPU time) "
        "| peak RSS inference | peak RSS adapt | adapt − inference | bytes adapt wrote |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['samples']:.0f} | {r['file_mb']:.0f} MiB | {r['inference_s']:.1f} | {r['adapt_s']:.1f} "
            f"| {r['ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['inference_rss_mb']:.0f} MiB | {r['adapt_rss_mb']:.0f} MiB "
            f"| {r['adapt_rss_mb'] - r['inference_rss_mb']:+.0f} MiB | {r['adapt_wchar_kib']:,.0f} KiB |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
