"""Configuration: pydantic models for every section, and the loader (file < env < CLI).

Strict on purpose: an unknown key, a wrong enum or an alias cycle refuses to load with a message
that names the key path and where the value came from (the file, an environment variable or the
command line), so a typo never silently changes what the gateway does.

Secrets never live in the configuration: it only holds the *names* of environment variables
(``*_env`` keys), read when the key is needed and masked wherever the config is printed.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

MAX_ALIAS_DEPTH = 3
#: The backend type meaning "probe the server and pick the most specific type that answers".
AUTO_TYPE = "auto"
DEFAULT_CONFIG_FILE = "nexus.toml"
CONFIG_ENV_VAR = "NEXUS_CONFIG"


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class LowerEnum(enum.StrEnum):
    """A lower-case enum that accepts any case on input."""


class RoutingStrategy(LowerEnum):
    SMART = "smart"
    ROUND_ROBIN = "round_robin"
    PRIORITY_ONLY = "priority_only"
    RANDOM = "random"
    LEAST_LOADED = "least_loaded"


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


class ConfigKeyError(ValueError):
    """A cross-field problem found by a model validator, located at ``key`` below that model.

    Pydantic reports model-level errors at the model's own location; carrying the key lets the
    message name ``backends[1].name`` rather than ``(top level)``.
    """

    def __init__(self, message: str, *key: str | int) -> None:
        super().__init__(message)
        self.key: tuple[str | int, ...] = key


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A DNS name (labels of letters, digits and hyphens) or an IP address written as a host.
_HOST_NAME = re.compile(
    r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$|^[0-9a-f:.]+$"
)
# RFC 6763 service names: up to 15 letters, digits and hyphens, then the protocol, then the domain.
_SERVICE_TYPE = re.compile(r"^_[A-Za-z0-9-]{1,15}\._(tcp|udp)\.local\.$")
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


Strategy = Annotated[RoutingStrategy, BeforeValidator(_lower)]
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


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ServerConfig(Section):
    """``[server]``: the HTTP listener and request deadlines."""

    host: str = Field(
        default="0.0.0.0",
        description="Address to listen on: 0.0.0.0 for every interface, 127.0.0.1 for this "
        "machine only.",
    )
    port: int = Field(
        default=8000,
        ge=1,
        le=65535,
        description="TCP port of the API, the dashboard and /metrics.",
    )
    request_timeout_seconds: PositiveSeconds = Field(
        default=300.0,
        description="Overall deadline for a response to start, across every failover attempt "
        "and fallback model (a healthy stream is never cut by it).",
    )
    connect_timeout_seconds: PositiveSeconds = Field(
        default=5.0, description="Time allowed to open a connection to a backend."
    )
    first_byte_timeout_seconds: PositiveSeconds = Field(
        default=120.0,
        description="Time allowed for a backend's answer to start (model loading included): a "
        "whole answer must be complete by then, a stream must have sent its first event.",
    )
    idle_timeout_seconds: PositiveSeconds = Field(
        default=60.0,
        description="Longest wait for the next event of a stream (keep-alive comments do not "
        "count as events).",
    )
    max_body_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted on any route; a bigger one gets HTTP 413 "
        "(the default fits a 1M-token context with images: OpenAI accepts 50 MB).",
    )
    drain_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On shut-down, how long requests in flight get to finish.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes serving the port; more than 1 needs [state] sqlite or redis, "
        "through which they share spend, keys, rate limits and run-time backends.",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest total size of a request's headers; bigger gets HTTP 431.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins browsers may call the API from (CORS; never /admin); empty: CORS "
        "off. '*' allows any origin.",
        examples=[["https://chat.example.com"]],
    )
    header_timeout_seconds: PositiveSeconds = Field(
        default=10.0,
        description="Time a client has to send a request's headers (from its connection or its "
        "previous answer); then the connection is closed.",
    )
    body_timeout_seconds: PositiveSeconds = Field(
        default=30.0,
        description="Time a client has to send a request body, plus one second per 16 KiB "
        "received; then 408 and the connection is closed.",
    )
    max_connections: int = Field(
        default=10_000,
        ge=16,
        description="Most client connections open at once (lowered to fit the process's file "
        "limit); past it idle connections are closed first, then new ones refused with 503.",
    )
    max_response_body_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest whole (non-streamed) answer read from a backend, health probes "
        "included; a bigger one fails the attempt (failover, else 502).",
    )
    max_response_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest total size of a backend answer's status line and headers.",
    )
    max_stream_event_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest single event of a streamed answer; a bigger one ends the stream "
        "with an error event (failover when nothing was sent yet).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names Nexus answers to on /admin, the dashboard and /ws (and on every "
        "route when it listens on loopback only), besides IP addresses, localhost and this "
        "machine's own names; '*' allows any.",
        examples=[["nexus.example.com"]],
    )
    admin_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins besides the server's own that may call /admin.",
        examples=[["https://ops.example.com"]],
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks of reverse proxies whose Forwarded / "
        "X-Forwarded-For headers name the real client; empty: those headers are never believed.",
        examples=[["127.0.0.1"]],
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            name = item.strip().lower().rstrip(".")
            if name != "*" and not _HOST_NAME.match(name):
                raise ValueError(
                    f"each entry must be a host name such as 'nexus.example.com' or '*' (got "
                    f"{item!r})"
                )
            out.append(name)
        return out

    @field_validator("cors_origins", "admin_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            origin = item.strip().rstrip("/")
            if origin != "*":
                parts = urlsplit(origin)
                if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                    raise ValueError(
                        "each entry must be an origin such as 'https://chat.example.com' "
                        f"(scheme and host, no path; got {item!r})"
                    )
                origin = origin.lower()
            out.append(origin)
        return out

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"each entry must be an IP address or network such as '10.0.0.0/8' (got "
                    f"{item!r})"
                ) from None
        return value


class DiscoveryConfig(Section):
    """``[discovery]``: finding backends on the local network over mDNS."""

    enabled: bool = Field(
        default=True,
        description="Browse the local network for inference servers over mDNS (zeroconf).",
    )
    service_types: list[str] = Field(
        default_factory=lambda: ["_ollama._tcp.local.", "_llm._tcp.local."],
        description="mDNS (DNS-SD) service types to browse; the trailing dot may be left out.",
    )
    grace_period_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a vanished service stays (as unknown) before it is removed.",
    )
    interfaces: list[str] = Field(
        default_factory=list,
        description="Addresses of this machine's network interfaces to use for mDNS, e.g. "
        '["192.168.1.20"]; empty: every IPv4 interface.',
    )
    max_services: int = Field(
        default=256,
        ge=1,
        description="Most mDNS services tracked at once (each may become a backend); more are "
        "ignored until some vanish, so a flood of announcements cannot grow the fleet or memory.",
    )

    @field_validator("service_types")
    @classmethod
    def _service_types(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            name = item.strip()
            name = name if name.endswith(".") else name + "."
            if not _SERVICE_TYPE.match(name):
                raise ValueError(
                    "each entry must be a DNS-SD service type such as '_ollama._tcp.local.' "
                    f"(got {item!r})"
                )
            out.append(name)
        return out

    @field_validator("interfaces")
    @classmethod
    def _interface_addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(
                    f"each entry must be an IP address of this machine (got {item!r})"
                ) from None
        return value


class HealthCheckConfig(Section):
    """``[health_check]``: the background probe loop."""

    enabled: bool = Field(default=True, description="Probe every backend in the background.")
    interval_seconds: PositiveSeconds = Field(
        default=30.0, description="Time between two probes of one backend (with jitter)."
    )
    timeout_seconds: PositiveSeconds = Field(default=5.0, description="Timeout of one probe.")
    failure_threshold: int = Field(
        default=3,
        ge=1,
        description="Consecutive failed probes before a backend is marked unhealthy.",
    )
    recovery_threshold: int = Field(
        default=2,
        ge=1,
        description="Consecutive good probes before an unhealthy backend is healthy again.",
    )
    load_interval_seconds: PositiveSeconds = Field(
        default=2.0,
        description="Time between two reads of a backend's load (busy slots, queue) for adapters "
        "whose server reports it.",
    )


class WeightsConfig(Section):
    """``[routing.weights]``: the parts of the ``smart`` score (relative, normalised)."""

    priority: float = Field(
        default=50.0, ge=0, description="Weight of the configured backend priority."
    )
    load: float = Field(
        default=30.0, ge=0, description="Weight of the current load (requests in flight, queue)."
    )
    latency: float = Field(default=20.0, ge=0, description="Weight of the measured latency.")


def _glob_problem(pattern: str) -> str | None:
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


class PolicyConfig(Section):
    """``[[routing.policies]]``: rules by model name; the first matching policy wins."""

    model_pattern: str = Field(
        description="Glob on the requested model name (*, ?, [abc], [!abc]).",
        examples=["internal-*"],
    )
    privacy: Privacy = Field(
        default=PolicyPrivacy.UNRESTRICTED,
        description="restricted: matching requests never reach an open (cloud) backend, "
        "not by failover, not by fallback.",
        examples=["restricted"],
    )
    min_tier: Tier | None = Field(
        default=None,
        description="Lowest backend tier (1-5) allowed to serve matching requests.",
        examples=[3],
    )

    @field_validator("model_pattern")
    @classmethod
    def _valid_glob(cls, value: str) -> str:
        problem = _glob_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class PriceEntry(Section):
    """``[[pricing]]``: what one model costs, in USD per million tokens.

    Entries are tried in file order before the built-in table of cloud prices; the first whose
    ``model`` and ``backends`` match wins. A local backend costs nothing unless an entry prices it.
    """

    model: str = Field(
        min_length=1,
        description="Model id; also prices dated variants (gpt-4o prices gpt-4o-2024-08-06); "
        "a glob when it holds *, ? or [.",
        examples=["gpt-4o"],
    )
    backends: list[str] = Field(
        default_factory=list,
        description="Names of the backends this price applies to; empty: every backend.",
    )
    input_per_million: float = Field(
        ge=0, description="USD per million prompt tokens.", examples=[2.5]
    )
    output_per_million: float = Field(
        ge=0, description="USD per million completion tokens.", examples=[10.0]
    )
    cached_input_per_million: float | None = Field(
        default=None,
        ge=0,
        description="USD per million prompt tokens served from the provider's cache; unset: "
        "the input price.",
        examples=[1.25],
    )

    @field_validator("model")
    @classmethod
    def _valid_glob(cls, value: str) -> str:
        problem = _glob_problem(value) if any(c in value for c in "*?[]") else None
        if problem:
            raise ValueError(problem)
        return value


class BudgetConfig(Section):
    """``[routing.budget]``: monthly spend limit on priced (cloud) backends."""

    monthly_limit_usd: float | None = Field(
        default=None,
        ge=0,
        description="Spend limit per calendar month (UTC) in USD; unset means no budget.",
        examples=[50.0],
    )
    soft_limit_percent: float = Field(
        default=75.0,
        gt=0,
        le=100,
        description="Share of the limit from which local backends are preferred.",
    )
    hard_limit_action: Action = Field(
        default=HardLimitAction.WARN,
        description="At 100 %: warn (log and header only), block_cloud (cloud backends "
        "refused) or block_all (every request refused).",
    )


class RoutingConfig(Section):
    """``[routing]``: how a backend is chosen and what happens when it fails."""

    strategy: Strategy = Field(
        default=RoutingStrategy.SMART,
        description="smart (score of priority, load and latency), round_robin, priority_only, "
        "random or least_loaded.",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        le=20,
        description="How many other backends a failed request may move to (before the first "
        "byte reaches the client).",
    )
    weights: WeightsConfig = Field(
        default_factory=WeightsConfig,
        description="Weights of the smart strategy (relative: they are normalised).",
    )
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Requested model name -> model to use; chains up to 3, cycles refused.",
        json_schema_extra={"key_name": "alias"},
        examples=[{"gpt-4": "llama3.1:70b"}],
    )
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Model -> models to try in order when no backend could serve it.",
        json_schema_extra={"key_name": "model"},
        examples=[{"llama3.1:70b": ["llama3.1:8b"]}],
    )
    policies: list[PolicyConfig] = Field(
        default_factory=list, description="Rules by model name (privacy, minimum tier)."
    )
    budget: BudgetConfig = Field(
        default_factory=BudgetConfig, description="Monthly spend limit on priced backends."
    )
    system_messages: SystemMessagesMode = Field(
        default=SystemMessages.MERGE,
        description="What the Anthropic door does with a system message inside messages "
        "(after the first turn): merge (into the leading system prompt), reminder (into the "
        "adjacent user turn, in <system-reminder> tags) or keep (forwarded where it is).",
    )

    @model_validator(mode="after")
    def _aliases_resolve(self) -> Self:
        for start in self.aliases:
            seen = [start]
            current = start
            while current in self.aliases:
                current = self.aliases[current]
                if current in seen:
                    chain = " -> ".join([*seen, current])
                    raise ConfigKeyError(f"alias cycle {chain}", "aliases", start)
                seen.append(current)
                if len(seen) > MAX_ALIAS_DEPTH + 1:
                    chain = " -> ".join(seen)
                    raise ConfigKeyError(
                        f"alias chain longer than {MAX_ALIAS_DEPTH}: {chain}", "aliases", start
                    )
        return self


class ModelDeclaration(Section):
    """``[[backends.models]]``: a model the operator declares, with what it can do."""

    id: str = Field(
        min_length=1, description="The model id as the backend knows it.", examples=["llava"]
    )
    context_length: int | None = Field(
        default=None,
        ge=1,
        description="Context window in tokens; unset: as the server says.",
        examples=[8192],
    )
    vision: bool | None = Field(
        default=None, description="Accepts image inputs; unset: unknown.", examples=[True]
    )
    tools: bool | None = Field(
        default=None, description="Supports tool (function) calling.", examples=[False]
    )
    json_mode: bool | None = Field(
        default=None, description="Supports response_format JSON.", examples=[True]
    )
    embeddings: bool | None = Field(
        default=None, description="Serves embeddings.", examples=[False]
    )


def _model_declaration(value: Any) -> Any:
    return {"id": value} if isinstance(value, str) else value


DeclaredModel = Annotated[ModelDeclaration, BeforeValidator(_model_declaration)]


class BackendConfig(Section):
    """``[[backends]]``: one statically configured inference server."""

    name: str = Field(
        min_length=1,
        description="Unique name, shown in X-Nexus-Backend, logs, metrics and the dashboard.",
        examples=["gpu-box"],
    )
    url: HttpUrl = Field(
        description="Base URL of the server (scheme, host and port).",
        examples=["http://192.168.1.20:11434"],
    )
    type: str = Field(
        default=AUTO_TYPE,
        description="Backend type registered by a plugin (`nexus plugins` lists them); "
        "generic is any OpenAI-compatible server; auto asks the server what it is.",
        examples=["ollama"],
    )
    priority: int = Field(
        default=50,
        ge=0,
        le=100,
        description="0-100, lower numbers are preferred.",
    )
    zone: ZoneName | None = Field(
        default=None,
        description="Privacy zone: restricted (default for local types) or open (default for "
        "cloud types, whose adapter says is_cloud).",
        examples=["restricted"],
    )
    tier: Tier = Field(default=1, description="Capability tier, 1 (small) to 5 (frontier).")
    api_key_env: EnvName | None = Field(
        default=None,
        description="Name of the environment variable holding the API key (required for "
        "cloud types, whose adapter says is_cloud).",
        examples=["GPU_BOX_API_KEY"],
    )
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        description="Most requests in flight at once; more wait in the queue. Unset: no limit.",
        examples=[4],
    )
    forward_client_auth: bool = Field(
        default=False,
        description="Pass the client's own Authorization header to this backend (local types "
        "only; a cloud backend always uses api_key_env).",
    )
    models: list[DeclaredModel] = Field(
        default_factory=list,
        description="Models this backend is known to serve, added to what the server lists: "
        "ids, or tables whose capabilities override what the server reports.",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not BACKEND_NAME.fullmatch(value):
            raise ValueError(f"must be {BACKEND_NAME_RULE} (got {value!r})")
        return value

    @field_validator("type")
    @classmethod
    def _type_name(cls, value: str) -> str:
        value = value.lower()
        if not re.match(r"^[a-z][a-z0-9_.-]*$", value):
            raise ValueError(f"must be a backend type name such as 'ollama' (got {value!r})")
        return value

    def zone_for(self, is_cloud: bool) -> Zone:
        """The configured zone, else open for a cloud adapter and restricted for a local one.

        Whether a type is cloud is its adapter's ``is_cloud`` (a plugin's), so the caller that
        knows the adapter factory says so; the configuration alone cannot.
        """
        if self.zone is not None:
            return self.zone
        return Zone.OPEN if is_cloud else Zone.RESTRICTED

    def cloud_problems(self) -> list[tuple[str, str]]:
        """What this backend may not be if its type is a cloud adapter: ``(key, message)`` pairs.

        A cloud backend needs its own key (``api_key_env``) and never receives the client's
        ``Authorization``. Checked where the adapter factory is known: ``Gateway.add_backend``
        and ``nexus serve`` / ``nexus config check``.
        """
        problems: list[tuple[str, str]] = []
        if not self.api_key_env:
            problems.append(
                (
                    "api_key_env",
                    f"required for the cloud type {self.type!r}: the name of the environment "
                    "variable that holds its API key",
                )
            )
        if self.forward_client_auth:
            problems.append(
                (
                    "forward_client_auth",
                    f"a cloud backend ({self.type!r}) never receives the client's "
                    "Authorization; it uses its api_key_env",
                )
            )
        return problems

    def api_key(self) -> str | None:
        """The key from the environment variable named by ``api_key_env``, read when asked."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class QueueConfig(Section):
    """``[queue]``: where requests wait when every candidate backend is full."""

    enabled: bool = Field(
        default=True, description="Queue requests when every candidate is at max_concurrent."
    )
    max_size: int = Field(
        default=100, ge=0, description="Most requests waiting at once; more get 503."
    )
    max_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Longest wait for a free slot, then 503 with Retry-After.",
    )


