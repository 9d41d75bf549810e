"""The dashboard: ``/`` (server-rendered, then live), ``/ws``, ``/dashboard/fragments``,
``/dashboard/snapshot``, assets.

``render`` holds all of its HTML, ``live`` its state and feed, ``series`` the charts' figures;
``static/`` the stylesheet and the script that swaps fragments in.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from litestar import MediaType, Request, Response, WebSocket, get, websocket
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.static_files import create_static_files_router

from nexus_core.errors import GatewayError
from nexus_core.state import StateError
from nexus_server.dashboard import control
from nexus_server.dashboard.live import Dashboard, may_view, origin_allowed, viewer_allowed
from nexus_server.dashboard.render import (
    STYLE_HASH,
    manage_section,
    plain_page,
    render_page,
    sign_in_form,
    sign_in_page,
)
from nexus_server.dashboard.sessions import Session, cookie
from nexus_server.trust import LOCAL_KEY, Trust

__all__ = ["Dashboard", "origin_allowed", "render_page", "route_handlers"]

STATIC = Path(__file__).resolve().parent / "static"

#: Only the page's own script, style and WebSocket: a value that slipped through escaping
#: could still not run or load anything.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src 'self'; style-src 'self' '{STYLE_HASH}'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def route_handlers(dashboard: Dashboard) -> list[Any]:
    """The Litestar handlers of the dashboard: the page, its snapshot, its assets, ``/ws`` and
    the controls' writes (``control``)."""
    gateway = dashboard.gateway
    sessions = dashboard.sessions
    types: list[str] = []

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not await may_view(gateway, connection.scope, sessions):  # type: ignore[arg-type]
            raise GatewayError(
                401,
                "With [auth] on, the dashboard needs the admin key or a client on this machine",
                type="authentication_error",
                code="invalid_admin_key",
            )

    async def operator(scope: Any, headers: dict[str, str]) -> Session | None:
        """The request's operator session; a browser on this machine gets one without signing
        in while no admin key is configured (its session still binds the CSRF token to it).
        None too while the state store does not answer: the page is then a reader's."""
        try:
            session = await control.operator_of(dashboard, scope)
            if (
                session is None
                and control.loopback_rule(gateway, scope)
                and control.is_page_load(scope)
            ):
                session_id, session = await sessions.open(local=True)
                headers["Set-Cookie"] = cookie(session_id, secure=control.over_https(scope))
        except StateError as exc:
            gateway.store_outage.failed("dashboard session", exc)
            return None
        return session

    async def manage(session: Session, back: str = "/") -> str:
        if not types:
            types.extend(sorted(gateway.backend_types))
        notice, failed = session.take_notice()
        if notice is not None:
            with contextlib.suppress(StateError):  # shown again next time, at worst
                await sessions.save(session)
        return manage_section(
            session.csrf,
            signed_in=not session.local,
            types=types,
            notice=notice,
            failed=failed,
            back=back,
            backends=[backend.name for backend in gateway.registry],
            models=[row["model"] for row in dashboard.matrix()["rows"]],
        )

    def html(text: str, headers: dict[str, str], status: int = 200) -> Response[str]:
        return Response(text, status_code=status, media_type=MediaType.HTML, headers=headers)

    @get("/", include_in_schema=False)
    async def page(request: Request[Any, Any, Any]) -> Response[str]:
        scope: Any = request.scope
        headers = {
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
        session = await operator(scope, headers)
        if session is not None:
            return html(dashboard.page(await manage(session), operator=True), headers)
        if not viewer_allowed(gateway, scope):
            message = "With [auth] on, the dashboard shows to this machine and the admin key only"
            return html(sign_in_page(message), headers, 401)
        viewer = sign_in_form() if gateway.keys.admin_digest is not None else ""
        return html(dashboard.page(viewer), headers)

    @get("/dashboard/manage", include_in_schema=False)
    async def manage_page(request: Request[Any, Any, Any]) -> Response[str]:
        """The operator's forms on a page that does not reload itself (without JavaScript the
        dashboard reloads every few seconds)."""
        scope: Any = request.scope
        headers = {
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
        session = await operator(scope, headers)
        if session is None:
            return html(
                sign_in_page("Sign in with the admin key to manage this server"), headers, 401
            )
        return html(
            plain_page("Nexus: manage", await manage(session, "/dashboard/manage")), headers
        )

    @get("/dashboard/fragments", include_in_schema=False, guards=[guard])
    async def fragments() -> Response[str]:
        # The page's polling fallback: the /ws message with every fragment, current.
        return Response(
            dashboard.everything(),
            media_type=MediaType.JSON,
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    @get("/dashboard/snapshot", include_in_schema=False, guards=[guard])
    async def snapshot() -> Response[dict[str, Any]]:
        return Response(dashboard.snapshot(), headers={"Cache-Control": "no-store"})

    @websocket("/ws", name="dashboard-live")
    async def live(socket: WebSocket[Any, Any, Any]) -> None:
        # The Origin and the viewer are checked by Dashboard.websocket, before it accepts: a
        # refused page gets a 403 handshake, as a guard's exception would not give it.
        scope: Any = socket.scope  # the raw ASGI scope, as the proxy doors get it
        trust: Trust = socket.app.state.trust
        client = scope.get("client")
        scope[LOCAL_KEY] = trust.is_local(client[0] if client else None, scope["headers"])
        receive: Any = socket.receive
        send: Any = socket.send
        await dashboard.websocket(scope, receive, send, trust)

    assets = create_static_files_router(
        path="/dashboard/static",
        directories=[STATIC],
        include_in_schema=False,
        cache_control=None,
        name="dashboard-static",
    )
    return [
        page,
        manage_page,
        fragments,
        snapshot,
        live,
        assets,
        *control.route_handlers(dashboard),
    ]
