"""End-to-end check of an installed edgeft on this platform, through the CLI as a user runs it.

Exports the tests' tiny ONNX classifier (portable train step only), adapts it on generated data, predicts,
writes the merged inference model and runs it in plain onnxruntime; fails unless the head learned (held-out
accuracy >= 0.8) and the merged model agrees with ``predict``. Prints the platform, the onnxruntime version and
the figures. Used by ``.ci/foreign.sh`` in the emulated arm64 root and the Python 3.13 root.
Usage: ``python tools/platform_smoke.py WORKDIR``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import CLASSES, make_dataset  # noqa: E402
from tiny_models import classifier, save  # noqa: E402


def edgeft(*args: str) -> str:
    """Run the installed ``edgeft`` command; return its standard output, or exit with its error."""
    done = subprocess.run(["edgeft", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"edgeft {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def main() -> None:
    import onnxruntime

    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model = save(classifier(), work / "tiny.onnx")
    x, y = make_dataset(300, seed=0)
    names = np.array(CLASSES)
    np.savez(work / "train.npz", x=x[:200], y=names[y[:200]])
    np.savez(work / "test.npz", x=x[200:], y=names[y[200:]])
    edgeft("export", str(model), "--out", str(work / "bundle"), "--classes", ",".join(CLASSES), "--lr", "0.05")
    info = json.loads(edgeft("info", str(work / "bundle"), "--json"))
    adapt = json.loads(
        edgeft(
            "adapt",
            str(work / "bundle"),
            "--data",
            str(work / "train.npz"),
            "-s",
            str(work / "state"),
            "--eval",
            str(work / "test.npz"),
            "--json",
        )
    )
    predictions = json.loads(
        edgeft("predict", str(work / "bundle"), str(work / "test.npz"), "-s", str(work / "state"), "--json")
    )
    edgeft("export-inference", str(work / "bundle"), "-s", str(work / "state"), "--out", str(work / "merged.onnx"))
    session = onnxruntime.InferenceSession(str(work / "merged.onnx"), providers=["CPUExecutionProvider"])
    merged = session.run(None, {info["input"]["name"]: x[200:]})[1].argmax(axis=1)
    accuracy = float((merged == y[200:]).mean())
    predicted = [row["label"] for row in predictions["predictions"]]
    agree = float(np.mean([p == names[m] for p, m in zip(predicted, merged, strict=True)]))
    result = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "trainers": info["head"]["trainers"],
        "trainer": adapt["trainer"],
        "accuracy_after": adapt["accuracy_after"],
        "merged_accuracy": accuracy,
        "predict_agrees_with_merged": agree,
        "seconds": round(time.monotonic() - started, 1),
    }
    print("PLATFORM_SMOKE " + json.dumps(result))
    if accuracy < 0.8 or agree < 1.0:
        sys.exit(f"the head did not learn on this platform: {result}")


if __name__ == "__main__":
    main()
