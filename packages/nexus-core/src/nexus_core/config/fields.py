"""The value types of configuration fields: enums read in any case, validated strings (an
environment variable's name, an http(s) URL, a glob, a backend name) and the bounds they share.

The section models in ``schema`` are built from these; nothing here knows a section.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class LowerEnum(enum.StrEnum):
    """A lower-case enum that accepts any case on input."""


class RoutingStrategy(LowerEnum):
    """The built-in strategies' names; ``[routing] strategy`` also takes one a plugin registers."""

    SMART = "smart"
    ROUND_ROBIN = "round_robin"
    PRIORITY_ONLY = "priority_only"
    RANDOM = "random"
    LEAST_LOADED = "least_loaded"
    CACHE_AFFINITY = "cache_affinity"


class SystemMessages(LowerEnum):
    MERGE = "merge"
    REMINDER = "reminder"
    KEEP = "keep"


class Zone(LowerEnum):
    RESTRICTED = "restricted"
    OPEN = "open"


class PolicyPrivacy(LowerEnum):
    UNRESTRICTED = "unrestricted"
    RESTRICTED = "restricted"


class HardLimitAction(LowerEnum):
    WARN = "warn"
    BLOCK_CLOUD = "block_cloud"
    BLOCK_ALL = "block_all"


class LogFormat(LowerEnum):
    PRETTY = "pretty"
    JSON = "json"


class LogLevel(LowerEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


#: Level names of the Rust Nexus (and of ``RUST_LOG``) read as the nearest level here: Python's
#: logging has nothing finer than debug, and spells warn in full.
LOG_LEVEL_ALIASES: Mapping[str, LogLevel] = {"trace": LogLevel.DEBUG, "warn": LogLevel.WARNING}


def _log_level(value: Any) -> Any:
    if isinstance(value, str):
        name = value.strip().lower()
        return LOG_LEVEL_ALIASES.get(name, name)
    return value


class StateBackend(LowerEnum):
    SQLITE = "sqlite"
    REDIS = "redis"
    MEMORY = "memory"


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A DNS name (labels of letters, digits and hyphens) or an IP address written as a host.
HOST_NAME = re.compile(
    r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$|^[0-9a-f:.]+$"
)
# RFC 6763 service names: up to 15 letters, digits and hyphens, then the protocol, then the domain.
SERVICE_TYPE = re.compile(r"^_[A-Za-z0-9-]{1,15}\._(tcp|udp)\.local\.$")
#: What a backend name may be: it travels in headers, log lines, metric labels and URL paths
#: (``/admin/backends/{name}``), so only characters that need no escaping in any of them.
BACKEND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}")
BACKEND_NAME_RULE = "1-64 letters, digits, '.', '_', '-' or '~', starting with a letter or digit"


def _env_name(value: Any) -> Any:
    # The message never repeats the value: a pasted secret must not end up in logs.
    if isinstance(value, str) and not _ENV_NAME.match(value):
        raise ValueError(
            "must be the NAME of an environment variable (such as OPENAI_API_KEY), "
            "never the secret itself"
        )
    return value


def _http_url(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    problem = ""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        problem = str(exc)
    else:
        if parts.scheme not in ("http", "https"):
            problem = "scheme must be http or https"
        elif not parts.hostname:
            problem = "no host"
        elif any(char.isspace() for char in value):
            problem = "contains white space"
    if problem:
        raise ValueError(f"must be an http:// or https:// URL ({problem})")
    return value.rstrip("/")


#: What a plugin may register a name as (``nexus_core.plugins``), so what a strategy may be called.
REGISTERED_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


def _strategy_name(value: Any) -> Any:
    # Any well-formed name passes here: whether a plugin registered it is known only once the
    # plugins load (``plugins.config_problems``, run by ``nexus serve`` and ``nexus config check``).
    if not isinstance(value, str):
        return value
    name = value.lower()
    if not REGISTERED_NAME.match(name):
        builtin = ", ".join(repr(strategy.value) for strategy in RoutingStrategy)
        raise ValueError(
            f"must be a built-in strategy ({builtin}) or the name of one a plugin registers "
            f"(lower-case letters, digits, '_', '.', '-', starting with a letter) (got {value!r})"
        )
    return name


Strategy = Annotated[str, BeforeValidator(_strategy_name)]
SystemMessagesMode = Annotated[SystemMessages, BeforeValidator(_lower)]
ZoneName = Annotated[Zone, BeforeValidator(_lower)]
Privacy = Annotated[PolicyPrivacy, BeforeValidator(_lower)]
Action = Annotated[HardLimitAction, BeforeValidator(_lower)]
Format = Annotated[LogFormat, BeforeValidator(_lower)]
Level = Annotated[LogLevel, BeforeValidator(_log_level)]
StateKind = Annotated[StateBackend, BeforeValidator(_lower)]
Tier = Annotated[int, Field(ge=1, le=5)]
PositiveSeconds = Annotated[float, Field(gt=0)]
EnvName = Annotated[str, BeforeValidator(_env_name)]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]


def glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable fnmatch glob, or None."""
    if not pattern.strip():
        return "must be a non-empty glob such as 'gpt-*'"
    inside = False
    start = 0
    for index, char in enumerate(pattern):
        if char == "[" and not inside:
            inside, start = True, index
        elif char == "[" and inside:
            return f"invalid glob {pattern!r}: '[' inside [...] at position {index}"
        elif char == "]" and inside:
            body = pattern[start + 1 : index].removeprefix("!")
            if not body:
                return f"invalid glob {pattern!r}: empty [...] at position {start}"
            inside = False
        elif char == "]":
            return f"invalid glob {pattern!r}: ']' without '[' at position {index}"
    if inside:
        return f"invalid glob {pattern!r}: '[' at position {start} is never closed"
    return None
