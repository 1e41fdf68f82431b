"""Static int8 quantisation of a bundle's frozen backbone, checked against the float backbone.

ONNX Runtime's ``quant_pre_process`` then ``quantize_static`` (QDQ, uint8 activations calibrated by MinMax or
Percentile (calibration), symmetric int8 weights per output channel) rewrite ``backbone.onnx``; the head and
training artifacts stay float. Part of the calibration data is held out: the float and int8 backbones embed it, a
better calibration or else the first weight layers kept float bring the features close (float_prefix), and the
export fails when the features still disagree (int8_agreement: mean cosine similarity, and a linear probe's
accuracy when labels are given). With ``--keep-float auto`` the candidates that agree are timed against the float
backbone on the export machine (int8_speed) and the fastest is shipped (speed_choice); the shipped one's speed is
recorded.
"""

from __future__ import annotations

import importlib.util
import operator
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnx import numpy_helper

from edgeft.bundle import FLOAT_BACKBONE_FILE, Manifest, sha256_file
from edgeft.common.int8_probe import cpu_family
from edgeft.data.readers import Samples, read_path
from edgeft.errors import EdgeftError
from edgeft.export import float_prefix, int8_speed, speed_choice
from edgeft.export.calibration import MINMAX, Calibration, RangeCache, usable
from edgeft.export.int8_agreement import compare_features, cosines, embed, write_probe

SCHEMES = ("int8",)
# The CPU the bundle is meant for. ORT's uint8×int8 kernels are exact on x86 with VNNI and on arm64; on x86 without
# VNNI they add pairs of products in saturating int16, which 7-bit weights (ORT's reduce_range) cannot overflow.
TARGET_CPUS = ("auto", "vnni", "arm64", "avx2")
REDUCED_RANGE_TARGETS = ("avx2",)
# --target-cpu auto: the export machine's own kind of CPU (common.int8_probe.cpu_family); an unknown one gets the
# 7-bit weights that hold on every kernel. (uint8 weights (U8U8) would hold everywhere with full 8 bits, but
# measured 0.37x the float backbone's speed on VNNI: BENCHMARKS.md.)
FAMILY_TARGETS = {"x86-exact": "vnni", "x86-saturating": "avx2", "arm64": "arm64"}
# Rounds of the int8-over-float speed measurement at export (int8_speed), which --keep-float auto chooses by
# (speed_choice); 0: not measured, auto keeps the fewest float layers, for byte-identical rebuilds.
SPEED_ROUNDS = 3
HELD_OUT_FRACTION = 0.25
MAX_CALIBRATION = 256
MAX_HELD_OUT = 256
MIN_SAMPLES = 8
BATCH = 16
# ORT 1.19 quantises a bias as round(bias / (input_scale * weight_scale)) cast to int32 with no range check; a
# channel with near-zero weights overflows ("invalid value encountered in cast") into garbage. Such channels are
# requantised with the smallest weight scale that keeps |quantised bias| near BIAS_LIMIT (headroom for the sums).
BIAS_LIMIT = 2**30
WEIGHT_QMAX = 127
REDUCED_WEIGHT_QMAX = 64  # ORT's symmetric 7-bit range: 255 * 64 * 2 = 32,640 fits int16


