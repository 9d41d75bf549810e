"""The typed bodies and answers of the Litestar routes (admin, listings, stats, health).

Litestar reads these to validate request bodies and to write ``/openapi/openapi.json``.

- **Request bodies are pydantic models**, validated strictly (the app runs pydantic with
  ``validate_strict=True``): ``true`` is never a number, ``"60"`` or ``60.0`` never an integer,
  and unknown fields are refused (``extra="forbid"``). Litestar decodes msgspec Structs in its
  lax mode, which turns ``"60"`` into 60, so a Struct cannot hold the admin API's rules.
- **Answers are msgspec Structs**: Litestar encodes them natively. A listing of 50 backends of
  20 models each takes 0.15 ms to type and encode as Structs, 1.16 ms as pydantic models (0.09 ms
  as an untyped dict; ``benchmarks/litestar_cost.py answers``).

The answers' values come from the core as dicts (``Backend.snapshot()``, ``Gateway.list_models()``,
``Monitor.stats()``...); ``answer()`` turns one into its Struct. Every Struct refuses fields it
does not know, so a field the core adds is a 500 in the tests (``tests/test_litestar_routes_e2e.py``
checks the document against real answers) instead of silently disappearing from the API. Fields
are declared in the core's order: the JSON reads the same as before the types.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from litestar.openapi import ResponseSpec
from msgspec import UNSET, UnsetType
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from nexus_core.adapters import BackendStatus
from nexus_core.auth import KeyRingError, checked_settings
from nexus_core.config import Zone
from nexus_core.errors import GatewayError

T = TypeVar("T")


def answer(kind: type[T], value: Any) -> T:
    """``value`` (a dict or list from the core) as the answer type ``kind``."""
    return msgspec.convert(value, kind)


def errors(shape: Any, statuses: dict[int, str]) -> dict[int, ResponseSpec]:
    """The OpenAPI description of a route's error answers, all of one ``shape``."""
    return {
        status: ResponseSpec(data_container=shape, description=text, generate_examples=False)
        for status, text in statuses.items()
    }


class Answer(msgspec.Struct, forbid_unknown_fields=True):
    """Base of the answers: a field the core adds and this module lacks is an error."""


# -- errors -----------------------------------------------------------------------------------


class ErrorDetail(Answer):
    """The ``error`` of an OpenAI error envelope."""

    message: str
    type: str
    param: str | None
    code: str | None
    details: Any | UnsetType = UNSET


class ErrorEnvelope(Answer):
    """Every error of the admin API and the ``/v1`` listings (OpenAI's envelope)."""

    error: ErrorDetail


class AnthropicErrorDetail(Answer):
    """The ``error`` of an Anthropic error body."""

    type: str
    message: str


class AnthropicError(Answer):
    """An error of ``/v1/models`` asked for by an Anthropic SDK (``anthropic-version``)."""

    type: Literal["error"]
    error: AnthropicErrorDetail
    request_id: str | UnsetType = UNSET


class OllamaError(Answer):
    """Every error of the Ollama listings: ``{"error": "..."}``."""

    error: str


# -- request bodies ---------------------------------------------------------------------------


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def unknown_fields(body: dict[str, Any], kind: type[BaseModel]) -> GatewayError | None:
    """400 naming the fields of ``body`` that ``kind`` does not take, and those it does."""
    unknown = sorted(set(body) - set(kind.model_fields))
    if not unknown:
        return None
    return GatewayError(
        400,
        f"Unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(kind.model_fields))}",
        param=unknown[0],
    )


def checked_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host and no credentials, else a 400."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GatewayError(
            400, f"'{url}' is not an http(s) URL with a host", param="url", code="invalid_url"
        )
    if parts.username is not None or parts.password is not None:
        raise GatewayError(
            400,
            "The URL holds credentials; give the key through api_key_env instead",
            param="url",
            code="credentials_in_url",
        )
    return url


class RequestBody(BaseModel):
    """Base of the request bodies: strict, unknown fields refused.

    A body Litestar cannot parse or validate is answered by ``nexus_server.app`` with a 400 in
    the door's shape: ``not_json``, ``refusal(body)`` when it names the fault, else
    ``Invalid <noun>: <field>: <problem>`` from pydantic's errors.
    """

    model_config = ConfigDict(extra="forbid")
    #: What the body describes, for error messages ("Invalid backend: ...").
    noun: ClassVar[str] = "request"
    #: The message of a body that is not JSON (empty included).
    not_json: ClassVar[str] = "The body is not valid JSON"

    @classmethod
    def refusal(cls, body: Any) -> GatewayError | None:
        """The 400 for a ``body`` that failed validation, in this API's own words (None: say
        what pydantic found)."""
        if not isinstance(body, dict):
            return GatewayError(400, "The body must be a JSON object")
        return unknown_fields(body, cls)


