"""Look without changing anything: ``edgeft info`` (a bundle's manifest), ``edgeft check`` (an int8 bundle's
self-check on this CPU) and ``edgeft status`` (a device's state)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgeft.cli.export import quantization_summary
from edgeft.cli.options import BundleArg, JsonOpt, StateOpt
from edgeft.cli.output import reported


def info(ctx: typer.Context, bundle: BundleArg, as_json: JsonOpt = False) -> None:
    """Show a bundle's manifest: input, preprocessing, cut, head, classes, files."""
    from edgeft.bundle import Bundle

    with reported(ctx):
        loaded = Bundle.load(bundle)
        m = loaded.manifest
        if as_json:
            typer.echo(m.to_json().rstrip())
            return
        p = m.preprocessing
        lines = [
            f"bundle      {loaded.path} (format {m.format_version}, made by edgeft {m.producer['version']})",
            f"source      {m.source['file']} (sha256 {m.source['sha256'][:12]}...)",
            f"input       {m.input.name} {m.input.shape} {m.input.dtype}",
            f"images      {p.color} {p.layout}, pixels*{p.scale:g}, mean {p.mean}, std {p.std}"
            + (f"; {p.note}" if p.note else ""),
            f"cut         '{m.source['cut_tensor']}' -> features '{m.feature.name}' [{m.head.feature_dim}]"
            + (f"; unfrozen from '{m.source['freeze_tensor']}'" if m.source.get("freeze_tensor") else ""),
            f"head        {m.head.kind} {m.head.feature_dim} -> {m.head.num_outputs} ({m.head.task}), "
            f"trainable {m.head.trainable}, {m.head.loss}, {m.head.optimizer} (weight decay {m.head.weight_decay:g}"
            + (f", momentum {m.head.momentum:g})" if m.head.momentum else ")"),
            f"trainers    {', '.join(m.head.trainers)}"
            + (f", pool {m.head.pool}" if m.head.pool != "none" else "")
            + (f", hidden {m.head.hidden} {m.head.activation} dropout {m.head.dropout:g}" if m.head.hidden else ""),
            f"defaults    epochs {m.defaults.epochs}, batch {m.defaults.batch_size}, lr {m.defaults.lr}, seed {m.defaults.seed}",
            f"classes     {', '.join(m.classes)}",
            f"validated   cut max abs diff {m.validation['cut_max_abs_diff']:.3g} "
            f"(atol {m.validation['cut_atol']}, rtol {m.validation['cut_rtol']})",
            f"backbone    {quantization_summary(m.quantization) if m.quantization else 'float'}",
            "files       " + "\n            ".join(f"{name}  {digest[:12]}..." for name, digest in m.files.items()),
        ]
        typer.echo("\n".join(lines))


def check(ctx: typer.Context, bundle: BundleArg, as_json: JsonOpt = False) -> None:
    """Run an int8 bundle's probe through its backbone on this CPU; exit 1 when the int8 features disagree and
    the bundle ships no float backbone to fall back to."""
    from edgeft.bundle import Bundle
    from edgeft.runtime.int8_check import check_bundle, describe, refusal

    with reported(ctx):
        loaded = Bundle.load(bundle)
        result = check_bundle(loaded)
        if as_json:
            typer.echo(json.dumps({"bundle": str(loaded.path), "int8_check": result}))
        elif result is None:
            typer.echo(
                f"{loaded.path}: no int8 probe to run (a float backbone, or an int8 export older than the probe)"
            )
        else:
            typer.echo(describe(result))
        if result is not None and result["backbone"] == "none":
            raise refusal(loaded, result)


def status(
    ctx: typer.Context,
    state: StateOpt,
    inbox: Annotated[
        Path | None, typer.Option(help="Also count the watch inbox's waiting, retrying and quarantined entries.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Summarise a device's state: versions, classes, counts, the last arrival, recent accuracy, the learner."""
    from edgeft.service.status import collect_status, format_status

    with reported(ctx):
        summary = collect_status(state, inbox)
        typer.echo(json.dumps(summary) if as_json else format_status(summary))
