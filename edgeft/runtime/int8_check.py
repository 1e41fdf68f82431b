"""Does this CPU run a bundle's int8 backbone as the export machine did? The probe check and its per-CPU cache.

ONNX Runtime picks its int8 kernels by CPU: x86 with VNNI and arm64 accumulate uint8×int8 products exactly, while
x86 with AVX2 (or AVX-512) but without VNNI adds pairs of products in saturating int16 (``vpmaddubsw``), so the
same backbone can give other features there. An int8 bundle carries a probe (``int8_probe.npz``: a few held-out
calibration inputs and the float backbone's features of them) and the agreement it must reach; the check runs the
probe through the int8 backbone here. Its result is cached per CPU signature in the state directory. Where it
disagrees, the runtime uses the float backbone the bundle ships beside the int8 one (``--int8-fallback``, the
export's default), with a warning, or refuses the bundle when it ships none.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from edgeft.bundle import Bundle
from edgeft.common.atomic import write_atomic
from edgeft.common.int8_probe import cpu_signature
from edgeft.errors import EdgeftError

CACHE_FILE = "int8_check.json"


class Int8FallbackWarning(UserWarning):
    """An int8 bundle's self-check failed on this CPU, so its float backbone is used instead (slower, correct)."""


def check_bundle(bundle: Bundle) -> dict[str, Any] | None:
    """Run the bundle's int8 probe here; None for a bundle without one (a float backbone or an older export).

    Returns ``{"cpu", "mean_cosine", "min_mean_cosine", "samples", "ok", "backbone"}``; ``backbone`` is the one
    this CPU runs: ``int8``, ``float`` (the bundle's float fallback, when the check failed) or ``none`` (failed,
    no fallback: the bundle is refused here)."""
    rule = bundle.manifest.quantization.get("probe")
    if not rule:
        return None
    with np.load(bundle.path / rule["file"], allow_pickle=False) as data:
        x, reference = data["x"], data["features"]
    session = onnxruntime.InferenceSession(str(bundle.backbone_path), providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {bundle.manifest.input.name: x})
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(features, axis=1)
    cosine = np.sum(reference * features, axis=1) / np.maximum(norms, np.finfo(np.float32).tiny)
    mean = round(float(cosine.mean()), 4)
    threshold = float(rule["min_mean_cosine"])
    return {
        "cpu": cpu_signature(),
        "mean_cosine": mean,
        "min_mean_cosine": threshold,
        "samples": int(len(x)),
        "ok": mean >= threshold,
        "backbone": "int8" if mean >= threshold else "float" if bundle.float_backbone_path else "none",
    }


def backbone_to_use(bundle: Bundle, result: dict[str, Any] | None) -> Path:
    """The backbone file this CPU runs, given the bundle's check ``result`` (cached_check): the bundle's own
    backbone when it passed or has no probe; the float fallback, with an Int8FallbackWarning, when it failed and the
    bundle ships one; else the refusal (EdgeftError)."""
    if result is None or result["ok"]:
        return bundle.backbone_path
    fallback = bundle.float_backbone_path
    if fallback is None:
        raise refusal(bundle, result)
    warnings.warn(f"{bundle.path}: {describe(result)}", Int8FallbackWarning, stacklevel=2)
    return fallback


def cached_check(bundle: Bundle, state: Path) -> dict[str, Any] | None:
    """check_bundle, run once per CPU signature and bundle: the results live in ``state/int8_check.json``."""
    if not bundle.manifest.quantization.get("probe"):
        return None
    path = state / CACHE_FILE
    key = f"{bundle.manifest.files['backbone.onnx']}@{cpu_signature()}"
    known = _read(path)
    if key not in known:
        known[key] = check_bundle(bundle)
        state.mkdir(parents=True, exist_ok=True)
        text = json.dumps(known, indent=2, sort_keys=True) + "\n"
        write_atomic(path, lambda tmp: tmp.write_text(text))
    return known[key]


def read_checks(state: Path) -> list[dict[str, Any]]:
    """The int8 checks cached in ``state`` (one per bundle backbone and CPU signature), for ``status``."""
    return list(_read(state / CACHE_FILE).values())


def _read(path: Path) -> dict[str, Any]:
    """The cache file's results by key; empty when missing or unreadable (the checks then run again)."""
    try:
        known = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return known if isinstance(known, dict) else {}


def describe(result: dict[str, Any]) -> str:
    """One line for logs, ``info`` and ``check``."""
    verdict = "agrees" if result["ok"] else "DISAGREES"
    used = {"float": "; the bundle's float backbone is used instead (float speed)", "none": "; no float fallback"}
    return (
        f"int8 backbone {verdict} with the float one on this CPU ({result['cpu']}): probe mean cosine "
        f"{result['mean_cosine']} (needs {result['min_mean_cosine']}, {result['samples']} samples)"
        f"{used.get(result.get('backbone', ''), '')}"
    )


def refusal(bundle: Bundle, result: dict[str, Any]) -> EdgeftError:
    """The error for a bundle whose int8 kernels disagree here, saying what to do."""
    return EdgeftError(
        f"{bundle.path}: {describe(result)}. This CPU's int8 kernels give other features than the export machine's; "
        "use the float bundle here, or re-export with --target-cpu avx2 (7-bit weights that no x86 kernel "
        "saturates) or with --int8-fallback (ships the float backbone for such CPUs), and run `edgeft check BUNDLE` "
        "on the device"
    )