class NewBackend(RequestBody):
    """``POST /admin/backends``: a backend to add. Without ``type`` the server is probed to
    detect it; without ``name`` one is made from the URL."""

    noun: ClassVar[str] = "backend"

    # In BackendConfig's order, so that several problems are listed as the configuration's are.
    name: str | None = Field(
        default=None,
        description="1-64 letters, digits, '.', '_', '-' or '~', starting with a letter or digit.",
        examples=["gpu-box"],
    )
    url: str = Field(
        min_length=1,
        description="Base URL of the server (http or https, a host, no credentials).",
        examples=["http://192.168.1.20:11434"],
    )
    type: str | None = Field(
        default=None,
        description="Backend type (`nexus plugins` lists them); auto or none: detected.",
        examples=["ollama"],
    )
    priority: int | None = Field(
        default=None, ge=0, le=100, description="Lower numbers are preferred."
    )
    zone: Annotated[Literal["restricted", "open"], BeforeValidator(_lower)] | None = Field(
        default=None,
        description="Privacy zone (default: restricted, open for a cloud type).",
    )
    tier: int | None = Field(default=None, ge=1, le=5, description="Capability tier.")
    api_key_env: str | None = Field(
        default=None,
        description="The environment variable holding the backend's key (a configured "
        "backend's, or one of auth.allowed_api_key_envs).",
        examples=["GPU_BOX_API_KEY"],
    )
    max_concurrent: int | None = Field(
        default=None, ge=1, description="Most requests in flight at once; null: no limit."
    )

    @classmethod
    def refusal(cls, body: Any) -> GatewayError | None:
        """Not an object, unknown fields, then a missing or bad ``url``."""
        refused = super().refusal(body)
        if refused is not None:
            return refused
        url = body.get("url")
        if not isinstance(url, str) or not url:
            return GatewayError(400, "'url' is required", param="url")
        try:
            checked_url(url)
        except GatewayError as error:
            return error
        return None


class NewKey(RequestBody):
    """``POST /admin/keys``: a gateway key to make. ``null`` or absent: no limit."""

    noun: ClassVar[str] = "key"

    name: str = Field(
        description="1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        examples=["team-a"],
    )
    models: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        description="Globs of the models the key may use (default: every model).",
        examples=[["llama3*"]],
    )
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    monthly_budget_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @classmethod
    def refusal(cls, body: Any) -> GatewayError | None:
        """The key ring's own words (``checked_settings``): they say what a setting may be."""
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return GatewayError(400, "'name' is required", param="name")
        refused = unknown_fields(body, cls)
        if refused is not None:
            return refused
        try:
            checked_settings(
                body.get("models"),
                body.get("requests_per_minute"),
                body.get("tokens_per_minute"),
                body.get("monthly_budget_usd"),
            )
        except KeyRingError as exc:
            return GatewayError(exc.status, exc.message, param=exc.param)
        return None


class ShowRequest(RequestBody):
    """``POST /api/show``: the model by ``model`` (or the older ``name``); Ollama's other
    fields (``verbose``, ``system``...) are taken and ignored, as Ollama takes them."""

    model_config = ConfigDict(extra="ignore")
    not_json: ClassVar[str] = "the request body is not valid JSON"

    model: str | None = None
    name: str | None = None

    @classmethod
    def refusal(cls, body: Any) -> GatewayError | None:
        """Ollama's words: the body must be an object naming a model."""
        if not isinstance(body, dict):
            return GatewayError(400, "the request body must be a JSON object")
        name = body.get("model") or body.get("name")
        if not isinstance(name, str):
            return GatewayError(400, "model is required", param="model")
        return None


class ModelOperationBody(RequestBody):
    """``POST /admin/models/load`` and ``/unload``: which model, on which backend."""

    noun: ClassVar[str] = "operation"

    model: str = Field(min_length=1, description="The model's id on that backend.")
    backend: str = Field(min_length=1, description="The backend's name.")


