"""``export_bundle``: pretrained ONNX classifier in, validated edgeft bundle out."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime

from edgeft import __version__
from edgeft.bundle import (
    BACKBONE_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    INITIAL_HEAD_FILE,
    MANIFEST_FILE,
    TRAIN_DIR,
    TRAIN_STEP_FILE,
    Bundle,
    Defaults,
    HeadInfo,
    Manifest,
    Preprocessing,
    TensorSpec,
    hash_tree,
    sha256_file,
)
from edgeft.common.atomic import fsync_directory, fsync_tree, make_directory
from edgeft.errors import EdgeftError
from edgeft.export import head as head_graph
from edgeft.export.artifacts import Training, check_artifacts_run, generate_head_artifacts, ort_training_installed
from edgeft.export.body import build_body
from edgeft.export.graph import is_channels_last, real_inputs
from edgeft.export.pooling import Pooling, choose_pooling, numpy_pool
from edgeft.export.quantize import check_request, quantize_backbone, read_calibration
from edgeft.export.sources import load_onnx
from edgeft.export.surgery import (
    HeadCut,
    cut_at,
    extract_backbone,
    find_head,
    freeze_line,
    remove_layers,
    with_extra_outputs,
)
from edgeft.export.torch_source import torch_to_onnx
from edgeft.export.train_step import Optimizer, build_train_step, check_train_step
from edgeft.head_state import HeadState

# The backbone must reproduce the original graph's tensor at the cut within this tolerance
# (numpy.allclose semantics: |backbone - original| <= ATOL + RTOL * |original|).
CUT_ATOL = 1e-5
CUT_RTOL = 1e-4
# Unfrozen layers and a kept original head are recomputed in another order of operations: a looser tolerance.
LOGITS_ATOL = 1e-4
LOGITS_RTOL = 1e-3
VALIDATION_BATCH = 2
TASK_LOSSES = {"classification": ("cross_entropy",), "multilabel": ("bce_with_logits",), "regression": ("mse", "l1")}

_ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: "float32"}


def export_bundle(
    model: str | Path | Any,
    out: str | Path,
    *,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    max_classes: int | None = None,
    cut: str | None = None,
    remove_layers: int | None = None,
    output: str | None = None,
    input_shape: Sequence[int] | None = None,
    example_input: Any = None,
    pool: str | None = None,
    head: str = "linear",
    activation: str = "relu",
    dropout: float = 0.0,
    unfreeze_from: str | None = None,
    unfreeze_last: int | None = None,
    keep_head: bool = False,
    task: str = "classification",
    loss: str | None = None,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    ort_artifacts: bool | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    defaults: Defaults | None = None,
    seed: int = 0,
    quantize: str | None = None,
    calibration: str | Path | np.ndarray | tuple[np.ndarray, np.ndarray] | None = None,
    keep_float: int | str | None = None,
    target_cpu: str | None = None,
    float_fallback: bool | None = None,
    force: bool = False,
) -> Bundle:
    """Cut the head off ``model`` (an ONNX file, or a torch.nn.Module with ``example_input``), attach a new
    trainable head, validate everything against the original, and write the bundle.

    Where to cut: found automatically, ``cut`` (a tensor name) or ``remove_layers`` (layers with weights, counted
    back from ``output``). ``pool`` turns N-D features into vectors; ``head`` is ``linear`` or ``mlp:H1,H2``;
    ``unfreeze_from`` / ``unfreeze_last`` make original layers before the cut trainable too; ``keep_head`` starts
    from the original classifier. ``classes`` names the outputs (or ``num_classes`` numbers them); ``max_classes``
    reserves outputs for classes that do not exist yet. ``quantize="int8"`` quantises the backbone with
    ``calibration`` data (a path in a format ``adapt`` reads, an array ``x`` or ``(x, y)``), keeping ``keep_float``
    weight layers from the input float (a number, or ``"auto"``, the default: as few as bring the int8 features
    close to the float ones; see edgeft.export.float_prefix), for ``target_cpu`` (quantize.TARGET_CPUS; None or auto: the
    export machine's kind; vnni and arm64: full 8-bit weights; avx2: 7-bit weights that x86 CPUs without VNNI do
    not saturate), shipping the float backbone as well unless
    ``float_fallback`` is False (None: True for int8), for devices whose int8 kernels fail the bundle's self-check
    (edgeft.runtime.int8_check). The bundle always carries the portable train step
    (standard ONNX ops; ``momentum`` applies to SGD there); ``ort_artifacts`` adds ONNX Runtime training artifacts
    too (None: when ORT training is installed). Raises EdgeftError
    with a clear message when the model cannot be exported or the exported parts do not reproduce the original.
    """
    destination = Path(out)
    if destination.exists() and not force:
        raise EdgeftError(f"{destination} already exists; choose another output or pass --force to replace it")
    loss = _loss(task, loss)
    float_layers = check_request(quantize, calibration, keep_float, target_cpu, float_fallback)
    hidden = _hidden_layers(head)
    if activation not in head_graph.ACTIVATIONS:
        raise EdgeftError(f"unknown activation '{activation}'; choose one of {', '.join(head_graph.ACTIVATIONS)}")
    if not 0.0 <= dropout < 1.0:
        raise EdgeftError(f"dropout must be in [0, 1), got {dropout}")
    with tempfile.TemporaryDirectory(prefix="edgeft-source-") as scratch:
        original, source_path, source_name = _load_source(model, example_input, Path(scratch))
        if example_input is not None and input_shape is None:
            input_shape = list(example_input.shape)
        head_cut = _choose_cut(original, cut, remove_layers, output)
        freeze = freeze_line(original, head_cut.feature_tensor, unfreeze_from, unfreeze_last)
        if keep_head and classes is None and num_classes is None and max_classes is None and head_cut.linear:
            num_classes = head_cut.linear.weight.shape[0]
        class_names = _class_names(classes, num_classes, max_classes, task)
        capacity = max_classes if max_classes is not None else len(class_names)
        parts = _split(original, head_cut, freeze, pool, input_shape, seed, source_path)
        keep = _kept_head(head_cut, parts.pooling.kind, hidden, capacity) if keep_head else None
        spec = head_graph.HeadSpec(
            feature_dim=parts.features.shape[1],
            num_outputs=capacity,
            hidden=hidden,
            activation=activation,
            dropout=dropout,
            normalise=parts.body is None and keep is None,
            body=parts.body,
        )
        parameters = head_graph.initial_parameters(spec, seed, keep)
        inference = head_graph.inference_head(spec, parameters)
        checks = _validate_head(inference, parameters, parts, head_cut, keep is not None, source_path)
        training = Training(spec.trainable, spec.frozen, loss, optimizer, weight_decay)
        with_ort = (ort_training_installed() and not momentum) if ort_artifacts is None else ort_artifacts
        if optimizer == "sgd" and weight_decay:
            raise EdgeftError("the SGD optimizer has no weight decay; use --optimizer adamw or --weight-decay 0")
        if momentum and optimizer != "sgd":
            raise EdgeftError("--momentum applies to --optimizer sgd (AdamW has its own moments)")
        if momentum and with_ort:
            raise EdgeftError(
                "ORT training's SGD has no momentum: export with --no-ort-artifacts, or without --momentum"
            )
        step, trainers = _portable_step(spec, parameters, loss, Optimizer(optimizer, weight_decay, momentum), with_ort)
        if step is not None:
            diff = check_train_step(step, parameters, parts.features, checks["logits"], loss, spec.dropout)
            checks["record"]["train_step_loss_diff"] = diff
        make_directory(destination.parent)
        with tempfile.TemporaryDirectory(prefix=".edgeft-export-", dir=destination.parent) as tmp:
            staging = Path(tmp) / "bundle"
            staging.mkdir()
            onnx.save(parts.backbone, str(staging / BACKBONE_FILE))
            onnx.save(inference, str(staging / HEAD_FILE))
            (staging / TRAIN_DIR).mkdir()
            if step is not None:
                onnx.save(step, str(staging / TRAIN_DIR / TRAIN_STEP_FILE))
                HeadState(parameters).save(staging / TRAIN_DIR / INITIAL_HEAD_FILE)
            if with_ort:
                generate_head_artifacts(head_graph.training_head(spec, parameters), staging / TRAIN_DIR, training)
                _validate_artifacts(staging / TRAIN_DIR, parts.features, checks, task, capacity)
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                producer={"name": "edgeft", "version": __version__, "created": _creation_time()},
                source={
                    "file": source_name,
                    "sha256": sha256_file(source_path),
                    "cut_tensor": head_cut.feature_tensor,
                    "freeze_tensor": freeze,
                    "removed_head_nodes": list(head_cut.head_nodes),
                    "original_outputs": head_cut.original_classes,
                },
                input=parts.input,
                preprocessing=_preprocessing(preprocessing, parts.input),
                feature=TensorSpec(parts.backbone.graph.output[0].name, ["batch", spec.feature_dim]),
                head=HeadInfo(
                    kind="mlp" if hidden else "linear",
                    feature_dim=spec.feature_dim,
                    num_outputs=spec.num_outputs,
                    trainable=spec.trainable,
                    frozen=spec.frozen,
                    normaliser={"mean": head_graph.FEATURE_MEAN, "scale": head_graph.FEATURE_SCALE}
                    if spec.normalise
                    else {},
                    loss=loss,
                    optimizer=optimizer,
                    task=task,
                    hidden=list(hidden),
                    activation=activation if hidden else "",
                    dropout=dropout if hidden else 0.0,
                    pool=parts.pooling.kind,
                    weight_decay=weight_decay,
                    unfrozen=_unfrozen_nodes(parts.body),
                    trainers=trainers,
                    momentum=momentum,
                ),
                classes=class_names,
                defaults=defaults or Defaults(),
                validation={
                    "cut_max_abs_diff": parts.max_diff,
                    "cut_atol": CUT_ATOL,
                    "cut_rtol": CUT_RTOL,
                    "samples": VALIDATION_BATCH,
                    "trainable_parameters_checked": True,
                    **checks.pop("record"),
                },
            )
            if quantize:
                calibrated = read_calibration(calibration, manifest)
                record = quantize_backbone(
                    staging / BACKBONE_FILE,
                    manifest.input.name,
                    calibrated,
                    seed,
                    source_name,
                    keep_float=float_layers,
                    target_cpu=target_cpu,
                    float_fallback=float_fallback is not False,
                )
                manifest = replace(manifest, quantization=record)
            manifest = replace(manifest, files=hash_tree(staging))
            (staging / MANIFEST_FILE).write_text(manifest.to_json())
            fsync_tree(staging)  # durable before it gets its name: a power cut leaves no bundle or a whole one
            if destination.is_dir():
                shutil.rmtree(destination)
            elif destination.exists():
                destination.unlink()
            staging.rename(destination)
            fsync_directory(destination.parent)
    return Bundle.load(destination)


def _portable_step(
    spec: head_graph.HeadSpec, parameters: dict[str, np.ndarray], loss: str, optimizer: Optimizer, with_ort: bool
) -> tuple[onnx.ModelProto | None, list[str]]:
    """The portable train step and the trainers the bundle will carry. A head the portable trainer cannot
    differentiate still exports with ORT artifacts alone (``--trainer ort`` on the device); without them it fails."""
    try:
        step = build_train_step(spec, parameters, loss, optimizer)
    except EdgeftError as exc:
        if not with_ort:
            raise EdgeftError(f"{exc} (install edgeft[ort] for ORT artifacts)") from None
        warnings.warn(f"{exc}; the bundle carries ORT training artifacts only", stacklevel=3)
        return None, ["ort"]
    return step, ["onnx", "ort"] if with_ort else ["onnx"]


@dataclass(frozen=True)
class _Parts:
    """The original model split at the freeze line, with what validation computed on the way."""

    backbone: onnx.ModelProto
    input: TensorSpec
    pooling: Pooling
    body: head_graph.Body | None
    sample: np.ndarray
    features: np.ndarray
    reference: dict[str, np.ndarray]
    max_diff: float


def _load_source(model: Any, example_input: Any, scratch: Path) -> tuple[onnx.ModelProto, Path, str]:
    """(model, file to hash, name to record) for an ONNX path or a torch.nn.Module."""
    if isinstance(model, (str, os.PathLike)):
        return load_onnx(model), Path(model), Path(model).name
    path = scratch / "model.onnx"
    torch_to_onnx(model, example_input, path)
    return load_onnx(path), path, f"{type(model).__module__}.{type(model).__qualname__} (torch)"


def _choose_cut(model: onnx.ModelProto, cut: str | None, remove: int | None, output: str | None) -> HeadCut:
    if cut is not None and remove is not None:
        raise EdgeftError("give either --cut or --remove-layers, not both")
    if cut is not None:
        return cut_at(model, cut)
    if remove is not None:
        return remove_layers(model, remove, output)
    return find_head(model, output)


def _loss(task: str, loss: str | None) -> str:
    if task not in TASK_LOSSES:
        raise EdgeftError(f"unknown task '{task}'; choose one of {', '.join(TASK_LOSSES)}")
    allowed = TASK_LOSSES[task]
    if loss is None:
        return allowed[0]
    if loss not in allowed:
        raise EdgeftError(f"loss '{loss}' does not fit task '{task}'; it takes {' or '.join(allowed)}")
    return loss


def _hidden_layers(head: str) -> tuple[int, ...]:
    """``linear`` -> (), ``mlp:64,32`` -> (64, 32)."""
    if head == "linear":
        return ()
    kind, _, sizes = head.partition(":")
    try:
        hidden = tuple(int(s) for s in sizes.split(",")) if kind == "mlp" and sizes else ()
    except ValueError:
        hidden = ()
    if not hidden or min(hidden) < 1:
        raise EdgeftError(f"unknown head '{head}'; use linear or mlp:H1,H2 (hidden layer sizes, e.g. mlp:128,64)")
    return hidden


def _split(
    original: onnx.ModelProto,
    head_cut: HeadCut,
    freeze: str | None,
    pool: str | None,
    input_shape: Sequence[int] | None,
    seed: int,
    source: Path,
) -> _Parts:
    """Split at the freeze line, run the original on a seeded input, and check the backbone reproduces it."""
    cut = head_cut.feature_tensor
    frozen_end = freeze or cut
    plain = extract_backbone(original, frozen_end, Pooling("none", (), False))
    input_spec = _input_spec(plain, source)
    sample = _sample_input(input_spec, input_shape, seed)
    wanted = [t for t in (cut, freeze, head_cut.linear.logits_tensor if head_cut.linear else None) if t]
    reference = dict(
        zip(wanted, _run(with_extra_outputs(original, wanted), {input_spec.name: sample}, wanted, source), strict=True)
    )
    pooling = choose_pooling(pool or head_cut.pool, reference[cut].shape[1:], is_channels_last(original, cut), cut)
    if freeze:
        flat = Pooling("flatten", reference[freeze].shape[1:], False)
        backbone = extract_backbone(original, freeze, flat)
        body = build_body(original, freeze, cut, reference[freeze].shape[1:], pooling)
        expected = reference[freeze].reshape(len(sample), -1)
    else:
        backbone = extract_backbone(original, cut, pooling)
        body = None
        expected = numpy_pool(pooling, reference[cut])
    _make_batch_dynamic(backbone)
    (features,) = _run(backbone, {input_spec.name: sample}, None, source)
    if features.shape != expected.shape:
        raise EdgeftError(f"{source}: backbone output {features.shape} does not match the cut tensor {expected.shape}")
    max_diff = float(np.max(np.abs(features - expected))) if features.size else 0.0
    if not np.allclose(features, expected, atol=CUT_ATOL, rtol=CUT_RTOL):
        raise EdgeftError(
            f"{source}: the exported backbone differs from the original at '{frozen_end}' "
            f"(max abs diff {max_diff:.3g}, tolerance atol={CUT_ATOL} rtol={CUT_RTOL})"
        )
    if features.ndim != 2 or features.shape[1] == 0:
        raise EdgeftError(f"{source}: the feature tensor at the cut has shape {features.shape}, not [batch, D]")
    return _Parts(backbone, input_spec, pooling, body, sample, features, reference, max_diff)


def _kept_head(head_cut: HeadCut, pool: str, hidden: tuple[int, ...], capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """The original classifier's weight [K, D] and bias [K], when it can start the new head exactly."""
    linear = head_cut.linear
    if linear is None:
        raise EdgeftError("--keep-head needs the original head found automatically (no --cut or --remove-layers)")
    if not linear.exact:
        raise EdgeftError("--keep-head: the original head has a nonlinearity between its layer and its pooling")
    if hidden:
        raise EdgeftError("--keep-head reuses the original linear layer; it cannot be combined with an mlp head")
    if pool not in ("none", "flatten", head_cut.pool):
        raise EdgeftError(f"--keep-head: the original head pools with {head_cut.pool}, not {pool}")
    if capacity != linear.weight.shape[0]:
        raise EdgeftError(
            f"--keep-head: the original head has {linear.weight.shape[0]} outputs, the new one {capacity}"
        )
    bias = linear.bias if linear.bias is not None else np.zeros(linear.weight.shape[0], np.float32)
    return linear.weight, bias.reshape(-1)


