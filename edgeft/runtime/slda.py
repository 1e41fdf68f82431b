"""Head learners that do not forget by construction: streaming LDA and nearest class mean, written as a linear head.

``slda`` (Hayes & Kanan, "Lifelong Machine Learning with Deep Streaming Linear Discriminant Analysis", CVPRW
2020) keeps per-class counts and means and one covariance shared by all classes; ``ncm`` keeps the class means
and only the covariance's trace (one isotropic variance). Both are updated in one pass over each arrival, need
no epochs and no replay, and their state (``edgeft.runtime.class_statistics``) does not grow with the samples.
Each arrival, the statistics are turned into the head's final linear layer — W, b such that the head's logits
are the discriminant scores — so prediction, the guard, export-inference and int8 stay as they are.

With class means μ_k, the shared covariance Σ (within-class scatter / samples) and σ² = trace(Σ) / D, streaming
LDA scores x by w_kᵀx − ½ μ_kᵀw_k with w_k = Λμ_k, Λ = ((1 − ε)Σ + εσ²I)⁻¹ (no class priors, as the paper).
The shrinkage ε pulls Σ toward σ²I, a target scaled like the features (the paper adds ε·I to features of unit
scale), so the scores do not depend on the features' scale. The paper's ε = 1e-4 suits many more samples than
features (ImageNet: 1.2M samples, 512 features); on a device that has seen fewer samples than the backbone has
features (the digits: 1,257 scans, 1,280 features) the covariance is singular and 1e-4 overfits (0.866 final
accuracy class-incrementally, against 0.968 with 0.1). The default, 0.1, was chosen on validation splits of the
training stream (BENCHMARKS.md, streaming heads), not on the test scans. NCM is the case
ε = 1: w_k = μ_k / σ² (the Gaussian log-likelihood with covariance σ²I, so −‖x − μ_k‖² / (2σ²) up to a
constant). Everything is computed in float64 on the features relative to the head's frozen normaliser mean,
then folded through its scale into the head's float32 weight and bias. Outputs no sample has taught yet get a
zero row and a bias of ``UNSEEN_BIAS``, so they are never predicted.

``slda+sgd`` writes the streaming-LDA head, then trains it with the bundle's SGD/AdamW train step on the arrival
(and the replay buffer) as ``sgd`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgeft.bundle import Bundle
from edgeft.common.positive_definite import solve_positive_definite
from edgeft.errors import EdgeftError
from edgeft.runtime.class_statistics import FLEET_STATISTICS_FILE, STATISTICS_FILE, ClassStatistics
from edgeft.runtime.statistics_log import FLEET, StatisticsLog, load_statistics

if TYPE_CHECKING:
    from edgeft.runtime.store import StateStore, Version
    from edgeft.runtime.trainer import Trainer

HEAD_LEARNERS = ("sgd", "slda", "ncm", "slda+sgd")
DEFAULT_SHRINKAGE = 0.1
UNSEEN_BIAS = -1e9
WEIGHT, BIAS = "head.weight", "head.bias"


@dataclass(frozen=True)
class ClosedFormHead:
    """How a closed-form learner turns class statistics into the head's final layer."""

    kind: str  # "slda" or "ncm"
    shrinkage: float
    then_sgd: bool = False

    @property
    def full(self) -> bool:
        """Whether the learner needs the whole covariance (LDA) or only its trace (NCM)."""
        return self.kind == "slda"

    def empty(self, bundle: Bundle) -> ClassStatistics:
        """Statistics of no samples for this bundle's head."""
        head = bundle.manifest.head
        return ClassStatistics.empty(head.num_outputs, head.feature_dim, self.full)

    def linear_head(
        self, statistics: ClassStatistics, mean: np.ndarray, scale: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The final layer's weight [K, D] and bias [K] (float32) for a head computing ((x − mean)·scale)Wᵀ + b."""
        centred = statistics.means() - np.asarray(mean, np.float64)
        variance = statistics.within_class_variance()
        variance = variance if variance > 1e-12 else 1.0  # one sample per class: no spread to measure yet
        if self.kind == "ncm":
            weight = centred / variance
        else:
            # (1 − ε)Σ + εσ²I, built in the scatter's own fresh array (no further D×D temporaries)
            shrunk = statistics.within_class_scatter()
            shrunk *= (1.0 - self.shrinkage) / max(statistics.total, 1)
            shrunk.flat[:: len(shrunk) + 1] += self.shrinkage * variance
            weight = solve_positive_definite(shrunk, centred.T).T
        bias = -0.5 * np.einsum("kd,kd->k", centred, weight)
        unseen = statistics.counts == 0
        weight[unseen], bias[unseen] = 0.0, UNSEEN_BIAS
        return (weight / np.asarray(scale, np.float64)).astype(np.float32), bias.astype(np.float32)


def head_learner_name(wanted: str) -> str:
    """``wanted`` normalised (one of ``HEAD_LEARNERS``), or a clear error."""
    choice = wanted.strip().lower()
    if choice not in HEAD_LEARNERS:
        raise EdgeftError(f"unknown head learner '{wanted}'; choose one of {', '.join(HEAD_LEARNERS)}")
    return choice


def closed_form_head(bundle: Bundle, learner: str, shrinkage: float = DEFAULT_SHRINKAGE) -> ClosedFormHead | None:
    """The closed-form learner for ``learner`` (None for plain ``sgd``), or a clear error if ``bundle``'s head or
    loss does not allow one."""
    choice = head_learner_name(learner)
    if choice == "sgd":
        return None
    head = bundle.manifest.head
    if not 0.0 < shrinkage <= 1.0:
        raise EdgeftError(f"shrinkage must be in (0, 1] (got {shrinkage})")
    if head.kind != "linear" or head.hidden or head.unfrozen or not {WEIGHT, BIAS} <= set(head.trainable):
        raise EdgeftError(
            f"bundle {bundle.path}: head learner '{choice}' needs a linear head on frozen features; this head is "
            f"'{head.kind}'{' with unfrozen layers' if head.unfrozen else ''} (export with --head linear, or use sgd)"
        )
    if head.task != "classification" or head.loss != "cross_entropy":
        raise EdgeftError(
            f"bundle {bundle.path}: head learner '{choice}' needs single-label classification with cross-entropy; "
            f"this head is for {head.task} with {head.loss} (use --head-learner sgd)"
        )
    return ClosedFormHead("ncm" if choice == "ncm" else "slda", shrinkage, then_sgd=choice == "slda+sgd")


def learn_statistics(
    learner: ClosedFormHead,
    trainer: Trainer,
    statistics: ClassStatistics,
    features: np.ndarray,
    labels: np.ndarray,
    normaliser: dict[str, str],
    others: ClassStatistics | None = None,
) -> None:
    """Add one arrival to ``statistics`` (in place) and write the linear head of them (and of ``others``, the
    fleet's other devices' statistics, when given) into ``trainer``."""
    statistics.add(features, labels)
    parameters = trainer.parameters()
    mean = parameters[normaliser["mean"]] if normaliser else np.zeros(features.shape[1])
    scale = parameters[normaliser["scale"]] if normaliser else np.ones(features.shape[1])
    weight, bias = learner.linear_head(statistics.merged(others) if others else statistics, mean, scale)
    trainer.set_parameters({**parameters, WEIGHT: weight, BIAS: bias})


def stored_statistics(
    learner: ClosedFormHead, bundle: Bundle, store: StateStore, version: Version | None
) -> tuple[ClassStatistics, StatisticsLog]:
    """The statistics a version carries (none learned yet: empty) and the log that continues them
    (``edgeft.runtime.statistics_log``), or a clear error when its samples were learned without them (by ``sgd``)
    or with only NCM's trace when LDA needs the whole covariance."""
    learned = sum(version.record.class_counts.values()) if version else 0
    if not learned:
        return learner.empty(bundle), StatisticsLog()
    if STATISTICS_FILE not in version.files:
        raise EdgeftError(
            f"state version {version.number}'s head learned {learned} samples without class "
            f"statistics (head learner sgd); {learner.kind} needs them from every sample: use a new --state"
        )
    head = bundle.manifest.head
    path = version.files[STATISTICS_FILE]
    statistics, log = load_statistics(store, version, path, head.num_outputs, head.feature_dim, learner.full)
    if learner.full and not statistics.full:
        raise EdgeftError(
            f"{path} holds nearest-class-mean statistics (no covariance); slda needs the "
            "covariance of every sample: use a new --state, or keep --head-learner ncm"
        )
    return statistics, log


def stored_fleet_statistics(
    learner: ClosedFormHead, bundle: Bundle, store: StateStore, version: Version | None
) -> tuple[ClassStatistics, StatisticsLog] | None:
    """The other devices' statistics that came with the last adopted fleet head and the log that keeps them (its
    snapshot segment, ``edgeft.runtime.statistics_log``), if a version carries them."""
    if version is None or FLEET_STATISTICS_FILE not in version.files:
        return None
    head = bundle.manifest.head
    path = version.files[FLEET_STATISTICS_FILE]
    return load_statistics(store, version, path, head.num_outputs, head.feature_dim, learner.full, FLEET)
