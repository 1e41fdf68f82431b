"""``export_bundle``: pretrained ONNX classifier in, validated edgeft bundle out.

One function per step, each taking what it needs and returning what it made: ``load_source`` (an ONNX file or a
torch module), ``find_cut`` (where the head starts and the freeze line), ``cut_backbone`` (the frozen part, checked
against the original), ``build_head`` (the new head's graph and initial parameters), ``validate_head`` (unfrozen
layers and a kept head reproduce the original), ``build_training`` (the portable train step, checked),
``write_files`` (the bundle's files in a staging directory, ORT artifacts checked), ``make_manifest``,
``quantize_staged`` (int8 backbone, checked against the float one) and ``publish`` (atomically in place).
"""

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
from edgeft.export.config import ExportConfig, output_names
from edgeft.export.graph import is_channels_last, real_inputs
from edgeft.export.pooling import Pooling, choose_pooling, numpy_pool
from edgeft.export.quantize import SPEED_ROUNDS, quantize_backbone, read_calibration
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

_ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: "float32"}


@dataclass(frozen=True)
class Source:
    """The model to export as ONNX, the file to hash, the name to record and the input shape to validate with."""

    model: onnx.ModelProto
    path: Path
    name: str
    input_shape: Sequence[int] | None


@dataclass(frozen=True)
class Parts:
    """The original model split at the freeze line, with what validation computed on the way."""

    backbone: onnx.ModelProto
    input: TensorSpec
    pooling: Pooling
    body: head_graph.Body | None
    sample: np.ndarray
    features: np.ndarray
    reference: dict[str, np.ndarray]
    max_diff: float


@dataclass(frozen=True)
class NewHead:
    """The new head: its spec, initial parameters, inference graph, output names and whether it kept the original."""

    spec: head_graph.HeadSpec
    parameters: dict[str, np.ndarray]
    inference: onnx.ModelProto
    classes: list[str]
    kept: bool


@dataclass(frozen=True)
class HeadChecks:
    """What ``validate_head`` measured (manifest validation entries) and the head's logits on the sample."""

    record: dict[str, float]
    logits: np.ndarray


@dataclass(frozen=True)
class TrainingFiles:
    """The trainers the bundle carries: the portable train step (None when it cannot be built) and whether ORT
    training artifacts come too, with the train step's checked loss difference."""

    step: onnx.ModelProto | None
    trainers: list[str]
    with_ort: bool
    training: Training
    step_loss_diff: float | None


def export_bundle(config: ExportConfig) -> Bundle:
    """Cut the head off ``config.model``, attach a new trainable head, validate everything against the original,
    and write the bundle to ``config.out`` (see ExportConfig for the options).

    A ``quantize="int8"`` export keeps ``keep_float`` weight layers from the input float (a number, or ``"auto"``,
    the default: as few as bring the int8 features close to the float ones; see edgeft.export.float_prefix), for
    ``target_cpu`` (quantize.TARGET_CPUS; None or auto: the export machine's kind; vnni and arm64: full 8-bit
    weights; avx2: 7-bit weights that x86 CPUs without VNNI do not saturate), shipping the float backbone as well
    unless ``float_fallback`` is False (None: True for int8), for devices whose int8 kernels fail the bundle's
    self-check (edgeft.runtime.int8_check), and times int8 backbones against the float one over
    ``int8_speed_rounds`` rounds (None: quantize.SPEED_ROUNDS), auto shipping the fastest that agrees (0: not timed,
    auto keeps its fewest float layers, for byte-identical rebuilds). The bundle always carries the portable train step (standard ONNX ops;
    ``momentum`` applies to SGD there). Raises EdgeftError with a clear message when the model cannot be exported
    or the exported parts do not reproduce the original.
    """
    destination = Path(config.out)
    if destination.exists() and not config.force:
        raise EdgeftError(f"{destination} already exists; choose another output or pass --force to replace it")
    with tempfile.TemporaryDirectory(prefix="edgeft-source-") as scratch:
        source = load_source(config, Path(scratch))
        head_cut, freeze = find_cut(config, source)
        parts = cut_backbone(config, source, head_cut, freeze)
        new_head = build_head(config, parts, head_cut)
        checks = validate_head(new_head, parts, head_cut, source.path)
        training = build_training(config, new_head, parts, checks.logits)
        make_directory(destination.parent)
        with tempfile.TemporaryDirectory(prefix=".edgeft-export-", dir=destination.parent) as tmp:
            staging = Path(tmp) / "bundle"
            artifacts_diff = write_files(staging, parts, new_head, training, checks.logits, config.task)
            validation = _validation_figures(checks, training, artifacts_diff)
            manifest = make_manifest(config, source, head_cut, freeze, parts, new_head, training, validation)
            if config.quantize:
                manifest = replace(manifest, quantization=quantize_staged(config, staging, manifest, source.name))
            publish(staging, manifest, destination)
    return Bundle.load(destination)