def _validate_head(
    inference: onnx.ModelProto,
    parameters: dict[str, np.ndarray],
    parts: _Parts,
    head_cut: HeadCut,
    kept: bool,
    source: Path,
) -> dict[str, Any]:
    """Run head.onnx with the initial parameters: unfrozen layers and a kept head must reproduce the original."""
    feeds = {head_graph.FEATURES_INPUT: parts.features, **parameters}
    record: dict[str, Any] = {}
    wanted = [head_graph.LOGITS_OUTPUT] + ([parts.body.output] if parts.body else [])
    results = dict(zip(wanted, _run(with_extra_outputs(inference, wanted), feeds, wanted, source), strict=True))
    comparisons = []
    if parts.body:
        expected = numpy_pool(parts.pooling, parts.reference[head_cut.feature_tensor])
        comparisons.append(("unfrozen_max_abs_diff", "unfrozen layers", results[parts.body.output], expected))
    if kept:
        expected = parts.reference[head_cut.linear.logits_tensor].reshape(len(parts.sample), -1)
        comparisons.append(("logits_max_abs_diff", "kept head's logits", results[head_graph.LOGITS_OUTPUT], expected))
    for key, what, got, expected in comparisons:
        diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
        if not np.isfinite(diff) or not np.allclose(got, expected, atol=LOGITS_ATOL, rtol=LOGITS_RTOL):
            raise EdgeftError(
                f"{source}: the bundle's {what} differ from the original (max abs diff {diff:.3g}, "
                f"tolerance atol={LOGITS_ATOL} rtol={LOGITS_RTOL})"
            )
        record[key] = diff
    if comparisons:
        record.update(logits_atol=LOGITS_ATOL, logits_rtol=LOGITS_RTOL)
    return {"record": record, "logits": results[head_graph.LOGITS_OUTPUT]}


