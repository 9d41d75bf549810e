"""Loading the configuration: the file (``nexus.toml`` or ``NEXUS_CONFIG``), the ``NEXUS_*``
environment variables and command-line overrides, merged with precedence CLI > environment >
file > defaults, then validated into ``NexusConfig`` with one error line per problem.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nexus_core.config.errors import ConfigError
from nexus_core.config.messages import describe_error
from nexus_core.config.rust_nexus import read_upstream_keys
from nexus_core.config.schema import NexusConfig

DEFAULT_CONFIG_FILE = "nexus.toml"
CONFIG_ENV_VAR = "NEXUS_CONFIG"

ENV_OVERRIDES: Mapping[str, tuple[str, str]] = {
    "NEXUS_HOST": ("server", "host"),
    "NEXUS_PORT": ("server", "port"),
    "NEXUS_LOG_LEVEL": ("logging", "level"),
    "NEXUS_LOG_FORMAT": ("logging", "format"),
    "NEXUS_DISCOVERY": ("discovery", "enabled"),
    "NEXUS_HEALTH_CHECK": ("health_check", "enabled"),
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
COMMAND_LINE = "command line"


def find_config_file(
    explicit: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """The file to read: explicit path, else ``NEXUS_CONFIG``, else ``./nexus.toml`` if present."""
    if explicit:
        return Path(explicit).expanduser()
    environ = os.environ if environ is None else environ
    named = environ.get(CONFIG_ENV_VAR)
    if named:
        return Path(named).expanduser()
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    use_default_locations: bool = True,
) -> NexusConfig:
    """Load the configuration with precedence overrides (CLI) > environment > file > defaults.

    ``overrides`` maps dotted keys (``"server.port"``) to values; ``None`` values are skipped so
    unset flags can be passed straight through. Raises ``ConfigError`` listing every problem.
    """
    environ = os.environ if environ is None else environ
    if use_default_locations:
        file = find_config_file(path, environ=environ)
    else:
        file = Path(path).expanduser() if path else None
    data: dict[str, Any] = {}
    if file is not None:
        from_env = use_default_locations and not path and bool(environ.get(CONFIG_ENV_VAR))
        data = read_toml(file, named_by=CONFIG_ENV_VAR if from_env else None)
    origins: dict[tuple[str, ...], str] = {}
    errors: list[str] = []
    for var, (section, key) in ENV_OVERRIDES.items():
        raw = environ.get(var)
        if raw is None or raw.strip() == "":
            continue
        value: Any = raw.strip()
        if key == "enabled":
            lowered = raw.strip().lower()
            if lowered not in _TRUE | _FALSE:
                errors.append(
                    f"environment variable {var}: {section}.{key}: must be true or false "
                    f"(got {raw!r})"
                )
                continue
            value = lowered in _TRUE
        _set_path(data, (section, key), value)
        origins[(section, key)] = f"environment variable {var}"
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        key_path = tuple(dotted.split("."))
        _set_path(data, key_path, value)
        origins[key_path] = COMMAND_LINE
    source = str(file) if file is not None else "defaults"
    try:
        config = validate_config(data, source=source, origins=origins)
    except ConfigError as exc:
        raise ConfigError(errors + exc.errors) from None
    if errors:
        raise ConfigError(errors)
    return config


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set ``data[a][b]... = value``, leaving a non-table in the way for validation to report."""
    target = data
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            return
    target[path[-1]] = value


def read_toml(file: Path, *, named_by: str | None = None) -> dict[str, Any]:
    """Parse a TOML file, turning a missing file or a syntax error into ``ConfigError``."""
    note = f" (named by {named_by})" if named_by else ""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such file{note}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{file}: is a directory, not a TOML file{note}"]) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}{note}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: invalid TOML: {exc}"]) from None


def validate_config(
    data: Mapping[str, Any],
    *,
    source: str = "config",
    origins: Mapping[tuple[str, ...], str] | None = None,
) -> NexusConfig:
    """Validate a raw mapping into ``NexusConfig``, with errors naming key paths and ``source``.

    ``origins`` names where overridden keys came from (``environment variable NEXUS_PORT``), so
    an error in such a value blames the variable rather than the file.
    """
    data, upstream = read_upstream_keys(data, source)
    origins = {**(origins or {}), **upstream.origins}
    try:
        config = NexusConfig.model_validate(data)
    except ValidationError as exc:
        lines = [describe_error(err, source, origins) for err in exc.errors()]
        raise ConfigError(list(dict.fromkeys([*upstream.errors, *lines]))) from None
    if upstream.errors:
        raise ConfigError(upstream.errors)
    config._upstream_warnings = tuple(upstream.warnings)
    return config
