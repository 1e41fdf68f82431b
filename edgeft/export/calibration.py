"""How an int8 backbone's activation ranges are calibrated: ORT's calibration methods, computed once per method.

``--keep-float auto`` tries a better calibration before keeping more layers float (quantize.quantize_backbone):
MinMax first (the full range seen), then ORT's Percentile calibration, which clips the rare extreme values that
stretch a tensor's uint8 grid. A calibration's ranges do not depend on which layers stay float, so where
onnxruntime can take them from a file (``quantize_static(calibration_cache_path=...)``, onnxruntime >= 1.2x) each
method runs its calibration pass once per export and every candidate prefix reuses it. Older onnxruntime versions
calibrate inside every ``quantize_static`` call and offer MinMax only here: their Percentile and Entropy calibrators
return garbage for a tensor that is also a graph input (microsoft/onnxruntime#21922).
"""

from __future__ import annotations

import contextlib
import inspect
import io
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """One way to calibrate: ORT's ``method`` (a CalibrationMethod name) with its calibrator ``options``."""

    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """Text for the manifest, e.g. 'MinMax calibration' or 'Percentile (99.999%) calibration'."""
        detail = f" ({self.options['percentile']}%)" if "percentile" in self.options else ""
        return f"{self.method}{detail} calibration"


MINMAX = Calibration("minmax", "MinMax")
# ORT's default percentile. (BENCHMARKS.md, "int8 calibration": measured against MinMax and Entropy on the default
# backbone.)
PERCENTILE = Calibration("percentile", "Percentile", {"percentile": 99.999})
# In the order --keep-float auto tries them: at equal float layers the earlier one is kept.
AUTO_CALIBRATIONS = (MINMAX, PERCENTILE)
BATCH = 16  # samples per calibration pass (RangeCache.file)


@cache
def ranges_reusable() -> bool:
    """Whether this onnxruntime's quantize_static takes calibrated ranges from a file (calibration_cache_path)."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def usable(calibrations: tuple[Calibration, ...] = AUTO_CALIBRATIONS) -> tuple[Calibration, ...]:
    """The calibrations this onnxruntime can run correctly: all where ranges are reusable, else MinMax only."""
    return calibrations if ranges_reusable() else tuple(c for c in calibrations if c.method == "MinMax")


class RangeCache:
    """Calibrated ranges of a prepared model, one ORT cache file per calibration, computed on first use."""

    def __init__(self, prepared: Path, folder: Path, reader_factory: Any, samples: int) -> None:
        """``reader_factory(part)``: a fresh ORT CalibrationDataReader over the calibration samples ``[part]`` (a
        slice) in one batch; ``samples``: how many there are."""
        self._prepared, self._folder, self._reader_factory = prepared, folder, reader_factory
        self._samples = samples
        self._files: dict[str, Path] = {}

    def file(self, calibration: Calibration) -> Path | None:
        """The cache file of ``calibration``'s ranges (None where this onnxruntime cannot reuse ranges)."""
        if not ranges_reusable():
            return None
        if calibration.name not in self._files:
            from onnxruntime.quantization import CalibrationMethod
            from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
            from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

            calibrator = create_calibrator(
                self._prepared,
                sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),  # what quantize_static calibrates
                augmented_model_path=str(self._folder / f"augmented-{calibration.name}.onnx"),
                calibrate_method=getattr(CalibrationMethod, calibration.method),
                extra_options=dict(calibration.options),
            )
            with contextlib.redirect_stdout(io.StringIO()):  # ORT prints its progress: keep --json output clean
                # one batch a call: ORT's histogram calibrators keep every intermediate output of a call in memory
                # (16 GB for 256 EfficientNet-Lite0 samples) and cannot stack batches of different sizes
                for start in range(0, self._samples, BATCH):
                    calibrator.collect_data(self._reader_factory(slice(start, start + BATCH)))
                ranges = calibrator.compute_data()
            _check_finite(ranges, calibration)
            path = self._folder / f"ranges-{calibration.name}.json"
            save_tensors_data(ranges, path)
            self._files[calibration.name] = path
        return self._files[calibration.name]


def _check_finite(ranges: Any, calibration: Calibration) -> None:
    """ValueError when a calibrated range is not finite (quantize.py reports it as the quantisation failing)."""
    for name in ranges:
        data = ranges[name]
        if not all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in data.range_value):
            raise ValueError(f"{calibration.describe()} gave tensor '{name}' a range that is not finite")
