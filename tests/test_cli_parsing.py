"""Command-line parsing in this process (typer's CliRunner): every command's help, usage errors with their exit
code and message before anything is read or written, and the run's settings carried in the typer context."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from helpers import SUBPROCESS_TIMEOUT, invoke_cli, one_error_line, run_cli, usage_message
from typer.main import get_command

import edgeft
from edgeft.cli import app, hoisted_global_flags, requested_command
from edgeft.cli.output import EXIT_INTERNAL, Settings, reported


def _command_paths(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``command``, as the words that name it on the command line."""
    found = [path] if path else []
    for name, sub in getattr(command, "commands", {}).items():
        found += _command_paths(sub, (*path, name))
    return found


COMMANDS = _command_paths(get_command(app))


def _help_of(path: tuple[str, ...]) -> str:
    command = get_command(app)
    for name in path:
        command = command.commands[name]
    return command.help


def test_every_command_is_listed() -> None:
    top = {path[0] for path in COMMANDS}
    assert top == {
        *("export", "adapt", "predict", "export-inference", "info", "check", "status", "eval", "history"),
        *("rollback", "demo", "report", "config", "fleet", "inbox"),
    }
    assert ("inbox", "requeue") in COMMANDS and ("config", "show") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_of_each_command(path: tuple[str, ...]) -> None:
    done = invoke_cli(*path, "--help")
    assert done.exit_code == 0, done.stderr
    shown = " ".join(done.stdout.replace("│", " ").split())
    assert f"Usage: edgeft {' '.join(path)} [OPTIONS]" in shown
    first_words = " ".join(_help_of(path).split()[:6])
    assert first_words in shown, (first_words, shown)


