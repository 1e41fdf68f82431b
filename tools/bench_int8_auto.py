"""The default int8 bundle exported with ``--keep-float auto`` choosing by measured speed (issue 17).

Exports the EfficientNet-Lite0 digits classifier as ``tools/build_default_bundle.py`` builds
``artifacts/default-int8`` (calibrated on the demo stream, seed 0, ``--target-cpu vnni`` unless told), but with the
int8 speed timing on (``--int8-speed-rounds``, 3), so that auto times the candidates that agree and ships the
fastest; prints the search, each candidate's cosine and speed, the winner and why, and the export's CPU and wall
seconds. Then measure the bundle with ``python tools/bench_int8.py --int8 OUT``. (``--speed-rounds 0`` gives the
untimed choice, as the shipped bundle was made; compare their export seconds for the timing's cost.)

Needs the classifier ONNX that ``tools/build_default_bundle.py`` writes to ``build/`` (build extra), or
``--classifier``. Usage: ``python tools/bench_int8_auto.py --out OUT [--speed-rounds 3] [--target-cpu vnni]
[--json auto.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from build_default_bundle import CLASSIFIER, ROOT, export_default

from edgeft.bundle import sha256_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the int8 bundle to write (replaced)")
    parser.add_argument("--classifier", type=Path, default=CLASSIFIER, help="the classifier ONNX (build/...)")
    parser.add_argument("--speed-rounds", type=int, default=3, help="int8 speed rounds (3; 0: untimed choice)")
    parser.add_argument("--target-cpu", default="vnni", help="--target-cpu of the export (vnni, as shipped)")
    parser.add_argument("--json", type=Path, help="also write the manifest's quantization record here")
    args = parser.parse_args()
    if not args.classifier.exists():
        parser.error(f"{args.classifier} is missing: run tools/build_default_bundle.py first (build extra)")
    cpu, wall = time.process_time(), time.perf_counter()
    bundle = export_default(
        args.classifier,
        args.out,
        quantize="int8",
        calibration=ROOT / "artifacts" / "demo" / "stream",
        target_cpu=args.target_cpu,
        ort_artifacts=False,
        int8_speed_rounds=args.speed_rounds,
    )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    record = bundle.manifest.quantization
    layers = record["float_layers"]
    same = record["float_backbone"]["sha256"] == sha256_file(ROOT / "artifacts" / "default" / "backbone.onnx")
    print(f"export: {cpu:.0f} CPU s, {wall:.0f} s wall; float backbone is artifacts/default's: {same}")
    print(
        "search:",
        ", ".join(
            f"{t.get('calibration', 'minmax')} {t['float_layers']}: {t['mean_cosine']}" for t in layers["search"]
        ),
    )
    for candidate in layers.get("speed_choice", {}).get("candidates", []):
        print(
            f"candidate {candidate['calibration']} {candidate['float_layers']} float layers: cosine "
            f"{candidate['mean_cosine']}, {candidate['int8_over_float_cpu_time']}x by CPU time "
            f"{candidate['per_round_cpu_time']}, wall {candidate['int8_over_float_wall_time']}x"
            f"{' (chosen)' if candidate['chosen'] else ''}"
        )
    if "speed_choice" in layers:
        print("chosen:", layers["speed_choice"]["chosen_because"], f"on {layers['speed_choice']['cpu']}")
    print(f"shipped: {record['activations']}, {layers['count']} float layers, validation {record['validation']}")
    if args.json:
        args.json.write_text(json.dumps({"cpu_seconds": cpu, "wall_seconds": wall, "quantization": record}, indent=1))


if __name__ == "__main__":
    main()
