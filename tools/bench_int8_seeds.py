"""int8 against float over export seeds: does the shipped int8 bundle's accuracy hold beyond seed 0? (issue 9)

For each seed, exports the EfficientNet-Lite0 digits classifier twice as ``tools/build_default_bundle.py`` does
(float, and ``quantize="int8"`` calibrated on the demo stream with ``keep_float="auto"``). The seed sets the
calibration / held-out split and the new head's initial weights, so both bundles of a seed share their head.
Then runs the main job on each (as ``tools/bench_int8.py`` does, guard on) and prints the test accuracies, the
number of float layers the search kept, and the held-out cosine. Untimed.

Needs the classifier ONNX that ``tools/build_default_bundle.py`` writes to ``build/`` (build extra), and
scikit-learn (dev extra). Usage: ``python tools/bench_int8_seeds.py [--seeds 1,2,3] [--threads 2] [--json seeds.json]``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bench_int8
from build_default_bundle import CLASSIFIER, export_default

from edgeft.bundle import Bundle


def main_job(bundle: Bundle, threads: int) -> float:
    """Test accuracy after the five demo chunks, one ``learn`` each."""
    chunks, test = bench_int8.demo_data(bundle.manifest)
    return bench_int8.adapt(bundle, chunks, test, threads)[1]


def rows(seeds: list[int], threads: int) -> Iterator[dict]:
    """One result row per seed, as each is measured."""
    with tempfile.TemporaryDirectory(prefix="edgeft-int8-seeds-") as tmp:
        for seed in seeds:
            float_bundle = export_default(CLASSIFIER, Path(tmp) / f"float{seed}", seed=seed)
            int8_bundle = export_default(
                CLASSIFIER, Path(tmp) / f"int8{seed}", seed=seed, quantize="int8", calibration=bench_int8.STREAM
            )
            record = int8_bundle.manifest.quantization
            yield {
                "seed": seed,
                "float": round(main_job(float_bundle, threads), 4),
                "int8": round(main_job(int8_bundle, threads), 4),
                "float_layers": record["float_layers"]["count"],
                "mean_cosine": record["validation"]["mean_cosine"],
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="export seeds, comma-separated (1,2,3)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (2)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not CLASSIFIER.exists():
        parser.error(f"{CLASSIFIER} is missing: run tools/build_default_bundle.py first (build extra)")
    bench_int8.print_rows(rows([int(s) for s in args.seeds.split(",")], args.threads), args.json)


if __name__ == "__main__":
    main()
