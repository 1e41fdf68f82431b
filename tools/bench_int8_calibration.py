"""int8 calibration methods × float first layers × weight formats: feature agreement and speed (issue 17).

Quantises ``artifacts/default``'s float backbone (EfficientNet-Lite0 digits) as the exporter does (ORT's
quant_pre_process + QDQ quantize_static, uint8 activations, symmetric per-channel int8 weights, int32 biases
repaired; the seed-0 split of the demo stream: 256 calibration scans, 256 held-out scans, never the test set),
calibrating the activations once per method (ORT's MinMax, Percentile at 99.999 % and 99.99 %, Entropy), then for
each float-layer count and weight format (``vnni``: 8-bit weights; ``avx2``: 7-bit, ORT's reduce_range) prints the
mean and min cosine of the int8 features of the held-out scans to the float ones. With ``--speed-rounds N`` it also
times each (float layers, format) backbone against the float one over the held-out scans (batch 64, 2 intra-op
threads, order alternating between rounds; CPU time, user + system of this process, and wall time; the
calibration method changes scales only, not the graph, so speed is measured on the MinMax models).

Needs onnxruntime >= 1.2x's ``calibration_cache_path`` (the dev venv's 1.32 has it; ORT 1.19's Percentile and
Entropy calibrators return garbage for a graph input, microsoft/onnxruntime#21922). The 7-bit format's cosine
holds on any CPU (BENCHMARKS.md), the 8-bit one on VNNI and arm64.
Usage: ``python tools/bench_int8_calibration.py [--keep-float 0,1,2,4,5,8] [--methods minmax,p99999,p9999,entropy]
[--speed-rounds 3] [--json calibration.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from edgeft.export import int8_agreement, quantize

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
FORMATS = {"vnni": False, "avx2": True}  # reduce_range
METHODS = {  # name: (ORT method, calibrator options)
    "minmax": ("MinMax", {}),
    "p99999": ("Percentile", {"percentile": 99.999}),
    "p9999": ("Percentile", {"percentile": 99.99}),
    "entropy": ("Entropy", {}),
}


def split() -> tuple[np.ndarray, np.ndarray]:
    """(calibration scans, held-out scans) as quantize_backbone splits the demo stream for seed 0."""
    x = np.concatenate([np.load(p)["x"] for p in sorted((ARTIFACTS / "demo" / "stream").glob("*.npz"))])
    x = x.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    n_held = max(1, round(len(order) * quantize.HELD_OUT_FRACTION))
    return x[order[n_held:][: quantize.MAX_CALIBRATION]], x[order[:n_held][: quantize.MAX_HELD_OUT]]


def calibrate(prepared: Path, calib: np.ndarray, methods: list[str], tmp: Path):  # noqa: ANN201
    """Yield (method, ORT calibration cache file) per method in turn (histograms collected once per ORT method)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrators: dict[str, object] = {}
    for name in methods:
        ort_method, options = METHODS[name]
        start = time.process_time()
        calibrator = calibrators.get(ort_method)
        if calibrator is None:
            calibrator = create_calibrator(
                prepared,
                list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                augmented_model_path=str(tmp / f"augmented-{ort_method}.onnx"),
                calibrate_method=getattr(CalibrationMethod, ort_method),
                extra_options=dict(options),
            )
            for first in range(0, len(calib), quantize.BATCH):  # one batch a call: ORT keeps a call's outputs
                calibrator.collect_data(quantize._Reader("image", calib[first : first + quantize.BATCH]))
            calibrators[ort_method] = calibrator
        if "percentile" in options:
            calibrator.collector.percentile = options["percentile"]
        save_tensors_data(calibrator.compute_data(), tmp / f"{name}.json")
        print(f"calibrated {name}: {time.process_time() - start:.0f} CPU s", flush=True)
        yield name, tmp / f"{name}.json"


def quantized(prepared: Path, model: onnx.ModelProto, nodes: tuple[str, ...], cache: Path, method: str, rr: bool):
    """The prepared backbone quantised from ``cache``'s ranges with ``nodes`` float, biases repaired."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out = cache.with_suffix(".onnx")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
        quantize_static(
            str(prepared),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=rr,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, METHODS[method][0]),
            nodes_to_exclude=list(nodes),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            calibration_cache_path=str(cache),
        )
    result = onnx.load(str(out))
    quantize.repair_int32_biases(result, model, quantize.REDUCED_WEIGHT_QMAX if rr else quantize.WEIGHT_QMAX)
    return result.SerializeToString()


def _session(model: str | bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def rates(sessions: dict[str, onnxruntime.InferenceSession], x: np.ndarray, rounds: int) -> dict[str, list]:
    """Per contender, per round: (samples per second, samples per CPU second), order alternating by round."""
    found: dict[str, list] = {name: [] for name in sessions}
    for r in range(rounds):
        for name in list(sessions) if r % 2 == 0 else list(reversed(sessions)):
            sessions[name].run(None, {"image": x[:64]})
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(x), 64):
                sessions[name].run(None, {"image": x[i : i + 64]})
            found[name].append((len(x) / (time.perf_counter() - start), len(x) / (time.process_time() - cpu)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-float", default="0,1,2,4,5,8", help="float layer counts (0,1,2,4,5,8)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"calibrations ({','.join(METHODS)})")
    parser.add_argument("--speed-rounds", type=int, default=0, help="speed rounds (0: none)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    counts = [int(k) for k in args.keep_float.split(",")]
    methods = args.methods.split(",")
    calib, held = split()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeft-int8-calibration-") as name:
        tmp = Path(name)
        backbone = ARTIFACTS / "default" / "backbone.onnx"
        model = quantize._prepare(backbone, tmp / "prepared.onnx", "backbone")
        candidates = quantize._candidates(model, "image", held[:1], "backbone")
        reference = int8_agreement.embed(str(backbone), "image", held)
        speed_models: dict[str, bytes] = {}
        for method, cache in calibrate(tmp / "prepared.onnx", calib, methods, tmp):
            for k in counts:
                for fmt, rr in FORMATS.items():
                    q = quantized(tmp / "prepared.onnx", model, candidates[k].nodes, cache, method, rr)
                    cosine = int8_agreement.cosines(reference, int8_agreement.embed(q, "image", held))
                    row = {
                        "method": method,
                        "float_layers": k,
                        "compute_share": round(candidates[k].compute_share, 4),
                        "format": fmt,
                        "mean_cosine": round(float(cosine.mean()), 4),
                        "min_cosine": round(float(cosine.min()), 4),
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    if method == methods[0] and args.speed_rounds:
                        speed_models[f"{fmt}-{k}"] = q
        if args.speed_rounds:
            sessions = {"float": _session(str(backbone))} | {n: _session(m) for n, m in speed_models.items()}
            found = rates(sessions, held, args.speed_rounds)
            for n in speed_models:
                wall = [a[0] / b[0] for a, b in zip(found[n], found["float"], strict=True)]
                cpu = [a[1] / b[1] for a, b in zip(found[n], found["float"], strict=True)]
                row = {
                    "speed": n,
                    "int8_over_float_cpu": round(statistics.median(cpu), 2),
                    "per_round_cpu": [round(v, 2) for v in cpu],
                    "int8_over_float_wall": round(statistics.median(wall), 2),
                    "per_round_wall": [round(v, 2) for v in wall],
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
