"""Progress bars on stderr (rich, which typer brings), silent when not attached to a terminal.

rich is imported only when a bar is drawn: a service or a script (stderr not a terminal) starts without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callback for a bar of ``total`` units (None: not known ahead, a counter), drawn while
    the block runs (on a terminal)."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