class QualityConfig(Section):
    """``[quality]``: cooling down backends whose requests keep failing."""

    error_rate_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Error rate (0-1) over the window above which a backend is cooled down.",
    )
    window_seconds: PositiveSeconds = Field(
        default=300.0, description="Window over which request outcomes are counted."
    )
    min_requests: int = Field(
        default=5,
        ge=1,
        description="Requests needed in the window before the error rate is trusted.",
    )
    cooldown_seconds: PositiveSeconds = Field(
        default=30.0,
        description="How long a cooled-down backend is skipped before a half-open retry.",
    )
    ttft_penalty_threshold_ms: float = Field(
        default=3000.0,
        ge=0,
        description="Time to first token above which a backend's score is penalised.",
    )


class ApiKeyConfig(Section):
    """``[[auth.keys]]``: one gateway API key."""

    name: str = Field(
        min_length=1, description="Name of the key in logs and stats.", examples=["team-a"]
    )
    key_env: EnvName = Field(
        min_length=1,
        description="Name of the environment variable holding the key clients send.",
        examples=["NEXUS_KEY_TEAM_A"],
    )
    models: list[str] = Field(
        default_factory=list,
        description="Globs of models this key may use; empty means every model.",
    )
    # Strict: a boolean is never a number here (``true`` is not a limit of 1), nor a string.
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="Requests per minute (a token bucket holding one minute's worth); unset: no "
        "limit.",
        examples=[60],
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="Prompt + completion tokens per minute, from the answers' usage; unset: no "
        "limit.",
        examples=[100_000],
    )
    monthly_budget_usd: float | None = Field(
        default=None,
        ge=0,
        strict=True,
        allow_inf_nan=False,
        description="Spend limit of this key per calendar month (UTC), in USD.",
        examples=[20.0],
    )


