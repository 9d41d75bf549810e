"""Configuration: pydantic models for every section, and the loader (file < env < CLI).

Strict on purpose: an unknown key, a wrong enum or an alias cycle refuses to load with a message
that names the key path and the file, so a typo never silently changes what the gateway does.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# Types whose servers live outside the operator's network; they need a key and default to "open".
CLOUD_TYPES = frozenset(
    {"openai", "anthropic", "azure", "groq", "together", "mistral", "openrouter"}
)
MAX_ALIAS_DEPTH = 3
DEFAULT_CONFIG_FILE = "nexus.toml"


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


class StateBackend(LowerEnum):
    SQLITE = "sqlite"
    REDIS = "redis"
    MEMORY = "memory"


Strategy = Annotated[RoutingStrategy, BeforeValidator(_lower)]
ZoneName = Annotated[Zone, BeforeValidator(_lower)]
Privacy = Annotated[PolicyPrivacy, BeforeValidator(_lower)]
Action = Annotated[HardLimitAction, BeforeValidator(_lower)]
Format = Annotated[LogFormat, BeforeValidator(_lower)]
Level = Annotated[LogLevel, BeforeValidator(_lower)]
StateKind = Annotated[StateBackend, BeforeValidator(_lower)]
Tier = Annotated[int, Field(ge=1, le=5)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ServerConfig(Section):
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    request_timeout_seconds: PositiveSeconds = 300.0
    connect_timeout_seconds: PositiveSeconds = 5.0
    first_byte_timeout_seconds: PositiveSeconds = 120.0
    idle_timeout_seconds: PositiveSeconds = 60.0
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    drain_timeout_seconds: float = Field(default=30.0, ge=0)


class DiscoveryConfig(Section):
    enabled: bool = True
    service_types: list[str] = Field(
        default_factory=lambda: ["_ollama._tcp.local.", "_llm._tcp.local.", "_exo._tcp.local."]
    )
    grace_period_seconds: float = Field(default=60.0, ge=0)


class HealthCheckConfig(Section):
    enabled: bool = True
    interval_seconds: PositiveSeconds = 30.0
    timeout_seconds: PositiveSeconds = 5.0
    failure_threshold: int = Field(default=3, ge=1)
    recovery_threshold: int = Field(default=2, ge=1)


class WeightsConfig(Section):
    priority: float = Field(default=50.0, ge=0)
    load: float = Field(default=30.0, ge=0)
    latency: float = Field(default=20.0, ge=0)


_GLOB_OK = re.compile(r"^[^\[\]]*(\[[^\[\]]+\][^\[\]]*)*$")


class PolicyConfig(Section):
    model_pattern: str
    privacy: Privacy = PolicyPrivacy.UNRESTRICTED
    min_tier: Tier | None = None

    @field_validator("model_pattern")
    @classmethod
    def _valid_glob(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty glob such as 'gpt-*'")
        if not _GLOB_OK.match(value):
            raise ValueError(f"invalid glob {value!r}: unbalanced or empty [...]")
        return value


class PriceConfig(Section):
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class BudgetConfig(Section):
    monthly_limit_usd: float | None = Field(default=None, ge=0)
    soft_limit_percent: float = Field(default=75.0, gt=0, le=100)
    hard_limit_action: Action = HardLimitAction.WARN
    pricing: dict[str, PriceConfig] = Field(default_factory=dict)


class RoutingConfig(Section):
    strategy: Strategy = RoutingStrategy.SMART
    max_retries: int = Field(default=2, ge=0, le=20)
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    aliases: dict[str, str] = Field(default_factory=dict)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    policies: list[PolicyConfig] = Field(default_factory=list)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    @model_validator(mode="after")
    def _aliases_resolve(self) -> Self:
        for start in self.aliases:
            seen = [start]
            current = start
            while current in self.aliases:
                current = self.aliases[current]
                if current in seen:
                    chain = " -> ".join([*seen, current])
                    raise ValueError(f"aliases: cycle {chain}")
                seen.append(current)
                if len(seen) > MAX_ALIAS_DEPTH + 1:
                    chain = " -> ".join(seen)
                    raise ValueError(f"aliases: chain longer than {MAX_ALIAS_DEPTH}: {chain}")
        return self


class BackendConfig(Section):
    name: str = Field(min_length=1)
    url: str
    type: str = "generic"
    priority: int = Field(default=50, ge=0, le=100)
    zone: ZoneName | None = None
    tier: Tier = 1
    api_key_env: str | None = None
    max_concurrent: int | None = Field(default=None, ge=1)
    models: list[str] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
        return value.rstrip("/")

    @field_validator("type")
    @classmethod
    def _type_name(cls, value: str) -> str:
        value = value.lower()
        if not re.match(r"^[a-z][a-z0-9_.-]*$", value):
            raise ValueError(f"must be a backend type name such as 'ollama' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _cloud_needs_key(self) -> Self:
        if self.type in CLOUD_TYPES and not self.api_key_env:
            raise ValueError(
                f"type {self.type!r} is a cloud API: set api_key_env to the name of the "
                "environment variable that holds its key"
            )
        return self

    @property
    def effective_zone(self) -> Zone:
        """The configured zone, else open for cloud types and restricted for local ones."""
        if self.zone is not None:
            return self.zone
        return Zone.OPEN if self.type in CLOUD_TYPES else Zone.RESTRICTED

    def api_key(self) -> str | None:
        """The key from the environment variable named by ``api_key_env``, read when asked."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class QueueConfig(Section):
    enabled: bool = True
    max_size: int = Field(default=100, ge=0)
    max_wait_seconds: float = Field(default=30.0, ge=0)


