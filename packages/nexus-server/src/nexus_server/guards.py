"""Who may call the Litestar routes: Litestar guards, run before a handler reads anything.

- ``admin_guard`` (the admin API): the admin key (``[auth] admin_key_env``) as
  ``Authorization: Bearer`` or ``x-api-key``; with no admin key configured, only clients on this
  machine, as ``nexus_server.trust`` decides (``NexusApp`` puts its answer in the scope).
- ``key_guard`` (the listings and statistics): with ``[auth]`` on, a gateway key or the admin
  key. It leaves the key whose view the request gets in the request's state; handlers take it
  as the ``viewer`` dependency (``provide_viewer``).

Both read the gateway and the trust rules from the app's state (``create_app`` puts them there).
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from nexus_core.auth import ApiKey, presented_key
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway
from nexus_server.proxy import missing_key
from nexus_server.trust import LOCAL_KEY, Trust, misdirected

Connection = ASGIConnection[Any, Any, Any, Any]


def presented_in(connection: Connection) -> str | None:
    """The key a request carries (``Authorization: Bearer`` or ``x-api-key``), if any."""
    headers = connection.headers
    return presented_key(
        headers.get("authorization", "").encode("latin-1") or None,
        headers.get("x-api-key", "").encode("latin-1") or None,
    )


def admin_guard(connection: Connection, _: BaseRouteHandler) -> None:
    """401/403/421 unless the request may use the admin API."""
    gateway: Gateway = connection.app.state.gateway
    keys = gateway.keys
    if keys.admin_digest is not None:
        if keys.is_admin(presented_in(connection)):
            return
        raise GatewayError(
            401,
            "The admin API needs the admin key (Authorization: Bearer or x-api-key)",
            type="authentication_error",
            code="invalid_admin_key",
        )
    if connection.scope.get(LOCAL_KEY) is True:
        return
    trust: Trust = connection.app.state.trust
    host = connection.headers.get("host")
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


def viewer_of(gateway: Gateway, connection: Connection) -> ApiKey | None:
    """The gateway key whose own view a request gets; None: everything (auth off, admin key).

    With ``[auth]`` on, 401 without a gateway key or the admin key.
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


def key_guard(connection: Connection, _: BaseRouteHandler) -> None:
    """401 without a gateway key (``[auth]`` on); the viewer is kept for the handler."""
    connection.state.viewer = viewer_of(connection.app.state.gateway, connection)


def provide_viewer(request: Request[Any, Any, Any]) -> ApiKey | None:
    """The ``viewer`` dependency: the key ``key_guard`` found (None: sees everything)."""
    key: ApiKey | None = request.state.get("viewer")
    return key