class MigrationBody(RequestBody):
    """``POST /admin/models/migrate``: move a model from one backend to another."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)
    noun: ClassVar[str] = "migration"

    model: str = Field(min_length=1, description="The model's id on both backends.")
    source: str = Field(
        alias="from", min_length=1, description="The backend the model leaves (unloaded)."
    )
    target: str = Field(
        alias="to", min_length=1, description="The backend the model goes to (loaded)."
    )

    @classmethod
    def refusal(cls, body: Any) -> GatewayError | None:
        """Unknown fields named by their JSON names (``from``, ``to``)."""
        if not isinstance(body, dict):
            return GatewayError(400, "The body must be a JSON object")
        known = {"model", "from", "to"}
        unknown = sorted(set(body) - known)
        if unknown:
            return GatewayError(
                400,
                f"Unknown field(s) {', '.join(unknown)}; known: from, model, to",
                param=unknown[0],
            )
        return None


# -- admin answers ----------------------------------------------------------------------------


class BackendModel(Answer):
    """A model a backend serves, with what it is known to do (null: unknown)."""

    id: str
    context_length: int | None
    vision: bool | None
    tools: bool | None
    json_mode: bool | None
    embeddings: bool | None


class Backend(Answer):
    """A backend and everything known about it right now."""

    name: str
    url: str
    type: str
    kind: Literal["local", "cloud"]
    source: str
    status: BackendStatus
    zone: Zone
    tier: int
    priority: int
    max_concurrent: int | None
    pending: int
    latency_ms: float | None
    last_error: str | None
    last_checked: float | None
    version: str | None
    requests_total: int
    errors_total: int
    models: list[BackendModel]


class BackendList(Answer):
    """``GET /admin/backends``."""

    object: Literal["list"]
    data: list[Backend]


class Removed(Answer):
    """``DELETE /admin/backends/{name}``."""

    removed: str


class KeyInfo(Answer):
    """A gateway key as the admin API shows it: never the key, never its digest."""

    name: str
    models: list[str]
    requests_per_minute: int | None
    tokens_per_minute: int | None
    monthly_budget_usd: float | None
    created: str | None
    source: str


class KeyList(Answer):
    """``GET /admin/keys``."""

    object: Literal["list"]
    data: list[KeyInfo]


class CreatedKey(KeyInfo):
    """``POST /admin/keys``: the key's settings and the key itself, shown this once."""

    key: str


class Revoked(Answer):
    """``DELETE /admin/keys/{name}``."""

    revoked: str


# -- fleet ------------------------------------------------------------------------------------


class Operation(Answer):
    """A load, unload or migration, and how far it is (``nexus_core.fleet.Operation``)."""

    id: str
    object: Literal["fleet.operation"]
    kind: Literal["load", "unload", "migrate"]
    model: str
    backend: str
    target: str | None
    origin: Literal["admin", "prewarm"]
    state: Literal["pending", "running", "succeeded", "failed"]
    step: str | None
    progress: float
    error: str | None
    error_code: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None


class OperationList(Answer):
    """``GET /admin/operations``: running ones and the last finished, newest first."""

    object: Literal["list"]
    data: list[Operation]


class FleetLifecycle(Answer):
    """Which lifecycle operations a backend offers now."""

    available_models: bool
    load: bool
    unload: bool
    autoload: bool | None
    detail: str | None


class FleetModel(Answer):
    """A model a backend could serve: its state and memory as the server reports them."""

    id: str
    state: Literal["loaded", "loading", "unloaded", "sleeping", "downloading"] | None
    size_bytes: int | None
    memory_bytes: int | None
    gpu_memory_bytes: int | None
    context_length: int | None
    detail: str | None
    in_flight: int
    routable: bool


class FleetBackend(Answer):
    """One backend's inventory (``GET /admin/fleet``)."""

    name: str
    type: str
    status: BackendStatus
    lifecycle: FleetLifecycle
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    memory_free_bytes: int | None
    checked_at: float | None
    error: str | None
    models: list[FleetModel]


class FleetList(Answer):
    """``GET /admin/fleet``: every backend's inventory."""

    object: Literal["list"]
    data: list[FleetBackend]


# -- model listings ---------------------------------------------------------------------------


class Capabilities(Answer):
    """What a model is known to do (null: unknown)."""

    vision: bool | None
    tools: bool | None
    json_mode: bool | None
    embeddings: bool | None


class Model(Answer):
    """A ``/v1/models`` entry; an alias carries ``alias_of``."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_length: int | None
    capabilities: Capabilities
    backends: list[str]
    alias_of: str | UnsetType = UNSET


class ModelList(Answer):
    """``GET /v1/models`` and ``GET /admin/models``."""

    object: Literal["list"]
    data: list[Model]


class AnthropicModel(Answer):
    """A model in the shape of Anthropic's Models API."""

    type: Literal["model"]
    id: str
    display_name: str
    created_at: str
    lifecycle: Literal["active"]
    max_input_tokens: int | None


class AnthropicModelPage(Answer):
    """``GET /v1/models`` for an Anthropic SDK: a page of the listing."""

    data: list[AnthropicModel]
    has_more: bool
    first_id: str | None
    last_id: str | None


# -- health and statistics --------------------------------------------------------------------


class BackendCounts(Answer):
    """Backends by status."""

    total: int
    unknown: int
    healthy: int
    unhealthy: int
    loading: int
    draining: int


class Health(Answer):
    """``GET /health``."""

    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    uptime_seconds: float
    backends: BackendCounts
    models: int


class Readiness(Answer):
    """``GET /health/ready``: ``/health`` and whether a backend is healthy (else 503)."""

    ready: bool
    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    uptime_seconds: float
    backends: BackendCounts
    models: int


