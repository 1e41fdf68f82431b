"""The ``edgeft`` command line: thin commands over the Python API, one module per command group.

Exit codes: 0 success; 1 an error edgeft explains (bad file, bad bundle, state in use, ...);
2 a usage error (unknown option, missing argument); 70 an unexpected internal error (a bug: rerun
with --debug and report the traceback).

A run that names one plain command (``edgeft adapt ...``) builds the app with that command alone, so it imports
and builds only what it needs (issue 19's cold start); everything else (``--help``, ``--config``, the command
groups, shell completion) gets every command. ``edgeft.cli.app`` is the whole app, for tests and docs/cli.md.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main

from edgeft import __version__
from edgeft.cli.output import Settings, reported, warning_line

# Command name -> (module, function); the order is the order of `edgeft --help` and docs/cli.md.
COMMANDS = {
    "export": ("edgeft.cli.export", "export"),
    "adapt": ("edgeft.cli.adapt", "adapt"),
    "predict": ("edgeft.cli.predict", "predict"),
    "export-inference": ("edgeft.cli.export", "export_inference"),
    "info": ("edgeft.cli.inspect", "info"),
    "check": ("edgeft.cli.inspect", "check"),
    "status": ("edgeft.cli.inspect", "status"),
    "eval": ("edgeft.cli.continual", "eval_command"),
    "history": ("edgeft.cli.continual", "history"),
    "rollback": ("edgeft.cli.continual", "rollback"),
    "demo": ("edgeft.cli.demo", "demo"),
    "report": ("edgeft.cli.continual", "report"),
}
# Group name -> (module, typer app). `config show` reads every command's options, so groups get the whole app.
GROUPS = {
    "config": ("edgeft.cli.config", "config_app"),
    "fleet": ("edgeft.fleet.cli", "fleet"),
    "inbox": ("edgeft.cli.inbox", "inbox_app"),
}
GLOBAL_FLAGS = {"-q", "--quiet", "-v", "--verbose", "--debug"}  # the callback's options that take no value
# Options that act instead of the command: never read from EDGEFT_* variables (`--version` says so where declared)
ACTING_OPTIONS = ("help", "install_completion", "show_completion")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeft {__version__}")
        raise typer.Exit()


def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", envvar="EDGEFT_CONFIG", help="TOML file of option defaults, one \\[command] table each."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also debug events (watch mode).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, allow_from_autoenv=False, help="Print the version."
        ),
    ] = False,
) -> None:
    """edgeft: export a bundle on a workstation, adapt its head on the device, predict."""
    ctx.obj = Settings(quiet=quiet, verbose=verbose, debug=debug)
    warnings.formatwarning = warning_line
    if config is not None:
        from edgeft.service.config import load_config

        with reported(ctx):  # every [command] table is checked, not only this run's command's
            ctx.default_map = load_config(config, typer.main.get_group(build_app()).commands)


@cache
def build_app(only: str | None = None) -> typer.Typer:
    """The typer app with every command and group, or with the one command ``only``."""
    app = typer.Typer(
        help="Fine-tune a frozen model's new head on edge devices, with any onnxruntime.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=True,
        context_settings={"auto_envvar_prefix": "EDGEFT"},
    )
    app.callback()(main)
    for name, (module, function) in COMMANDS.items():
        if only in (None, name):
            app.command(name)(getattr(importlib.import_module(module), function))
    if only is None:
        for name, (module, group) in GROUPS.items():
            app.add_typer(getattr(importlib.import_module(module), group), name=name)
    return app


def requested_command(args: list[str]) -> str | None:
    """The plain command a command line runs (``-q adapt ...`` -> adapt), or None when it needs the whole app."""
    for arg in args:
        if arg not in GLOBAL_FLAGS:
            return arg if arg in COMMANDS else None
    return None


def hoisted_global_flags(args: list[str]) -> list[str]:
    """The command line with the global flags typed after the command moved before it (``adapt B -q`` -> ``-q
    adapt B``): click reads them only there, and no command has an option of the same name. After ``--`` every word
    is the command's own."""
    end = args.index("--") if "--" in args else len(args)
    flags = [arg for arg in args[:end] if arg in GLOBAL_FLAGS]
    return [*flags, *(arg for arg in args[:end] if arg not in GLOBAL_FLAGS), *args[end:]]


def options_only_typed(command: Any) -> Any:
    """``command`` (a click command built from the app) with ``ACTING_OPTIONS`` read from its command line only.

    Every option reads ``EDGEFT_<COMMAND>_<OPTION>`` (auto_envvar_prefix), these too: EDGEFT_HELP=1 in a device's
    environment would print the help instead of running, EDGEFT_INSTALL_COMPLETION=1 edit the shell's start-up
    file. They are for a person at a terminal, never for the environment.
    """
    context = typer.Context(command, **(command.context_settings or {}))  # its own help option names
    acting = [*command.params, command.get_help_option(context)]
    for param in acting:
        if param is not None and param.name in ACTING_OPTIONS:
            param.allow_from_autoenv = False
    for subcommand in getattr(command, "commands", {}).values():
        options_only_typed(subcommand)
    return command


def __getattr__(name: str) -> typer.Typer:
    """``edgeft.cli.app``: the whole app, built on first use."""
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "app"])


def run() -> None:
    """Console-script entry point; a closed pipe (``edgeft predict ... | head``) ends it quietly."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    completing = any(key.startswith("_EDGEFT_COMPLETE") for key in os.environ)
    args = hoisted_global_flags(sys.argv[1:])
    app = build_app(None if completing else requested_command(args))
    options_only_typed(typer.main.get_command(app))(args=args, prog_name="edgeft")