def load_source(config: ExportConfig, scratch: Path) -> Source:
    """The model as ONNX: read from its file, or exported from a torch.nn.Module with ``example_input`` into
    ``scratch``."""
    input_shape = config.input_shape
    if config.example_input is not None and input_shape is None:
        input_shape = list(config.example_input.shape)
    model = config.model
    if isinstance(model, (str, os.PathLike)):
        return Source(load_onnx(model), Path(model), Path(model).name, input_shape)
    path = scratch / "model.onnx"
    torch_to_onnx(model, config.example_input, path)
    name = f"{type(model).__module__}.{type(model).__qualname__} (torch)"
    return Source(load_onnx(path), path, name, input_shape)


def find_cut(config: ExportConfig, source: Source) -> tuple[HeadCut, str | None]:
    """Where the head starts (found automatically, ``cut`` or ``remove_layers``) and the freeze line before it
    (None when everything before the cut stays frozen)."""
    if config.cut is not None:
        head_cut = cut_at(source.model, config.cut)
    elif config.remove_layers is not None:
        head_cut = remove_layers(source.model, config.remove_layers, config.output)
    else:
        head_cut = find_head(source.model, config.output)
    freeze = freeze_line(source.model, head_cut.feature_tensor, config.unfreeze_from, config.unfreeze_last)
    return head_cut, freeze


def cut_backbone(config: ExportConfig, source: Source, head_cut: HeadCut, freeze: str | None) -> Parts:
    """Split at the freeze line, run the original on a seeded input, and check the backbone reproduces it."""
    original, path = source.model, source.path
    cut = head_cut.feature_tensor
    frozen_end = freeze or cut
    plain = extract_backbone(original, frozen_end, Pooling("none", (), False))
    input_spec = _input_spec(plain, path)
    sample = _sample_input(input_spec, source.input_shape, config.seed)
    wanted = [t for t in (cut, freeze, head_cut.linear.logits_tensor if head_cut.linear else None) if t]
    reference = dict(
        zip(wanted, _run(with_extra_outputs(original, wanted), {input_spec.name: sample}, wanted, path), strict=True)
    )
    pooling = choose_pooling(
        config.pool or head_cut.pool, reference[cut].shape[1:], is_channels_last(original, cut), cut
    )
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
    (features,) = _run(backbone, {input_spec.name: sample}, None, path)
    if features.shape != expected.shape:
        raise EdgeftError(f"{path}: backbone output {features.shape} does not match the cut tensor {expected.shape}")
    max_diff = float(np.max(np.abs(features - expected))) if features.size else 0.0
    if not np.allclose(features, expected, atol=CUT_ATOL, rtol=CUT_RTOL):
        raise EdgeftError(
            f"{path}: the exported backbone differs from the original at '{frozen_end}' "
            f"(max abs diff {max_diff:.3g}, tolerance atol={CUT_ATOL} rtol={CUT_RTOL})"
        )
    if features.ndim != 2 or features.shape[1] == 0:
        raise EdgeftError(f"{path}: the feature tensor at the cut has shape {features.shape}, not [batch, D]")
    return Parts(backbone, input_spec, pooling, body, sample, features, reference, max_diff)


def build_head(config: ExportConfig, parts: Parts, head_cut: HeadCut) -> NewHead:
    """The new head's output names, spec, initial parameters (seeded, or the original classifier's with
    ``keep_head``) and inference graph."""
    num_classes = config.num_classes
    if config.derives_classes and head_cut.linear:
        num_classes = head_cut.linear.weight.shape[0]
    classes = output_names(config.classes, num_classes, config.max_classes, config.task)
    capacity = config.max_classes if config.max_classes is not None else len(classes)
    hidden = config.hidden_layers
    keep = _kept_head(head_cut, parts.pooling.kind, hidden, capacity) if config.keep_head else None
    spec = head_graph.HeadSpec(
        feature_dim=parts.features.shape[1],
        num_outputs=capacity,
        hidden=hidden,
        activation=config.activation,
        dropout=config.dropout,
        normalise=parts.body is None and keep is None,
        body=parts.body,
    )
    parameters = head_graph.initial_parameters(spec, config.seed, keep)
    return NewHead(spec, parameters, head_graph.inference_head(spec, parameters), classes, keep is not None)


