"""The HTTP application: Litestar for the small endpoints, plain ASGI for the proxy hot path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.handlers import asgi
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.pydantic import PydanticPlugin
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from nexus_core import fastjson
from nexus_core.adapters import BackendStatus, Endpoint
from nexus_core.anthropic_format import anthropic_error_body
from nexus_core.config import BackendConfig, ServerConfig
from nexus_core.errors import GatewayError, payload_too_large
from nexus_core.gateway import Gateway, state_unavailable
from nexus_core.state import StateError
from nexus_server import __version__, anthropic_models, ollama
from nexus_server.admin import AdminController
from nexus_server.anthropic import CountTokensEndpoint, MessagesEndpoint
from nexus_server.dashboard import Dashboard
from nexus_server.dashboard import route_handlers as dashboard_routes
from nexus_server.doors import error_body
from nexus_server.guards import provide_viewer
from nexus_server.listings import HealthController, ListingsController, OllamaListingsController
from nexus_server.proxy import (
    JSON,
    REQUEST_ID_KEY,
    Message,
    ProxyEndpoint,
    Receive,
    Scope,
    Send,
    accepts_body_type,
    is_json_type,
    send_whole,
    unsupported_media_type,
)
from nexus_server.recommendations import FleetController
from nexus_server.responses import ResponsesEndpoint
from nexus_server.responses_routes import ResponsesController
from nexus_server.trust import LOCAL_KEY, Trust, misdirected

log = logging.getLogger("nexus.server")

DEFAULT_OLLAMA_URL = "http://localhost:11434"
#: Where the implicit local Ollama is looked for instead of ``DEFAULT_OLLAMA_URL``: for tests,
#: which must not depend on whatever listens on this machine's port 11434.
DEFAULT_OLLAMA_URL_ENV = "NEXUS_LOCAL_OLLAMA_URL"
DEFAULT_OLLAMA_NAME = "local-ollama"

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


_CODE_BY_STATUS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def _envelope_response(request: Request[Any, Any, Any], error: GatewayError) -> Response[bytes]:
    """``error`` in the shape of the door the request was for (Anthropic's for a model listing
    an Anthropic SDK asked for)."""
    path = request.url.path
    if path.startswith("/v1/models") and anthropic_models.wants_anthropic(request.headers):
        body = anthropic_error_body(error.status, error.message)
    else:
        body = error_body(path, error)
    return Response(
        content=body,
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    code: str | None
    method = "HEAD" if request.scope.get(HEAD_KEY) else request.method
    headers = dict(exc.headers or {})
    if isinstance(exc, NotFoundException) or (status == 405 and _websocket_only(exc)):
        # /ws takes WebSockets only: a plain HTTP request finds nothing there.
        status, headers = 404, {}
        message = f"Unknown path {method} {request.url.path}"
        code = "not_found"
    elif status == 413:
        return _envelope_response(request, payload_too_large(max_body_of(request)))
    else:
        message = exc.detail or "Request failed"
        code = _CODE_BY_STATUS.get(status)
    if status in (404, 405):
        unknown: UnknownPaths = request.app.state.unknown_paths
        unknown.note(method, request.url.path, status, _request_id(request))
    return _envelope_response(
        request,
        GatewayError(
            status,
            message,
            type=_TYPE_BY_STATUS.get(status, "server_error"),
            code=code,
            headers=headers,
        ),
    )


def _websocket_only(exc: HTTPException) -> bool:
    """Litestar's 405 for an HTTP request to a WebSocket route (``Allow: websocket``)."""
    return (exc.headers or {}).get("allow") == "websocket"


def max_body_of(request: Request[Any, Any, Any]) -> int:
    """The body limit of the app serving ``request`` (``server.max_body_bytes``)."""
    limit: int = request.app.state.gateway.config.server.max_body_bytes
    return limit


def _request_id(request: Request[Any, Any, Any]) -> str:
    """The request's ``X-Request-Id`` (``NexusApp`` gives every request one)."""
    raw = request.scope.get(REQUEST_ID_KEY)
    return raw.decode("latin-1") if isinstance(raw, bytes) else ""