class AuthConfig(Section):
    """``[auth]``: gateway API keys (off by default)."""

    enabled: bool = Field(default=False, description="Require a gateway API key on requests.")
    keys: list[ApiKeyConfig] = Field(
        default_factory=list,
        description="Gateway API keys; clients send one as Authorization: Bearer or x-api-key.",
    )
    admin_key_env: EnvName | None = Field(
        default=None,
        description="Name of the environment variable holding the key for /admin; unset: "
        "/admin answers loopback clients only.",
        examples=["NEXUS_ADMIN_KEY"],
    )
    allowed_api_key_envs: list[EnvName] = Field(
        default_factory=list,
        description="Environment variables that backends added through the admin API may name "
        "as api_key_env, besides those the configured backends use.",
        examples=[["GROQ_API_KEY"]],
    )


class LoggingConfig(Section):
    """``[logging]``."""

    level: Level = Field(
        default=LogLevel.INFO,
        description="debug, info, warning or error (the Rust Nexus's trace and warn are read as "
        "debug and warning).",
    )
    format: Format = Field(
        default=LogFormat.PRETTY, description="pretty (for people) or json (for collectors)."
    )
    enable_content_logging: bool = Field(
        default=False, description="Log prompt and answer contents (off: never logged)."
    )
    component_levels: dict[str, Level] = Field(
        default_factory=dict,
        description="Log level per component (the logger name after 'nexus.', such as health "
        "or routing), overriding level.",
        json_schema_extra={"key_name": "component"},
        examples=[{"health": "debug"}],
    )


