"""``edgeft adapt``: learn the head from new labelled data, once (--data) or from an inbox (--watch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeft.cli.options import (
    BundleArg,
    EpOpt,
    HeadLearnerOpt,
    JsonOpt,
    KeepOpt,
    ShrinkageOpt,
    StateOpt,
    ThreadsOpt,
    TrainerOpt,
)
from edgeft.cli.output import EXIT_ERROR, Settings, fail, number, reported, settings
from edgeft.common.budget import detect_budget
from edgeft.data.limits import COALESCE_SAMPLES, MAX_ARRIVAL_SAMPLES, ArrivalLimits
from edgeft.runtime import drift, guard
from edgeft.runtime.attempts import KEEP_ERRORS, MAX_ATTEMPTS
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.schedule import SCHEDULES
from edgeft.runtime.slda import DEFAULT_SHRINKAGE
from edgeft.runtime.store import KEEP_VERSIONS

if TYPE_CHECKING:
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.watch import EntryPolicy


def adapt(
    ctx: typer.Context,
    bundle: BundleArg,
    state: StateOpt,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data", "-d", help="Data to learn now: .npz/.csv/.jsonl file, folder, or - for JSON lines on stdin."
        ),
    ] = None,
    watch: Annotated[
        Path | None, typer.Option(help="Inbox folder: learn each entry dropped into it, until SIGTERM/SIGINT.")
    ] = None,
    once: Annotated[bool, typer.Option(help="With --watch: learn what is in the inbox now, then exit.")] = False,
    poll: Annotated[float, typer.Option(min=0.05, help="With --watch: seconds between inbox scans.")] = 1.0,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per arrival (default: bundle's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size (default: bundle's).")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Learning rate (default: bundle's).")] = None,
    schedule: Annotated[str, typer.Option(help="Learning-rate schedule per arrival: constant or cosine.")] = "constant",
    seed: Annotated[int | None, typer.Option(help="Shuffling seed (default: bundle's).")] = None,
    replay_per_class: Annotated[
        int | None, typer.Option(min=0, help="Replay buffer size per class (default: bundle's; 0: off).")
    ] = None,
    replay_mb: Annotated[float | None, typer.Option(min=0.0, help="Cap on the replay buffer's memory, MiB.")] = None,
    holdout_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of each arrival kept as holdout, never trained on.")
    ] = guard.HOLDOUT_FRACTION,
    holdout: Annotated[
        Path | None, typer.Option(help="A fixed labelled holdout set instead of a share of each arrival.")
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Largest holdout-accuracy (multi-label: micro-F1) drop a new head may have and still be promoted; "
            "for regression, the largest relative rise of the error.",
        ),
    ] = guard.TOLERANCE,
    no_guard: Annotated[bool, typer.Option("--no-guard", help="Promote every new head; hold nothing out.")] = False,
    drift_delta: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Drift signal: the rise of the error rate per arrival taken for noise (lower: more sensitive).",
        ),
    ] = drift.DELTA,
    drift_threshold: Annotated[
        float,
        typer.Option(
            help="Drift signal: the Page-Hinkley statistic that raises an alarm (lower: sooner, more false alarms).",
        ),
    ] = drift.THRESHOLD,
    drift_min_arrivals: Annotated[
        int, typer.Option(min=1, help="Drift signal: arrivals since the last alarm before another may be raised.")
    ] = drift.MIN_ARRIVALS,
    tune_thresholds: Annotated[
        bool, typer.Option(help="Multi-label: tune each label's threshold on the holdout after each promotion.")
    ] = False,
    relearn: Annotated[bool, typer.Option(help="Learn inputs even if the journal says they were learned.")] = False,
    eval_data: Annotated[
        Path | None, typer.Option("--eval", help="Labelled held-out data to report accuracy on.")
    ] = None,
    log_format: Annotated[
        str, typer.Option(help="Watch-mode events: auto (text on a terminal, else JSON lines), json or text.")
    ] = "auto",
    log_file: Annotated[
        Path | None, typer.Option(help="Write watch-mode events to this file (rotated at 10 MiB, 3 kept).")
    ] = None,
    metrics_file: Annotated[
        Path | None, typer.Option(help="Prometheus textfile to rewrite atomically after every update.")
    ] = None,
    memory_budget: Annotated[
        str,
        typer.Option(
            help="Memory this process may use: a size (1500M, 1.5G) or auto (the cgroup's memory limit, else "
            "RLIMIT_AS, else half of MemAvailable). Arrivals that would not fit are refused up front."
        ),
    ] = "auto",
    max_arrival_samples: Annotated[
        int, typer.Option(min=0, help="Most samples one arrival may hold; larger ones are refused (0: no cap).")
    ] = MAX_ARRIVAL_SAMPLES,
    max_attempts: Annotated[
        int,
        typer.Option(
            min=1,
            max=KEEP_ERRORS,
            help="With --watch: an entry that killed the learner (or failed alike) this often is quarantined.",
        ),
    ] = MAX_ATTEMPTS,
    coalesce: Annotated[
        int,
        typer.Option(
            min=0,
            help="With --watch: entries waiting together are learned as one arrival (one version) of up to about "
            "this many samples; 0 or 1: one arrival per entry.",
        ),
    ] = COALESCE_SAMPLES,
    keep_versions: KeepOpt = KEEP_VERSIONS,
    ep: EpOpt = "auto",
    trainer: TrainerOpt = "auto",
    head_learner: HeadLearnerOpt = "sgd",
    shrinkage: ShrinkageOpt = DEFAULT_SHRINKAGE,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Learn the head from new labelled data (--data now, or --watch an inbox) and commit versions to STATE."""
    from edgeft.bundle import Bundle
    from edgeft.data.readers import concatenated, read_path
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.watch import EntryPolicy

    if (data is None) == (watch is None):
        raise typer.BadParameter("give exactly one of --data or --watch", param_hint="--data/--watch")
    if schedule not in SCHEDULES:
        raise typer.BadParameter(f"choose one of {', '.join(SCHEDULES)}", param_hint="--schedule")
    if log_format not in ("auto", "json", "text"):
        raise typer.BadParameter("choose one of auto, json, text", param_hint="--log-format")
    policy = guard.GuardPolicy(
        holdout_fraction=0.0 if holdout else holdout_fraction, tolerance=tolerance, enabled=not no_guard
    )
    learn_options = LearnOptions(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    try:
        drift_test = drift.PageHinkley(drift_delta, drift_threshold, drift_min_arrivals)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--drift-delta/--drift-threshold") from None
    try:
        budget = detect_budget(memory_budget)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory-budget") from None
    entries = EntryPolicy(budget, max_arrival_samples or None, max_attempts, coalesce)
    shown = settings(ctx)
    with reported(ctx):
        loaded = Bundle.load(bundle)  # verified once, for the holdout's reader and the Adapter
        fixed = concatenated(read_path(holdout, loaded.manifest, need_labels=True), str(holdout)) if holdout else None
        with Adapter(
            loaded,
            state,
            ep=ep,
            threads=threads,
            replay_per_class=replay_per_class,
            replay_mb=replay_mb,
            policy=policy,
            holdout=fixed,
            schedule=schedule,
            trainer=trainer,
            keep_versions=keep_versions,
            head_learner=head_learner,
            shrinkage=shrinkage,
            tune_thresholds=tune_thresholds,
            drift=drift_test,
        ) as adapter:
            if watch is not None:
                logs = {"format": log_format, "file": log_file, "metrics": metrics_file}
                _watch(adapter, watch, once, poll, learn_options, as_json, logs, entries, shown)
            else:
                _adapt_once(adapter, data or [], relearn, learn_options, eval_data, as_json, entries.limits(), shown)
                if metrics_file is not None:
                    from edgeft.service.metrics import write_textfile

                    write_textfile(metrics_file, adapter.store.root)


def _adapt_once(
    adapter: Adapter,
    data: list[str],
    relearn: bool,
    learn_options: LearnOptions,
    eval_data: Path | None,
    as_json: bool,
    limits: ArrivalLimits,
    shown: Settings,
) -> None:
    """Learn DATA as one arrival and print what happened (exit 1 when samples had to be kept pending)."""
    from edgeft.data.readers import read_path
    from edgeft.progress import progress_bar
    from edgeft.runtime.arrivals import learn_arrival, read_arrival
    from edgeft.runtime.evaluation import held_out_metric

    held_out = read_path(eval_data, adapter.bundle.manifest, need_labels=True) if eval_data else []
    before = held_out_metric(adapter, held_out)
    with progress_bar(f"learning on {adapter.placement.name}", None, enabled=not shown.quiet) as advance:
        arrival = read_arrival(adapter, data, sys.stdin.buffer, relearn, limits, advance)
        outcome = learn_arrival(adapter, arrival, learn_options, advance)
    after = held_out_metric(adapter, held_out)
    result = outcome.result
    report = {
        "version": adapter.version,
        "learned": result is not None,
        "samples": result.samples if result else 0,
        "held_out": result.held_out if result else 0,
        "epochs": result.epochs if result else 0,
        "loss": result.loss if result else None,
        "promoted": result.promoted if result else None,
        "reason": result.reason if result else None,
        "prequential_accuracy": result.prequential_accuracy if result else None,
        "new_classes": result.new_classes if result else [],
        "skipped": outcome.skipped,
        "pending": outcome.pending,
        "provider": adapter.placement.name,
        "trainer": adapter.trainer_kind,
        "head_learner": adapter.head_learner,
        "metric": adapter.metric,
        "accuracy_before": before,
        "accuracy_after": after,
    }
    if as_json:
        typer.echo(json.dumps(report))
    else:
        for skipped in outcome.skipped:
            typer.echo(f"skipped {skipped}; pass --relearn to learn it again")
        if result is not None:
            verdict = "promoted" if result.promoted else f"refused, the previous head stays current: {result.reason}"
            typer.echo(
                f"learned {result.samples} samples ({result.held_out} kept as holdout, {result.epochs} epochs, "
                f"loss {number(result.loss)}) on {adapter.placement.name}; version {result.version} {verdict}"
            )
            if result.new_classes:
                typer.echo(f"new classes: {', '.join(result.new_classes)}")
        elif not outcome.pending:
            typer.echo(f"nothing new to learn; version {adapter.version} stays current")
        if before is not None:
            typer.echo(f"held-out {adapter.metric}: {before:.3f} before, {after:.3f} after")
    if outcome.pending:
        raise fail(
            f"{', '.join(data or [])}: {outcome.pending} samples with unknown label(s) {outcome.overflow[:5]} do not "
            f"fit the head's {adapter.capacity} outputs; they were not learned and are kept in {outcome.pending_path}"
        )


def _watch(
    adapter: Adapter,
    inbox_dir: Path,
    once: bool,
    poll: float,
    learn_options: LearnOptions,
    as_json: bool,
    logs: dict,
    entries: EntryPolicy,
    shown: Settings,
) -> None:
    """Learn each entry of the inbox until stopped (or, with ``once``, until it is empty) and print the summary."""
    from edgeft.service.daemon import log_start, run_watch
    from edgeft.service.logs import event_logger
    from edgeft.service.notify import Notifier

    level = "warning" if shown.quiet else "debug" if shown.verbose else "info"
    log_format = "json" if as_json and logs["format"] == "auto" else logs["format"]
    log = event_logger(log_format, logs["file"], level=level)
    log_start(log, adapter, entries)
    summary = run_watch(
        adapter,
        inbox_dir,
        log=log,
        notifier=Notifier(),
        metrics_file=logs["metrics"],
        once=once,
        poll_seconds=poll,
        options=learn_options,
        policy=entries,
    )
    if as_json:
        typer.echo(json.dumps(summary.__dict__))
    elif not shown.quiet:
        typer.echo(
            f"learned {summary.learned}, refused {summary.refused}, skipped {summary.skipped}, "
            f"quarantined {summary.quarantined}, pending samples {summary.pending_samples}; "
            f"version {adapter.version}"
        )
    if summary.errors and once:
        raise typer.Exit(EXIT_ERROR)
