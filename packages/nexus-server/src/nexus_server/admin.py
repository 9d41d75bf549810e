"""The admin API under ``/admin/``: backends and gateway keys of the running server.

Every call needs the admin key (``[auth] admin_key_env``) as ``Authorization: Bearer`` or
``x-api-key``; with no admin key configured, only clients on this machine are answered, as
``nexus_server.trust`` decides (loopback, a ``Host`` naming this machine, no undeclared proxy).
``NexusApp`` has already refused other sites' pages (``Origin``), preflights and bodies that are
not JSON. Backends added here are kept in the state store and come back after a restart; keys
made here are kept as digests, their plaintext shown once.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from litestar import Request, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.params import FromPath
from pydantic import ValidationError

from nexus_core import fastjson
from nexus_core.adapters import BackendStatus
from nexus_core.auth import KeyRingError, presented_key
from nexus_core.config import BackendConfig
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway, _name_from_url
from nexus_core.registry import Backend, server_address
from nexus_core.state import StateError
from nexus_server.trust import LOCAL_KEY, Trust, misdirected

#: Fields ``POST /admin/backends`` accepts.
BACKEND_FIELDS = frozenset(
    {"url", "name", "type", "zone", "tier", "priority", "max_concurrent", "api_key_env"}
)

#: Fields ``POST /admin/keys`` accepts.
KEY_FIELDS = frozenset(
    {"name", "models", "requests_per_minute", "tokens_per_minute", "monthly_budget_usd"}
)


def presented_in(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key a request carries (``Authorization: Bearer`` or ``x-api-key``), if any."""
    headers = connection.headers
    return presented_key(
        headers.get("authorization", "").encode("latin-1") or None,
        headers.get("x-api-key", "").encode("latin-1") or None,
    )


def check_admin(gateway: Gateway, request: Request[Any, Any, Any], trust: Trust) -> None:
    """Raise 401/403/421 unless the request may use the admin API."""
    keys = gateway.keys
    presented = presented_in(request)
    if keys.admin_digest is not None:
        if keys.is_admin(presented):
            return
        raise GatewayError(
            401,
            "The admin API needs the admin key (Authorization: Bearer or x-api-key)",
            type="authentication_error",
            code="invalid_admin_key",
        )
    if request.scope.get(LOCAL_KEY) is True:
        return
    host = request.headers.get("host")
    if host is not None and not trust.host_allowed(host.encode("latin-1")):
        raise misdirected(host.encode("latin-1"))
    raise GatewayError(
        403,
        "The admin API answers clients on this machine only (over loopback, with a Host that "
        "names this machine, not forwarded by a proxy missing from server.trusted_proxies), "
        "unless [auth] admin_key_env names an admin key",
        type="permission_error",
        code="admin_loopback_only",
    )


async def read_json(request: Request[Any, Any, Any]) -> Any:
    """The request's body parsed as JSON; 400 if it is not JSON (413 past the body limit)."""
    raw = await request.body()
    try:
        return fastjson.loads(raw)
    except (ValueError, RecursionError):
        raise GatewayError(400, "The body is not valid JSON", code="invalid_json") from None


def _backend_or_404(gateway: Gateway, name: str) -> Any:
    backend = gateway.registry.get(name)
    if backend is None:
        raise GatewayError(404, f"No backend named '{name}'", code="backend_not_found")
    return backend


def _checked_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise GatewayError(400, "'url' is required", param="url")
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


def url_taken(backend: Backend, url: str) -> GatewayError:
    """409: ``url`` is already served by ``backend`` under another name."""
    return GatewayError(
        409,
        f"{url} is already registered as backend '{backend.name}' ({backend.config.url}, "
        f"{backend.source}); remove that one first to add it under another name",
        param="url",
        code="backend_url_exists",
        details={"backend": backend.name, "url": backend.config.url},
    )


