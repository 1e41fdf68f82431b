"""int8 weight formats on each kind of CPU: feature agreement with the float backbone, and speed (issue 17).

``build`` quantises the default bundle's float backbone (``artifacts/default``, EfficientNet-Lite0 digits) as the
exporter does (ORT's quant_pre_process + QDQ quantize_static, uint8 activations by MinMax on the 256 calibration
scans of the shipped export's seed-0 split, per-channel weights, the first ``--keep-float`` weight layers float,
int32 biases repaired), once per weight format:

- ``u8s8``: int8 weights, full 8 bits (``--target-cpu vnni`` / ``arm64``);
- ``u8s8rr``: int8 weights in ORT's 7-bit ``reduce_range`` (``--target-cpu avx2``);
- ``u8u8``: uint8 weights, asymmetric (ORT's other advice for x86 without VNNI; not offered by the exporter;
  its biases are left as ORT writes them).

``measure`` runs each backbone and the float one on the first ``--samples`` demo test scans and prints the mean
and min cosine of their features, with the CPU family the kernel probe finds; ``--speed-rounds N`` also times each
backbone on 256 test scans (batch 64, 2 intra-op threads, order alternating by round, median of per-round ratios to
the float backbone). ``measure`` needs numpy, onnxruntime and edgeft importable (``PYTHONPATH=.``), so it runs
under ``qemu-x86_64-static -cpu Haswell`` and in the arm64 root too (BENCHMARKS.md).
Usage: ``python tools/bench_int8_formats.py build [--keep-float 5]`` then
``python tools/bench_int8_formats.py measure [--samples 16] [--speed-rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
OUT = ROOT / "build" / "int8-formats"
FORMATS = ("u8s8", "u8s8rr", "u8u8")


def build(keep_float: int) -> None:
    """Write OUT/FORMAT.onnx for every format."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgeft.export import quantize

    x = np.concatenate([np.load(p)["x"] for p in sorted((ARTIFACTS / "demo" / "stream").glob("*.npz"))])
    x = x.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))  # quantize_backbone's split for seed 0
    calibration = x[order[round(len(order) * quantize.HELD_OUT_FRACTION) :][: quantize.MAX_CALIBRATION]]
    OUT.mkdir(parents=True, exist_ok=True)
    prepared = quantize._prepare(ARTIFACTS / "default" / "backbone.onnx", OUT / "prepared.onnx", "backbone")
    prefix = quantize._candidates(prepared, "image", x[:1], "backbone")[keep_float]
    settings = {
        "u8s8": (QuantType.QInt8, False, True, quantize.WEIGHT_QMAX),
        "u8s8rr": (QuantType.QInt8, True, True, quantize.REDUCED_WEIGHT_QMAX),
        "u8u8": (QuantType.QUInt8, False, False, None),
    }
    for name, (weight_type, reduce_range, symmetric, qmax) in settings.items():
        target = OUT / f"{name}.onnx"
        quantize_static(
            str(OUT / "prepared.onnx"),
            str(target),
            quantize._Reader("image", calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=weight_type,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(prefix.nodes),
            extra_options={"WeightSymmetric": symmetric, "ActivationSymmetric": False},
        )
        model = onnx.load(str(target))
        if qmax is not None:
            quantize.repair_int32_biases(model, prepared, qmax)
        onnx.save(model, str(target))
        print(f"wrote {target} ({prefix.layers} float weight layers)", flush=True)


def _session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(samples: int, speed_rounds: int) -> None:
    """Print the cosine of each format's features to the float ones here (and their speed ratios)."""
    from edgeft.common.int8_probe import cpu_family

    test = np.load(ARTIFACTS / "demo" / "test.npz")["x"].astype(np.float32)
    paths = {"float": ARTIFACTS / "default" / "backbone.onnx", **{f: OUT / f"{f}.onnx" for f in FORMATS}}
    sessions = {name: _session(path) for name, path in paths.items()}
    x = test[:samples]
    features = {
        name: np.concatenate([s.run(None, {"image": x[i : i + 16]})[0] for i in range(0, len(x), 16)])
        for name, s in sessions.items()
    }
    reference = features["float"]
    print(f"cpu {cpu_family()}, onnxruntime {onnxruntime.__version__}, {samples} test scans")
    for name in FORMATS:
        f = features[name]
        cosine = (reference * f).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(f, axis=1)
        print(f"{name:8s} cosine mean {cosine.mean():.4f} min {cosine.min():.4f}", flush=True)
    if not speed_rounds:
        return
    x = test[:256]
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(speed_rounds):
        for name in list(paths) if r % 2 == 0 else list(reversed(paths)):
            sessions[name].run(None, {"image": x[:64]})
            start = time.perf_counter()
            for i in range(0, len(x), 64):
                sessions[name].run(None, {"image": x[i : i + 64]})
            rates[name].append(len(x) / (time.perf_counter() - start))
    for name in FORMATS:
        ratios = [a / b for a, b in zip(rates[name], rates["float"], strict=True)]
        rounded = [round(v, 2) for v in ratios]
        print(f"{name:8s} inference {statistics.median(ratios):.2f}x the float backbone's (per round {rounded})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("build", "measure"))
    parser.add_argument("--keep-float", type=int, default=5, help="build: leading weight layers kept float (5)")
    parser.add_argument("--samples", type=int, default=16, help="measure: test scans compared (16)")
    parser.add_argument("--speed-rounds", type=int, default=0, help="measure: speed rounds (0: none)")
    args = parser.parse_args()
    if args.step == "build":
        build(args.keep_float)
    else:
        measure(args.samples, args.speed_rounds)


if __name__ == "__main__":
    main()