def _validate_artifacts(directory: Path, features: np.ndarray, checks: dict[str, Any], task: str, outputs: int) -> None:
    """The training artifacts load in ORT, and their eval model gives head.onnx's logits."""
    if task == "classification":
        labels = np.zeros(len(features), np.int64)
    else:
        labels = np.zeros((len(features), outputs), np.float32)
    logits = check_artifacts_run(directory, features, labels)
    diff = float(np.max(np.abs(logits - checks["logits"])))
    if not np.allclose(logits, checks["logits"], atol=LOGITS_ATOL, rtol=LOGITS_RTOL):
        raise EdgeftError(
            f"{directory}: the training artifacts' logits differ from head.onnx's (max abs diff {diff:.3g})"
        )
    checks["record"]["artifacts_max_abs_diff"] = diff


def _run(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[str] | None, source: Path
) -> list[np.ndarray]:
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(outputs, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs and shapes
        raise EdgeftError(
            f"{source}: could not run the model to validate the export: {str(exc).splitlines()[0]}"
        ) from None


def _creation_time() -> str:
    """Now, or SOURCE_DATE_EPOCH when set, so that rebuilt bundles are byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return moment.isoformat()


def _class_names(
    classes: Sequence[str] | None, num_classes: int | None, max_classes: int | None, task: str
) -> list[str]:
    """The initial output names (classes, labels or targets); with ``max_classes`` there may be fewer, never more."""
    if classes is not None and num_classes is not None:
        raise EdgeftError("give either --classes or --num-classes, not both")
    if classes is None:
        if num_classes is None and max_classes is None:
            raise EdgeftError("say what the new head predicts: --classes a,b,c, --num-classes N or --max-classes N")
        classes = [str(i) for i in range(num_classes or 0)]
    names = [c.strip() for c in classes]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise EdgeftError(f"class names must be non-empty and distinct, got {names}")
    least = 2 if task == "classification" else 1
    if max_classes is None:
        if len(names) < least:
            noun = "a classifier" if task == "classification" else f"a {task} head"
            raise EdgeftError(f"{noun} needs at least {least} classes, got {len(names)}")
    elif task == "regression":
        raise EdgeftError("--max-classes reserves classes; a regression head has a fixed set of targets")
    elif max_classes < max(least, len(names)):
        raise EdgeftError(
            f"--max-classes {max_classes} must be at least {least} and at least the {len(names)} classes given"
        )
    return names


def _input_spec(backbone: onnx.ModelProto, source: Path) -> TensorSpec:
    inputs = real_inputs(backbone)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise EdgeftError(f"{source}: the frozen part needs {len(inputs)} inputs ({names}); edgeft supports one")
    value = inputs[0]
    elem = value.type.tensor_type.elem_type
    if elem not in _ONNX_TO_NUMPY:
        raise EdgeftError(
            f"{source}: input '{value.name}' is {onnx.TensorProto.DataType.Name(elem)}; edgeft needs float32"
        )
    shape: list[int | str] = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim
    ]
    shape[0] = "batch"
    return TensorSpec(value.name, shape, _ONNX_TO_NUMPY[elem])


def _make_batch_dynamic(backbone: onnx.ModelProto) -> None:
    for value in (*real_inputs(backbone), *backbone.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"


def _sample_input(spec: TensorSpec, input_shape: Sequence[int] | None, seed: int) -> np.ndarray:
    if input_shape is not None:
        shape = [VALIDATION_BATCH, *list(input_shape)[1:]]
    else:
        unknown = [i for i, d in enumerate(spec.shape[1:], start=1) if not isinstance(d, int) or d <= 0]
        if unknown:
            raise EdgeftError(
                f"input '{spec.name}' has dynamic axes {unknown}; give a concrete shape with --input-shape"
            )
        shape = [VALIDATION_BATCH, *spec.shape[1:]]
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, shape).astype(spec.dtype)


def _preprocessing(given: Preprocessing | dict[str, Any] | None, spec: TensorSpec) -> Preprocessing:
    if isinstance(given, Preprocessing):
        return given
    return replace(_default_preprocessing(spec), **(given or {}))


def _default_preprocessing(spec: TensorSpec) -> Preprocessing:
    shape = spec.shape
    if len(shape) == 4 and shape[1] in (1, 3):
        return Preprocessing(color="L" if shape[1] == 1 else "RGB", layout="NCHW")
    if len(shape) == 4 and shape[3] in (1, 3):
        return Preprocessing(color="L" if shape[3] == 1 else "RGB", layout="NHWC")
    return Preprocessing(color="none", layout="none", note="input is not an image; feed arrays (.npz)")


def _unfrozen_nodes(body: head_graph.Body | None) -> list[str]:
    """Names of the original nodes moved into the trainable part (not edgeft's own or constants)."""
    if body is None:
        return []
    return [n.name or n.output[0] for n in body.nodes if n.op_type != "Constant" and not n.name.startswith("edgeft.")]
