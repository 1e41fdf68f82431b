"""``export_bundle``: pretrained ONNX classifier in, validated edgeft bundle out."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
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
    MANIFEST_FILE,
    TRAIN_DIR,
    Bundle,
    Defaults,
    HeadInfo,
    Manifest,
    Preprocessing,
    TensorSpec,
    hash_tree,
    sha256_file,
)
from edgeft.errors import EdgeftError
from edgeft.export import head as head_graph
from edgeft.export.artifacts import generate_head_artifacts
from edgeft.export.sources import load_onnx
from edgeft.export.surgery import HeadCut, cut_at, extract_backbone, find_head, model_inputs, with_extra_output

# The backbone must reproduce the original graph's tensor at the cut within this tolerance
# (numpy.allclose semantics: |backbone - original| <= ATOL + RTOL * |original|).
CUT_ATOL = 1e-5
CUT_RTOL = 1e-4
VALIDATION_BATCH = 2

_ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: "float32"}


def export_bundle(
    model: str | Path,
    out: str | Path,
    *,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    max_classes: int | None = None,
    cut: str | None = None,
    output: str | None = None,
    input_shape: Sequence[int] | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    defaults: Defaults | None = None,
    seed: int = 0,
    force: bool = False,
) -> Bundle:
    """Cut the classifier head off ``model``, attach a new trainable head, and write a validated bundle.

    ``classes`` names the new task's classes (or ``num_classes`` numbers them ``0..N-1``); ``max_classes`` reserves
    head outputs for classes that do not exist yet (a device gives each new label name the next free one); ``cut`` names the
    feature tensor instead of finding the head automatically. ``preprocessing`` describes how image files become
    inputs: a full Preprocessing, or a dict of fields overriding the one derived from the input's shape. Raises EdgeftError with a clear message when
    the model cannot be cut or the exported parts do not reproduce the original.
    """
    source_path = Path(model)
    destination = Path(out)
    if destination.exists() and not force:
        raise EdgeftError(f"{destination} already exists; choose another output or pass --force to replace it")
    class_names = _class_names(classes, num_classes, max_classes)
    capacity = max_classes if max_classes is not None else len(class_names)
    original = load_onnx(source_path)
    head_cut = cut_at(original, cut) if cut else find_head(original, output)
    backbone = extract_backbone(original, head_cut.feature_tensor)
    input_spec = _input_spec(backbone, source_path)
    _make_batch_dynamic(backbone)
    sample = _sample_input(input_spec, input_shape, seed)
    features, max_diff = _validate_cut(original, backbone, head_cut, input_spec.name, sample, source_path)
    spec = head_graph.HeadSpec(feature_dim=int(features.shape[1]), num_outputs=capacity)

    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgeft-export-", dir=destination.parent) as tmp:
        staging = Path(tmp) / "bundle"
        staging.mkdir()
        onnx.save(backbone, str(staging / BACKBONE_FILE))
        onnx.save(head_graph.inference_head(spec), str(staging / HEAD_FILE))
        parameters = head_graph.initial_parameters(spec, seed)
        generate_head_artifacts(head_graph.training_head(spec, parameters), staging / TRAIN_DIR)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            producer={"name": "edgeft", "version": __version__, "created": _creation_time()},
            source={
                "file": source_path.name,
                "sha256": sha256_file(source_path),
                "cut_tensor": head_cut.feature_tensor,
                "removed_head_nodes": list(head_cut.head_nodes),
                "original_outputs": head_cut.original_classes,
            },
            input=input_spec,
            preprocessing=_preprocessing(preprocessing, input_spec),
            feature=TensorSpec(backbone.graph.output[0].name, ["batch", spec.feature_dim]),
            head=HeadInfo(
                kind="linear",
                feature_dim=spec.feature_dim,
                num_outputs=spec.num_outputs,
                trainable=list(head_graph.TRAINABLE_PARAMETERS),
                frozen=list(head_graph.FROZEN_PARAMETERS),
                normaliser={"mean": head_graph.FEATURE_MEAN, "scale": head_graph.FEATURE_SCALE},
            ),
            classes=class_names,
            defaults=defaults or Defaults(),
            validation={
                "cut_max_abs_diff": max_diff,
                "cut_atol": CUT_ATOL,
                "cut_rtol": CUT_RTOL,
                "samples": VALIDATION_BATCH,
                "trainable_parameters_checked": True,
            },
        )
        manifest = replace(manifest, files=hash_tree(staging))
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        if destination.is_dir():
            shutil.rmtree(destination)
        elif destination.exists():
            destination.unlink()
        staging.rename(destination)
    return Bundle.load(destination)


def _creation_time() -> str:
    """Now, or SOURCE_DATE_EPOCH when set, so that rebuilt bundles are byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return moment.isoformat()


def _class_names(classes: Sequence[str] | None, num_classes: int | None, max_classes: int | None) -> list[str]:
    """The initial class names; with ``max_classes`` there may be fewer (even none), but never more."""
    if classes is not None and num_classes is not None:
        raise EdgeftError("give either --classes or --num-classes, not both")
    if classes is None:
        if num_classes is None and max_classes is None:
            raise EdgeftError("say what the new head predicts: --classes a,b,c, --num-classes N or --max-classes N")
        classes = [str(i) for i in range(num_classes or 0)]
    names = [c.strip() for c in classes]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise EdgeftError(f"class names must be non-empty and distinct, got {names}")
    if max_classes is None:
        if len(names) < 2:
            raise EdgeftError(f"a classifier needs at least 2 classes, got {len(names)}")
    elif max_classes < max(2, len(names)):
        raise EdgeftError(f"--max-classes {max_classes} must be at least 2 and at least the {len(names)} classes given")
    return names


def _input_spec(backbone: onnx.ModelProto, source: Path) -> TensorSpec:
    inputs = model_inputs(backbone)
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
    for value in (*model_inputs(backbone), *backbone.graph.output):
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


def _session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _validate_cut(
    original: onnx.ModelProto,
    backbone: onnx.ModelProto,
    head_cut: HeadCut,
    input_name: str,
    sample: np.ndarray,
    source: Path,
) -> tuple[np.ndarray, float]:
    """Run the original (exposing the cut tensor) and the backbone on one input; they must agree."""
    try:
        reference = _session(with_extra_output(original, head_cut.feature_tensor)).run(
            [head_cut.feature_tensor], {input_name: sample}
        )[0]
        features = _session(backbone).run(None, {input_name: sample})[0]
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs and shapes
        raise EdgeftError(
            f"{source}: could not run the model to validate the cut: {str(exc).splitlines()[0]}"
        ) from None
    reference = reference.reshape(len(sample), -1)
    if features.shape != reference.shape:
        raise EdgeftError(f"{source}: backbone output {features.shape} does not match the cut tensor {reference.shape}")
    max_diff = float(np.max(np.abs(features - reference))) if features.size else 0.0
    if not np.allclose(features, reference, atol=CUT_ATOL, rtol=CUT_RTOL):
        raise EdgeftError(
            f"{source}: the exported backbone differs from the original at '{head_cut.feature_tensor}' "
            f"(max abs diff {max_diff:.3g}, tolerance atol={CUT_ATOL} rtol={CUT_RTOL})"
        )
    if features.ndim != 2 or features.shape[1] == 0:
        raise EdgeftError(f"{source}: the feature tensor at the cut has shape {features.shape}, not [batch, D]")
    return features, max_diff


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
