"""``edgeft predict``: labels (or label sets, or values) from the current head of a state directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from edgeft.cli.options import BundleArg, EpOpt, JsonOpt, StateOpt, ThreadsOpt
from edgeft.cli.output import reported, settings

if TYPE_CHECKING:
    from edgeft.data.readers import Samples
    from edgeft.runtime.adapter import Adapter


def predict(
    ctx: typer.Context,
    bundle: BundleArg,
    inputs: Annotated[list[Path], typer.Argument(help="Image files, .npy or .npz (x) files.")],
    state: StateOpt,
    top: Annotated[int, typer.Option(min=1, help="How many classes to show per sample.")] = 1,
    ep: EpOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict labels with the current head of the state directory (label sets or values for multi-label and
    regression heads)."""
    from edgeft.data.readers import read_path
    from edgeft.progress import progress_bar
    from edgeft.runtime.adapter import Adapter

    quiet = settings(ctx).quiet
    with reported(ctx):
        adapter = Adapter(bundle, state, ep=ep, threads=threads)
        loaded = [s for path in inputs for s in read_path(path, adapter.bundle.manifest, need_labels=False)]
        rows = []
        total = sum(len(s.x) for s in loaded)
        if adapter.metric != "accuracy":
            _predict_targets(adapter, loaded, total, as_json, quiet)
            return
        with progress_bar("predicting", total, enabled=not quiet) as advance:
            predicted = [(s, adapter.predict_proba_features(adapter.embed(s.x, s.origin, advance))) for s in loaded]
        for samples, probs in predicted:
            for i, p in enumerate(probs):
                order = np.argsort(-p)[:top]
                rows.append(
                    {
                        "input": samples.origin if len(probs) == 1 else f"{samples.origin}#{i}",
                        "label": adapter.classes[int(order[0])],
                        "probability": float(p[order[0]]),
                        "top": [{"label": adapter.classes[int(k)], "probability": float(p[k])} for k in order],
                    }
                )
        if as_json:
            typer.echo(json.dumps({"version": adapter.version, "predictions": rows}))
        else:
            for row in rows:
                shown = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top"])
                typer.echo(f"{row['input']}\t{shown}")


def _predict_targets(adapter: Adapter, loaded: list[Samples], total: int, as_json: bool, quiet: bool) -> None:
    """``predict`` for a multi-label head (label set and per-label scores) or a regression head (values)."""
    from edgeft.progress import progress_bar
    from edgeft.runtime.tasks import prediction, prediction_text

    head, thresholds = adapter.bundle.manifest.head, adapter.thresholds
    rows = []
    with progress_bar("predicting", total, enabled=not quiet) as advance:
        for samples in loaded:
            scores = adapter.outputs_features(adapter.embed(samples.x, samples.origin, advance))
            for i, row in enumerate(scores):
                name = samples.origin if len(scores) == 1 else f"{samples.origin}#{i}"
                rows.append({"input": name, **prediction(head, row, thresholds, adapter.classes)})
    if as_json:
        typer.echo(json.dumps({"version": adapter.version, "task": head.task, "predictions": rows}))
    else:
        for row in rows:
            typer.echo(f"{row['input']}\t{prediction_text(row)}")
