"""Whether an int8 backbone's features agree with the float backbone's, and the probe an int8 bundle carries.

At export (edgeft.export.quantize) the features of held-out calibration samples must point the same way as the
float ones (mean cosine similarity) and, when the samples are labelled, a linear probe on them may not lose
accuracy beyond a bound; the first held-out inputs and their float features ship as the bundle's probe, which a
device runs on its own CPU's kernels before it trusts the int8 backbone (edgeft.runtime.int8_check).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from edgeft.common.int8_probe import PROBE_FILE, save_probe
from edgeft.common.paired_test import lost_and_won, significantly_worse
from edgeft.data.readers import Samples
from edgeft.errors import EdgeftError

# The probe an int8 bundle carries (runtime.int8_check): PROBE_SAMPLES held-out inputs and their float features; a
# device must reach the export machine's own probe agreement less PROBE_MARGIN (kernels that accumulate exactly
# differ only in float rounding, far below it; saturating ones cost the default bundle 0.04).
PROBE_SAMPLES = 16
PROBE_MARGIN = 0.01

# The export fails below these: features of held-out samples must point the same way as the float ones, and a
# linear probe on them may not lose more than MAX_PROBE_DROP accuracy significantly (a sign test over the samples
# the float and int8 probes disagree on, as the promotion guard does), nor more than twice that at all (checked
# with at least PROBE_MIN_SAMPLES).
MIN_MEAN_COSINE = 0.9
MAX_PROBE_DROP = 0.03
PROBE_MIN_SAMPLES = 100
PROBE_FOLDS = 5
PROBE_RIDGE = 1.0


def write_probe(folder: Path, x: np.ndarray, reference: np.ndarray, features: np.ndarray) -> dict[str, Any]:
    """Save the first PROBE_SAMPLES held-out inputs and float features as PROBE_FILE in ``folder``; return the
    manifest's ``probe`` record: the file and the mean cosine a device must reach (this machine's less
    PROBE_MARGIN, at least MIN_MEAN_COSINE)."""
    count = min(PROBE_SAMPLES, len(x))
    save_probe(folder / PROBE_FILE, x[:count], reference[:count])
    here = float(cosines(reference[:count], features[:count]).mean())
    return {
        "file": PROBE_FILE,
        "samples": count,
        "export_mean_cosine": round(here, 4),
        "min_mean_cosine": round(max(MIN_MEAN_COSINE, here - PROBE_MARGIN), 4),
    }


def compare_features(
    reference: np.ndarray, features: np.ndarray, calibration: Samples, held: np.ndarray, how: str = ""
) -> dict[str, Any]:
    """The agreement record of the int8 and float (``reference``) features of the ``held`` calibration samples;
    raise EdgeftError when they disagree (``how``: what was quantised, for the message)."""
    cosine = cosines(reference, features)
    record: dict[str, Any] = {
        "held_out_samples": int(len(held)),
        "mean_cosine": round(float(cosine.mean()), 4),
        "min_cosine": round(float(cosine.min()), 4),
        "min_mean_cosine": MIN_MEAN_COSINE,
    }
    labels = calibration.y[held] if calibration.y is not None else None
    probe_lost = False
    if labels is not None and len(held) >= PROBE_MIN_SAMPLES and len(np.unique(labels)) > 1:
        right_float, right_int8 = probe_correct(reference, labels), probe_correct(features, labels)
        lost, won = lost_and_won(right_float, right_int8)
        record.update(
            probe_accuracy_float=round(float(right_float.mean()), 4),
            probe_accuracy_int8=round(float(right_int8.mean()), 4),
            probe_samples_lost=lost,
            probe_samples_won=won,
            max_probe_drop=MAX_PROBE_DROP,
        )
        probe_lost = probe_fails(lost, won, len(held))
    if record["mean_cosine"] < MIN_MEAN_COSINE or probe_lost:
        figures = ", ".join(f"{k} {v}" for k, v in record.items())
        raise EdgeftError(
            f"{calibration.origin}: the int8 backbone's features disagree with the float ones on held-out calibration "
            f"samples ({figures}){' ' + how if how else ''}; the quantisation is not shipped"
        )
    return record


def probe_fails(lost: int, won: int, samples: int) -> bool:
    """Whether the int8 probe loses to the float one beyond the limits: ``lost``/``won`` are the held-out
    ``samples`` only the float / only the int8 probe classifies right (so the accuracy drop is their difference)."""
    excess = lost - won
    return excess > 2 * MAX_PROBE_DROP * samples + 1e-9 or (
        excess > MAX_PROBE_DROP * samples + 1e-9 and significantly_worse(lost, won)
    )


def probe_correct(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample, whether a ridge-regression classifier on standardised features, trained on the other folds
    (PROBE_FOLDS), classifies it right."""
    classes, y = np.unique(labels, return_inverse=True)
    targets = np.eye(len(classes))[y]
    folds = np.arange(len(features)) % PROBE_FOLDS
    correct = np.zeros(len(features), bool)
    for fold in range(PROBE_FOLDS):
        train, test = folds != fold, folds == fold
        mean, std = features[train].mean(0), features[train].std(0) + 1e-6
        a, b = (features[train] - mean) / std, (features[test] - mean) / std
        dual = np.linalg.solve(a @ a.T + PROBE_RIDGE * a.shape[1] * np.eye(len(a)), targets[train])
        correct[test] = (b @ (a.T @ dual)).argmax(1) == y[test]
    return correct


def cosines(reference: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Per row, the cosine similarity of ``features`` to ``reference`` (0 where either is zero)."""
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(features, axis=1)
    return np.sum(reference * features, axis=1) / np.maximum(norms, np.finfo(np.float32).tiny)


def embed(model: str | bytes, input_name: str, x: np.ndarray) -> np.ndarray:
    """The features ``model`` (a path or serialised ONNX) gives ``x``, on the CPU, 64 samples a run."""
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {input_name: x[i : i + 64]})[0] for i in range(0, len(x), 64)])
