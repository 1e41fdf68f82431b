"""docs/cli.md is the typer app's own help, generated, so it cannot drift from the commands; the architecture map
names real paths and every command; every command line the README and docs/ show is one the CLI accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SUBPROCESS_TIMEOUT, invoke_cli

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


def _help_texts(command: object, path: str = "edgeft") -> dict[str, str]:
    """Every help text of ``command`` and the commands under it: the command's own and each option's."""
    texts = {path: getattr(command, "help", None) or ""}
    for param in getattr(command, "params", []):
        texts[f"{path}: {param.name}"] = getattr(param, "help", None) or ""
    for name, sub in getattr(command, "commands", {}).items():
        texts.update(_help_texts(sub, f"{path} {name}"))
    return texts


def test_no_help_text_has_a_bracketed_word_the_help_renderer_would_take_for_markup() -> None:
    """typer renders help with rich markup, which drops "[fleet]" from "pip install 'edgeft[fleet]'" (the help
    then told users to install edgeft without the extra) and "[command]" from "one [command] table each"; such
    brackets must be escaped ("\\[fleet]")."""
    from typer.main import get_command

    from edgeft.cli import app

    markup = re.compile(r"(?<!\\)\[[a-z/#@][^\]]*\]")
    eaten = {where: markup.findall(text) for where, text in _help_texts(get_command(app)).items()}
    assert not {where: found for where, found in eaten.items() if found}


# Commands shown but not run here: the demo runs the whole main job, fleet ones start servers (tests/test_fleet*.py).
NOT_RUN = ("demo", "fleet")
USAGE_ERROR = 2


def documented_command_lines() -> list[str]:
    """Every ``edgeft ...`` line of a code block in the README and docs/ (not the generated reference), without its
    comment and with optional ``[...]`` parts dropped."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if page == CLI_REFERENCE:
            continue
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                if line.startswith("edgeft "):
                    found.append(re.sub(r"\[[^\]]*\]", "", line.split(" #")[0]).strip())
    return found


def test_the_docs_show_many_command_lines() -> None:
    assert len(documented_command_lines()) > 25


@pytest.mark.parametrize("line", documented_command_lines())
def test_every_documented_command_line_is_one_the_cli_accepts(
    line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = shlex.split(line)[1:]
    if any(word in NOT_RUN for word in args[:1]):
        pytest.skip(f"{args[0]} is not run here")
    monkeypatch.chdir(tmp_path)  # nothing the line names exists here: it fails on that, never on its usage
    done = invoke_cli(*args)
    assert done.exit_code != USAGE_ERROR, f"`{line}` is not a valid command line: {done.stderr}"
    assert not list(tmp_path.iterdir()), f"`{line}` failed and still left {list(tmp_path.iterdir())}"
