"""``edgeft demo``: the main job on the shipped default bundle, printed as it goes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeft.cli.options import EpOpt, HeadLearnerOpt, ShrinkageOpt, ThreadsOpt, TrainerOpt
from edgeft.cli.output import number, reported, settings
from edgeft.runtime.slda import DEFAULT_SHRINKAGE


def demo(
    ctx: typer.Context,
    state: Annotated[
        Path | None, typer.Option("--state", "-s", help="Keep the state here (default: a temp dir).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per arriving chunk (default: bundle's).")] = None,
    ep: EpOpt = "auto",
    trainer: TrainerOpt = "auto",
    head_learner: HeadLearnerOpt = "sgd",
    shrinkage: ShrinkageOpt = DEFAULT_SHRINKAGE,
    threads: ThreadsOpt = None,
) -> None:
    """The main job: adapt the shipped default bundle on the demo stream, report held-out accuracy."""
    from edgeft.demo import demo_run
    from edgeft.progress import progress_bar

    options = {"trainer": trainer, "head_learner": head_learner, "shrinkage": shrinkage}
    with reported(ctx), demo_run(state, ep=ep, threads=threads, **options) as run:
        typer.echo(
            f"edgeft demo: {run.backbone} backbone, {len(run.classes)} new classes, {len(run.chunks)} arriving "
            f"chunks, {run.test_samples} held-out samples, on {run.provider}"
        )
        before = run.accuracy()
        typer.echo(f"held-out accuracy before adaptation: {before:.3f}")
        with progress_bar("adapting", run.work(epochs), enabled=not settings(ctx).quiet) as advance:
            for step in run.adapt(epochs, advance):
                result = step.result
                verdict = "promoted" if result.promoted else f"refused ({result.reason})"
                typer.echo(
                    f"  {step.name}: {result.samples} samples ({result.held_out} kept as holdout), loss "
                    f"{number(result.loss)}, version {result.version} {verdict}, held-out accuracy {step.accuracy:.3f}"
                )
        typer.echo(f"held-out accuracy after adaptation: {run.accuracy():.3f} (before: {before:.3f})")
