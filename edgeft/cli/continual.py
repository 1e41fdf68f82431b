"""The continual-learning record of a device: ``edgeft eval`` (scores on test data, continual metrics),
``edgeft history`` (every version), ``edgeft rollback`` (an earlier head made current) and ``edgeft report``
(a drawn report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeft.cli.options import BundleArg, EpOpt, JsonOpt, KeepOpt, StateOpt, ThreadsOpt
from edgeft.cli.output import reported
from edgeft.runtime.store import KEEP_VERSIONS


def eval_command(
    ctx: typer.Context,
    bundle: BundleArg,
    state: StateOpt,
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled test data (any format adapt reads).")],
    per_version: Annotated[
        bool, typer.Option("--per-version", help="Also score every retained version's head (overall and per task).")
    ] = False,
    tasks: Annotated[
        bool,
        typer.Option(
            "--tasks",
            help="Split TEST into tasks by the order classes were met: accuracy matrix, average accuracy, "
            "forgetting, backward transfer.",
        ),
    ] = False,
    ep: EpOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy of the current head on TEST (per-class and confusion matrix in --json); continual metrics."""
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.evaluation import evaluate_path
    from edgeft.service.evaluation import format_evaluation

    with reported(ctx):
        adapter = Adapter(bundle, state, ep=ep, threads=threads)
        result = evaluate_path(adapter, data, per_version=per_version, tasks=tasks)
        typer.echo(json.dumps(result) if as_json else format_evaluation(result))


def history(ctx: typer.Context, state: StateOpt, as_json: JsonOpt = False) -> None:
    """List every version: time, origin, samples, prequential and holdout accuracy, promoted or refused and why."""
    from edgeft.runtime.versions import collect_history
    from edgeft.service.versions import format_history

    with reported(ctx):
        rows = collect_history(state)
        typer.echo(json.dumps({"versions": rows}) if as_json else format_history(rows))


def rollback(
    ctx: typer.Context,
    bundle: BundleArg,
    state: StateOpt,
    version: Annotated[
        int | None,
        typer.Argument(min=1, help="The version whose head to restore (default: the previous promoted one)."),
    ] = None,
    keep_versions: KeepOpt = KEEP_VERSIONS,
    metrics_file: Annotated[
        Path | None, typer.Option(help="Prometheus textfile to rewrite atomically after the rollback.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an earlier version's head (with its replay buffer and holdout) current again, as a new version."""
    from edgeft.runtime.adapter import Adapter

    with reported(ctx):
        with Adapter(bundle, state, ep="cpu", keep_versions=keep_versions) as adapter:
            done = adapter.rollback(version)
            if metrics_file is not None:
                from edgeft.service.metrics import write_textfile

                write_textfile(metrics_file, adapter.store.root)
        report = {
            "version": adapter.version,
            "to": done.target.number,
            "head_source": done.head_source,
            "undone_versions": done.undone_versions,
            "undone_inputs": done.undone_inputs,
        }
        if as_json:
            typer.echo(json.dumps(report))
            return
        typer.echo(
            f"version {adapter.version}: rolled back to version {done.target.number} (head trained at version "
            f"{done.head_source}); undid versions {done.undone_versions or 'none'}"
        )
        if done.undone_inputs:
            typer.echo(
                f"{len(done.undone_inputs)} input(s) learned since stay consumed in the journal (status rolled_back); "
                "learn them again with adapt --relearn"
            )


def report(
    ctx: typer.Context,
    bundle: BundleArg,
    state: Annotated[Path, typer.Option("--state", "-s", help="State directory to report on (read only).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write: .html (figure and tables) or .png.")],
    eval_data: Annotated[
        Path | None,
        typer.Option("--eval", help="Labelled data for per-class accuracy (default: the state's holdout reservoir)."),
    ] = None,
    ep: EpOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw STATE's learning curve, versions and promotions, per-class accuracy and confusion matrix."""
    from edgeft.report import write_report

    with reported(ctx):
        shown = write_report(bundle, state, out, eval_data, ep=ep, threads=threads)
        if as_json:
            evaluation = shown.evaluation
            typer.echo(
                json.dumps(
                    {
                        "out": str(out),
                        "version": shown.version,
                        "arrivals": len(shown.arrivals),
                        "refused": len(shown.refused),
                        "accuracy": evaluation.accuracy if evaluation else None,
                        "evaluated_on": evaluation.source if evaluation else None,
                    }
                )
            )
            return
        typer.echo(
            f"wrote {out}: {len(shown.arrivals)} arrivals ({len(shown.refused)} refused), version {shown.version}"
            + (f", accuracy {shown.evaluation.accuracy:.3f} on {shown.evaluation.source}" if shown.evaluation else "")
        )