class Latency(Answer):
    """Average and 95th percentile in ms (null before the first request)."""

    avg: float | None
    p95: float | None


class Tokens(Answer):
    """Tokens from the answers' usage."""

    prompt: int
    completion: int
    #: Prompt tokens served from the backend's prompt cache (not in a key's fleet-wide line).
    cached: int = 0


class RequestCounts(Answer):
    """Requests answered and failed."""

    total: int
    errors: int


class BackendStats(Answer):
    """One backend's figures in the fleet-wide ``/v1/stats``."""

    name: str
    type: str
    status: BackendStatus
    pending: int
    max_concurrent: int | None
    upstream_errors: int
    requests: int
    errors: int
    streams: int
    latency_ms: Latency
    ttft_ms: Latency
    tokens: Tokens
    #: Cached of the prompt tokens of answers that said how many; null when none did.
    cache_hit_ratio: float | None
    cost_usd: float


class ModelStats(Answer):
    """One model's figures."""

    model: str
    requests: int
    errors: int
    streams: int
    latency_ms: Latency
    ttft_ms: Latency
    tokens: Tokens
    #: Cached of the prompt tokens of answers that said how many; null when none did.
    cache_hit_ratio: float | None
    cost_usd: float


class KeyFigures(Answer):
    """One gateway key's line in the fleet-wide ``/v1/stats``."""

    name: str
    requests: int
    errors: int
    tokens: Tokens
    cost_usd: float


class Budget(Answer):
    """The monthly budget's state."""

    period: str
    spent_usd: float
    limit_usd: float | None
    status: Literal["ok", "soft_limit", "exceeded"]
    hard_limit_action: str
    resets_in_seconds: int
    store: str


class Queue(Answer):
    """The capacity queue."""

    enabled: bool
    depth: int
    max_size: int
    max_wait_seconds: float


class Stats(Answer):
    """``GET /v1/stats`` for the admin key (or with auth off): the whole fleet."""

    uptime_seconds: float
    requests: RequestCounts
    budget: Budget | None
    queue: Queue | None
    backends: list[BackendStats]
    models: list[ModelStats]
    keys: list[KeyFigures]


class KeyBackendStats(Answer):
    """One backend a gateway key used, with that key's figures only."""

    name: str
    #: Null, and ``status`` "removed", for a backend removed since.
    type: str | None
    status: str
    requests: int
    errors: int
    streams: int
    latency_ms: Latency
    ttft_ms: Latency
    tokens: Tokens
    #: Cached of the prompt tokens of answers that said how many; null when none did.
    cache_hit_ratio: float | None
    cost_usd: float


class KeyBudget(Answer):
    """A gateway key's own monthly budget."""

    period: str
    spent_usd: float
    limit_usd: float
    remaining_usd: float
    resets_in_seconds: int


class KeyStats(Answer):
    """``GET /v1/stats`` for a gateway key: its own requests, nothing of other tenants."""

    uptime_seconds: float
    key: str
    requests: RequestCounts
    backends: list[KeyBackendStats]
    models: list[ModelStats]
    budget: KeyBudget | None
    queue: None


class HistoryEntry(Answer):
    """One request in ``/v1/history``."""

    request_id: str
    time: str
    front_door: str
    endpoint: str
    model: str
    served_model: str | None
    backend: str | None
    route_reason: str | None
    stream: bool
    status: int
    duration_ms: float
    ttft_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    cost_usd: float | None
    retries: int
    error: str | None
    client: str | None
    key: str | None


class History(Answer):
    """``GET /v1/history``: the last requests, newest first."""

    object: Literal["list"]
    data: list[HistoryEntry]


# -- the Ollama listings ----------------------------------------------------------------------


class OllamaDetails(Answer):
    """Ollama's ``details`` of a model (guessed from the name where unknown)."""

    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str
    context_length: int | UnsetType = UNSET


class OllamaTag(Answer):
    """One ``/api/tags`` model."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaDetails
    capabilities: list[str] | UnsetType = UNSET


class OllamaTags(Answer):
    """``GET /api/tags``."""

    models: list[OllamaTag]


class OllamaLoaded(Answer):
    """One ``/api/ps`` model."""

    name: str
    model: str
    size: int
    digest: str
    details: OllamaDetails
    expires_at: str
    size_vram: int
    context_length: int


class OllamaLoadedList(Answer):
    """``GET /api/ps``."""

    models: list[OllamaLoaded]


class OllamaShow(Answer):
    """``POST /api/show``."""

    modelfile: str
    parameters: str
    template: str
    details: OllamaDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class OllamaVersion(Answer):
    """``GET /api/version``: the Ollama API version followed, and Nexus's own."""

    version: str
    nexus_version: str