def check_request(
    scheme: str | None,
    calibration: object,
    keep_float: object = None,
    target_cpu: str | None = None,
    float_fallback: bool | None = None,
    speed_rounds: object = None,
) -> int | str:
    """Refuse an unknown scheme, a scheme without calibration data, calibration data, a number of float layers, a
    target CPU, a float fallback or speed rounds without a scheme, speed rounds that are not a count >= 0 (``"auto"``, the default, is ignored then), a ``keep_float``
    that is not a layer count and an unknown ``target_cpu``. Returns ``keep_float`` as quantize_backbone takes it
    (float_layers)."""
    if target_cpu is not None and target_cpu not in TARGET_CPUS:
        raise EdgeftError(f"unknown --target-cpu '{target_cpu}'; choose one of {', '.join(TARGET_CPUS)}")
    if scheme is None and target_cpu not in (None, "auto"):
        raise EdgeftError("--target-cpu is only used with --quantize int8")
    if scheme is None and float_fallback is not None:
        raise EdgeftError("--int8-fallback / --no-int8-fallback is only used with --quantize int8")
    if scheme is None and speed_rounds is not None:
        raise EdgeftError("--int8-speed-rounds is only used with --quantize int8")
    if speed_rounds is not None and (
        isinstance(speed_rounds, bool) or not isinstance(speed_rounds, int) or speed_rounds < 0
    ):
        raise EdgeftError(f"--int8-speed-rounds takes a whole number >= 0, not {speed_rounds!r}")
    if scheme is None:
        if calibration is not None:
            raise EdgeftError("calibration data is only used with --quantize int8")
        if float_layers(keep_float) != float_prefix.AUTO:
            raise EdgeftError("--keep-float N is only used with --quantize int8")
        return float_prefix.AUTO
    if scheme not in SCHEMES:
        raise EdgeftError(f"unknown quantisation '{scheme}'; choose one of {', '.join(SCHEMES)}")
    if importlib.util.find_spec("sympy") is None:
        raise EdgeftError("int8 export needs sympy (ORT's quantisation pre-processing): pip install 'edgeft[quantize]'")
    if calibration is None:
        raise EdgeftError(f"--quantize {scheme} needs --calibration DATA (samples like the ones the device will see)")
    return float_layers(keep_float)


def resolve_target(target_cpu: str | None) -> tuple[str, str]:
    """The concrete target (vnni, arm64 or avx2) for ``target_cpu`` (None: auto) and how it was chosen."""
    if target_cpu not in (None, "auto"):
        return target_cpu, "given"
    family = cpu_family()
    return FAMILY_TARGETS.get(family, "avx2"), f"auto: the export machine is {family}"


def float_layers(keep_float: object) -> int | str:
    """``keep_float`` as "auto" (also for None) or a whole number >= 0; EdgeftError otherwise."""
    if keep_float is None or (isinstance(keep_float, str) and keep_float == float_prefix.AUTO):
        return float_prefix.AUTO
    try:
        count = operator.index(keep_float)  # ints and numpy integers; not floats or strings
    except TypeError:
        count = -1
    if isinstance(keep_float, bool) or count < 0:
        raise EdgeftError(f"--keep-float takes '{float_prefix.AUTO}' or a number of layers >= 0, not {keep_float!r}")
    return count


def read_calibration(source: str | Path | np.ndarray | tuple[np.ndarray, np.ndarray], manifest: Manifest) -> Samples:
    """Calibration samples from a path (the formats ``adapt`` reads), an array ``x``, or ``(x, y)``."""
    if isinstance(source, (str, Path)):
        samples = read_path(source, manifest, need_labels=False)
        x = np.concatenate([s.x for s in samples])
        labelled = all(s.y is not None for s in samples)
        y = np.concatenate([np.asarray(s.y).astype(str) for s in samples]) if labelled else None
        origin = str(source)
    elif isinstance(source, tuple):
        x, y, origin = np.asarray(source[0]), np.asarray(source[1]), "calibration arrays"
    else:
        x, y, origin = np.asarray(source), None, "calibration array"
    expected = manifest.input.shape[1:]
    if x.ndim != len(expected) + 1 or any(
        isinstance(e, int) and e != g for e, g in zip(expected, x.shape[1:], strict=True)
    ):
        raise EdgeftError(
            f"{origin}: calibration inputs have shape {list(x.shape[1:])}, the backbone expects {expected}"
        )
    if len(x) < MIN_SAMPLES:
        raise EdgeftError(f"{origin}: {len(x)} calibration samples; int8 calibration needs at least {MIN_SAMPLES}")
    if y is not None and len(y) != len(x):
        raise EdgeftError(f"{origin}: {len(y)} calibration labels for {len(x)} samples")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise EdgeftError(f"{origin}: calibration inputs have dtype {x.dtype}, expected real numbers")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise EdgeftError(f"{origin}: calibration inputs contain NaN or infinite values")
    return Samples(x, y, origin)