class QualityConfig(Section):
    error_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    window_seconds: PositiveSeconds = 300.0
    min_requests: int = Field(default=5, ge=1)
    cooldown_seconds: PositiveSeconds = 30.0
    ttft_penalty_threshold_ms: float = Field(default=3000.0, ge=0)


class ApiKeyConfig(Section):
    name: str = Field(min_length=1)
    key_env: str = Field(min_length=1)
    models: list[str] = Field(default_factory=list)
    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    monthly_budget_usd: float | None = Field(default=None, ge=0)


class AuthConfig(Section):
    enabled: bool = False
    keys: list[ApiKeyConfig] = Field(default_factory=list)
    admin_key_env: str | None = None


class LoggingConfig(Section):
    level: Level = LogLevel.INFO
    format: Format = LogFormat.PRETTY
    enable_content_logging: bool = False
    component_levels: dict[str, Level] = Field(default_factory=dict)


class StateConfig(Section):
    backend: StateKind = StateBackend.SQLITE
    path: str = "~/.local/state/nexus/state.sqlite3"
    redis_url_env: str | None = None
    key_prefix: str = "nexus:"

    @model_validator(mode="after")
    def _redis_needs_url(self) -> Self:
        if self.backend is StateBackend.REDIS and not self.redis_url_env:
            raise ValueError(
                "backend 'redis' needs redis_url_env: the name of the environment variable "
                "holding the Redis URL"
            )
        return self


class TelemetryConfig(Section):
    enabled: bool = False
    otlp_endpoint: str | None = None
    service_name: str = "nexus"


class NexusConfig(Section):
    """The whole configuration; every section has defaults, so an empty file is valid."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    backends: list[BackendConfig] = Field(default_factory=list)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

    @model_validator(mode="after")
    def _unique_backend_names(self) -> Self:
        seen: set[str] = set()
        for backend in self.backends:
            if backend.name in seen:
                raise ValueError(f"backends: duplicate backend name {backend.name!r}")
            seen.add(backend.name)
        return self


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


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The file to read: explicit path, else ``NEXUS_CONFIG``, else ``./nexus.toml`` if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("NEXUS_CONFIG")
    if env:
        return Path(env)
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

    ``overrides`` maps dotted keys (``"server.port"``) to values. Raises ``ConfigError``.
    """
    environ = os.environ if environ is None else environ
    file = find_config_file(path) if use_default_locations else (Path(path) if path else None)
    data: dict[str, Any] = {}
    source = str(file) if file else "defaults"
    if file is not None:
        data = read_toml(file)
    errors: list[str] = []
    for var, (section, key) in ENV_OVERRIDES.items():
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        value: Any = raw
        if key == "enabled":
            lowered = raw.strip().lower()
            if lowered in _TRUE:
                value = True
            elif lowered in _FALSE:
                value = False
            else:
                errors.append(f"environment {var}: expected true or false (got {raw!r})")
                continue
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            continue
        data[section][key] = value
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        target = data
        *parents, last = dotted.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    if errors:
        raise ConfigError(errors)
    return validate_config(data, source=source)


def read_toml(file: Path) -> dict[str, Any]:
    """Parse a TOML file, turning a missing file or a syntax error into ``ConfigError``."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: invalid TOML: {exc}"]) from None


def validate_config(data: Mapping[str, Any], *, source: str = "config") -> NexusConfig:
    """Validate a raw mapping into ``NexusConfig``, with errors naming key paths and ``source``."""
    try:
        return NexusConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(err, data, source) for err in exc.errors()]) from None


def _path_text(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that owns the key at ``loc`` (for "did you mean" suggestions)."""
    model: type[BaseModel] | None = NexusConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _describe(err: Any, data: Mapping[str, Any], source: str) -> str:
    loc: tuple[int | str, ...] = tuple(
        part for part in err["loc"] if not (isinstance(part, str) and part.startswith("function-"))
    )
    # pydantic puts enum/literal/union branch names into loc; keep only real keys.
    loc = tuple(p for p in loc if isinstance(p, int) or not p[:1].isupper() or p in ("",))
    where = _path_text(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        key = str(loc[-1])
        hint = ""
        if parent is not None:
            known = list(parent.model_fields)
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
        return f"{source}: {where}: unknown key{hint}"
    message = str(err["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind == "enum":
        expected = err.get("ctx", {}).get("expected", "")
        message = f"must be one of {expected}"
    got = err.get("input")
    suffix = ""
    if kind not in ("value_error", "missing") and not isinstance(got, (dict, list)):
        suffix = f" (got {got!r})"
    return f"{source}: {where}: {message}{suffix}"


def mask_secrets(config: NexusConfig) -> dict[str, Any]:
    """The config as plain data for printing; values of referenced secrets never appear.

    Only the *names* of environment variables are stored in the config, so this shows them
    with a note of whether each is set, never the value.
    """
    data = config.model_dump(mode="json")
    for backend in data.get("backends", []):
        if backend.get("api_key_env"):
            backend["api_key"] = "***" if os.environ.get(backend["api_key_env"]) else "(unset)"
    for key in data.get("auth", {}).get("keys", []):
        key["key"] = "***" if os.environ.get(key["key_env"]) else "(unset)"
    return data
