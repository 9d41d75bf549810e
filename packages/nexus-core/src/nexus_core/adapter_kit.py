"""What every adapter needs and only its server's quirks change: errors, keys and probe requests.

- **Errors.** ``UpstreamErrors`` turns an upstream error answer into the ``BackendError`` failover
  acts on and the body a client sees: the server's quirks are data (``ErrorQuirk``: Ollama's 503
  "server busy" is overloaded, exo's 404 "no instance" is worth another backend, llama-server's
  context error has OpenAI's code), the body is kept, given string codes, or rebuilt as OpenAI's
  envelope (``ErrorBody``). ``read_error`` reads any error body's message, type, param and code;
  ``error_envelope`` writes OpenAI's; ``refused`` is a request an adapter refuses itself.
- **Keys.** ``bearer(key)``: the ``Authorization`` header for the backend's own key.
- **Probes.** ``probe_get``: one GET through the bounded probe client, answered as a
  ``ProbeAnswer`` (status, parsed JSON) or a classified failure; it never raises.
- **Lifecycle calls.** ``lifecycle_call``: one load, unload or listing request within a timeout
  of the caller's (loads take minutes), answered as a ``ProbeAnswer`` or raised as the
  ``BackendError`` of a call that got no answer; ``poll_until`` waits for a server that loads in
  the background.

``OpenAIWireAdapter`` applies all of it; an adapter declares ``errors = UpstreamErrors(...)``
instead of overriding ``send``. See docs/adapter-authors.md.
"""

from __future__ import annotations

import asyncio
import enum
import http
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    ErrorKind,
    LifecycleError,
    LifecycleFailure,
    ProbeResult,
    clip,
)

if TYPE_CHECKING:
    from nexus_core.http import HttpClients

__all__ = [
    "ErrorBody",
    "ErrorFields",
    "ErrorQuirk",
    "ErrorShape",
    "ProbeAnswer",
    "UpstreamErrors",
    "bearer",
    "deadline_in",
    "dumps",
    "error_envelope",
    "http_phrase",
    "lifecycle_call",
    "openai_error_type",
    "poll_until",
    "probe_get",
    "read_error",
    "refused",
    "time_left",
    "unknown_model",
]

#: Characters of a text error body kept as the error's message (as ``errors.backend_message``).
TEXT_MESSAGE_CHARS = 1000
#: What an OpenAI error ``type`` looks like (``invalid_request_error``); anything else (an HTTP
#: phrase, an empty string, a class name) is replaced by the status's type when a body is rebuilt.
_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]*")
_STATUS_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_REPLACED_HEADERS = frozenset({"content-type", "content-length"})
_JSON_HEADERS = {"content-type": "application/json"}