def admin_routes(gateway: Gateway, trust: Trust) -> list[Any]:
    """The admin route handlers, bound to ``gateway`` and the server's ``trust`` rules."""
    #: Addresses being added right now (probing takes a while): a second add waits its turn.
    adding: dict[tuple[str, int, str], str] = {}

    @get("/admin/backends")
    async def list_backends(request: Request[Any, Any, Any]) -> dict[str, Any]:
        check_admin(gateway, request, trust)
        return {"object": "list", "data": gateway.backends()}

    @post("/admin/backends", status_code=201)
    async def add_backend(request: Request[Any, Any, Any]) -> dict[str, Any]:
        check_admin(gateway, request, trust)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise GatewayError(400, "The body must be a JSON object")
        unknown = sorted(set(body) - BACKEND_FIELDS)
        if unknown:
            raise GatewayError(
                400,
                f"Unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(BACKEND_FIELDS))}",
            )
        url = _checked_url(body.get("url"))
        fields = {k: v for k, v in body.items() if v is not None}
        fields.setdefault("name", _name_from_url(url))
        try:
            config = BackendConfig(**fields)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'body'}: "
                f"{error['msg'].removeprefix('Value error, ')}"
                for error in exc.errors()
            )
            raise GatewayError(400, f"Invalid backend: {problems}") from None
        refusal = gateway.key_env_refusal(config)
        if refusal is not None:
            raise refusal
        # One server under two names would be probed twice and counted twice in routing.
        existing = gateway.registry.at_address(url, discovered=False)
        if existing is not None and existing.name != config.name:
            raise url_taken(existing, url)
        address = server_address(url)
        if address in adding:
            raise GatewayError(
                409,
                f"{url} is being added right now as backend '{adding[address]}'",
                param="url",
                code="backend_url_exists",
                details={"backend": adding[address], "url": url},
            )
        adding[address] = config.name
        try:
            backend = await gateway.add_backend(config, source="admin")
        finally:
            adding.pop(address, None)
        try:
            await gateway.save_backend(backend)
        except StateError:
            # Not kept, so not added: a backend that would vanish at the next restart (or
            # never reach the other workers) is not half there. The handler answers 503.
            await gateway.remove_backend(backend.name)
            raise
        snapshot: dict[str, Any] = backend.snapshot()
        return snapshot

    @delete("/admin/backends/{name:str}", status_code=200)
    async def remove_backend(
        request: Request[Any, Any, Any], name: FromPath[str]
    ) -> dict[str, Any]:
        check_admin(gateway, request, trust)
        _backend_or_404(gateway, name)
        # Forgotten by the store first: if that fails (503), the backend is still there rather
        # than gone now and back after the next restart.
        await gateway.forget_backend(name)
        await gateway.remove_backend(name)
        return {"removed": name}

    @post("/admin/backends/{name:str}/drain", status_code=200)
    async def drain_backend(request: Request[Any, Any, Any], name: FromPath[str]) -> dict[str, Any]:
        check_admin(gateway, request, trust)
        backend = _backend_or_404(gateway, name)
        gateway.registry.set_status(backend, BackendStatus.DRAINING, "drained by the admin API")
        snapshot: dict[str, Any] = backend.snapshot()
        return snapshot

    @post("/admin/backends/{name:str}/resume", status_code=200)
    async def resume_backend(
        request: Request[Any, Any, Any], name: FromPath[str]
    ) -> dict[str, Any]:
        check_admin(gateway, request, trust)
        backend = _backend_or_404(gateway, name)
        gateway.registry.set_status(backend, BackendStatus.UNKNOWN, "resumed by the admin API")
        await gateway.resume_backend(backend)
        snapshot: dict[str, Any] = backend.snapshot()
        return snapshot

    @get("/admin/models")
    async def list_models(request: Request[Any, Any, Any]) -> dict[str, Any]:
        check_admin(gateway, request, trust)
        return {"object": "list", "data": gateway.list_models()}

    @get("/admin/keys")
    async def list_keys(request: Request[Any, Any, Any]) -> dict[str, Any]:
        check_admin(gateway, request, trust)
        return {"object": "list", "data": [key.public() for key in gateway.keys.listing()]}

    @post("/admin/keys", status_code=201)
    async def create_key(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        check_admin(gateway, request, trust)
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise GatewayError(400, "'name' is required", param="name")
        unknown = sorted(set(body) - KEY_FIELDS)
        if unknown:  # a misspelt limit must not make a key without one
            raise GatewayError(
                400,
                f"Unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(KEY_FIELDS))}",
                param=unknown[0],
            )
        models = body.get("models")
        try:
            key, plaintext = await gateway.keys.create(
                body["name"],
                models=models,
                requests_per_minute=body.get("requests_per_minute"),
                tokens_per_minute=body.get("tokens_per_minute"),
                monthly_budget_usd=body.get("monthly_budget_usd"),
            )
        except KeyRingError as exc:
            raise GatewayError(exc.status, exc.message, param=exc.param) from None
        # The plaintext leaves once, in this answer; it is never stored or logged.
        return Response(
            {**key.public(), "key": plaintext},
            status_code=201,
            headers={"Cache-Control": "no-store"},
        )

    @delete("/admin/keys/{name:str}", status_code=200)
    async def revoke_key(request: Request[Any, Any, Any], name: FromPath[str]) -> dict[str, Any]:
        check_admin(gateway, request, trust)
        try:
            await gateway.keys.revoke(name)
        except KeyRingError as exc:
            raise GatewayError(exc.status, exc.message) from None
        return {"revoked": name}

    return [
        list_backends,
        add_backend,
        remove_backend,
        drain_backend,
        resume_backend,
        list_models,
        list_keys,
        create_key,
        revoke_key,
    ]