def quantize_backbone(
    backbone: Path,
    input_name: str,
    calibration: Samples,
    seed: int,
    source: str,
    keep_float: int | str = float_prefix.AUTO,
    target_cpu: str | None = None,
    float_fallback: bool = True,
    speed_rounds: int = SPEED_ROUNDS,
) -> dict[str, Any]:
    """Replace the float ``backbone`` file by its int8 version; return the manifest's ``quantization`` record.

    ``keep_float`` (as check_request returns it): how many weight layers from the input stay float (0: all int8;
    fewer than all), or ``"auto"``: as few as bring the held-out features' mean cosine to
    float_prefix.TARGET_MEAN_COSINE within MAX_FLOAT_SHARE of the compute, trying a better calibration before more
    float layers (calibration.AUTO_CALIBRATIONS, float_prefix.search_calibrations; a fixed number uses MinMax). Raises
    EdgeftError (naming ``source``, the original model) when ORT cannot quantise the graph, the graph has no weight
    layer, or ``keep_float`` would leave none int8; or (naming the calibration data) when the int8 features
    disagree with the float ones. ``target_cpu`` (TARGET_CPUS; None: auto, resolve_target) chooses full 8-bit
    or 7-bit weights. The int8
    probe (PROBE_FILE) is written beside ``backbone``, and with ``float_fallback`` the float backbone too
    (FLOAT_BACKBONE_FILE), for devices whose int8 kernels fail the probe. ``speed_rounds`` > 0 times the int8
    backbone against the float one on the held-out samples (int8_speed) for the record's ``speed``; with
    ``"auto"`` it times every pair tried that reaches the search's target (at most speed_choice.MAX_CANDIDATES)
    and ships the fastest (speed_choice); 0 keeps the search's own choice, untimed. Warns when the shipped
    backbone ran slower than the float one.
    """
    order = np.random.default_rng(seed).permutation(len(calibration.x))
    n_held = max(1, round(len(order) * HELD_OUT_FRACTION))
    held, calib = order[:n_held][:MAX_HELD_OUT], order[n_held:][:MAX_CALIBRATION]
    target, target_reason = resolve_target(target_cpu)
    reduce_range = target in REDUCED_RANGE_TARGETS
    qmax = REDUCED_WEIGHT_QMAX if reduce_range else WEIGHT_QMAX
    float_bytes, float_sha = backbone.stat().st_size, sha256_file(backbone)
    reference = embed(str(backbone), input_name, calibration.x[held])
    with tempfile.TemporaryDirectory(prefix="edgeft-quantize-") as tmp:
        prepared_path = Path(tmp) / "prepared.onnx"
        prepared = _prepare(backbone, prepared_path, source)
        candidates = _candidates(prepared, input_name, calibration.x[:1], source)
        ranges = RangeCache(
            prepared_path, Path(tmp), lambda part: _Reader(input_name, calibration.x[calib][part]), len(calib)
        )
        builds = _Builds(
            _BuildInputs(
                folder=Path(tmp),
                source=source,
                prepared_path=prepared_path,
                prepared=prepared,
                input_name=input_name,
                reduce_range=reduce_range,
                qmax=qmax,
                ranges=ranges,
                calibration_x=calibration.x[calib],
                held_x=calibration.x[held],
                reference=reference,
            )
        )
        if isinstance(keep_float, int):
            method, chosen, trace = MINMAX, _fixed_prefix(candidates, keep_float, source), []
            how = f"--keep-float {keep_float}"
        else:
            affordable = [p for p in candidates if p.compute_share <= float_prefix.MAX_FLOAT_SHARE]
            methods = usable()
            method, chosen, trace, goal = float_prefix.search_calibrations(affordable, methods, builds.cosine)
            for entry in trace:  # entries name their calibration where several were tried
                index = entry.pop("calibration")
                if len(methods) > 1:
                    entry["calibration"] = methods[index].name
            trace = [t for t in trace if t.get("calibration") not in builds.failed]
            how = (
                f"--keep-float auto tried {', '.join(_tried(t) for t in trace)} float layers, at most "
                f"{float_prefix.MAX_FLOAT_SHARE:.0%} of the compute; --keep-float N sets the number"
            )
        timed: dict[str, Any] = {}
        if isinstance(keep_float, str) and speed_rounds:
            method, chosen, timed = _timed_choice(
                builds, backbone, methods, affordable, (method, chosen), goal, speed_rounds
            )
        quantized, repaired = builds.model(method, chosen)
    chosen_features = builds.features[method.name, chosen.layers]
    kept = f"the first {_layers(chosen.layers)} float" if chosen.layers else "every weight layer int8"
    agreement = compare_features(reference, chosen_features, calibration, held, f"with {kept} ({how})")
    fallback = {"file": FLOAT_BACKBONE_FILE} if float_fallback else {}
    if float_fallback:
        shutil.copyfile(backbone, backbone.parent / FLOAT_BACKBONE_FILE)
    if timed:
        speed = {"speed": timed["speed"]}
    elif speed_rounds:
        speed = {
            "speed": int8_speed.measure(
                backbone, quantized.SerializeToString(), input_name, calibration.x[held], speed_rounds
            )
        }
    else:
        speed = {}
    if speed and speed["speed"]["int8_over_float_cpu_time"] < 1.0:
        warnings.warn(
            f"{source}: the int8 backbone ran at {speed['speed']['int8_over_float_cpu_time']}x the float backbone's "
            f"speed on this machine ({speed['speed']['cpu']}), slower than float; the device's CPU may differ "
            "(time it there), or export without --quantize",
            stacklevel=2,
        )
    onnx.save(quantized, str(backbone))
    probe = write_probe(backbone.parent, calibration.x[held], reference, chosen_features)
    return {
        "scheme": "int8",
        "tool": f"onnxruntime {onnxruntime.__version__} quant_pre_process + quantize_static",
        "format": "QDQ",
        "activations": f"uint8, per tensor, asymmetric, {method.describe()}",
        "weights": f"int8, per output channel, symmetric{', 7-bit range' if reduce_range else ''}",
        "target_cpu": target,
        "target_cpu_chosen": target_reason,
        "calibration": {"source": Path(calibration.origin).name, "samples": int(len(calib)), "seed": seed},
        "float_layers": {
            "count": chosen.layers,
            "chosen": "fixed" if isinstance(keep_float, int) else "auto",
            "weight_layers": list(chosen.weight_layers),
            "compute_share": round(chosen.compute_share, 4),
            "target_mean_cosine": float_prefix.TARGET_MEAN_COSINE,
            "max_compute_share": float_prefix.MAX_FLOAT_SHARE,
            "search": trace,
            **({"failed_calibrations": builds.failed} if builds.failed else {}),
            **({"speed_choice": timed["speed_choice"]} if timed else {}),
        },
        "repaired_bias_channels": repaired,
        "float_backbone": {"bytes": float_bytes, "sha256": float_sha, **fallback},
        "backbone_bytes": backbone.stat().st_size,
        "validation": agreement,
        "probe": probe,
        **speed,
    }