def dumps(value: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def bearer(api_key: str | None) -> dict[str, str]:
    """``{"Authorization": "Bearer <key>"}`` for a backend's own key; ``{}`` without one.

    The key is the operator's for this backend (``api_key_env``, or the key ``detect`` is given),
    never a client's: a client's ``Authorization`` reaches a backend only where the operator set
    ``forward_client_auth``, and the gateway, not the adapter, adds it.
    """
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# -- reading and writing error bodies -------------------------------------------------------------


class ErrorShape(enum.Enum):
    """How an error body was written."""

    #: ``{"error": {"message", "type", ...}}``: OpenAI's, and the servers that imitate it
    #: (Anthropic's has ``type`` and ``message`` only).
    ENVELOPE = "envelope"
    #: ``{"error": "text"}``: Ollama's native API, LM Studio, vLLM's ``--api-key`` guard.
    TEXT_ERROR = "text_error"
    #: ``{"object": "error", "message", ...}`` (vLLM before 0.10) or a bare ``{"message"}``.
    FLAT = "flat"
    #: FastAPI's ``{"detail": "text"}`` or its validation list ``{"detail": [{"loc", "msg"}]}``.
    DETAIL = "detail"
    #: Not JSON: a plain-text or HTML page.
    TEXT = "text"
    #: No body at all.
    EMPTY = "empty"
    #: JSON that says none of the above.
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """What an error body says, whatever its shape; None where it does not say."""

    shape: ErrorShape
    message: str | None = None
    type: str | None = None
    param: str | None = None
    #: As sent: OpenAI's are strings, vLLM's, llama-server's, exo's and LocalAI's ints.
    code: str | int | None = None
    #: The error object of an ``ENVELOPE``, as sent (extra keys included).
    error: Mapping[str, Any] | None = None
    #: The whole body of an ``ENVELOPE``, as sent.
    payload: Mapping[str, Any] | None = None


def read_error(body: bytes) -> ErrorFields:
    """The message, type, param and code of an error body, in any of the shapes of ``ErrorShape``.

    A text body's message is its start, free of control characters (``clip``).
    """
    if not body.strip():
        return ErrorFields(ErrorShape.EMPTY)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        text = body[: TEXT_MESSAGE_CHARS * 4].decode("utf-8", "replace")
        return ErrorFields(ErrorShape.TEXT, message=clip(text, TEXT_MESSAGE_CHARS) or None)
    if not isinstance(payload, dict):
        return ErrorFields(ErrorShape.OTHER)
    error = payload.get("error")
    if isinstance(error, dict):
        return replace(_fields(ErrorShape.ENVELOPE, error), error=error, payload=payload)
    if isinstance(error, str):
        return ErrorFields(ErrorShape.TEXT_ERROR, message=error or None)
    if payload.get("object") == "error" or isinstance(payload.get("message"), str):
        return _fields(ErrorShape.FLAT, payload)
    detail = payload.get("detail")
    if isinstance(detail, str):
        return ErrorFields(ErrorShape.DETAIL, message=detail or None)
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        # Request validation (422): [{"loc": ["body", "messages"], "msg": "Field required"}]
        paths = [_field_path(d.get("loc")) for d in detail]
        message = "; ".join(
            f"{path}: {d.get('msg')}" for path, d in zip(paths, detail, strict=True)
        )
        return ErrorFields(ErrorShape.DETAIL, message=message, param=paths[0] or None)
    return ErrorFields(ErrorShape.OTHER)


def _fields(shape: ErrorShape, error: Mapping[str, Any]) -> ErrorFields:
    message, kind, param, code = (error.get(k) for k in ("message", "type", "param", "code"))
    return ErrorFields(
        shape,
        message=message if isinstance(message, str) and message else None,
        type=kind if isinstance(kind, str) else None,
        param=param if isinstance(param, str) else None,
        code=code if isinstance(code, str | int) and not isinstance(code, bool) else None,
    )


def _field_path(loc: Any) -> str:
    # ["body", "messages", 0, "content"] -> "messages.0.content"
    if not isinstance(loc, list):
        return ""
    parts = loc[1:] if loc[:1] == ["body"] else loc
    return ".".join(str(part) for part in parts)


def http_phrase(status: int) -> str:
    """The status's reason phrase (``Not Found``); ``Error`` for a status HTTP does not name."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def openai_error_type(status: int) -> str:
    """The OpenAI error ``type`` for a status: ``invalid_request_error`` for a 4xx (401, 403 and
    429 have their own), ``server_error`` for a 5xx."""
    return _STATUS_TYPES.get(status) or (
        "server_error" if status >= 500 else "invalid_request_error"
    )


def error_envelope(
    message: str, type: str, *, param: str | None = None, code: str | None = None
) -> bytes:
    """OpenAI's error envelope, as JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    return dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def refused(
    status: int,
    message: str,
    *,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> BackendError:
    """A request the adapter refuses without sending it (it cannot be translated, the server has
    no such endpoint): a ``client_error`` in OpenAI's envelope, which the client gets as it is."""
    return BackendError(
        ErrorKind.CLIENT_ERROR,
        message,
        status=status,
        body=error_envelope(message, type or openai_error_type(status), param=param, code=code),
        headers=dict(_JSON_HEADERS),
    )


# -- the normaliser -------------------------------------------------------------------------------


class ErrorBody(enum.Enum):
    """What ``UpstreamErrors`` does to the body of an error answer (the client may see it)."""

    #: Passed on as the server sent it.
    KEEP = "keep"
    #: For servers whose envelope is OpenAI's but for an int ``code`` (vLLM, llama-server): the
    #: error object is kept with its type and extra keys, its int code made a string (or a
    #: quirk's code); ``{"error": "text"}`` and the flat shape are put in an envelope.
    STRING_CODES = "string_codes"
    #: Rebuilt as OpenAI's envelope ``{"message", "type", "param", "code"}`` from whatever the
    #: server sent (a type that is not an OpenAI type name, such as an HTTP phrase, is replaced
    #: by the status's; an int code is dropped); an envelope that already is OpenAI's passes as
    #: it is.
    OPENAI = "openai"


@dataclass(frozen=True, slots=True)
class ErrorQuirk:
    """An error answer of the server that means more than its status says.

    It matches an answer with ``status`` (None: any) whose error ``type`` is ``error_type``
    (None: any) and whose message contains ``says`` (case-insensitive; "": any message).
    """

    status: int | None = None
    says: str = ""
    error_type: str | None = None
    #: What it is for failover (None: what the status says).
    kind: ErrorKind | None = None
    #: The OpenAI error ``code`` the client gets, when the server sends no string code.
    code: str | None = None
    #: The error's message in logs and attempt details; ``{message}``, ``{status}``, ``{type}``
    #: and ``{code}`` are the server's.
    message: str | None = None

    def matches(self, status: int, fields: ErrorFields) -> bool:
        """Whether an answer with ``status`` and ``fields`` is this quirk."""
        if self.status is not None and self.status != status:
            return False
        if self.error_type is not None and self.error_type != fields.type:
            return False
        return not self.says or self.says.lower() in (fields.message or "").lower()


@dataclass(frozen=True, slots=True)
class UpstreamErrors:
    """How one server's error answers become the ``BackendError`` failover acts on.

    ``server`` names the server in messages made up for it (``LocalAI answered HTTP 403
    (Forbidden)``); ``body`` says what happens to the body; the first of ``quirks`` that matches
    an answer re-classifies it; ``error_type`` gives a rebuilt body's type from the status when
    the server's own is missing or not OpenAI's; ``message``, when set, is every error's message
    (the placeholders of ``ErrorQuirk.message``); ``adjust`` rewrites what was read before
    anything else (Anthropic's error types to OpenAI's). Only answers with a status of 400 or
    more are looked at; anything else (a refused connection, a timeout, a redirect) passes as
    it is, and so does an answer where nothing changes.
    """

    server: str = "the backend"
    body: ErrorBody = ErrorBody.KEEP
    quirks: Sequence[ErrorQuirk] = ()
    error_type: Callable[[int], str] = openai_error_type
    message: str | None = None
    adjust: Callable[[ErrorFields], ErrorFields] | None = None
    #: Statuses some quirk matches (None: any): with ``body`` KEEP and no ``message``, other
    #: answers are passed on without reading their body.
    _statuses: frozenset[int | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "quirks", tuple(self.quirks))
        object.__setattr__(self, "_statuses", frozenset(q.status for q in self.quirks))

    def normalise(self, exc: BackendError) -> BackendError:
        """``exc`` as the server meant it: its kind, its message, its body for the client."""
        status = exc.status
        if status is None or status < 400:
            return exc
        if (
            self.body is ErrorBody.KEEP
            and self.message is None
            and status not in self._statuses
            and None not in self._statuses
        ):
            return exc
        fields, quirk = self._read(exc.body, status)
        kind, message, code = exc.kind, exc.message, None
        template = self.message
        if quirk is not None:
            kind = quirk.kind or kind
            code = quirk.code
            template = quirk.message or template
        if template is not None:
            message = template.format(
                status=status,
                message=fields.message or self._fallback(status),
                type=fields.type,
                code=fields.code,
            )
        body = self._body(exc.body, status, fields, code)
        if kind is exc.kind and message == exc.message and body is exc.body:
            return exc
        headers = exc.headers
        if body is not exc.body:
            headers = {k: v for k, v in headers.items() if k.lower() not in _REPLACED_HEADERS}
            headers.update(_JSON_HEADERS)
        return BackendError(
            kind, message, status=status, body=body, headers=headers, retry_after=exc.retry_after
        )

    def rewrite(self, body: bytes, status: int) -> bytes:
        """Only the body of an error answer with ``status``, as ``normalise`` leaves it."""
        fields, quirk = self._read(body, status)
        return self._body(body, status, fields, None if quirk is None else quirk.code)

    def _read(self, body: bytes, status: int) -> tuple[ErrorFields, ErrorQuirk | None]:
        fields = read_error(body)
        if self.adjust is not None:
            fields = self.adjust(fields)
        return fields, next((q for q in self.quirks if q.matches(status, fields)), None)

    def _fallback(self, status: int) -> str:
        return f"{self.server} answered HTTP {status} ({http_phrase(status)})"

    def _body(self, body: bytes, status: int, fields: ErrorFields, code: str | None) -> bytes:
        if self.body is ErrorBody.KEEP:
            return body
        if self.body is ErrorBody.STRING_CODES:
            return self._string_codes(body, status, fields, code)
        error = fields.error
        if error is not None and _is_openai(error) and (code is None or error["code"] is not None):
            return body
        kind = fields.type
        return error_envelope(
            fields.message or self._fallback(status),
            kind if kind and _TYPE_NAME.fullmatch(kind) else self.error_type(status),
            param=fields.param,
            code=fields.code if isinstance(fields.code, str) else code,
        )

    def _string_codes(
        self, body: bytes, status: int, fields: ErrorFields, code: str | None
    ) -> bytes:
        sent = fields.code
        if fields.shape is ErrorShape.ENVELOPE:
            if fields.error is None or fields.payload is None:
                return body
            if isinstance(sent, str) or (sent is None and code is None):
                return body  # already as OpenAI clients expect it: passed on untouched
            error = {**fields.error, "code": code or str(sent)}
            return dumps({**fields.payload, "error": error})
        if fields.shape is ErrorShape.TEXT_ERROR:
            fields = replace(fields, type=self.error_type(status))
            sent = status
        elif fields.shape is not ErrorShape.FLAT:
            return body
        if code is None or isinstance(sent, str):
            code = str(sent) if isinstance(sent, int) else sent
        return error_envelope(
            fields.message or self._fallback(status),
            fields.type or self.error_type(status),
            param=fields.param,
            code=code,
        )


def _is_openai(error: Mapping[str, Any]) -> bool:
    """Whether an error object is OpenAI's: a message, a type, and a param and code, each a
    string or null."""
    return (
        isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
        and bool(error["type"])
        and "param" in error
        and "code" in error
        and isinstance(error["param"], str | None)
        and isinstance(error["code"], str | None)
    )


# -- probe requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    """What one probe GET brought back: a status and a body, or why nothing came.

    ``failure`` is set when nothing came (``probe timed out``, ``cannot connect: ...``, an answer
    past the probe client's limits); then ``status`` is 0. ``payload`` is the body parsed as
    JSON, None when it is not JSON.
    """

    status: int = 0
    payload: Any = None
    content: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    failure: str | None = None
    #: Nothing listens on the port (ECONNREFUSED): a server still starting, or none at all.
    refused: bool = False

    @property
    def ok(self) -> bool:
        """True for a 200."""
        return self.status == 200

    @property
    def text(self) -> str:
        """The body as text."""
        return self.content.decode("utf-8", "replace")

    def get(self, key: str) -> Any:
        """``payload[key]`` when the payload is a JSON object; else None."""
        payload = self.payload
        return payload.get(key) if isinstance(payload, dict) else None

    def unreachable(self) -> ProbeResult:
        """The probe result for an answer that never came: unhealthy, saying why."""
        return ProbeResult(BackendStatus.UNHEALTHY, detail=self.failure or "no answer")


async def probe_get(
    clients: HttpClients,
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    params: Mapping[str, str] | None = None,
) -> ProbeAnswer:
    """GET ``url`` through ``clients.probe`` (bounded in size and time); never raises."""
    try:
        response = await clients.probe.get(url, headers=headers, params=params)
    except httpx.TimeoutException:
        return ProbeAnswer(failure="probe timed out")
    except httpx.HTTPError as exc:
        return ProbeAnswer(failure=f"cannot connect: {exc}", refused=_refused(exc))
    except httpx.InvalidURL as exc:
        return ProbeAnswer(failure=f"invalid URL: {exc}")
    content = response.content
    try:
        payload = json.loads(content) if content else None
    except (ValueError, RecursionError):
        payload = None
    return ProbeAnswer(response.status_code, payload, content, response.headers)


def _refused(exc: BaseException) -> bool:
    """True when a connection error comes down to ECONNREFUSED."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# -- lifecycle calls ------------------------------------------------------------------------------

_T = TypeVar("_T")


async def lifecycle_call(
    clients: HttpClients,
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    body: Any = None,
    params: Mapping[str, str] | None = None,
    timeout: float,  # noqa: ASYNC109 - it is also the HTTP read timeout of a load
) -> ProbeAnswer:
    """One lifecycle request (``body`` sent as JSON, when given) through ``clients.lifecycle``,
    answered within ``timeout`` seconds.

    Any HTTP answer comes back as a ``ProbeAnswer`` for the adapter to read; no answer raises a
    ``BackendError``: ``timeout``, ``connect_error``, or ``response_too_large``.
    """
    from nexus_core.http import ResponseTooLarge  # http imports this module

    try:
        async with asyncio.timeout(timeout):
            response = await clients.lifecycle.request(
                method, url, headers=headers, json=body, params=params, timeout=timeout
            )
    except (TimeoutError, httpx.TimeoutException):
        raise BackendError(
            ErrorKind.TIMEOUT, f"no answer to {method} {url} within {timeout:g} s"
        ) from None
    except ResponseTooLarge as exc:
        raise BackendError(ErrorKind.TOO_LARGE, str(exc)) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise BackendError(ErrorKind.CONNECT, f"cannot connect: {clip(str(exc))}") from None
    content = response.content
    try:
        payload = json.loads(content) if content else None
    except (ValueError, RecursionError):
        payload = None
    return ProbeAnswer(response.status_code, payload, content, response.headers)


def unknown_model(model: str, backend: str) -> LifecycleError:
    """The lifecycle error for a model ``backend`` cannot serve (404)."""
    return LifecycleError(
        LifecycleFailure.UNKNOWN_MODEL, f"backend '{backend}' has no model '{model}'", status=404
    )


def deadline_in(seconds: float) -> float:
    """The event loop's time ``seconds`` from now (for ``time_left``)."""
    return asyncio.get_running_loop().time() + seconds


def time_left(deadline: float) -> float:
    """Seconds until ``deadline`` (from ``deadline_in``), never less than 0."""
    return max(0.0, deadline - asyncio.get_running_loop().time())


async def poll_until(
    check: Callable[[], Awaitable[_T | None]],
    *,
    timeout: float,  # noqa: ASYNC109 - a timeout is a BackendError naming what it waited for
    what: str,
    interval: float = 0.05,
    max_interval: float = 1.0,
) -> _T:
    """Call ``check`` until it returns something, pausing longer each time (up to
    ``max_interval``); a ``timeout`` ``BackendError`` naming ``what`` after ``timeout`` seconds.

    For servers that answer a load at once and load in the background (llama-server's router).
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                found = await check()
                if found is not None:
                    return found
                await asyncio.sleep(interval)
                interval = min(max_interval, interval * 2)
    except TimeoutError:
        raise BackendError(ErrorKind.TIMEOUT, f"{what}: not done within {timeout:g} s") from None
