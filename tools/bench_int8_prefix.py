"""int8 backbones with 0, 1, 2, … float first layers: held-out feature agreement and speed (issue 9).

Exports the EfficientNet-Lite0 digits classifier as ``tools/build_default_bundle.py`` does, once per
``--keep-float`` value (calibrated on the demo stream, seed 0), and reports for each: the share of the compute
kept float, the export validation's mean cosine of int8 to float features on its 256 held-out stream scans, and
the backbone's inference throughput relative to the float backbone's (the stream's 1,257 scans, batch 64,
rounds alternating in order, median of per-round ratios). This is the table behind ``--keep-float auto``'s
choice in BENCHMARKS.md; the test scans are never used.

Needs the classifier ONNX that ``tools/build_default_bundle.py`` writes to ``build/`` (build extra). Usage:
``python tools/bench_int8_prefix.py [--keep-float 0,1,2,4,5,8] [--rounds 3] [--threads 2] [--json prefix.json]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import bench_int8
import numpy as np
from build_default_bundle import CLASSIFIER, export_default

from edgeft.bundle import Bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-float", default="0,1,2,4,5,8", help="float layer counts to export (0,1,2,4,5,8)")
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds (3)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (2)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not CLASSIFIER.exists():
        parser.error(f"{CLASSIFIER} is missing: run tools/build_default_bundle.py first (build extra)")
    counts = [int(k) for k in args.keep_float.split(",")]
    with tempfile.TemporaryDirectory(prefix="edgeft-int8-prefix-") as tmp:
        bundles: dict[str, Bundle] = {"float": export_default(CLASSIFIER, Path(tmp) / "float")}
        for k in counts:
            bundles[str(k)] = export_default(
                CLASSIFIER, Path(tmp) / f"int8-{k}", quantize="int8", calibration=bench_int8.STREAM, keep_float=k
            )
        manifest = bundles["float"].manifest
        chunks, _ = bench_int8.demo_data(manifest)
        x = np.concatenate([c.x for c in chunks]).astype(np.float32)
        ratios: dict[str, list[float]] = {str(k): [] for k in counts}
        for r in range(args.rounds):
            order = list(bundles) if r % 2 == 0 else list(reversed(bundles))
            rates = {name: bench_int8.inference_rate(bundles[name], x, args.threads) for name in order}
            for k in ratios:
                ratios[k].append(rates[k] / rates["float"])
        records = {k: bundles[str(k)].manifest.quantization for k in counts}
    rows = [
        {
            "keep_float": k,
            "compute_share": records[k]["float_layers"]["compute_share"],
            "mean_cosine": records[k]["validation"]["mean_cosine"],
            "int8_over_float_inference": round(statistics.median(ratios[str(k)]), 2),
            "per_round": [round(v, 2) for v in ratios[str(k)]],
        }
        for k in counts
    ]
    bench_int8.print_rows(rows, args.json)


if __name__ == "__main__":
    main()
