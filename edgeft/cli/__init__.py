"""The ``edgeft`` command line: thin commands over the Python API, one module per command group.

Exit codes: 0 success; 1 an error edgeft explains (bad file, bad bundle, state in use, ...);
2 a usage error (unknown option, missing argument); 70 an unexpected internal error (a bug: rerun
with --debug and report the traceback).
"""

from __future__ import annotations

import signal
import warnings
from pathlib import Path
from typing import Annotated

import typer

from edgeft import __version__
from edgeft.cli import adapt, continual, demo, export, inspect, predict
from edgeft.cli.config import config_app
from edgeft.cli.inbox import inbox_app
from edgeft.cli.output import Settings, reported, warning_line
from edgeft.fleet.cli import fleet

app = typer.Typer(
    help="Fine-tune a frozen model's new head on edge devices, with any onnxruntime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"auto_envvar_prefix": "EDGEFT"},
)
# The order here is the order of `edgeft --help` and docs/cli.md.
app.command()(export.export)
app.command()(adapt.adapt)
app.command()(predict.predict)
app.command("export-inference")(export.export_inference)
app.command()(inspect.info)
app.command()(inspect.check)
app.command()(inspect.status)
app.command("eval")(continual.eval_command)
app.command()(continual.history)
app.command()(continual.rollback)
app.command()(demo.demo)
app.command()(continual.report)
app.add_typer(config_app, name="config")
app.add_typer(fleet, name="fleet")
app.add_typer(inbox_app, name="inbox")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeft {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", envvar="EDGEFT_CONFIG", help="TOML file of option defaults, one [command] table each."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also debug events (watch mode).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """edgeft: export a bundle on a workstation, adapt its head on the device, predict."""
    ctx.obj = Settings(quiet=quiet, verbose=verbose, debug=debug)
    warnings.formatwarning = warning_line
    if config is not None:
        from edgeft.service.config import load_config

        with reported(ctx):
            ctx.default_map = load_config(config, ctx.command.commands)


def run() -> None:
    """Console-script entry point; a closed pipe (``edgeft predict ... | head``) ends it quietly."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app(prog_name="edgeft")