@dataclass(frozen=True)
class _BuildInputs:
    """What every int8 candidate of one export is built from and checked against."""

    folder: Path  # the export's work folder
    source: str  # the original model, named in errors
    prepared_path: Path  # the float backbone after quant_pre_process
    prepared: onnx.ModelProto
    input_name: str
    reduce_range: bool  # 7-bit weights (target_cpu avx2)
    qmax: int  # the weights' largest quantised value, for repair_int32_biases
    ranges: RangeCache  # the calibrations' activation ranges
    calibration_x: np.ndarray
    held_x: np.ndarray  # the held-out samples every candidate embeds
    reference: np.ndarray  # the float backbone's features of held_x


class _Builds:
    """The int8 candidates of one prepared backbone: each (calibration, float prefix) quantised with that
    calibration's ranges, its int32 biases repaired and the held-out samples embedded; keeps every candidate's
    held-out features and mean cosine against the float features, and the models asked for by ``model``."""

    def __init__(self, inputs: _BuildInputs) -> None:
        self.inputs = inputs
        self.features: dict[tuple[str, int], np.ndarray] = {}
        self.scores: dict[tuple[str, int], float] = {}  # mean cosine of every (calibration, float layers) tried
        self.failed: dict[str, str] = {}  # calibrations after the first that onnxruntime could not run: skipped
        self._last: tuple[tuple[str, int], onnx.ModelProto, dict[str, int]] | None = None
        self._kept: dict[tuple[str, int], tuple[onnx.ModelProto, dict[str, int]]] = {}

    def model(self, method: Calibration, prefix: float_prefix.Prefix) -> tuple[onnx.ModelProto, dict[str, int]]:
        """The candidate's int8 model and its repaired bias channels (built unless it was the last one built), kept
        for later calls."""
        key = (method.name, prefix.layers)
        if key not in self._kept:
            if self._last is None or self._last[0] != key:
                self._build(method, prefix)
            assert self._last is not None
            self._kept[key] = self._last[1], self._last[2]
        return self._kept[key]

    def cosine(self, method: Calibration, prefix: float_prefix.Prefix) -> float:
        """The candidate's held-out mean cosine; -1 (never chosen) for a calibration after MinMax that ORT fails."""
        if method.name in self.failed:
            return -1.0
        try:
            self._build(method, prefix)
        except EdgeftError as exc:
            if method == MINMAX:
                raise
            self.failed[method.name] = str(exc)
            return -1.0
        key = (method.name, prefix.layers)
        self.scores[key] = float(cosines(self.inputs.reference, self.features[key]).mean())
        return self.scores[key]

    def _build(self, method: Calibration, prefix: float_prefix.Prefix) -> None:
        given = self.inputs
        model = _quantize(
            given.prepared_path,
            given.input_name,
            given.calibration_x,
            prefix.nodes,
            given.folder,
            given.source,
            given.reduce_range,
            method,
            given.ranges,
        )
        key = (method.name, prefix.layers)
        self._last = key, model, repair_int32_biases(model, given.prepared, given.qmax)
        self.features[key] = embed(model.SerializeToString(), given.input_name, given.held_x)