#: The SQLite file every instance on a machine shared before each got its own (see
#: ``nexus_core.state.sqlite_path``). ``state.path`` set to exactly this, as ``nexus config init``
#: used to write it, counts as unset.
LEGACY_SQLITE_PATH = "~/.local/state/nexus/state.sqlite3"


class StateConfig(Section):
    """``[state]``: where durable state (spend, rate limits, run-time keys and backends) lives."""

    backend: StateKind = Field(
        default=StateBackend.SQLITE,
        description="sqlite (a local file), redis (shared by several replicas) or memory "
        "(lost on restart).",
    )
    path: str | None = Field(
        default=None,
        description="SQLite file (sqlite only); unset: a file of this instance's own, one per "
        "configuration file (per port without one), under $XDG_STATE_HOME/nexus or "
        "~/.local/state/nexus.",
        examples=["/var/lib/nexus/state.sqlite3"],
    )
    redis_url_env: EnvName | None = Field(
        default=None,
        description="Name of the environment variable holding the Redis URL (redis only).",
        examples=["NEXUS_REDIS_URL"],
    )
    key_prefix: str = Field(default="nexus:", description="Prefix of every Redis key (redis only).")

    @model_validator(mode="after")
    def _redis_needs_url(self) -> Self:
        if self.backend is StateBackend.REDIS and not self.redis_url_env:
            raise ConfigKeyError(
                "required when backend is 'redis': the name of the environment variable "
                "holding the Redis URL",
                "redis_url_env",
            )
        return self


