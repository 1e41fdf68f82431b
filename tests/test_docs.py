"""docs/cli.md is the typer app's own help, generated, so it cannot drift from the commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import SUBPROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
CLI_REFERENCE = ROOT / "docs" / "cli.md"
GENERATE = ["-m", "typer", "edgeft.cli", "utils", "docs", "--name", "edgeft", "--title", "edgeft command reference"]


def test_the_cli_reference_is_what_the_commands_say_today(tmp_path: Path) -> None:
    fresh = tmp_path / "cli.md"
    subprocess.run([sys.executable, *GENERATE, "--output", str(fresh)], check=True, timeout=SUBPROCESS_TIMEOUT)
    assert CLI_REFERENCE.read_text() == fresh.read_text(), (
        "docs/cli.md is stale: regenerate it with `python " + " ".join(GENERATE) + " --output docs/cli.md`"
    )
