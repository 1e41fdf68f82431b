"""An int8 bundle's probe file and the CPU it runs on: which int8 kernels this CPU's onnxruntime picks, found by
running one (``edgeft.runtime.int8_check`` runs the probe on the device; the exporter writes it)."""

from __future__ import annotations

import io
import platform
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime

PROBE_FILE = "int8_probe.npz"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_DEPTH = 64  # products summed by the kernel probe: pairs of 255 * 127 overflow int16 (32,767) when summed


def save_probe(path: Path, x: np.ndarray, features: np.ndarray) -> None:
    """Write the probe as an uncompressed .npz with fixed timestamps (same probe, same bytes: rebuilt bundles stay
    byte-identical); ``np.load`` reads it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for key, value in (("features", features), ("x", x)):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o600 << 16
            archive.writestr(info, buffer.getvalue())


@cache
def u8s8_saturates() -> bool:
    """Whether ORT's uint8×int8 matrix product saturates here: run one on values whose pairwise sums overflow int16.

    Found by running the kernel rather than by reading CPU flags, so it also holds under emulation (qemu)."""
    from onnx import TensorProto, helper, numpy_helper  # only int8 bundles get here: float ones skip its import

    weights = numpy_helper.from_array(np.full((_DEPTH, 4), 127, np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "u8s8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, _DEPTH])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 4])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (product,) = session.run(None, {"a": np.full((4, _DEPTH), 255, np.uint8)})
    return bool((product != 255 * 127 * _DEPTH).any())


def cpu_family() -> str:
    """``x86-saturating`` (x86 without VNNI), ``x86-exact`` (VNNI), ``arm64``, or the machine's name otherwise."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        return "x86-saturating" if u8s8_saturates() else "x86-exact"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    return machine


def cpu_signature() -> str:
    """What decides which int8 kernels run: the CPU family and the onnxruntime version."""
    return f"{cpu_family()}/onnxruntime-{onnxruntime.__version__}"