def test_version_and_top_level_help() -> None:
    done = invoke_cli("--version")
    assert (done.exit_code, done.stdout) == (0, f"edgeft {edgeft.__version__}\n")
    done = invoke_cli("--help")
    assert done.exit_code == 0
    assert "Fine-tune a frozen model's new head on edge devices" in " ".join(done.stdout.replace("│", " ").split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["adapt", "B", "-s", "S"], "give exactly one of --data or --watch", id="adapt-neither"),
        pytest.param(["adapt", "B", "-s", "S", "-d", "x.npz", "--watch", "in"], "give exactly one", id="adapt-both"),
        pytest.param(["adapt", "B", "-s", "S", "-d", "x", "--schedule", "step"], "choose one of constant, cosine"),
        pytest.param(["adapt", "B", "-s", "S", "-d", "x", "--log-format", "xml"], "choose one of auto, json, text"),
        pytest.param(["adapt", "B", "-s", "S", "-d", "x", "--memory-budget", "lots"], "'lots' is not a size"),
        pytest.param(["adapt", "B", "-s", "S", "-d", "x", "--holdout-fraction", "0.95"], "--holdout-fraction"),
        pytest.param(["adapt", "B", "-s", "S", "-d", "x", "--max-attempts", "11"], "--max-attempts"),
        pytest.param(["adapt", "B", "-s", "S", "-d", "x", "--shrinkage", "2"], "--shrinkage"),
        pytest.param(["adapt", "B", "-s", "S", "-d", "x", "--epochs", "0"], "--epochs"),
        pytest.param(["adapt", "B", "-d", "x"], "Missing option '--state'", id="adapt-without-state"),
        pytest.param(["predict", "B", "x.npy", "-s", "S", "--top", "0"], "--top"),
        pytest.param(["export", "-o", "O", "--classes", "a,b"], "give an ONNX MODEL or --torch", id="export-neither"),
        pytest.param(["export", "M", "--torch", "pkg.mod:make", "-o", "O"], "give an ONNX MODEL or --torch"),
        pytest.param(["export", "--torch", "pkg.mod:make", "-o", "O"], "--torch needs --input-shape"),
        pytest.param(["export", "M", "-o", "O", "--quantize", "int8", "--keep-float", "most"], "not 'most'"),
        pytest.param(["export", "M", "-o", "O", "--dropout", "1.5"], "--dropout"),
        pytest.param(["export", "M", "-o", "O", "--std", "0.2,x"], "expected comma-separated numbers, got '0.2,x'"),
        pytest.param(["rollback", "B", "-s", "S", "0"], "'version': 0 is not in the range x>=1"),
        pytest.param(["demo", "--epochs", "0"], "--epochs", id="demo-epochs-0"),
        pytest.param(["config", "show", "fly"], "no command 'fly'"),
        pytest.param(["config", "show", "config"], "no command 'config'"),
        pytest.param(["inbox", "requeue", "-i", "I"], "Missing argument 'name'"),
        pytest.param(["inbox", "list", "-i", "I", "--all"], "No such option: --all"),
        pytest.param(["predict", "B", "x.npy", "-s", "S", "--colour"], "No such option: --colour"),
        pytest.param(["fly"], "No such command 'fly'"),
    ],
)
def test_usage_error_exits_2_with_its_message(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each usage error names what is wrong; none touches a file (the bundle and model here do not even exist)."""
    monkeypatch.chdir(tmp_path)
    done = invoke_cli(*args)
    assert done.exit_code == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    text = usage_message(done)
    assert "Usage: edgeft" in text and message in text, text
    assert list(tmp_path.iterdir()) == []


def test_quiet_reaches_the_watch_summary_through_the_context(bundle_dir: Path, tmp_path: Path) -> None:
    """--quiet, given before the command, silences the watch's summary line; the next run is not quiet."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watch = ["adapt", bundle_dir, "-s", tmp_path / "state", "--watch", inbox, "--once", "--log-format", "json"]
    quiet = invoke_cli("--quiet", *watch)
    assert quiet.exit_code == 0, quiet.stderr
    assert quiet.stdout == ""
    loud = invoke_cli(*watch)
    assert loud.exit_code == 0, loud.stderr
    assert "learned 0, refused 0, skipped 0, quarantined 0, pending samples 0; version 0" in loud.stdout


@pytest.mark.parametrize(
    ("typed", "read"),
    [
        (["adapt", "B", "-q"], ["-q", "adapt", "B"]),
        (["adapt", "B", "--debug", "-s", "S", "--verbose"], ["--debug", "--verbose", "adapt", "B", "-s", "S"]),
        (["-q", "predict", "B"], ["-q", "predict", "B"]),
        (["predict", "B", "--", "-q"], ["predict", "B", "--", "-q"]),  # after --, a file named -q
        (["--config", "c.toml", "adapt", "B", "-v"], ["-v", "--config", "c.toml", "adapt", "B"]),
    ],
)
def test_global_flags_typed_after_the_command_are_read_before_it(typed: list[str], read: list[str]) -> None:
    assert hoisted_global_flags(typed) == read


def test_quiet_after_the_command_silences_it_like_quiet_before(bundle_dir: Path, tmp_path: Path) -> None:
    """`edgeft adapt ... -q`, the way users type it, in a real process: no usage error, the summary line silenced."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    done = run_cli("adapt", bundle_dir, "-s", tmp_path / "state", "--watch", inbox, "--once", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "learned 0" not in done.stderr


@pytest.mark.parametrize(
    "variable",
    ["EDGEFT_VERSION=1.4.2", "EDGEFT_HELP=1", "EDGEFT_HISTORY_HELP=1", "EDGEFT_INSTALL_COMPLETION=1",
     "EDGEFT_SHOW_COMPLETION=1"],
)  # fmt: skip
def test_options_that_act_instead_of_the_command_are_never_read_from_the_environment(
    variable: str, tmp_path: Path
) -> None:
    """Every option reads EDGEFT_<COMMAND>_<OPTION>; these must not: a device whose environment names its edgeft
    release EDGEFT_VERSION would fail every command with a usage error, EDGEFT_INSTALL_COMPLETION=1 would edit the
    shell's start-up file instead of running. In a real process (the console script's path), HOME in tmp_path."""
    name, value = variable.split("=")
    env = {**os.environ, name: value, "HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "edgeft.cli", "history", "--state", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        env=env,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # the command ran: nothing learned in that state yet
    assert one_error_line(done.stderr).endswith("has no committed version (no CURRENT file); learn something first")
    assert done.stdout == "" and not (tmp_path / "home").exists()


def _failing_inside_reported(settings: Settings) -> None:
    context = typer.Context(get_command(app), obj=settings)
    with reported(context):
        raise ZeroDivisionError("a bug")


def test_unexpected_error_is_exit_70_without_debug(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as stopped:
        _failing_inside_reported(Settings())
    assert stopped.value.exit_code == EXIT_INTERNAL
    line = one_error_line(capsys.readouterr().err)
    assert line == "edgeft: error: unexpected ZeroDivisionError: a bug (rerun with --debug for details)"


def test_unexpected_error_propagates_with_debug() -> None:
    with pytest.raises(ZeroDivisionError, match="a bug"):
        _failing_inside_reported(Settings(debug=True))


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["adapt", "B", "-s", "S"], "adapt"),
        (["-q", "--debug", "predict", "B"], "predict"),
        (["export-inference", "B"], "export-inference"),
        (["--config", "c.toml", "adapt", "B"], None),  # every table of the file is checked: the whole app
        (["config", "show", "adapt"], None),  # `config show` reads every command's options
        (["inbox", "list"], None),
        (["--help"], None),
        (["fly"], None),
        ([], None),
    ],
)
def test_a_run_builds_only_the_command_it_names(args: list[str], command: str | None) -> None:
    assert requested_command(args) == command


def test_a_plain_command_imports_no_other_command_module() -> None:
    """`edgeft adapt` in a fresh interpreter: the adapt command's module, none of the others' (issue 19's start)."""
    code = (
        "import sys\nsys.argv = ['edgeft', '-q', 'adapt', '--help']\nfrom edgeft.cli import run\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('edgeft.cli.', 'edgeft.fleet')))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.splitlines()[-1].split())
    assert "Usage: edgeft adapt [OPTIONS]" in " ".join(done.stdout.replace("│", " ").split())
    assert "edgeft.cli.adapt" in loaded
    assert loaded.isdisjoint({"edgeft.cli.export", "edgeft.cli.inspect", "edgeft.cli.continual", "edgeft.fleet.cli"})


def test_a_config_from_the_environment_is_checked_whole_when_one_command_runs(tmp_path: Path) -> None:
    """The one-command app still checks every [command] table of EDGEFT_CONFIG, against every command's options."""
    config = tmp_path / "edgeft.toml"
    config.write_text("[predict]\ntop = 2\n[export]\nclasses = 'a,b'\n[predcit]\ntop = 1\n")
    env = {**os.environ, "EDGEFT_CONFIG": str(config)}
    done = subprocess.run(
        [sys.executable, "-m", "edgeft.cli", "status", "-s", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 1
    assert "[predcit] is not a command" in done.stderr, done.stderr
