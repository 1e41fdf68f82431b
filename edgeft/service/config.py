"""Configuration from a TOML file and EDGEFT_* environment variables, for every command's options.

Precedence, highest first: the command line, environment variables (``EDGEFT_<COMMAND>_<OPTION>``, e.g.
``EDGEFT_ADAPT_STATE``; arguments such as the bundle cannot come from the environment), the config file
(``--config FILE`` or ``EDGEFT_CONFIG``; one table per command, keys are option names), the built-in defaults.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from edgeft.errors import EdgeftError

ENV_PREFIX = "EDGEFT"


def load_config(path: Path, commands: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Read ``path`` into click's default_map, checking every table and key against the commands' parameters."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeftError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EdgeftError(f"config file {path} is not valid TOML ({exc})") from None
    defaults: dict[str, dict[str, Any]] = {}
    for table, values in data.items():
        if table not in commands or not isinstance(values, dict):
            raise EdgeftError(
                f"config file {path}: [{table}] is not a command (commands: {', '.join(sorted(commands))})"
            )
        known = {alias: param.name for param in commands[table].params for alias in _aliases(param)}
        for key, value in values.items():
            name = known.get(key.lstrip("-").replace("-", "_"))
            if name is None:
                options = ", ".join(sorted({_display(p) for p in commands[table].params}))
                raise EdgeftError(f"config file {path}: [{table}] has no option '{key}' (options: {options})")
            defaults.setdefault(table, {})[name] = [str(v) for v in value] if isinstance(value, list) else value
    return defaults


SOURCES = {"COMMANDLINE": "command line", "ENVIRONMENT": "environment", "DEFAULT_MAP": "config file"}


def _aliases(param: Any) -> set[str]:
    """The names a config key may use for a parameter: its Python name and its long option names."""
    return {param.name, *(o.lstrip("-").replace("-", "_") for o in param.opts if o.startswith("--"))}


def _display(param: Any) -> str:
    """The option's long name as typed (``eval`` for ``--eval``), or the argument's name."""
    longs = [o for o in param.opts if o.startswith("--")]
    return longs[0].lstrip("-") if longs else param.name


def effective(command: Any, context: Any) -> list[dict[str, Any]]:
    """Each parameter of ``command`` with its value and where it came from, resolved as a run would resolve it."""
    resolved = command.make_context(command.name, [], parent=context, resilient_parsing=True)
    rows = []
    for param in command.params:
        if param.name in ("help",):
            continue
        source = resolved.get_parameter_source(param.name)
        value = resolved.params.get(param.name)
        rows.append(
            {
                "name": _display(param),
                "value": str(value) if isinstance(value, Path) else value,
                "source": SOURCES.get(source.name, "default") if source is not None else "default",
                "envvar": f"{ENV_PREFIX}_{command.name.upper().replace('-', '_')}_{param.name.upper()}"
                if getattr(param, "param_type_name", "") == "option"
                else None,
            }
        )
    return rows
