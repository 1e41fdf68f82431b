"""``edgeft config show``: the options a command would run with, and where each value comes from."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from edgeft.cli.options import JsonOpt

config_app = typer.Typer(help="Show the configuration a command would run with.", no_args_is_help=True)


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    command: Annotated[str, typer.Argument(help="The command whose options to show, e.g. adapt.")] = "adapt",
    as_json: JsonOpt = False,
) -> None:
    """Print each option of COMMAND with its effective value and where it comes from (--config, env, default)."""
    from edgeft.service.config import effective

    root = ctx.find_root()
    target = root.command.commands.get(command)
    if target is None or command == "config":
        raise typer.BadParameter(f"no command '{command}'", param_hint="COMMAND")
    rows = effective(target, root)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        env = f"  (env {row['envvar']})" if row["envvar"] else ""
        typer.echo(f"{row['name']:<20} {row['value']!s:<30} {row['source']}{env}")
