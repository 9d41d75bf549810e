"""The configuration's pydantic models: one per section of ``nexus.toml``, and ``NexusConfig``.

Strict on purpose: unknown keys are errors (``Section``), values are checked on assignment, and
cross-field rules (alias cycles, duplicate backend names, redis without a URL) are model
validators. ``description`` and ``examples`` of every field feed docs/configuration.md (checked
by a test) and the example file of ``nexus config init``.

Secrets never live in the configuration: it only holds the *names* of environment variables
(``*_env`` keys), read when the key is needed.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from nexus_core.config.errors import ConfigKeyError
from nexus_core.config.fields import (
    BACKEND_NAME,
    BACKEND_NAME_RULE,
    HOST_NAME,
    REGISTERED_NAME,
    SERVICE_TYPE,
    Action,
    EnvName,
    Format,
    HardLimitAction,
    HttpUrl,
    Level,
    LogFormat,
    LogLevel,
    PolicyPrivacy,
    PositiveSeconds,
    Privacy,
    RoutingStrategy,
    StateBackend,
    StateKind,
    Strategy,
    SystemMessages,
    SystemMessagesMode,
    Tier,
    Zone,
    ZoneName,
    glob_problem,
)

#: The longest chain of ``routing.aliases`` (``a -> b -> c -> d``); longer is refused.
MAX_ALIAS_DEPTH = 3
#: The backend type meaning "probe the server and pick the most specific type that answers".
AUTO_TYPE = "auto"
#: ``server.port``'s default.
DEFAULT_PORT = 8000


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
        default=DEFAULT_PORT,
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
            if name != "*" and not HOST_NAME.match(name):
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
            if not SERVICE_TYPE.match(name):
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


class CacheAffinityConfig(Section):
    """``[routing.cache_affinity]``: the ``cache_affinity`` strategy's bounded loads and memory."""

    epsilon: float = Field(
        default=0.25,
        ge=0,
        le=10,
        description="Load bound: a backend that would be past (1 + epsilon) x the average load "
        "(conversations placed, requests in flight) is skipped for the next on the ring.",
    )
    idle_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A conversation with no request for this long no longer counts towards "
        "its backend's load.",
    )
    max_conversations: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Conversations whose placement is remembered (the least recent forgotten "
        "first); bounds the memory the strategy takes.",
    )


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
        problem = glob_problem(value)
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
        problem = glob_problem(value) if any(c in value for c in "*?[]") else None
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
        default=RoutingStrategy.SMART.value,
        description="smart (score of priority, load and latency), round_robin, priority_only, "
        "random, least_loaded, cache_affinity (each conversation where its prompt is cached), "
        "or the name of a strategy a plugin registers.",
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
    cache_affinity: CacheAffinityConfig = Field(
        default_factory=CacheAffinityConfig,
        description="Bounded loads and memory of the cache_affinity strategy.",
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
    native_responses: bool | None = Field(
        default=None,
        description="Send /v1/responses requests to this backend as they are (its own "
        "/v1/responses) rather than translated to chat completions. Unset: what its adapter "
        "declares (openai: only for api.openai.com).",
        examples=[True],
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
        if not REGISTERED_NAME.match(value):
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
#: ``nexus_core.state.location.sqlite_path``). ``state.path`` set to exactly this, as
#: ``nexus config init`` used to write it, counts as unset.
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


#: OpenAI keeps a stored response 30 days; so does Nexus unless told otherwise.
RESPONSES_RETENTION_SECONDS = 30 * 24 * 3600


class ResponsesConfig(Section):
    """``[responses]``: what the Responses API door (``/v1/responses``) keeps in ``[state]``."""

    store: bool = Field(
        default=True,
        description="Keep responses (asked with store, true by default as OpenAI's) in the "
        "[state] store for previous_response_id and GET/DELETE /v1/responses/{id}; false: "
        "nothing is kept and none is found.",
    )
    retention_seconds: PositiveSeconds = Field(
        default=float(RESPONSES_RETENTION_SECONDS),
        description="How long a stored response is kept after it was written (OpenAI: 30 "
        "days), then it is gone for every replica.",
    )
    max_record_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest stored record (the response with the input items of its request "
        "and its output, as JSON); a bigger one is answered but not kept (logged at WARNING).",
    )
    max_chain_depth: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Most responses one conversation holds: continuing a response with this "
        "many in its conversation (itself included) is refused (400 conversation_too_long). "
        "Each one is a read of the store when the conversation is continued.",
    )
    max_conversation_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest conversation continued: the stored records of its responses "
        "together, as JSON; past it, previous_response_id is refused (400 "
        "conversation_too_long).",
    )


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


class PrewarmConfig(Section):
    """``[fleet.prewarm]``: keeping the models traffic asks for loaded (docs/fleet.md)."""

    enabled: bool = Field(
        default=False,
        description="Load the models the request history asks for on enough backends, in the "
        "background; off, GET /v1/fleet/recommendations still says what it would do.",
    )
    dry_run: bool = Field(
        default=False,
        description="With enabled: work out and log the recommendations, load nothing.",
    )
    interval_seconds: PositiveSeconds = Field(
        default=60.0, description="Time between two pre-warming cycles."
    )
    window_seconds: float = Field(
        default=3600.0,
        ge=60,
        le=86400,
        description="Recent demand: the requests for a model over this last stretch of time.",
    )
    min_requests: int = Field(
        default=3,
        ge=1,
        description="Requests a model needs (in the window, or on average at this hour on "
        "the days looked back) to count as in demand.",
    )
    backends_per_model: int = Field(
        default=1,
        ge=1,
        le=64,
        description="On how many backends a model in demand should be loaded (at most the "
        "backends that can serve it).",
    )
    max_loads_per_cycle: int = Field(
        default=1, ge=1, le=64, description="Most loads one cycle starts (or recommends)."
    )
    hour_lookback_days: int = Field(
        default=7,
        ge=0,
        le=28,
        description="Demand at this hour of the day: the same clock hour (UTC) on each of "
        "this many previous days, averaged; 0: recent demand only.",
    )


class FleetConfig(Section):
    """``[fleet]``: loading, unloading and moving models across backends (docs/fleet.md)."""

    headroom_percent: float = Field(
        default=20.0,
        ge=0,
        lt=100,
        description="A load is refused (400) when it would leave less than this share of a "
        "backend's memory free; only where the server reports its memory total.",
    )
    load_timeout_seconds: PositiveSeconds = Field(
        default=600.0, description="How long a load may take before its operation fails."
    )
    unload_timeout_seconds: PositiveSeconds = Field(
        default=120.0, description="How long an unload may take before its operation fails."
    )
    drain_timeout_seconds: float | None = Field(
        default=None,
        ge=0,
        description="Before an unload (and a migration's), how long the model's requests in "
        "flight on that backend get to finish; null: server.drain_timeout_seconds.",
        examples=[60.0],
    )
    operations_kept: int = Field(
        default=100,
        ge=1,
        le=10000,
        description="Finished operations kept for GET /admin/operations (the newest).",
    )
    prewarm: PrewarmConfig = Field(
        default_factory=PrewarmConfig,
        description="Pre-warming: keeping the models the request history asks for loaded.",
    )


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
    responses: ResponsesConfig = Field(
        default_factory=ResponsesConfig,
        description="Responses kept for previous_response_id and GET /v1/responses/{id}.",
    )
    telemetry: TelemetryConfig = Field(
        default_factory=TelemetryConfig, description="OpenTelemetry traces."
    )
    fleet: FleetConfig = Field(
        default_factory=FleetConfig,
        description="Loading, unloading and moving models across backends.",
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