#: Seconds over which requests for unknown paths are counted before they are logged again.
UNKNOWN_PATH_WINDOW = 60.0
#: Distinct (method, path, status) logged per window; further ones are only counted.
UNKNOWN_PATHS_LOGGED = 50
#: Characters of an unknown path kept in its log line.
UNKNOWN_PATH_KEPT = 200


class UnknownPaths:
    """Logs requests Nexus has no route for (404, or 405 for a method a route does not take),
    at INFO, so an operator sees what a tool was missing, and never floods the log.

    The first request for a method and path in a window of ``UNKNOWN_PATH_WINDOW`` seconds is
    logged at once; the repeats are counted and logged as one line per path when the window
    ends. At most ``UNKNOWN_PATHS_LOGGED`` paths per window get lines of their own; requests for
    more are summed up in one line (a scanner trying thousands of paths writes a few lines a
    minute).
    """

    def __init__(self) -> None:
        #: Repeats since the first (logged) request, by (method, path, status), this window.
        self._seen: dict[tuple[str, str, int], int] = {}
        self._others = 0
        self._other_paths: set[tuple[str, str, int]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def note(self, method: str, path: str, status: int, request_id: str) -> None:
        """One request for ``path`` answered ``status`` (404 or 405)."""
        if len(path) > UNKNOWN_PATH_KEPT:
            path = path[:UNKNOWN_PATH_KEPT] + "…"
        entry = (method, path, status)
        seen = self._seen
        repeats = seen.get(entry)
        if repeats is not None:
            seen[entry] = repeats + 1
            return
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(UNKNOWN_PATH_WINDOW, self.flush)
        if len(seen) >= UNKNOWN_PATHS_LOGGED:
            self._others += 1
            if len(self._other_paths) < 10 * UNKNOWN_PATHS_LOGGED:
                self._other_paths.add(entry)
            return
        seen[entry] = 0
        log.info(
            "%s %s %s: %d, Nexus has no such %s (further requests for it are counted: one "
            "line a minute)",
            request_id or "-",
            method,
            path,
            status,
            "route" if status == 404 else "method on this route",
            extra={"request_id": request_id},
        )

    def flush(self) -> None:
        """End the window: log the repeats it counted, and start afresh."""
        self._timer = None
        for (method, path, status), repeats in self._seen.items():
            if repeats:
                log.info(
                    "%s %s: %d, %d more time%s in the last %.0f s",
                    method,
                    path,
                    status,
                    repeats,
                    "" if repeats == 1 else "s",
                    UNKNOWN_PATH_WINDOW,
                )
        if self._others:
            paths = len(self._other_paths)
            log.info(
                "%d more request%s for %s%d other unknown path%s in the last %.0f s (not logged "
                "one by one)",
                self._others,
                "" if self._others == 1 else "s",
                "" if paths < 10 * UNKNOWN_PATHS_LOGGED else "at least ",
                paths,
                "" if paths == 1 else "s",
                UNKNOWN_PATH_WINDOW,
            )
        self._seen.clear()
        self._other_paths.clear()
        self._others = 0

    def close(self) -> None:
        """Stop the window's timer (the server stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


#: Request state key of a body ``NexusRequest.json`` parsed: read back when it fails validation.
BODY_STATE = "nexus_body"


def _body_model(request: Request[Any, Any, Any]) -> Any:
    """The type of the body the request's handler takes (``nexus_server.schemas``), if any."""
    data = request.route_handler.parsed_data_field
    return data.annotation if data is not None else None


class NexusRequest(Request[Any, Any, Any]):
    """Litestar's request, with bodies parsed as the proxy doors parse them (``fastjson``: the
    standard library's rules), and a body that is not JSON (an empty one included) a 400
    ``invalid_json`` in the door's shape. (Litestar's own parser lets absurd nesting escape as a
    500.)"""

    async def json(self) -> Any:
        """The body parsed as JSON."""
        body = await self.body()
        try:
            value = fastjson.loads(body)
        except (ValueError, RecursionError):
            message = getattr(_body_model(self), "not_json", "The body is not valid JSON")
            raise GatewayError(400, message, code="invalid_json") from None
        self.state[BODY_STATE] = value
        return value


def _invalid_body(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    """A body (or parameter) of the wrong shape: 400 in the door's shape.

    In the body type's own words when it has them (``RequestBody.refusal``: not an object,
    unknown fields listed with the known ones, the key ring's rules...), else as
    ``Invalid <what>: <field>: <problem>`` from pydantic's errors, ``param`` the first field.
    """
    model = _body_model(request)
    if model is not None:
        if BODY_STATE not in request.state:
            # Litestar parses every body that has bytes (NexusRequest.json): this one was empty.
            message = getattr(model, "not_json", "The body is not valid JSON")
            return _envelope_response(request, GatewayError(400, message, code="invalid_json"))
        refusal = getattr(model, "refusal", None)
        error: GatewayError | None = refusal(request.state[BODY_STATE]) if refusal else None
        if error is not None:
            return _envelope_response(request, error)
    problems = [
        (str(item.get("key") or ""), str(item.get("message") or ""))
        for item in (exc.extra if isinstance(exc.extra, list) else [])
        if isinstance(item, dict)
    ]
    fields = [(key, message) for key, message in problems if key and key != "data"]
    if not fields:
        return _envelope_response(request, GatewayError(400, "The body must be a JSON object"))
    noun = getattr(model, "noun", "request")
    shown = "; ".join(f"{key}: {message}" for key, message in fields)
    error = GatewayError(400, f"Invalid {noun}: {shown}", param=fields[0][0].split(".")[0])
    return _envelope_response(request, error)


def _gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    return _envelope_response(request, exc)


def _state_error(request: Request[Any, Any, Any], exc: StateError) -> Response[bytes]:
    # An admin write (a key, a backend) the state store could not take: 503, logged once per
    # failure burst, never a traceback.
    gateway: Gateway = request.app.state.gateway
    gateway.store_outage.failed(f"{request.method} {request.url.path!r}", exc, _request_id(request))
    return _envelope_response(
        request, state_unavailable("keys and backends made at run time are kept there")
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    request_id = _request_id(request)
    log.exception(
        "%s unhandled error on %s %s",
        request_id or "-",
        request.method,
        request.url.path,
        extra={"request_id": request_id},
    )
    return _envelope_response(
        request,
        GatewayError(
            HTTP_500_INTERNAL_SERVER_ERROR,
            "Internal error in the gateway",
            type="server_error",
            code="internal_error",
        ),
    )


def create_app(gateway: Gateway, *, default_ollama: bool = False) -> Any:
    """The ASGI app: Litestar wrapped in a thin layer that gives every response a request id."""

    trust = Trust(gateway.config.server)

    proxies: dict[str, ProxyEndpoint] = {
        "/v1/chat/completions": ProxyEndpoint(gateway, Endpoint.CHAT),
        "/v1/completions": ProxyEndpoint(gateway, Endpoint.COMPLETIONS),
        "/v1/embeddings": ProxyEndpoint(gateway, Endpoint.EMBEDDINGS),
        "/v1/messages": MessagesEndpoint(gateway),
        "/v1/messages/count_tokens": CountTokensEndpoint(gateway),
        "/v1/responses": ResponsesEndpoint(gateway),
        "/api/chat": ollama.ChatEndpoint(gateway),
        "/api/generate": ollama.GenerateEndpoint(gateway),
        "/api/embed": ollama.EmbedEndpoint(gateway),
        "/api/embeddings": ollama.EmbedEndpoint(gateway, legacy=True),
    }

    def proxy_route(path: str) -> Any:
        # Normally reached through NexusApp's direct dispatch; registered so that paths with a
        # trailing slash or a root_path still arrive here.
        app = proxies[path]

        async def handler(scope: Scope, receive: Receive, send: Send) -> None:
            await app(scope, receive, send)

        return asgi(path, name=f"proxy{path.replace('/', '-')}", copy_scope=False)(handler)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await gateway.start()
        finder: asyncio.Task[None] | None = None
        if default_ollama and not gateway.config.backends:
            url = os.environ.get(DEFAULT_OLLAMA_URL_ENV) or DEFAULT_OLLAMA_URL
            # The first try is over before the server answers, as a configured backend's probe.
            if not await _add_default_ollama(gateway, url, first=True):
                finder = asyncio.get_running_loop().create_task(
                    _find_default_ollama(gateway, url), name="nexus-local-ollama"
                )
        try:
            yield
        finally:
            unknown_paths.close()
            if finder is not None:
                finder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await finder
            await gateway.stop()

    unknown_paths = UnknownPaths()
    dashboard = Dashboard(gateway)
    litestar_app = Litestar(
        route_handlers=[
            *dashboard_routes(dashboard),
            ListingsController,
            FleetController,
            OllamaListingsController,
            HealthController,
            AdminController,
            ResponsesController,
            *(proxy_route(path) for path in proxies),
        ],
        # Handlers take the gateway and the caller's view as dependencies; guards read the app's
        # state (they run before dependencies are resolved).
        dependencies={
            "gateway": Provide(lambda: gateway, use_cache=True, sync_to_thread=False),
            "viewer": Provide(provide_viewer, sync_to_thread=False),
        },
        state=State(
            {"gateway": gateway, "trust": trust, "unknown_paths": unknown_paths, "adding": {}}
        ),
        request_class=NexusRequest,
        # Request bodies are pydantic models checked strictly: a boolean is never a number, a
        # string never an integer (nexus_server.schemas).
        plugins=[PydanticPlugin(validate_strict=True)],
        exception_handlers={
            GatewayError: _gateway_error,
            ValidationException: _invalid_body,
            HTTPException: _http_exception,
            StateError: _state_error,
            Exception: _unexpected,
        },
        lifespan=[lifespan],
        # The JSON endpoints' schema (admin, listings, stats): for tools and for schemathesis.
        # The proxy doors are raw ASGI and follow the OpenAI/Anthropic/Ollama specs instead.
        openapi_config=OpenAPIConfig(
            title="Nexus",
            version=__version__,
            path="/openapi",
            render_plugins=[JsonRenderPlugin()],
        ),
        logging_config=None,
        debug=False,
        # The same limit as the proxy doors': every route answers 413 past it.
        request_max_body_size=gateway.config.server.max_body_bytes,
    )
    return NexusApp(litestar_app, proxies, trust=trust)


async def _add_default_ollama(gateway: Gateway, url: str, *, first: bool = False) -> bool:
    """Add the implicit local Ollama if it answers a probe now; True when done with it.

    Until it has answered once it is no backend at all: not listed, not counted by ``/health``,
    so a machine without Ollama is not reported as failing. Done also when a backend of that
    name or at that address exists by other means (added by hand, found over mDNS).
    """
    existing = gateway.registry.get(DEFAULT_OLLAMA_NAME) or gateway.registry.at_address(url)
    if existing is not None:
        log.debug("local Ollama at %s: already served as backend %s", url, existing.name)
        return True
    kind = "ollama" if "ollama" in gateway.backend_types else "generic"
    config = BackendConfig(name=DEFAULT_OLLAMA_NAME, url=url, type=kind)
    adapter = gateway.backend_types[kind](config, gateway.clients)
    try:
        async with asyncio.timeout(gateway.config.health_check.timeout_seconds):
            answer = await adapter.probe()
        detail = answer.detail
        answered = answer.status is not BackendStatus.UNHEALTHY
    except Exception as exc:  # an adapter that raises only means "not there"
        detail, answered = repr(exc), False
    finally:
        await adapter.close()
    if not answered:
        if first:
            later = (
                "added as soon as it answers"
                if gateway.config.health_check.enabled
                else "not tried again (health checks are off)"
            )
            log.info(
                "no backends configured: no local Ollama at %s (%s); it is %s",
                url,
                detail or "no answer",
                later,
            )
        return False
    try:
        backend = await gateway.add_backend(config, source="default")
    except GatewayError as exc:
        log.warning("could not add the local Ollama backend: %s", exc.message)
        return True
    log.info(
        "no backends configured: found a local Ollama at %s (backend %s, %s)",
        url,
        backend.name,
        backend.status.value,
    )
    return True


async def _find_default_ollama(gateway: Gateway, url: str) -> None:
    """Try the implicit local Ollama every health-check interval until it answers."""
    checks = gateway.config.health_check
    if not checks.enabled:  # no background probes: tried at start only
        return
    while True:
        await asyncio.sleep(checks.interval_seconds)
        if await _add_default_ollama(gateway, url):
            return


CORS_EXPOSED = (
    b"x-request-id, x-nexus-backend, x-nexus-backend-type, x-nexus-route-reason, "
    b"x-nexus-privacy-zone, x-nexus-fallback-model, x-nexus-cost-estimated, "
    b"x-nexus-budget-status, x-nexus-budget-utilization, x-nexus-budget-remaining, retry-after"
)
#: On every answer: a browser never guesses another type than the one Nexus sends.
NOSNIFF = (b"x-content-type-options", b"nosniff")
#: Methods that change something; the admin API takes only JSON with them.
WRITES = frozenset({"POST", "PUT", "PATCH"})
#: Scope key of a HEAD request answered as its GET (``as_get``).
HEAD_KEY = "nexus.head"


def as_get(scope: Scope, send: Send) -> tuple[Scope, Send]:
    """A HEAD request as the GET it asks about: the same status and headers, no body
    (RFC 9110, 9.3.2). The routes are GET routes; this answers HEAD on every one of them."""

    async def without_body(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b""}
        await send(message)

    return {**scope, "method": "GET", HEAD_KEY: True}, without_body


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *headers]
        await send(message)

    return wrapped


async def _preflight(scope: Scope, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
    """Answer a CORS preflight from an allowed origin."""
    asked = next((v for n, v in scope["headers"] if n == b"access-control-request-headers"), None)
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [
                *headers,
                (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
                (b"access-control-allow-headers", asked or b"authorization, content-type"),
                (b"access-control-max-age", b"600"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _refuse(
    send: Send, path: str, error: GatewayError, headers: list[tuple[bytes, bytes]]
) -> None:
    """Answer ``error`` in the shape of ``path``'s front door."""
    await send_whole(send, error.status, JSON, error_body(path, error), headers)


def _is_dashboard(path: str) -> bool:
    return path == "/" or path.startswith("/dashboard/")


class NexusApp:
    """The outer ASGI app: request ids on every response, proxy paths dispatched directly,
    and the ``Host``, ``Origin``, content-type and CORS rules (``nexus_server.trust``).

    The proxy endpoints skip Litestar's router and middleware: they do their own error
    handling, and on the hot path every layer costs requests per second.
    """

    def __init__(
        self,
        app: Any,
        proxies: dict[str, ProxyEndpoint],
        *,
        trust: Trust | None = None,
    ) -> None:
        self.app = app
        self.proxies = proxies
        server = getattr(getattr(app, "state", None), "gateway", None)
        config = server.config.server if server is not None else ServerConfig()
        self.max_header_bytes: int = config.max_header_bytes
        #: Origins allowed by ``server.cors_origins`` (None: CORS off, no header is added).
        self.cors: frozenset[bytes] | None = (
            frozenset(o.encode("latin-1") for o in config.cors_origins)
            if config.cors_origins
            else None
        )
        self.trust = trust if trust is not None else Trust(config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan, and the dashboard's /ws (a Litestar handler)
            await self.app(scope, receive, send)
            return
        request_id = origin = host = content_type = None
        size = 0
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"x-request-id":
                if 0 < len(value) <= 200:
                    request_id = value
            elif name == b"origin":
                origin = value
            elif name == b"host":
                if host is not None:
                    host = b""  # two Host headers: RFC 9112 says 400 (below)
                    break
                host = value
            elif name == b"content-type":
                content_type = value
        if request_id is None:
            request_id = os.urandom(16).hex().encode()
        scope[REQUEST_ID_KEY] = request_id
        extra = [(b"x-request-id", request_id), NOSNIFF]
        path: str = scope["path"]
        trust = self.trust
        if size > self.max_header_bytes:
            error = GatewayError(
                431,
                f"The request's headers are larger than {self.max_header_bytes} bytes",
                code="request_header_fields_too_large",
            )
            await _refuse(send, path, error, extra)
            return
        if host == b"":
            error = GatewayError(400, "The request has no Host, or more than one", code="bad_host")
            await _refuse(send, path, error, extra)
            return
        if trust.local_only and not trust.host_allowed(host):
            await _refuse(send, path, misdirected(host), extra)
            return
        if trust.proxies:
            client = scope.get("client")
            real = trust.client(client[0] if client else None, scope["headers"])
            if real is not None:
                scope["client"] = (real, 0)
        proxy = self.proxies.get(path)
        if proxy is None:
            if path.startswith("/admin/") or path == "/admin":
                # Never CORS: no page of another origin may read or drive the admin API.
                refusal = self._admin_refusal(scope["method"], origin, host, content_type)
                if refusal is not None:
                    await _refuse(send, path, refusal, extra)
                    return
                scope[LOCAL_KEY] = self._local(scope)
                admin_send = _with_headers(send, extra)
                if scope["method"] == "HEAD":
                    scope, admin_send = as_get(scope, admin_send)
                await self.app(scope, receive, admin_send)
                return
            if _is_dashboard(path):
                if not trust.host_allowed(host):
                    await _refuse(send, path, misdirected(host), extra)
                    return
                scope[LOCAL_KEY] = self._local(scope)
            elif (
                scope["method"] == "POST"
                and path == "/api/show"
                and not accepts_body_type(content_type, scope["headers"], lenient=True)
            ):
                await _refuse(send, path, unsupported_media_type(), extra)
                return
        cors = self.cors
        if cors is not None and origin is not None and (b"*" in cors or origin in cors):
            extra += [
                (b"access-control-allow-origin", b"*" if b"*" in cors else origin),
                (b"vary", b"origin"),
                (b"access-control-expose-headers", CORS_EXPOSED),
            ]
            if scope["method"] == "OPTIONS":
                await _preflight(scope, send, extra)
                return

        # Not a coroutine of its own: a streamed answer's every event passes through here.
        def send_with_id(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            return send(message)

        if proxy is not None:
            await proxy(scope, receive, send_with_id)
        elif scope["method"] == "HEAD":
            head_scope, head_send = as_get(scope, send_with_id)
            await self.app(head_scope, receive, head_send)
        else:
            await self.app(scope, receive, send_with_id)

    def _local(self, scope: Scope) -> bool:
        client = scope.get("client")
        return self.trust.is_local(client[0] if client else None, scope["headers"])

    def _admin_refusal(
        self, method: str, origin: bytes | None, host: bytes | None, content_type: bytes | None
    ) -> GatewayError | None:
        """Why a request may not reach the admin API whoever sent it, or None."""
        if method == "OPTIONS":
            return GatewayError(
                403,
                "The admin API answers no CORS preflight: it is not for other sites' pages",
                type="permission_error",
                code="origin_not_allowed",
            )
        if not self.trust.origin_allowed(origin, host):
            shown = (origin or b"").decode("latin-1")[:100]
            return GatewayError(
                403,
                f"Requests from the page origin '{shown}' may not use the admin API (only the "
                "server's own origin and server.admin_origins may)",
                type="permission_error",
                code="origin_not_allowed",
            )
        if method in WRITES and not is_json_type(content_type):
            return unsupported_media_type()
        return None