class TelemetryConfig(Section):
    """``[telemetry]``: metrics and OpenTelemetry traces."""

    metrics: bool = Field(
        default=True,
        description="Count requests for /metrics, /v1/stats and /v1/history; false: those "
        "answer with nothing counted (request logs are [logging]'s).",
    )
    enabled: bool = Field(default=False, description="Export OpenTelemetry spans.")
    otlp_endpoint: HttpUrl | None = Field(
        default=None,
        description="OTLP/HTTP endpoint; unset: the OTEL_EXPORTER_OTLP_* variables apply.",
        examples=["http://localhost:4318"],
    )
    service_name: str = Field(default="nexus", description="service.name of the spans.")


class NexusConfig(Section):
    """The whole configuration; every section has defaults, so an empty file is valid."""

    server: ServerConfig = Field(
        default_factory=ServerConfig, description="The HTTP listener and request deadlines."
    )
    discovery: DiscoveryConfig = Field(
        default_factory=DiscoveryConfig,
        description="Finding inference servers on the local network over mDNS.",
    )
    health_check: HealthCheckConfig = Field(
        default_factory=HealthCheckConfig, description="The background health probes."
    )
    routing: RoutingConfig = Field(
        default_factory=RoutingConfig,
        description="How a backend is chosen, and what happens when it fails.",
    )
    backends: list[BackendConfig] = Field(
        default_factory=list,
        description="Statically configured backends (discovered ones are added to these).",
    )
    pricing: list[PriceEntry] = Field(
        default_factory=list,
        description="Model prices, tried before the built-in table of cloud prices.",
    )
    queue: QueueConfig = Field(
        default_factory=QueueConfig,
        description="Where requests wait when every candidate backend is busy.",
    )
    quality: QualityConfig = Field(
        default_factory=QualityConfig,
        description="Cooling down backends whose requests keep failing.",
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="Gateway API keys (off by default)."
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="Log level and format."
    )
    state: StateConfig = Field(
        default_factory=StateConfig,
        description="Where durable state (spend, rate limits, keys and backends added at run "
        "time) lives.",
    )
    telemetry: TelemetryConfig = Field(
        default_factory=TelemetryConfig, description="OpenTelemetry traces."
    )

    # Set by validate_config: keys of the Rust Nexus the source used (see UPSTREAM_KEYS).
    _upstream_warnings: tuple[str, ...] = PrivateAttr(default=())

    @property
    def deprecation_warnings(self) -> tuple[str, ...]:
        """One line per Rust Nexus key the configuration used: renamed here, or ignored."""
        return self._upstream_warnings

    @model_validator(mode="after")
    def _unique_backend_names(self) -> Self:
        first: dict[str, int] = {}
        for index, backend in enumerate(self.backends):
            if backend.name in first:
                raise ConfigKeyError(
                    f"duplicate backend name {backend.name!r} "
                    f"(already used by backends[{first[backend.name]}])",
                    "backends",
                    index,
                    "name",
                )
            first[backend.name] = index
        return self


