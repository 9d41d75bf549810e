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