def _timed_choice(
    builds: _Builds,
    backbone: Path,
    methods: list[Calibration],
    prefixes: list[float_prefix.Prefix],
    searched: tuple[Calibration, float_prefix.Prefix],
    goal: float,
    speed_rounds: int,
) -> tuple[Calibration, float_prefix.Prefix, dict[str, Any]]:
    """The search's choice and the other candidates tried that reach its ``goal`` (speed_choice.contenders), each
    timed against the float ``backbone``: the fastest (speed_choice.choose), and its speed and choice records."""
    names = [m.name for m in methods]
    order = sorted(builds.scores, key=lambda k: (k[1], names.index(k[0])))
    keys = speed_choice.contenders(builds.scores, (searched[0].name, searched[1].layers), goal, order)
    labels = {k: f"{k[0]}, {_layers(k[1])} float" for k in keys}
    serialized = {
        labels[k]: builds.model(methods[names.index(k[0])], prefixes[k[1]])[0].SerializeToString() for k in keys
    }
    measured = int8_speed.measure_candidates(
        backbone, serialized, builds.inputs.input_name, builds.inputs.held_x, speed_rounds
    )
    contenders = [
        speed_choice.Contender(labels[k], builds.scores[k], measured[labels[k]]["int8_over_float_cpu_time"])
        for k in keys
    ]
    winner, why = speed_choice.choose(contenders, goal)
    name, layers = keys[winner]
    record = _speed_choice_record(keys, builds.scores, prefixes, measured, labels, winner, why, goal)
    return (
        methods[names.index(name)],
        prefixes[layers],
        {"speed": measured[labels[name, layers]], "speed_choice": record},
    )


