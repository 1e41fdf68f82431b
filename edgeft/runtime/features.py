"""The frozen prefix: an onnxruntime InferenceSession turning inputs into feature vectors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

from edgeft.bundle import Bundle
from edgeft.common.ort import Placement
from edgeft.errors import DataError

# Samples per backbone run. Activations dominate memory: on EfficientNet-Lite0 at 224x224 the process peaks at
# ~270 MiB with 16 and ~760 MiB with 64, for 6-10% more throughput at 64 (BENCHMARKS.md): 16 fits small devices.
EMBED_BATCH = 16


def session_options(threads: int | None) -> onnxruntime.SessionOptions:
    """Session options shared by edgeft's sessions: quiet logs, optional intra-op thread count, and a thread pool
    that stops spinning when a run returns (it spins within a run as before): between two backbone runs a learner
    trains and commits, and a pool left spinning then burns a core for nothing (BENCHMARKS.md, issue 19)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads:
        options.intra_op_num_threads = threads
    return options


class FeatureExtractor:
    """Runs ``backbone.onnx`` in batches; knows the input it expects and checks what it is given."""

    def __init__(
        self, bundle: Bundle, placement: Placement, threads: int | None = None, backbone: Path | None = None
    ) -> None:
        """``backbone``: the file to run (default: the bundle's backbone; an int8 bundle's float fallback)."""
        self._spec = bundle.manifest.input
        self._session = onnxruntime.InferenceSession(
            str(backbone or bundle.backbone_path),
            sess_options=session_options(threads),
            providers=list(placement.providers),
        )
        self.feature_dim = bundle.manifest.head.feature_dim

    def check(self, x: np.ndarray, origin: str) -> np.ndarray:
        """Return ``x`` as float32 of the backbone's input shape, or raise DataError naming ``origin``."""
        expected = self._spec.shape[1:]
        if x.ndim != len(expected) + 1 or any(
            isinstance(e, int) and e != got for e, got in zip(expected, x.shape[1:], strict=True)
        ):
            raise DataError(
                f"{origin}: inputs have shape {list(x.shape[1:])} per sample, the bundle expects {expected}"
            )
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise DataError(f"{origin}: inputs have dtype {x.dtype}, expected real numbers")
        with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf, refused below
            x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise DataError(f"{origin}: inputs contain NaN or infinite values")
        return x

    def embed(self, x: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Features of already-checked inputs, computed ``EMBED_BATCH`` samples at a time."""
        out = np.empty((len(x), self.feature_dim), np.float32)
        for start in range(0, len(x), EMBED_BATCH):
            chunk = x[start : start + EMBED_BATCH]
            out[start : start + len(chunk)] = self._session.run(None, {self._spec.name: chunk})[0]
            if progress:
                progress(len(chunk))
        return out
