"""The HTTP application: Litestar for the small endpoints, plain ASGI for the proxy hot path."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotFoundException
from litestar.handlers import asgi
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.params import FromPath
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from nexus_core.accounting import usd
from nexus_core.adapters import Endpoint
from nexus_core.auth import ApiKey
from nexus_core.config import BackendConfig
from nexus_core.errors import GatewayError, model_not_found
from nexus_core.gateway import Gateway
from nexus_server import __version__, ollama
from nexus_server.admin import admin_routes, presented_in
from nexus_server.anthropic import CountTokensEndpoint, MessagesEndpoint
from nexus_server.dashboard import Dashboard
from nexus_server.dashboard import route_handlers as dashboard_routes
from nexus_server.proxy import (
    REQUEST_ID_KEY,
    Message,
    ProxyEndpoint,
    Receive,
    Scope,
    Send,
    missing_key,
    send_error,
)

log = logging.getLogger("nexus.server")

DEFAULT_OLLAMA_URL = "http://localhost:11434"

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


_CODE_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}


def _envelope_response(error: GatewayError) -> Response[bytes]:
    return Response(
        content=error.body(),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    code: str | None
    if isinstance(exc, NotFoundException):
        message = f"Unknown path {request.method} {request.url.path}"
        code = "not_found"
    else:
        message = exc.detail or "Request failed"
        code = _CODE_BY_STATUS.get(status)
    headers = dict(exc.headers or {})
    return _envelope_response(
        GatewayError(
            status,
            message,
            type=_TYPE_BY_STATUS.get(status, "server_error"),
            code=code,
            headers=headers,
        )
    )


def _gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    return _envelope_response(exc)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _envelope_response(
        GatewayError(
            HTTP_500_INTERNAL_SERVER_ERROR,
            "Internal error in the gateway",
            type="server_error",
            code="internal_error",
        )
    )


def create_app(gateway: Gateway, *, default_ollama: bool = False) -> Any:
    """The ASGI app: Litestar wrapped in a thin layer that gives every response a request id."""

    def viewer(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiKey | None:
        """The gateway key whose own view a request gets; None: everything (auth off, admin).

        With [auth] on, the JSON endpoints need a gateway key or the admin key (else 401).
        """
        keys = gateway.keys
        if not keys.enabled:
            return None
        presented = presented_in(connection)
        if keys.is_admin(presented):
            return None
        key = keys.identify(presented)
        if key is None:
            raise missing_key(presented)
        return key

    def key_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        viewer(connection)

    def models_for(key: ApiKey | None) -> list[dict[str, Any]]:
        """The models a key may use (its ``models`` globs); every model for None."""
        models = gateway.list_models()
        return models if key is None else [m for m in models if key.allows(str(m["id"]))]

    @get("/v1/models", guards=[key_guard])
    async def list_models(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return {"object": "list", "data": models_for(viewer(request))}

    @get("/v1/models/{model_id:path}", guards=[key_guard])
    async def get_model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> dict[str, Any]:
        model_id = model_id.lstrip("/")
        key = viewer(request)
        entry = gateway.get_model(model_id)
        if entry is None or (key is not None and not key.allows(model_id)):
            raise model_not_found(model_id, [m["id"] for m in models_for(key)])
        return entry

    @get("/health")
    async def health() -> dict[str, Any]:
        return gateway.health_summary()

    @get("/health/ready")
    async def ready() -> Response[dict[str, Any]]:
        summary = gateway.health_summary()
        ok = summary["backends"]["healthy"] > 0
        return Response(
            {"ready": ok, **summary}, status_code=200 if ok else 503, media_type="application/json"
        )

    @get("/metrics", media_type="text/plain; version=0.0.4; charset=utf-8")
    async def metrics() -> str:
        return gateway.monitor.render_prometheus()

    @get("/v1/stats", guards=[key_guard])
    async def stats(request: Request[Any, Any, Any]) -> dict[str, Any]:
        key = viewer(request)
        if key is None:
            return gateway.monitor.stats()
        own = gateway.monitor.key_stats(key.name)
        if key.monthly_budget_usd is not None:
            accountant = gateway.accountant
            spent = usd(await accountant.track_key(key.name))
            own["budget"] = {
                "period": accountant.period,
                "spent_usd": round(spent, 9),
                "limit_usd": key.monthly_budget_usd,
                "remaining_usd": round(max(0.0, key.monthly_budget_usd - spent), 9),
                "resets_in_seconds": round(accountant.seconds_to_rollover()),
            }
        return own

    @get("/v1/history", guards=[key_guard])
    async def history(request: Request[Any, Any, Any]) -> dict[str, Any]:
        key = viewer(request)
        entries = gateway.monitor.history_entries(None if key is None else key.name)
        return {"object": "list", "data": entries}

    @get("/api/tags", guards=[key_guard])
    async def ollama_tags(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return ollama.tags(gateway, viewer(request))

    @get("/api/ps", guards=[key_guard])
    async def ollama_ps(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return ollama.ps(gateway, viewer(request))

    @get("/api/version")
    async def ollama_version() -> dict[str, Any]:
        # The Ollama API version this front door follows; Nexus's own is in /health.
        return {"version": ollama.OLLAMA_API_VERSION, "nexus_version": __version__}

    @post("/api/show", status_code=200, guards=[key_guard])
    async def ollama_show(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        try:
            data = await request.json()
        except Exception:
            return Response({"error": "the request body is not valid JSON"}, status_code=400)
        status, body = ollama.show(gateway, data, viewer(request))
        return Response(body, status_code=status)

    proxies: dict[str, ProxyEndpoint] = {
        "/v1/chat/completions": ProxyEndpoint(gateway, Endpoint.CHAT),
        "/v1/completions": ProxyEndpoint(gateway, Endpoint.COMPLETIONS),
        "/v1/embeddings": ProxyEndpoint(gateway, Endpoint.EMBEDDINGS),
        "/v1/messages": MessagesEndpoint(gateway),
        "/v1/messages/count_tokens": CountTokensEndpoint(gateway),
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
        if default_ollama and not gateway.config.backends:
            await _add_default_ollama(gateway)
        try:
            yield
        finally:
            await gateway.stop()

    dashboard = Dashboard(gateway)
    litestar_app = Litestar(
        route_handlers=[
            *dashboard_routes(dashboard),
            list_models,
            get_model,
            health,
            ready,
            metrics,
            stats,
            history,
            ollama_tags,
            ollama_ps,
            ollama_version,
            ollama_show,
            *admin_routes(gateway),
            *(proxy_route(path) for path in proxies),
        ],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_exception,
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
    )
    litestar_app.state.gateway = gateway
    return NexusApp(litestar_app, proxies, dashboard)


async def _add_default_ollama(gateway: Gateway) -> None:
    kind = "ollama" if "ollama" in gateway.backend_types else "generic"
    try:
        backend = await gateway.add_backend(
            BackendConfig(name="local-ollama", url=DEFAULT_OLLAMA_URL, type=kind),
            source="default",
        )
    except GatewayError as exc:
        log.warning("could not add the local Ollama backend: %s", exc.message)
        return
    log.info(
        "no backends configured: trying a local Ollama at %s (status %s)",
        DEFAULT_OLLAMA_URL,
        backend.status.value,
    )


CORS_EXPOSED = (
    b"x-request-id, x-nexus-backend, x-nexus-backend-type, x-nexus-route-reason, "
    b"x-nexus-privacy-zone, x-nexus-fallback-model, x-nexus-cost-estimated, "
    b"x-nexus-budget-status, x-nexus-budget-utilization, x-nexus-budget-remaining, retry-after"
)


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


class NexusApp:
    """The outer ASGI app: request ids on every response, proxy paths dispatched directly.

    The proxy endpoints skip Litestar's router and middleware: they do their own error
    handling, and on the hot path every layer costs requests per second.
    """

    def __init__(
        self, app: Any, proxies: dict[str, ProxyEndpoint], dashboard: Dashboard | None = None
    ) -> None:
        self.app = app
        self.proxies = proxies
        server = getattr(getattr(app, "state", None), "gateway", None)
        config = server.config.server if server is not None else None
        self.max_header_bytes: int = config.max_header_bytes if config is not None else 65536
        #: Origins allowed by ``server.cors_origins`` (None: CORS off, no header is added).
        self.cors: frozenset[bytes] | None = (
            frozenset(o.encode("latin-1") for o in config.cors_origins)
            if config is not None and config.cors_origins
            else None
        )
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and scope["path"] == "/ws" and self.dashboard:
                await self.dashboard.websocket(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        request_id = None
        origin = None
        size = 0
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"x-request-id":
                if 0 < len(value) <= 200:
                    request_id = value
            elif name == b"origin":
                origin = value
        if request_id is None:
            request_id = os.urandom(16).hex().encode()
        scope[REQUEST_ID_KEY] = request_id
        extra = [(b"x-request-id", request_id)]
        if size > self.max_header_bytes:
            error = GatewayError(
                431,
                f"The request's headers are larger than {self.max_header_bytes} bytes",
                code="request_header_fields_too_large",
            )
            await send_error(_with_headers(send, extra), error)
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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        proxy = self.proxies.get(scope["path"])
        if proxy is not None:
            await proxy(scope, receive, send_with_id)
        else:
            await self.app(scope, receive, send_with_id)