def _speed_choice_record(
    keys: list[tuple[str, int]],
    scores: dict[tuple[str, int], float],
    prefixes: list[float_prefix.Prefix],
    measured: dict[str, dict[str, Any]],
    labels: dict[tuple[str, int], str],
    winner: int,
    why: str,
    goal: float,
) -> dict[str, Any]:
    """The manifest's ``float_layers.speed_choice``: each timed candidate's agreement and speed, and the winner."""
    first = measured[labels[keys[0]]]
    return {
        "target_mean_cosine": round(goal, 5),
        "candidates": [
            {
                "calibration": name,
                "float_layers": layers,
                "compute_share": round(prefixes[layers].compute_share, 4),
                "mean_cosine": round(scores[name, layers], 5),
                **{k: measured[labels[name, layers]][k] for k in _SPEED_FIELDS},
                "chosen": index == winner,
            }
            for index, (name, layers) in enumerate(keys)
        ],
        "chosen_because": why,
        "rounds": first["rounds"],
        "samples": first["samples"],
        "cpu": first["cpu"],
        "max_candidates": speed_choice.MAX_CANDIDATES,
        "speed_tie": speed_choice.SPEED_TIE,
        "what": "int8 backbones reaching the target, each timed against the float one on the export machine "
        "(cpu); the device's CPU may rank them otherwise",
    }


_SPEED_FIELDS = ("int8_over_float_cpu_time", "int8_over_float_wall_time", "per_round_cpu_time")


def _tried(entry: dict[str, Any]) -> str:
    return f"{entry['float_layers']}{' (' + entry['calibration'] + ')' if 'calibration' in entry else ''}"


