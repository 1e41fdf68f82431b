"""docs/cli.md is the typer app's own help, generated, so it cannot drift from the commands."""

from __future__ import annotations

import re
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


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def test_every_path_the_architecture_map_names_exists() -> None:
    named = set(re.findall(r"`(edgeft/[\w/.]*|tests/[\w/.]*)`", ARCHITECTURE.read_text()))
    named |= set(re.findall(r"(tests/\w+\.py)", ARCHITECTURE.read_text()))
    assert len(named) > 40  # the map names the modules, not a handful
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_the_architecture_map_places_every_command() -> None:
    from typer.main import get_command

    from edgeft.cli import app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    text = ARCHITECTURE.read_text()
    unplaced = sorted(name for name in commands if f"`{name}`" not in text and f"`{name} " not in text)
    assert not unplaced, f"docs/architecture.md does not say where these commands live: {unplaced}"
