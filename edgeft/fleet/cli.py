"""``edgeft fleet ...``: thin wrappers that start Flower's own SuperLink, SuperNode and ``flwr run`` for edgeft.

Each command builds the Flower command line and replaces itself with it (``os.execv``), so signals and exit codes
are Flower's. flwr is needed only when a command runs: ``edgeft --help`` works without it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgeft.fleet.policy import FLEET_POLICIES

APP_DIR = Path(__file__).parent / "app"

fleet = typer.Typer(
    help="Fleet learning: devices pool their heads' weights (never data) through Flower (pip install 'edgeft\\[fleet]').",
    no_args_is_help=True,
)

InsecureOpt = Annotated[bool, typer.Option("--insecure", help="No TLS: for a trusted network or loopback tests only.")]


def _executable(name: str) -> str:
    """A Flower executable from this Python's environment, else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        typer.echo(
            f"edgeft: error: {name} was not found; install the fleet extra: pip install 'edgeft[fleet]'", err=True
        )
        raise typer.Exit(1)
    return found


def _exec(name: str, args: list[str]) -> None:
    """Replace this process with a Flower executable; its folder goes first on PATH (Flower spawns its siblings)."""
    program = _executable(name)
    os.environ["PATH"] = os.pathsep.join([str(Path(program).parent), os.environ.get("PATH", "")])
    os.execv(program, [program, *args])


def _quoted(value: str | Path) -> str:
    """A TOML string for Flower's key=value configs."""
    return json.dumps(str(value))


@fleet.command()
def server(
    host: Annotated[str, typer.Option(help="Address the SuperLink listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of its HTTP APIs (Fleet and Control).")] = 9092,
    insecure: InsecureOpt = False,
    certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM).")] = None,
    keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    ca_certfile: Annotated[Path | None, typer.Option(help="CA certificate that signed it (PEM).")] = None,
    database: Annotated[
        Path | None, typer.Option(help="SQLite file for the SuperLink's state (default: memory).")
    ] = None,
    node_auth: Annotated[
        bool, typer.Option(help="Admit only registered SuperNodes (flwr supernode register).")
    ] = False,
) -> None:
    """Start the fleet's server: Flower's SuperLink (the ServerApp runs in it when `edgeft fleet run` starts a run)."""
    args = ["--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if insecure:
        args.append("--insecure")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile), ("--ssl-ca-certfile", ca_certfile)):
        if path is not None:
            args += [flag, str(path)]
    if database is not None:
        args += ["--database", str(database)]
    if node_auth:
        args.append("--enable-supernode-auth")
    _exec("flower-superlink", args)


@fleet.command()
def device(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (the same bundle as the server's).")],
    state: Annotated[Path, typer.Option("--state", "-s", help="This device's state directory.")],
    superlink: Annotated[str, typer.Option(help="The SuperLink's address, HOST:PORT.")] = "127.0.0.1:9092",
    inbox: Annotated[
        Path | None, typer.Option(help="Folder of new labelled arrivals, learned before each round.")
    ] = None,
    port: Annotated[int, typer.Option(help="Local port of this SuperNode's runtime API (one per device).")] = 9094,
    threads: Annotated[int | None, typer.Option(min=1, help="Intra-op threads for training.")] = None,
    head_learner: Annotated[
        str, typer.Option(help="How this device learns its arrivals: sgd, slda, ncm or slda+sgd (see edgeft adapt).")
    ] = "sgd",
    fleet_policy: Annotated[
        str,
        typer.Option(
            help="When to adopt a global head: guard (only if not worse, beyond the tolerance, on this device's own "
            "holdout), overall (if at least as good over every class the fleet's holdouts hold, even if worse on "
            "this device's own) or always."
        ),
    ] = "guard",
    insecure: InsecureOpt = False,
    root_certificates: Annotated[Path | None, typer.Option(help="CA certificate to trust the SuperLink's TLS.")] = None,
    auth_key: Annotated[Path | None, typer.Option(help="This device's private key for node authentication.")] = None,
) -> None:
    """Join a fleet: start Flower's SuperNode for this device's bundle and state (its ClientApp wraps the Adapter)."""
    if fleet_policy not in FLEET_POLICIES:
        raise typer.BadParameter(f"choose one of {', '.join(FLEET_POLICIES)}", param_hint="--fleet-policy")
    config = {"bundle": bundle.resolve(), "state": state.resolve(), "head-learner": head_learner}
    config["fleet-policy"] = fleet_policy
    if inbox is not None:
        config["inbox"] = inbox.resolve()
    node_config = " ".join(f"{key}={_quoted(value)}" for key, value in config.items())
    if threads is not None:
        node_config += f" threads={threads}"
    args = ["--superlink", superlink, "--port", str(port), "--node-config", node_config]
    if insecure:
        args.append("--insecure")
    if root_certificates is not None:
        args += ["--root-certificates", str(root_certificates)]
    if auth_key is not None:
        args += ["--auth-supernode-private-key", str(auth_key)]
    _exec("flower-supernode", args)


@fleet.command()
def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory as the SuperLink's machine sees it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Server folder for the label registry and global heads.")],
    connection: Annotated[
        str | None, typer.Option(help="SuperLink connection name in $FLWR_HOME/config.toml (default: its default).")
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 3,
    min_devices: Annotated[int, typer.Option(min=1, help="Devices to wait for; each round uses all connected.")] = 2,
    strategy: Annotated[
        str,
        typer.Option(
            help="auto (statistics when every device learns with slda or ncm, else statistics+fedavg for a linear "
            "head, else fedavg), statistics (exact: devices' class statistics add up to the central head), "
            "statistics+fedavg (one statistics round, then fedavg from that head), fedavg (sample-weighted) or "
            "fedadam."
        ),
    ] = "auto",
    epochs: Annotated[int, typer.Option(min=0, help="Local epochs per round (0: the bundle's default).")] = 0,
    lr: Annotated[float, typer.Option(min=0.0, help="Local learning rate (0: the bundle's default).")] = 0.0,
) -> None:
    """Start a federation run of the edgeft Flower App on a SuperLink and stream its log until it ends."""
    settings = {"bundle": _quoted(bundle.resolve()), "out": _quoted(out.resolve()), "strategy": _quoted(strategy)}
    settings.update({"rounds": str(rounds), "min-devices": str(min_devices), "epochs": str(epochs), "lr": str(lr)})
    run_config = " ".join(f"{key}={value}" for key, value in settings.items())
    args = ["run", str(APP_DIR), *([connection] if connection else []), "--run-config", run_config, "--stream"]
    _exec("flwr", args)


@fleet.command("app-dir")
def app_dir() -> None:
    """Print the folder of edgeft's Flower App (for `flwr run APP_DIR ...`)."""
    typer.echo(str(APP_DIR))