def _prepare(backbone: Path, prepared_path: Path, source: str) -> onnx.ModelProto:
    """ORT's quant_pre_process (shape inference, graph optimisation), with every node named; saved and returned."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(backbone), str(prepared_path))
    except Exception as exc:  # onnxruntime's quantisation tools raise many exception types
        raise EdgeftError(f"{source}: onnxruntime could not prepare the frozen part: {_first_line(exc)}") from None
    prepared = onnx.load(str(prepared_path))
    float_prefix.name_nodes(prepared)
    onnx.save(prepared, str(prepared_path))
    return prepared


def _quantize(
    prepared_path: Path,
    input_name: str,
    x: np.ndarray,
    keep_float: tuple[str, ...],
    tmp: Path,
    source: str,
    reduce_range: bool,
    method: Calibration = MINMAX,
    ranges: RangeCache | None = None,
) -> onnx.ModelProto:
    """ORT's quantize_static on the prepared graph, leaving the ``keep_float`` nodes float (7-bit weights with
    ``reduce_range``), activations calibrated by ``method`` (its ranges from ``ranges`` where this onnxruntime
    reuses them, calibration.ranges_reusable)."""
    quantized_path = tmp / "int8.onnx"
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
            cache = ranges.file(method) if ranges is not None else None
            quantize_static(
                str(prepared_path),
                str(quantized_path),
                None if cache else _Reader(input_name, x),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method.method),
                nodes_to_exclude=list(keep_float),
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                **({"calibration_cache_path": str(cache)} if cache else {}),
            )
    except Exception as exc:  # onnxruntime's quantisation tools raise many exception types
        raise EdgeftError(f"{source}: onnxruntime could not quantise the frozen part: {_first_line(exc)}") from None
    return onnx.load(str(quantized_path))


def _candidates(
    prepared: onnx.ModelProto, input_name: str, sample: np.ndarray, source: str
) -> list[float_prefix.Prefix]:
    """float_prefix.prefixes of the prepared graph; EdgeftError when it has no weight layer to quantise."""
    try:
        shapes = float_prefix.output_shapes(prepared, input_name, sample)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EdgeftError(f"{source}: could not run the prepared frozen part: {_first_line(exc)}") from None
    candidates = float_prefix.prefixes(prepared, shapes)
    if len(candidates) == 1:
        raise EdgeftError(
            f"{source}: the frozen part has no layer with weights (Conv, Gemm or MatMul with a constant weight) to "
            "quantise; export it without --quantize"
        )
    return candidates


def _fixed_prefix(candidates: list[float_prefix.Prefix], keep_float: int, source: str) -> float_prefix.Prefix:
    """The prefix of ``keep_float`` weight layers; EdgeftError unless some weight layer stays int8."""
    layers = len(candidates) - 1
    if keep_float >= layers:
        raise EdgeftError(
            f"{source}: --keep-float {keep_float} would leave nothing int8: the frozen part has {_layers(layers)} "
            f"(Conv, Gemm or MatMul with a constant weight, after ORT's graph optimisation); keep at most {layers - 1}"
        )
    return candidates[keep_float]


def _layers(count: int) -> str:
    return f"{count} weight layer{'' if count == 1 else 's'}"


class _Reader:
    """ORT's CalibrationDataReader protocol over an array, BATCH samples at a time."""

    def __init__(self, input_name: str, x: np.ndarray) -> None:
        self._batches = iter([{input_name: x[i : i + BATCH]} for i in range(0, len(x), BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def repair_int32_biases(
    quantized: onnx.ModelProto, prepared: onnx.ModelProto, qmax: int = WEIGHT_QMAX
) -> dict[str, int]:
    """Requantise the weight channels whose int32 bias does not fit; return {node name: channels repaired}.

    A repaired channel gets weight scale ``|bias| / (input_scale * BIAS_LIMIT)``: its bias becomes exact and its
    (near-zero) weights are rounded on that coarser grid, within ±``qmax``. ``quantized`` is changed in place.
    """
    inits = {i.name: i for i in quantized.graph.initializer}
    producer = {o: n for n in quantized.graph.node for o in n.output}
    floats = {n.name: n for n in prepared.graph.node if n.name}
    float_inits = {i.name: i for i in prepared.graph.initializer}
    repaired: dict[str, int] = {}
    for node in quantized.graph.node:
        original = floats.get(node.name)
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or original is None:
            continue
        x_dq, w_dq, b_dq = (producer.get(t) for t in node.input[:3])
        if not all(d is not None and d.op_type == "DequantizeLinear" for d in (x_dq, w_dq, b_dq)):
            continue
        q_bias = inits[b_dq.input[0]]
        if q_bias.data_type != onnx.TensorProto.INT32 or original.input[2] not in float_inits:
            continue
        bias = numpy_helper.to_array(float_inits[original.input[2]]).astype(np.float64)
        input_scale = float(numpy_helper.to_array(inits[x_dq.input[1]]))
        w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float64)
        needed = np.abs(bias) / (input_scale * BIAS_LIMIT)
        bad = needed > w_scale
        if not bad.any():
            continue
        new_scale = np.maximum(w_scale, needed).astype(np.float32)
        weight = numpy_helper.to_array(float_inits[original.input[1]])
        axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1) % weight.ndim
        grid = new_scale.reshape([-1 if d == axis else 1 for d in range(weight.ndim)])
        q_weight = np.clip(np.rint(weight / grid), -qmax, qmax).astype(np.int8)
        bias_scale = (input_scale * new_scale.astype(np.float64)).astype(np.float32)
        q_bias_values = np.rint(bias / bias_scale).astype(np.int32)
        _replace(inits[w_dq.input[0]], q_weight)
        _replace(inits[w_dq.input[1]], new_scale)
        _replace(q_bias, q_bias_values)
        _replace(inits[b_dq.input[1]], bias_scale)
        repaired[node.name] = int(bad.sum())
    return repaired


def _replace(tensor: onnx.TensorProto, values: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(values.reshape(tuple(tensor.dims)), tensor.name))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