def validate_head(new_head: NewHead, parts: Parts, head_cut: HeadCut, source: Path) -> HeadChecks:
    """Run head.onnx with the initial parameters: unfrozen layers and a kept head must reproduce the original."""
    feeds = {head_graph.FEATURES_INPUT: parts.features, **new_head.parameters}
    record: dict[str, float] = {}
    wanted = [head_graph.LOGITS_OUTPUT] + ([parts.body.output] if parts.body else [])
    graph = with_extra_outputs(new_head.inference, wanted)
    results = dict(zip(wanted, _run(graph, feeds, wanted, source), strict=True))
    comparisons = []
    if parts.body:
        expected = numpy_pool(parts.pooling, parts.reference[head_cut.feature_tensor])
        comparisons.append(("unfrozen_max_abs_diff", "unfrozen layers", results[parts.body.output], expected))
    if new_head.kept:
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
    return HeadChecks(record, results[head_graph.LOGITS_OUTPUT])


def build_training(config: ExportConfig, new_head: NewHead, parts: Parts, logits: np.ndarray) -> TrainingFiles:
    """The portable train step, checked to give head.onnx's logits and the loss numpy computes, and whether ORT
    training artifacts come too (``ort_artifacts``; None: when ORT training is installed and momentum is 0)."""
    spec, parameters, loss = new_head.spec, new_head.parameters, config.resolved_loss
    with_ort = (
        (ort_training_installed() and not config.momentum) if config.ort_artifacts is None else config.ort_artifacts
    )
    training = Training(spec.trainable, spec.frozen, loss, config.optimizer, config.weight_decay)
    optimizer = Optimizer(config.optimizer, config.weight_decay, config.momentum)
    step, trainers = _portable_step(spec, parameters, loss, optimizer, with_ort)
    diff = None
    if step is not None:
        diff = check_train_step(step, parameters, parts.features, logits, loss, spec.dropout)
    return TrainingFiles(step, trainers, with_ort, training, diff)


def write_files(
    staging: Path, parts: Parts, new_head: NewHead, training: TrainingFiles, logits: np.ndarray, task: str
) -> float | None:
    """Write the backbone, the head, the train step with the initial head, and ORT training artifacts when asked
    into ``staging`` (created). Returns how far the ORT artifacts' logits are from head.onnx's (None without)."""
    staging.mkdir()
    onnx.save(parts.backbone, str(staging / BACKBONE_FILE))
    onnx.save(new_head.inference, str(staging / HEAD_FILE))
    (staging / TRAIN_DIR).mkdir()
    if training.step is not None:
        onnx.save(training.step, str(staging / TRAIN_DIR / TRAIN_STEP_FILE))
        HeadState(new_head.parameters).save(staging / TRAIN_DIR / INITIAL_HEAD_FILE)
    if not training.with_ort:
        return None
    spec, parameters = new_head.spec, new_head.parameters
    generate_head_artifacts(head_graph.training_head(spec, parameters), staging / TRAIN_DIR, training.training)
    return _validate_artifacts(staging / TRAIN_DIR, parts.features, logits, task, spec.num_outputs)


def make_manifest(
    config: ExportConfig,
    source: Source,
    head_cut: HeadCut,
    freeze: str | None,
    parts: Parts,
    new_head: NewHead,
    training: TrainingFiles,
    checks: dict[str, float],
) -> Manifest:
    """The manifest of a float bundle (files still to hash): where it came from, its tensors, head, classes,
    training defaults and what validation measured (``checks``: the head's, train step's and artifacts' figures)."""
    spec, hidden = new_head.spec, config.hidden_layers
    return Manifest(
        format_version=FORMAT_VERSION,
        producer={"name": "edgeft", "version": __version__, "created": _creation_time()},
        source={
            "file": source.name,
            "sha256": sha256_file(source.path),
            "cut_tensor": head_cut.feature_tensor,
            "freeze_tensor": freeze,
            "removed_head_nodes": list(head_cut.head_nodes),
            "original_outputs": head_cut.original_classes,
        },
        input=parts.input,
        preprocessing=_preprocessing(config.preprocessing, parts.input),
        feature=TensorSpec(parts.backbone.graph.output[0].name, ["batch", spec.feature_dim]),
        head=HeadInfo(
            kind="mlp" if hidden else "linear",
            feature_dim=spec.feature_dim,
            num_outputs=spec.num_outputs,
            trainable=spec.trainable,
            frozen=spec.frozen,
            normaliser={"mean": head_graph.FEATURE_MEAN, "scale": head_graph.FEATURE_SCALE} if spec.normalise else {},
            loss=config.resolved_loss,
            optimizer=config.optimizer,
            task=config.task,
            hidden=list(hidden),
            activation=config.activation if hidden else "",
            dropout=config.dropout if hidden else 0.0,
            pool=parts.pooling.kind,
            weight_decay=config.weight_decay,
            unfrozen=_unfrozen_nodes(parts.body),
            trainers=training.trainers,
            momentum=config.momentum,
        ),
        classes=new_head.classes,
        defaults=config.defaults or Defaults(),
        validation={
            "cut_max_abs_diff": parts.max_diff,
            "cut_atol": CUT_ATOL,
            "cut_rtol": CUT_RTOL,
            "samples": VALIDATION_BATCH,
            "trainable_parameters_checked": True,
            **checks,
        },
    )


