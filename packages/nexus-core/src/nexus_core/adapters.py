"""The backend adapter contract: what every backend type implements, and the types it speaks in.

An adapter is as small as an HTTP transport: ``probe`` (health, models, capabilities, load),
``send`` (forward one request body and hand back the upstream response), ``close``; a class method
``detect`` recognises the server behind an unknown URL. Everything else (routing, failover,
accounting) lives outside adapters.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from nexus_core.config import BackendConfig
    from nexus_core.http import HttpClients


class BackendStatus(enum.StrEnum):
    """Where a backend stands, as the health loop sees it."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    LOADING = "loading"
    DRAINING = "draining"


class Endpoint(enum.StrEnum):
    """The OpenAI-wire operations a request can be for."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    #: OpenAI's Responses API, sent only to a backend that speaks it (``speaks_responses``).
    RESPONSES = "responses"


OPENAI_PATHS: Mapping[Endpoint, str] = {
    Endpoint.CHAT: "/chat/completions",
    Endpoint.COMPLETIONS: "/completions",
    Endpoint.EMBEDDINGS: "/embeddings",
    Endpoint.RESPONSES: "/responses",
}


def speaks_responses(adapter: object) -> bool:
    """Whether an adapter declares that its server speaks OpenAI's Responses API natively.

    An optional attribute, ``speaks_responses = True``, not part of ``BackendAdapter``: an
    adapter without it (most) is sent Responses requests translated to chat. One that has it is
    sent ``Endpoint.RESPONSES`` with the Responses body, and answers in that API's shapes.
    """
    return getattr(adapter, "speaks_responses", False) is True


#: The yes/no capabilities a request can need and a model can lack, by their field names on
#: ``ModelInfo`` (and on routing's ``RequestNeeds`` and a ``[[backends.models]]`` entry); the
#: model catalogue lists them, in this order, under ``capabilities``. The one list of them.
CAPABILITIES = ("vision", "tools", "json_mode", "embeddings")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model a backend serves and what it can do.

    None means unknown: the router never excludes a model for a capability it is not sure of.
    """

    id: str
    context_length: int | None = None
    vision: bool | None = None
    tools: bool | None = None
    json_mode: bool | None = None
    embeddings: bool | None = None
    owned_by: str | None = None
    #: Whether the server has the model in memory now (None: it does not say). A cold model
    #: costs seconds to load, so the router prefers backends where it is loaded.
    loaded: bool | None = None


