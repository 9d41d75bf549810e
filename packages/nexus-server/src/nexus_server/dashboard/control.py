"""The dashboard's controls: signing in and out, and the operator's actions, as HTML forms.

Every write here is a ``POST`` of an HTML form (``application/x-www-form-urlencoded``) answered
by a redirect to the page (POST-redirect-GET), so the controls work without JavaScript. Before
anything is read or done, a write must:

1. come from the dashboard's own page: an ``Origin`` that is this server's (its host:port is the
   request's ``Host``, and that ``Host`` names this server) and, when the browser sends it,
   ``Sec-Fetch-Site: same-origin``; a request with neither header is refused too (403
   ``origin_not_allowed``);
2. be a form (415 otherwise);
3. carry a live operator session (``sessions``: the session cookie, or the loopback rule's
   session while no admin key is configured) (401 ``sign_in_required``);
4. carry that session's CSRF token in its ``csrf`` field, compared in constant time (403
   ``csrf_token_invalid``).

Signing in takes steps 1 and 2, then the admin key, compared in constant time. The actions call
the admin API's own functions (``nexus_server.admin``): the same checks, the same effects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from litestar import MediaType, Request, Response, post
from pydantic import ValidationError

from nexus_core.errors import GatewayError
from nexus_core.state import StateError
from nexus_server.admin import (
    add_new_backend,
    drain_named_backend,
    remove_named_backend,
    resume_named_backend,
)
from nexus_server.dashboard.live import origin_allowed
from nexus_server.dashboard.render import PAGES, sign_in_page
from nexus_server.dashboard.sessions import Session, cleared_cookie, cookie, session_id_in
from nexus_server.schemas import NewBackend
from nexus_server.trust import LOCAL_KEY, Trust

if TYPE_CHECKING:
    from nexus_core.gateway import Gateway
    from nexus_server.dashboard.live import Dashboard
    from nexus_server.proxy import Scope

#: Who changes things from the dashboard, in the backends' status messages.
BY = "the dashboard"
#: Whom the fleet operations started from the dashboard are by: the admin, whose authority an
#: operator holds (``GET /admin/operations`` shows it as ``origin``).
ORIGIN = "admin"
FORM = b"application/x-www-form-urlencoded"
#: The answers to a write are never cached.
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


async def operator_of(dashboard: Dashboard, scope: Scope) -> Session | None:
    """The live operator session of a request, or None.

    A session opened by signing in is good while an admin key is configured; one opened by the
    loopback rule only while none is and the request is still from this machine.
    """
    session = await dashboard.sessions.get(session_id_in(scope["headers"]))
    if session is None:
        return None
    admin_set = dashboard.gateway.keys.admin_digest is not None
    if session.local:
        return session if not admin_set and scope.get(LOCAL_KEY) is True else None
    return session if admin_set else None


def loopback_rule(gateway: Gateway, scope: Scope) -> bool:
    """Whether a request may manage without signing in: no admin key is configured and the
    client is on this machine (the admin API's rule, ``nexus_server.trust``)."""
    return gateway.keys.admin_digest is None and scope.get(LOCAL_KEY) is True


def is_page_load(scope: Scope) -> bool:
    """Whether a request is a browser loading a page (it accepts HTML): only those open a
    session by the loopback rule, so that scripts polling ``/`` fill no store."""
    return any(n == b"accept" and b"text/html" in v for n, v in scope["headers"])


def over_https(scope: Scope) -> bool:
    """Whether the page is served over https (directly, or as its ``Origin`` says behind a TLS
    proxy): the session cookie is then ``Secure``."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    return any(n == b"origin" and v.startswith(b"https://") for n, v in scope["headers"])


def write_refusal(scope: Scope, trust: Trust) -> GatewayError | None:
    """Why a form post may not reach a dashboard write whoever sent it (another site's page, no
    form), or None."""
    headers = scope["headers"]
    origin = site = content_type = None
    for name, value in headers:
        if name == b"origin":
            origin = value
        elif name == b"sec-fetch-site":
            site = value
        elif name == b"content-type":
            content_type = value
    if (
        (origin is None and site is None)
        or (site is not None and site != b"same-origin")
        or (origin is not None and not origin_allowed(headers, trust))
    ):
        return GatewayError(
            403,
            "The dashboard's controls take requests from the dashboard's own page only (its "
            "Origin, Sec-Fetch-Site: same-origin)",
            type="permission_error",
            code="origin_not_allowed",
        )
    if content_type is None or content_type.split(b";", 1)[0].strip().lower() != FORM:
        return GatewayError(
            415,
            "The dashboard's controls take HTML forms (application/x-www-form-urlencoded)",
            code="unsupported_media_type",
        )
    return None


def refused(error: GatewayError, *, headers: dict[str, str] | None = None) -> Response[str]:
    """A refused write, as a page (the browser shows it in place of the dashboard)."""
    return Response(
        sign_in_page(error.message),
        status_code=error.status,
        media_type=MediaType.HTML,
        headers={**NO_STORE, **(headers or {})},
    )


def back_to_page(
    headers: dict[str, str] | None = None, form: dict[str, str] | None = None
) -> Response[str]:
    """303 to the page the form came from (``PAGES``: never anywhere else): after a write, the
    browser loads it again (POST-redirect-GET)."""
    back = (form or {}).get("back", "/")
    location = back if back in PAGES else "/"
    return Response(
        "", status_code=303, headers={**NO_STORE, "Location": location, **(headers or {})}
    )


async def form_of(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The form's fields (the first value of each)."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


#: An action: what it does with the gateway and the form, and the sentence saying what it did.
Action = Callable[["Gateway", dict[str, str], Request[Any, Any, Any]], Awaitable[str]]


def route_handlers(dashboard: Dashboard) -> list[Any]:
    """The dashboard's write routes: sign-in, sign-out and the actions."""
    gateway = dashboard.gateway

    async def checked(
        request: Request[Any, Any, Any],
    ) -> tuple[Session, dict[str, str]] | Response[str]:
        """The operator's session and the form, or the page refusing the write."""
        scope: Any = request.scope
        refusal = write_refusal(scope, request.app.state.trust)
        if refusal is not None:
            return refused(refusal)
        session = await operator_of(dashboard, scope)
        if session is None:
            return refused(
                GatewayError(
                    401,
                    "Sign in with the admin key to manage this server (the session has "
                    "ended, or there never was one)",
                    type="authentication_error",
                    code="sign_in_required",
                )
            )
        form = await form_of(request)
        if not session.csrf_matches(form.get("csrf")):
            return refused(
                GatewayError(
                    403,
                    "The form's CSRF token is missing or not this session's: load the page "
                    "again and retry",
                    type="permission_error",
                    code="csrf_token_invalid",
                )
            )
        return session, form

    async def act(request: Request[Any, Any, Any], action: Action) -> Response[str]:
        outcome = await checked(request)
        if isinstance(outcome, Response):
            return outcome
        session, form = outcome
        try:
            session.tell(await action(gateway, form, request))
        except GatewayError as exc:
            session.tell(exc.message, failed=True)
        except StateError as exc:
            gateway.store_outage.failed(f"dashboard {request.url.path!r}", exc)
            session.tell("The state store is not answering: nothing was changed", failed=True)
        # The notice is for the next page, which another worker may serve. (The store down:
        # the app's handler answers 503.)
        await dashboard.sessions.save(session)
        return back_to_page(form=form)

    @post("/dashboard/sign-in", include_in_schema=False)
    async def sign_in(request: Request[Any, Any, Any]) -> Response[str]:
        """Sign in with the admin key: a session cookie, the key itself kept nowhere."""
        scope: Any = request.scope
        refusal = write_refusal(scope, request.app.state.trust)
        if refusal is not None:
            return refused(refusal)
        keys = gateway.keys
        if keys.admin_digest is None:
            return refused(
                GatewayError(
                    403,
                    "No admin key is configured ([auth] admin_key_env): a browser on this "
                    "machine manages the server without signing in, and no other may",
                    type="permission_error",
                    code="admin_loopback_only",
                )
            )
        form = await form_of(request)
        if not keys.is_admin(form.get("key")):  # constant time (digests compared)
            return refused(
                GatewayError(
                    401,
                    "That is not the admin key",
                    type="authentication_error",
                    code="invalid_admin_key",
                )
            )
        # A new id on every sign-in: an id planted before it is worth nothing after.
        await dashboard.sessions.close(session_id_in(scope["headers"]))
        session_id, session = await dashboard.sessions.open(local=False)
        session.tell("Signed in: the controls are on the cards, the matrix and below")
        await dashboard.sessions.save(session)
        secure = over_https(scope)
        return back_to_page({"Set-Cookie": cookie(session_id, secure=secure)})

    @post("/dashboard/sign-out", include_in_schema=False)
    async def sign_out(request: Request[Any, Any, Any]) -> Response[str]:
        """End the session and make the browser forget its cookie."""
        outcome = await checked(request)
        if isinstance(outcome, Response):
            return outcome
        scope: Any = request.scope
        await dashboard.sessions.close(session_id_in(scope["headers"]))
        return back_to_page({"Set-Cookie": cleared_cookie(secure=over_https(scope))})

    async def add(gateway: Gateway, form: dict[str, str], request: Request[Any, Any, Any]) -> str:
        kind = form.get("type") or None
        fields = {
            "name": form.get("name") or None,
            "url": form.get("url", ""),
            "type": None if kind == "auto" else kind,
        }
        try:
            data = NewBackend(**fields)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise GatewayError(400, f"Invalid backend: {problems}") from None
        backend = await add_new_backend(gateway, data, request.app.state.adding)
        return f"Added backend {backend.name} ({backend.type_name}, {backend.status.value})"

    @post("/dashboard/backends", include_in_schema=False)
    async def add_backend(request: Request[Any, Any, Any]) -> Response[str]:
        """The "add backend" form."""
        return await act(request, add)

    def on_backend(verb: str) -> Any:
        async def action(
            gateway: Gateway, form: dict[str, str], request: Request[Any, Any, Any]
        ) -> str:
            name: str = request.path_params["name"]
            if verb == "drain":
                drain_named_backend(gateway, name, BY)
                return f"Draining {name}: no new requests; those in flight finish"
            if verb == "resume":
                await resume_named_backend(gateway, name, BY)
                return f"Resumed {name}: routed to again once healthy"
            await remove_named_backend(gateway, name)
            return f"Removed backend {name}"

        async def handler(request: Request[Any, Any, Any]) -> Response[str]:
            return await act(request, action)

        handler.__doc__ = f"The {verb} button of a backend's card."
        return post(
            f"/dashboard/backends/{{name:str}}/{verb}",
            include_in_schema=False,
            name=f"dashboard-{verb}",
        )(handler)

    def on_model(kind: str) -> Any:
        async def action(
            gateway: Gateway, form: dict[str, str], request: Request[Any, Any, Any]
        ) -> str:
            name: str = request.path_params["name"]
            model = form.get("model", "")
            operation = gateway.operations.start(kind, model, name, origin=ORIGIN)
            verb = "Loading" if kind == "load" else "Unloading"
            return f"{verb} {model} on {name}: operation {operation.id}"

        async def handler(request: Request[Any, Any, Any]) -> Response[str]:
            return await act(request, action)

        handler.__doc__ = f"The {kind} button of a cell of the model matrix."
        return post(
            f"/dashboard/backends/{{name:str}}/{kind}",
            include_in_schema=False,
            name=f"dashboard-{kind}",
        )(handler)

    async def migrate(
        gateway: Gateway, form: dict[str, str], request: Request[Any, Any, Any]
    ) -> str:
        model, source, target = form.get("model", ""), form.get("from", ""), form.get("to", "")
        operation = gateway.operations.start("migrate", model, source, target=target, origin=ORIGIN)
        return f"Migrating {model} from {source} to {target}: operation {operation.id}"

    @post("/dashboard/models/migrate", include_in_schema=False)
    async def migrate_model(request: Request[Any, Any, Any]) -> Response[str]:
        """The "migrate" form: load on the target, shift new requests, unload the source."""
        return await act(request, migrate)

    return [
        sign_in,
        sign_out,
        add_backend,
        on_backend("drain"),
        on_backend("resume"),
        on_backend("remove"),
        on_model("load"),
        on_model("unload"),
        migrate_model,
    ]
