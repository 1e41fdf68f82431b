"""What every command shares about output: the exit codes, the run's settings (carried in the typer context) and
the one-line error report."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import typer

from edgeft.errors import EdgeftError

EXIT_ERROR = 1
EXIT_INTERNAL = 70


@dataclass(frozen=True)
class Settings:
    """The global options of one run (``edgeft --quiet/--verbose/--debug COMMAND``), kept as the context's ``obj``."""

    quiet: bool = False
    verbose: bool = False
    debug: bool = False


def settings(ctx: typer.Context) -> Settings:
    """The run's settings, as the top-level callback stored them (the defaults when a command runs without it)."""
    return ctx.find_object(Settings) or Settings()


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print ``edgeft: error: MESSAGE`` on stderr and return the Exit to raise."""
    typer.echo(f"edgeft: error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def reported(ctx: typer.Context) -> Iterator[None]:
    """Turn EdgeftError into one line on stderr and exit 1; anything else into exit 70 (traceback with --debug)."""
    try:
        yield
    except EdgeftError as exc:
        raise fail(str(exc)) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if settings(ctx).debug:
            raise
        raise fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)", EXIT_INTERNAL) from None


def warning_line(message: Warning | str, *_: object, **__: object) -> str:
    """Warnings (e.g. an int8 bundle falling back to its float backbone) as one ``edgeft: warning:`` line."""
    return f"edgeft: warning: {message}\n"


def number(value: float | None) -> str:
    """A loss for humans: four decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"