@dataclass(frozen=True, slots=True)
class LoadSignal:
    """What a backend says about how busy it is; every field is optional."""

    queue_depth: int | None = None
    busy_slots: int | None = None
    total_slots: int | None = None
    kv_cache_usage: float | None = None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one health probe."""

    status: BackendStatus
    models: tuple[ModelInfo, ...] = ()
    load: LoadSignal | None = None
    version: str | None = None
    detail: str | None = None


class ErrorKind(enum.StrEnum):
    """Why an upstream call failed; failover keys on this."""

    CONNECT = "connect_error"
    TIMEOUT = "timeout"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "upstream_5xx"
    CLIENT_ERROR = "client_error"
    MALFORMED = "malformed_response"
    #: The answer's headers, whole body or one stream event passed a size limit.
    TOO_LARGE = "response_too_large"
    #: A 3xx: Nexus never follows a backend's redirect, nor relays it.
    REDIRECT = "redirect"


RETRYABLE_KINDS = frozenset(
    {
        ErrorKind.CONNECT,
        ErrorKind.TIMEOUT,
        ErrorKind.OVERLOADED,
        ErrorKind.SERVER_ERROR,
        ErrorKind.TOO_LARGE,
        ErrorKind.REDIRECT,
    }
)


class BackendError(Exception):
    """An upstream call failed before any byte reached the client (or, in a stream, after)."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.body = body
        self.headers: Mapping[str, str] = headers or {}
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """True when another backend may well succeed (connect, timeout, 429, 5xx, too large,
        redirect)."""
        return self.kind in RETRYABLE_KINDS

    @classmethod
    def from_status(
        cls,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> BackendError:
        """Classify a non-2xx upstream answer (a 3xx is a failure: redirects are not followed)."""
        headers = headers or {}
        retry_after = _parse_retry_after(headers.get("retry-after") or headers.get("Retry-After"))
        message = f"backend answered HTTP {status}"
        if status == 429:
            kind = ErrorKind.OVERLOADED
        elif status >= 500:
            kind = ErrorKind.SERVER_ERROR
        elif status >= 400:
            kind = ErrorKind.CLIENT_ERROR
        elif status >= 300:
            kind = ErrorKind.REDIRECT
            location = headers.get("location") or headers.get("Location")
            target = f" to '{clip(location)}'" if location else ""
            message += f", a redirect{target} (Nexus does not follow redirects)"
        else:  # an interim or success status is not an error to classify: the answer is odd
            kind = ErrorKind.MALFORMED
        return cls(
            kind,
            message,
            status=status,
            body=body,
            headers=headers,
            retry_after=retry_after,
        )


#: Characters of outside text (a backend's error body, a Location) kept in a message.
CLIP_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """Outside text made safe for a message or a log line, at most ``limit`` characters.

    Control characters (CR, LF, the ESC and CSI of terminal escapes, undecodable bytes) become
    spaces, runs of spaces one space; longer text ends in ``...``.
    """
    text = " ".join(_CONTROL.sub(" ", text[: limit * 4]).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-attempt timeouts (seconds): connect, until response headers, between stream events."""

    connect: float = 5.0
    first_byte: float = 120.0
    idle: float = 60.0


@dataclass(frozen=True, slots=True)
class ResponseLimits:
    """Size limits (bytes) on what is read from a backend; past one, the attempt fails with
    ``ErrorKind.TOO_LARGE`` and the connection is dropped.

    The defaults are ``[server]``'s: ``max_response_body_bytes`` (a whole, non-streamed answer,
    error bodies and probe answers included), ``max_response_header_bytes`` (the status line and
    headers), ``max_stream_event_bytes`` (one SSE event).
    """

    body: int = 128 * 1024 * 1024
    headers: int = 64 * 1024
    event: int = 16 * 1024 * 1024

    def body_error(self) -> BackendError:
        """The error for an answer past ``body``."""
        return BackendError(
            ErrorKind.TOO_LARGE,
            f"the backend's answer is larger than the limit of {self.body} bytes "
            "(server.max_response_body_bytes)",
        )

    def headers_error(self) -> BackendError:
        """The error for a status line and headers past ``headers``."""
        return BackendError(
            ErrorKind.TOO_LARGE,
            f"the backend's response headers are larger than the limit of {self.headers} bytes "
            "(server.max_response_header_bytes)",
        )

    def event_error(self) -> BackendError:
        """The error for one stream event past ``event``."""
        return BackendError(
            ErrorKind.TOO_LARGE,
            f"a stream event from the backend is larger than the limit of {self.event} bytes "
            "(server.max_stream_event_bytes)",
        )


@dataclass(slots=True)
class UpstreamResponse:
    """A 2xx upstream answer: a whole body, or an iterator of complete SSE events (raw bytes)."""

    status: int
    content_type: str
    body: bytes | None = None
    events: AsyncIterator[bytes] | None = None
    release: Callable[[], Awaitable[None]] | None = None
    #: The upstream's response headers, looked up case-insensitively.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: For a stream, when the transport can tell: whether the next event (or the end) is already
    #: here, so the relay may write events that arrived together in one write. ``None``: every
    #: event is written on its own.
    ready: Callable[[], bool] | None = None

    async def aclose(self) -> None:
        """Give the upstream connection back (or drop it) whatever happened."""
        if self.release is not None:
            release, self.release = self.release, None
            await release()


@runtime_checkable
class BackendAdapter(Protocol):
    """What the gateway needs from a backend of any type."""

    name: str
    url: str
    type_name: ClassVar[str]
    is_cloud: ClassVar[bool]

    async def probe(self) -> ProbeResult:
        """Check health, list models with capabilities and, where the server tells, its load."""
        ...

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Forward one request body; raise ``BackendError`` for anything but a 2xx answer."""
        ...

    async def close(self) -> None:
        """Release what the adapter holds."""
        ...


class AdapterFactory(Protocol):
    """A backend type as plugins register it: usually the adapter class itself."""

    @property
    def type_name(self) -> str:
        """The type name used in config (``type = "..."``)."""
        ...

    @property
    def is_cloud(self) -> bool:
        """True for cloud APIs: zone ``open`` by default, an API key required."""
        ...

    def __call__(self, config: BackendConfig, clients: HttpClients) -> BackendAdapter: ...

    async def detect(self, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """Return True when the server at ``url`` looks like this type (cheap, no side effects)."""
        ...


# -- model lifecycle (optional) -------------------------------------------------------------------
#
# An adapter whose server can list, load and unload models implements ``ModelLifecycle`` next to
# ``BackendAdapter``; the others change nothing (``lifecycle_of`` gives None for them, and
# ``lifecycle_support`` says they support nothing). docs/fleet.md has the model and the servers.

#: How long ``load_model`` waits for a model to serve, unless the caller says otherwise (seconds).
LOAD_TIMEOUT_SECONDS = 600.0
#: How long listing a backend's models (``available_models``) may take (seconds).
LIST_TIMEOUT_SECONDS = 10.0
#: How long ``unload_model`` waits for a model to leave memory, unless the caller says otherwise.
UNLOAD_TIMEOUT_SECONDS = 120.0


class ModelState(enum.StrEnum):
    """Where one model stands on one backend, as the server says."""

    #: In memory and serving.
    LOADED = "loaded"
    #: Being loaded; not serving yet.
    LOADING = "loading"
    #: On disk only: a load (or, where the server autoloads, a request) brings it in.
    UNLOADED = "unloaded"
    #: Put to sleep (vLLM's sleep mode, llama-server's ``--sleep-idle-seconds``): out of GPU
    #: memory, woken faster than a load.
    SLEEPING = "sleeping"
    #: Being downloaded (llama-server router from a Hugging Face preset); not loadable yet.
    DOWNLOADING = "downloading"


#: The states in which a model occupies a backend's memory or is about to.
RESIDENT_STATES = frozenset({ModelState.LOADED, ModelState.LOADING})


@dataclass(frozen=True, slots=True)
class AvailableModel:
    """One model a backend could serve, its state, and what the server says of its memory.

    Every figure is the server's own; None where it does not report it (never an estimate).
    """

    id: str
    state: ModelState
    #: The model's size (weights on disk, or as the server reports the loaded weights).
    size_bytes: int | None = None
    #: Memory the loaded model takes now (Ollama's ``/api/ps`` ``size``: weights, cache, graph).
    memory_bytes: int | None = None
    #: Of ``memory_bytes``, how much is in GPU memory (Ollama's ``size_vram``).
    gpu_memory_bytes: int | None = None
    #: The context the loaded model runs with.
    context_length: int | None = None
    #: What else the server says (a failed load and its exit code, when a keep-alive ends).
    detail: str | None = None

    @property
    def loaded(self) -> bool:
        """True when the model serves now."""
        return self.state is ModelState.LOADED


@dataclass(frozen=True, slots=True)
class ModelInventory:
    """What ``available_models`` returns: every model a backend could serve, and its memory.

    ``memory_used_bytes`` is the sum of the loaded models' ``memory_bytes`` when the server
    reports them; ``memory_total_bytes`` the server's own figure of what it has (no built-in
    server reports one over HTTP; a plugin's may). Both None when unknown.
    """

    models: tuple[AvailableModel, ...] = ()
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None

    @property
    def memory_free_bytes(self) -> int | None:
        """Total less used, when both are known."""
        if self.memory_total_bytes is None or self.memory_used_bytes is None:
            return None
        return max(0, self.memory_total_bytes - self.memory_used_bytes)

    def get(self, model: str) -> AvailableModel | None:
        """The entry for ``model``, or None when the backend cannot serve it."""
        return next((entry for entry in self.models if entry.id == model), None)

    def in_state(self, *states: ModelState) -> tuple[str, ...]:
        """The ids of the models in any of ``states``."""
        return tuple(entry.id for entry in self.models if entry.state in states)


@dataclass(frozen=True, slots=True)
class LifecycleSupport:
    """Which lifecycle operations a backend offers now, so Nexus never pretends.

    It may depend on how the server was started (llama-server with ``--models-dir`` or ``-m``,
    vLLM with its development endpoints), so adapters answer it by asking the server.
    """

    #: ``available_models`` lists what the server could serve, with states.
    available_models: bool = False
    load: bool = False
    unload: bool = False
    #: Whether a request for an unloaded model loads it (None: the server does not say).
    autoload: bool | None = None
    #: Why something is missing, or what an operation means on this server (vLLM: unload is
    #: sleep), in words for an operator.
    detail: str | None = None


#: What an adapter without lifecycle operations supports.
NO_LIFECYCLE = LifecycleSupport(detail="this backend type has no model lifecycle operations")


class LifecycleFailure(enum.StrEnum):
    """Why a lifecycle operation failed, beyond the HTTP failures ``ErrorKind`` names."""

    #: The backend (or the way its server was started) does not offer the operation.
    NOT_SUPPORTED = "not_supported"
    #: The backend cannot serve a model of that name.
    UNKNOWN_MODEL = "unknown_model"
    #: The server tried and failed (out of memory, a crashed child process...).
    LOAD_FAILED = "load_failed"


class LifecycleError(BackendError):
    """A lifecycle operation the backend refused or failed; ``reason`` says which.

    A ``BackendError`` (``kind`` ``client_error`` for NOT_SUPPORTED and UNKNOWN_MODEL,
    ``upstream_5xx`` for LOAD_FAILED), so one ``except BackendError`` also catches a refused
    connection or a timeout (``connect_error``, ``timeout``) of the same operation.
    """

    def __init__(
        self,
        reason: LifecycleFailure,
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
    ) -> None:
        kind = (
            ErrorKind.SERVER_ERROR
            if reason is LifecycleFailure.LOAD_FAILED
            else ErrorKind.CLIENT_ERROR
        )
        super().__init__(kind, message, status=status, body=body)
        self.reason = reason


@runtime_checkable
class ModelLifecycle(Protocol):
    """Optional adapter operations: list what a backend could serve, load and unload models.

    ``load_model`` returns once the model serves (it polls the server where the server answers
    at once), within ``timeout``; meanwhile ``available_models`` shows it ``loading`` where the
    server tells. Loading a loaded model and unloading an unloaded one succeed without effect.
    Failures raise ``LifecycleError`` (not supported, unknown model, load failed) or another
    ``BackendError`` (connect_error, timeout, upstream_5xx...). ``timeout`` is a parameter, not
    the caller's ``asyncio.timeout``: it also bounds the HTTP read of a load that answers only
    when done (Ollama, LM Studio, vLLM), and running out is a ``timeout`` ``BackendError``.
    """

    async def lifecycle_support(self) -> LifecycleSupport:
        """Which operations the backend offers now (may ask the server; never raises)."""
        ...

    async def available_models(self) -> ModelInventory:
        """Every model the backend could serve, with its state and memory where reported."""
        ...

    async def load_model(
        self,
        model: str,
        *,
        timeout: float = LOAD_TIMEOUT_SECONDS,  # noqa: ASYNC109 - see the class docstring
    ) -> AvailableModel:
        """Load ``model`` and wait until it serves; its entry as loaded."""
        ...

    async def unload_model(
        self,
        model: str,
        *,
        timeout: float = UNLOAD_TIMEOUT_SECONDS,  # noqa: ASYNC109 - see the class docstring
    ) -> None:
        """Take ``model`` out of memory (vLLM: put it to sleep) and wait until it is."""
        ...


def lifecycle_of(adapter: object) -> ModelLifecycle | None:
    """The adapter as a ``ModelLifecycle``, or None when its type has no lifecycle operations."""
    return adapter if isinstance(adapter, ModelLifecycle) else None


async def lifecycle_support(adapter: object) -> LifecycleSupport:
    """What ``adapter`` supports now: its own answer, or ``NO_LIFECYCLE``."""
    lifecycle = lifecycle_of(adapter)
    return NO_LIFECYCLE if lifecycle is None else await lifecycle.lifecycle_support()
