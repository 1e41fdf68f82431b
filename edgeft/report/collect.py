"""Gather a report from a state directory: its metrics log, and the current head judged on labelled samples.

Reading only: no lock is taken and nothing in the state directory changes. Without ``--eval`` the report needs no
backbone: the state store gives the current version (verified), the replay store its holdout features, and the
head alone (``head.onnx``) predicts them. ``--eval`` data are raw inputs, so only then is an ``Adapter`` opened
(backbone and head) to embed them and to run ``edgeft eval``'s per-version and per-task evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeft.bundle import Bundle
from edgeft.common.ort import resolve_placement
from edgeft.data.readers import concatenated, read_path
from edgeft.data.targets import is_target_task
from edgeft.errors import EdgeftError
from edgeft.report.data import Evaluation, Report, arrivals, confusion_matrix
from edgeft.runtime import replay_store
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.evaluation import evaluate
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.history import METRICS_FILE, metrics_row, read_lines
from edgeft.runtime.labels import encode_known
from edgeft.runtime.replay import ReplayBuffer
from edgeft.runtime.store import StateStore, Version
from edgeft.runtime.trainer import HeadPredictor, stored_state


def collect(
    bundle: Bundle | str | Path,
    state: str | Path,
    eval_path: str | Path | None = None,
    *,
    ep: str = "auto",
    threads: int | None = None,
) -> Report:
    """The report of ``state``: every arrival, and the current head's confusion matrix on ``eval_path`` or holdout."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    head = bundle.manifest.head
    if is_target_task(head):
        raise EdgeftError(
            f"the report draws a classifier's accuracy and confusion matrix; this {head.task} head's figures are "
            "in edgeft eval, history and status"
        )
    store = StateStore(state, bundle.fingerprint)
    current = store.current()
    if current is None:
        raise EdgeftError(f"state {state} has no versions yet; learn from data with edgeft adapt first")
    classes = list(bundle.manifest.classes if current.record.classes is None else current.record.classes)
    rows = list(read_lines(Path(state) / METRICS_FILE))
    rows += _unlogged_rows(store, {int(row["version"]) for row in rows if "version" in row})
    continual = None
    if eval_path is not None:
        adapter = Adapter(bundle, state, ep=ep, threads=threads)  # raw inputs: the backbone must run
        evaluation, note = _evaluate_file(adapter, Path(eval_path)), ""
        x, y = concatenated(read_path(Path(eval_path), bundle.manifest, need_labels=True), str(eval_path))
        continual = evaluate(adapter, x, y, per_version=True, tasks=True, origin=str(eval_path))
    else:
        predictor = HeadPredictor(bundle, resolve_placement(ep), threads)
        evaluation, note = _evaluate_holdout(bundle, store, current, classes, predictor)
    record = current.record
    return Report(
        bundle=str(bundle.path),
        state=str(state),
        version=current.number,
        head_version=current.number if record.head_version is None else record.head_version,
        classes=classes,
        arrivals=arrivals(rows),
        evaluation=evaluation,
        note=note,
        continual=continual,
    )


def _unlogged_rows(store: StateStore, logged: set[int]) -> list[dict]:
    """Metrics rows of retained versions the log lacks (a crash between a commit and its log line)."""
    return [metrics_row(store.load(n)) for n in store.retained() if n not in logged]


def _evaluate_file(adapter: Adapter, path: Path) -> Evaluation:
    samples = read_path(path, adapter.bundle.manifest, need_labels=True)
    labels = np.concatenate([encode_known(np.asarray(s.y), adapter.classes, s.origin) for s in samples])
    predicted = np.concatenate([adapter.predict_proba(s.x, s.origin).argmax(axis=1) for s in samples])
    return Evaluation(f"eval data {path}", adapter.classes, confusion_matrix(labels, predicted, len(adapter.classes)))


def _evaluate_holdout(
    bundle: Bundle, store: StateStore, version: Version, classes: list[str], predictor: HeadPredictor
) -> tuple[Evaluation | None, str]:
    """The current head on its own version's holdout reservoir (never trained on), or why there is none."""
    head = bundle.manifest.head
    holdout = ReplayBuffer(head.feature_dim, head.num_outputs, GuardPolicy().holdout_per_class)
    replay_store.load(store, version, {"holdout": holdout})
    if not len(holdout):
        return None, "the holdout reservoir is empty (guard off or a fixed --holdout); pass --eval FILE"
    parameters = stored_state(bundle, version.files).parameters
    predicted = predictor.probabilities(holdout.features, parameters, len(classes)).argmax(axis=1)
    source = f"the holdout reservoir of version {version.number}"
    return Evaluation(source, classes, confusion_matrix(holdout.labels, predicted, len(classes))), ""
