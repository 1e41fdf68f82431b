"""``edgeft inbox list|requeue``: see and steer a watch inbox."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from edgeft.cli.options import InboxOpt, JsonOpt
from edgeft.cli.output import reported

inbox_app = typer.Typer(
    help="See and steer a watch inbox: entries waiting, retrying and quarantined (with reasons).", no_args_is_help=True
)


@inbox_app.command("list")
def inbox_list(ctx: typer.Context, inbox: InboxOpt, as_json: JsonOpt = False) -> None:
    """List the entries waiting, retrying (tried before without finishing) and quarantined, with reasons."""
    from edgeft.service.queue import collect_inbox, format_inbox

    with reported(ctx):
        listing = collect_inbox(inbox)
        typer.echo(json.dumps(listing) if as_json else format_inbox(listing))


@inbox_app.command("requeue")
def inbox_requeue(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The entry's name in INBOX/quarantine/.")],
    inbox: InboxOpt,
    new_name: Annotated[str | None, typer.Option("--as", help="Put it back under this name (default: NAME).")] = None,
) -> None:
    """Move a quarantined entry back into the inbox, where it is learned with a fresh set of attempts."""
    from edgeft.runtime.inbox import requeue

    with reported(ctx):
        target = requeue(inbox, name, new_name)
        typer.echo(f"requeued {name} as {target}; the watch learns it with fresh attempts")