# ---------------------------------------------------------------------------------------------
# Walking the models (for docs, the example file and error hints)


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``; ``Annotated[X, ...]`` -> ``X``; anything else unchanged."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if origin is not None and type(None) in get_args(annotation) and len(args) == 1:
            annotation = args[0]
            continue
        return annotation


def _as_model(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrap_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_shape(field: FieldInfo) -> tuple[str, type[BaseModel] | None]:
    """How a field nests: ``("model"|"list"|"dict"|"value", item model or None)``."""
    annotation = _unwrap_optional(field.annotation)
    model = _as_model(annotation)
    if model is not None:
        return "model", model
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is list and args:
        return "list", _as_model(args[0])
    if origin is dict and len(args) == 2:
        return "dict", _as_model(args[1])
    return "value", None


def dict_key_name(field: FieldInfo) -> str:
    """The placeholder for the keys of a dict field (``model`` in ``pricing.<model>``)."""
    extra = field.json_schema_extra
    name = extra.get("key_name") if isinstance(extra, dict) else None
    return str(name) if name else "name"


def config_key_paths(model: type[BaseModel] = NexusConfig, prefix: str = "") -> Iterator[str]:
    """Every key path of the configuration, e.g. ``backends[].api_key_env``.

    Lists of tables add ``[]`` and tables keyed by user names add a placeholder such as
    ``logging.component_levels.<component>``.
    """
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        shape, inner = field_shape(field)
        if inner is None:
            continue
        if shape == "list":
            yield from config_key_paths(inner, f"{path}[]")
        elif shape == "dict":
            yield from config_key_paths(inner, f"{path}.<{dict_key_name(field)}>")
        else:
            yield from config_key_paths(inner, path)


# ---------------------------------------------------------------------------------------------
# Loading


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


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
        lines = [_describe(err, source, origins) for err in exc.errors()]
        raise ConfigError(list(dict.fromkeys([*upstream.errors, *lines]))) from None
    if upstream.errors:
        raise ConfigError(upstream.errors)
    config._upstream_warnings = tuple(upstream.warnings)
    return config


# ---------------------------------------------------------------------------------------------
# Keys of the Rust Nexus (github.com/leocamello/nexus)


@dataclass(frozen=True)
class UpstreamKey:
    """A key of the Rust Nexus's configuration that this one names differently, or lacks.

    ``path`` is written as in this reference (``backends[].backend_type``). ``replacement`` is the
    key of the same table read instead; ``None``: the key has no effect here and is dropped.
    ``note`` says why, or what to use instead.
    """

    path: str
    replacement: str | None
    note: str = ""


#: Keys from the Rust Nexus's documentation, example file and end-to-end script. Each is read
#: (renamed) or dropped with one warning naming both, so its files load unchanged; any other
#: unknown key is still an error. A whole section is one entry (``lifecycle``).
UPSTREAM_KEYS: tuple[UpstreamKey, ...] = (
    UpstreamKey("quality.ttft_threshold_ms", "ttft_penalty_threshold_ms"),
    UpstreamKey("quality.window_1h", "window_seconds"),
    UpstreamKey("queue.default_timeout_seconds", "max_wait_seconds"),
    UpstreamKey("queue.max_queue_size", "max_size"),
    UpstreamKey("routing.budget.monthly_limit", "monthly_limit_usd"),
    UpstreamKey("backends[].backend_type", "type"),
    UpstreamKey("backends[].privacy", "zone"),
    UpstreamKey(
        "server.max_concurrent_requests",
        None,
        "limit a backend with backends[].max_concurrent, client connections with "
        "server.max_connections",
    ),
    UpstreamKey("quality.enabled", None, "quality tracking is always on"),
    UpstreamKey("quality.window_24h", None, "there is one window, quality.window_seconds"),
    UpstreamKey("quality.update_interval", None, "quality is updated by every request"),
    UpstreamKey("quality.metrics_interval_seconds", None, "quality is updated by every request"),
    UpstreamKey("queue.priority_header", None, "the header is always X-Nexus-Priority"),
    UpstreamKey(
        "routing.budget.reconciliation_interval_secs",
        None,
        "spend is recorded as each answer ends",
    ),
    UpstreamKey("routing.policies[].max_cost_per_request", None, "use routing.budget"),
    UpstreamKey("routing.policies[].fallback_allowed", None, "fallbacks follow routing.fallbacks"),
    UpstreamKey("lifecycle", None, "there is no model lifecycle API"),
    UpstreamKey("fleet", None, "there are no fleet recommendations"),
)


@dataclass
class UpstreamReading:
    """What ``read_upstream_keys`` found: warning and error lines, origins of renamed keys."""

    warnings: list[str]
    errors: list[str]
    origins: dict[tuple[str, ...], str]


def read_upstream_keys(
    data: Mapping[str, Any], source: str = "config"
) -> tuple[dict[str, Any], UpstreamReading]:
    """``data`` with the Rust Nexus's keys renamed or dropped (``UPSTREAM_KEYS``), and the lines
    to report: a warning per key, an error when a key is set under both names.

    ``data`` itself is left alone; tables are copied only where a key moves.
    """
    out = dict(data)
    found = UpstreamReading([], [], {})
    for entry in UPSTREAM_KEYS:
        *parents, key = entry.path.split(".")
        for table, loc in _upstream_tables(out, parents, ()):
            if key not in table:
                continue
            old = format_key_path((*loc, key))
            value = table.pop(key)
            if entry.replacement is None:
                kind = "key" if "." in entry.path else "section"
                found.warnings.append(
                    f"{source}: {old}: a Rust Nexus {kind} with no effect here ({entry.note}); "
                    "ignored, remove it"
                )
                continue
            new = format_key_path((*loc, entry.replacement))
            if entry.replacement in table:
                found.errors.append(
                    f"{source}: {old}: the Rust Nexus's name of {new}, which is set too; "
                    f"keep only {new}"
                )
                continue
            table[entry.replacement] = value
            found.origins[tuple(str(part) for part in (*loc, entry.replacement))] = (
                f"{source} ({old})"
            )
            found.warnings.append(
                f"{source}: {old} is deprecated (the Rust Nexus's name): read as {new}; rename it"
            )
    routing = out.get("routing")
    if isinstance(routing, dict) and isinstance(routing.get("policies"), dict):
        # [routing.policies.<name>] is in some of the Rust Nexus's documents; it never read it.
        found.errors.append(
            f"{source}: routing.policies: must be an array of tables: write each policy as "
            '[[routing.policies]] with model_pattern = "<glob>" (a [routing.policies.<name>] '
            "table is not a policy, in the Rust Nexus either)"
        )
        out["routing"] = {k: v for k, v in routing.items() if k != "policies"}
    return out, found


def _upstream_tables(
    node: dict[str, Any], parents: list[str], loc: tuple[str | int, ...]
) -> Iterator[tuple[dict[str, Any], tuple[str | int, ...]]]:
    """The tables at ``parents`` below ``node`` (``name[]``: each table of that array), each a
    copy put in place of the original, with its key path."""
    if not parents:
        yield node, loc
        return
    head, rest = parents[0], parents[1:]
    if head.endswith("[]"):
        name = head[:-2]
        items = node.get(name)
        if not isinstance(items, list):
            return
        items = node[name] = list(items)
        for index, item in enumerate(items):
            if isinstance(item, dict):
                items[index] = dict(item)
                yield from _upstream_tables(items[index], rest, (*loc, name, index))
        return
    child = node.get(head)
    if isinstance(child, dict):
        node[head] = dict(child)
        yield from _upstream_tables(node[head], rest, (*loc, head))


# ---------------------------------------------------------------------------------------------
# Error messages

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key_text(key: str) -> str:
    if _BARE_KEY.match(key):
        return key
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_key_path(loc: tuple[str | int, ...]) -> str:
    """``("backends", 2, "zone")`` -> ``backends[2].zone``; odd keys are quoted as in TOML."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{_key_text(part)}" if out else _key_text(part)
    return out


def _clean_loc(raw: tuple[int | str, ...]) -> tuple[tuple[str | int, ...], type[BaseModel] | None]:
    """Keep only the parts of a pydantic location that are real keys; also return the model
    that owns the last key (for "did you mean")."""
    loc: list[str | int] = []
    owner: type[BaseModel] | None = NexusConfig
    # What the next location part indexes into: a model, a list, a dict, or a plain value.
    shape, inner = "model", owner
    for part in raw:
        if shape == "model" and inner is not None and isinstance(part, str):
            loc.append(part)
            owner = inner
            field = inner.model_fields.get(part)
            if field is None:
                shape, inner = "value", None
            else:
                shape, inner = field_shape(field)
        elif (shape == "list" and isinstance(part, int)) or (
            shape == "dict" and isinstance(part, str)
        ):
            loc.append(part)
            shape = "model" if inner is not None else "value"
        elif shape == "value" and isinstance(part, (int, str)) and not _is_tag(part):
            loc.append(part)
    return tuple(loc), owner


def _is_tag(part: int | str) -> bool:
    """Pydantic's names for validator functions and union branches in a location."""
    return isinstance(part, str) and ("[" in part or part in ("int", "str", "float", "bool"))


_SECRET_WORDS = ("key", "token", "secret", "password")


def _unknown_key(loc: tuple[str | int, ...], owner: type[BaseModel] | None) -> str:
    key = str(loc[-1])
    if owner is None:
        return "unknown key"
    known = list(owner.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    if any(word in key.lower() for word in _SECRET_WORDS) and not key.endswith("_env"):
        hint += (
            " (secrets are never read from the config file: put the value in an environment "
            "variable and name the variable in a *_env key)"
        )
    return f"unknown key{hint}"


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    simple = {
        "int_parsing": "must be an integer",
        "int_type": "must be an integer",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be an array",
        "dict_type": "must be a table",
        "model_type": "must be a table",
        "model_attributes_type": "must be a table",
        "missing": "required key is missing",
        "finite_number": "must be a finite number",
    }
    if kind in simple:
        return simple[kind]
    bounds = {
        "greater_than_equal": ("ge", ">="),
        "greater_than": ("gt", ">"),
        "less_than_equal": ("le", "<="),
        "less_than": ("lt", "<"),
    }
    if kind in bounds:
        name, symbol = bounds[kind]
        return f"must be {symbol} {ctx.get(name)}"
    if kind == "enum":
        return f"must be {ctx.get('expected', '')} (any case)"
    if kind == "string_too_short":
        return "must not be empty"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def _shown(value: Any) -> str:
    """A value for an error message, with any password in a URL masked."""
    if isinstance(value, str):
        return repr(mask_url(value))
    return repr(value)


def _describe(err: Mapping[str, Any], source: str, origins: Mapping[tuple[str, ...], str]) -> str:
    loc, owner = _clean_loc(tuple(err["loc"]))
    kind = err["type"]
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, ConfigKeyError):
        loc = loc + original.key
    where = format_key_path(loc) or "(top level)"
    origin = origins.get(tuple(str(part) for part in loc), source)
    if kind == "extra_forbidden":
        return f"{origin}: {where}: {_unknown_key(loc, owner)}"
    message = _message(err)
    got = err.get("input")
    secret_field = bool(loc) and str(loc[-1]).endswith("_env")
    show_input = (
        kind not in ("value_error", "missing", "extra_forbidden")
        and not isinstance(got, (dict, list))
        and not secret_field
    )
    suffix = f" (got {_shown(got)})" if show_input else ""
    return f"{origin}: {where}: {message}{suffix}"


# ---------------------------------------------------------------------------------------------
# Printing


def mask_url(url: str) -> str:
    """The URL with any user-info password replaced by ``***``."""
    if "@" not in url or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def secret_status(
    config: NexusConfig, *, environ: Mapping[str, str] | None = None
) -> dict[str, bool]:
    """Each ``*_env`` key that names a variable, by key path, and whether the variable is set."""
    environ = os.environ if environ is None else environ
    status: dict[str, bool] = {}
    for index, backend in enumerate(config.backends):
        if backend.api_key_env:
            status[f"backends[{index}].api_key_env"] = bool(environ.get(backend.api_key_env))
    for index, key in enumerate(config.auth.keys):
        status[f"auth.keys[{index}].key_env"] = bool(environ.get(key.key_env))
    if config.auth.admin_key_env:
        status["auth.admin_key_env"] = bool(environ.get(config.auth.admin_key_env))
    if config.state.redis_url_env:
        status["state.redis_url_env"] = bool(environ.get(config.state.redis_url_env))
    return status


def mask_secrets(
    config: NexusConfig, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The config as plain JSON-ready data for printing, with no secret in it.

    The config only holds the *names* of environment variables, so the result stays a valid
    configuration; as a second line of defence, passwords in URLs and the value of every
    referenced secret variable, wherever it appears in a string, are replaced by ``***``.
    """
    environ = os.environ if environ is None else environ
    names = [
        *(b.api_key_env for b in config.backends),
        *(k.key_env for k in config.auth.keys),
        config.auth.admin_key_env,
        config.state.redis_url_env,
    ]
    # Short values are left alone: masking every "on" or "1" would garble the output.
    secrets = {environ[name] for name in names if name and len(environ.get(name, "")) >= 8}

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, "***")
            return mask_url(value)
        return value

    result: dict[str, Any] = clean(config.model_dump(mode="json"))
    return result