def quantize_staged(config: ExportConfig, staging: Path, manifest: Manifest, source_name: str) -> dict[str, Any]:
    """Quantise the staged backbone to int8 with the calibration data; returns the manifest's quantization record."""
    calibrated = read_calibration(config.calibration, manifest)
    return quantize_backbone(
        staging / BACKBONE_FILE,
        manifest.input.name,
        calibrated,
        config.seed,
        source_name,
        keep_float=config.float_layers,
        target_cpu=config.target_cpu,
        float_fallback=config.float_fallback is not False,
        speed_rounds=SPEED_ROUNDS if config.int8_speed_rounds is None else config.int8_speed_rounds,
    )


def publish(staging: Path, manifest: Manifest, destination: Path) -> None:
    """Hash the staged files into the manifest, write it, and move the bundle to ``destination`` (replacing what
    is there), durable before it gets its name: a power cut leaves no bundle or a whole one."""
    manifest = replace(manifest, files=hash_tree(staging))
    (staging / MANIFEST_FILE).write_text(manifest.to_json())
    fsync_tree(staging)
    if destination.is_dir():
        shutil.rmtree(destination)
    elif destination.exists():
        destination.unlink()
    staging.rename(destination)
    fsync_directory(destination.parent)


def _validation_figures(checks: HeadChecks, training: TrainingFiles, artifacts_diff: float | None) -> dict[str, float]:
    """The head's, the train step's and the ORT artifacts' checked differences, as the manifest records them."""
    figures = dict(checks.record)
    if training.step_loss_diff is not None:
        figures["train_step_loss_diff"] = training.step_loss_diff
    if artifacts_diff is not None:
        figures["artifacts_max_abs_diff"] = artifacts_diff
    return figures


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
        warnings.warn(f"{exc}; the bundle carries ORT training artifacts only", stacklevel=4)
        return None, ["ort"]
    return step, ["onnx", "ort"] if with_ort else ["onnx"]


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


def _validate_artifacts(directory: Path, features: np.ndarray, logits: np.ndarray, task: str, outputs: int) -> float:
    """The training artifacts load in ORT, and their eval model gives head.onnx's ``logits``; returns the max abs
    difference."""
    if task == "classification":
        labels = np.zeros(len(features), np.int64)
    else:
        labels = np.zeros((len(features), outputs), np.float32)
    got = check_artifacts_run(directory, features, labels)
    diff = float(np.max(np.abs(got - logits)))
    if not np.allclose(got, logits, atol=LOGITS_ATOL, rtol=LOGITS_RTOL):
        raise EdgeftError(
            f"{directory}: the training artifacts' logits differ from head.onnx's (max abs diff {diff:.3g})"
        )
    return diff


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


IMAGE_COLORS = {"L": 1, "RGB": 3}  # the Pillow modes image files are converted to, and their channels


def _preprocessing(given: Preprocessing | dict[str, Any] | None, spec: TensorSpec) -> Preprocessing:
    prep = given if isinstance(given, Preprocessing) else replace(_default_preprocessing(spec), **(given or {}))
    if prep.layout != "none":
        _check_image_preprocessing(prep, spec)
    return prep


def _check_image_preprocessing(prep: Preprocessing, spec: TensorSpec) -> None:
    """EdgeftError unless image files can become ``spec``'s input with ``prep``: a known colour mode whose channels
    match the input's, one mean and std per channel (or one for all), positive finite scale and std."""
    if prep.color not in IMAGE_COLORS:
        raise EdgeftError(f"--color {prep.color}: image files are read as {' or '.join(IMAGE_COLORS)}")
    axis = {"NCHW": 1, "NHWC": 3}.get(prep.layout)
    if axis is None or len(spec.shape) != 4:
        raise EdgeftError(f"image layout {prep.layout} does not fit the input {spec.name} of shape {spec.shape}")
    channels = spec.shape[axis]
    if isinstance(channels, int) and channels != IMAGE_COLORS[prep.color]:
        raise EdgeftError(
            f"--color {prep.color} gives images {IMAGE_COLORS[prep.color]} channel(s); input {spec.name} takes "
            f"{channels}"
        )
    count = IMAGE_COLORS[prep.color]
    for option, values in (("--mean", prep.mean), ("--std", prep.std)):
        if len(values) not in (1, count) or not np.isfinite(values).all():
            raise EdgeftError(f"{option}: give 1 or {count} finite values for {prep.color} images (got {values})")
    if not (np.asarray(prep.std) > 0).all() or not (np.isfinite(prep.scale) and prep.scale > 0):
        raise EdgeftError(f"--std and --pixel-scale must be positive (got {prep.std} and {prep.scale})")


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
