"""The admin API under ``/admin/``: backends, models (the fleet) and gateway keys of the
running server.

Every call passes ``admin_guard`` (``nexus_server.guards``): the admin key, or with no admin key
configured a client on this machine. ``NexusApp`` has already refused other sites' pages
(``Origin``), preflights and bodies that are not JSON. Bodies and answers are typed
(``nexus_server.schemas``): Litestar refuses a body of the wrong shape with a 400 before the
handler runs. Backends added here are kept in the state store and come back after a restart;
keys made here are kept as digests, their plaintext shown once.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from pydantic import ValidationError

from nexus_core.adapters import BackendStatus
from nexus_core.auth import KeyRingError
from nexus_core.config import BackendConfig
from nexus_core.errors import GatewayError
from nexus_core.fleet import Operation
from nexus_core.gateway import Gateway, _name_from_url
from nexus_core.registry import Backend, server_address
from nexus_core.state import StateError
from nexus_server.guards import admin_guard
from nexus_server.schemas import Backend as BackendAnswer
from nexus_server.schemas import (
    BackendList,
    CreatedKey,
    ErrorEnvelope,
    FleetList,
    KeyList,
    MigrationBody,
    ModelList,
    ModelOperationBody,
    NewBackend,
    NewKey,
    OperationList,
    Removed,
    Revoked,
    answer,
    checked_url,
    errors,
)
from nexus_server.schemas import Operation as OperationAnswer

#: What any admin call can be refused with.
REFUSALS = {
    401: "The admin key is configured and the request does not carry it (invalid_admin_key).",
    403: "No admin key is configured and the client is not on this machine "
    "(admin_loopback_only), or the request comes from another site's page "
    "(origin_not_allowed).",
    421: "The Host does not name this server (misdirected_request).",
}
#: And an admin write.
WRITE_REFUSALS = {
    **REFUSALS,
    400: "The body is not JSON, not an object, has unknown fields or invalid values.",
    413: "The body is larger than server.max_body_bytes (request_too_large).",
    415: "The body is not sent as application/json (unsupported_media_type).",
    503: "The state store is not answering (state_unavailable); nothing was changed.",
}
#: And a call naming a backend or a key.
NOT_FOUND = {404: "No backend of that name (backend_not_found)."}


#: And a fleet operation.
OPERATION_REFUSALS = {
    **WRITE_REFUSALS,
    400: WRITE_REFUSALS[400] + " The backend cannot do it (lifecycle_not_supported), or the "
    "load would exceed its memory headroom (insufficient_memory).",
    404: "No backend of that name (backend_not_found), or the backend has no such model "
    "(model_not_found).",
    409: "Another operation on the model and backend is running (operation_in_progress).",
}
#: ``?wait=true``: answer when the operation has ended.
Wait = Annotated[
    bool,
    QueryParameter(
        description="Answer when the operation has ended (200) rather than at once (202)."
    ),
]


async def _operation(operation: Operation, wait: bool) -> Response[OperationAnswer]:
    """202 with the operation as it starts, or 200 with it at its end (``wait``)."""
    if wait:
        await operation.wait()
    return Response(answer(OperationAnswer, operation.snapshot()), status_code=200 if wait else 202)


def _backend_or_404(gateway: NamedDependency[Gateway], name: FromPath[str]) -> Backend:
    backend = gateway.registry.get(name)
    if backend is None:
        raise GatewayError(404, f"No backend named '{name}'", code="backend_not_found")
    return backend


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


def _snapshot(backend: Backend) -> BackendAnswer:
    return answer(BackendAnswer, backend.snapshot())


#: Addresses being added right now, per server (probing takes a while): a second add of the
#: same address waits its turn. ``create_app`` puts one in the app's state (``adding``).
Adding = dict[tuple[str, int, str], str]


async def add_new_backend(gateway: Gateway, data: NewBackend, adding: Adding) -> Backend:
    """Add a backend (probed, its type detected unless given) and keep it in the state store.

    The admin API and the dashboard's form both add backends through this, with the same checks.
    """
    url = checked_url(data.url)
    fields = data.model_dump(exclude_none=True)
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
    return backend


async def remove_named_backend(gateway: Gateway, name: str) -> None:
    """Remove a backend (requests on it finish) and forget it for restarts."""
    _backend_or_404(gateway, name)
    # Forgotten by the store first: if that fails (503), the backend is still there rather
    # than gone now and back after the next restart.
    await gateway.forget_backend(name)
    await gateway.remove_backend(name)


def drain_named_backend(gateway: Gateway, name: str, by: str = "the admin API") -> Backend:
    """No new requests for the backend; those in flight finish."""
    backend = _backend_or_404(gateway, name)
    gateway.registry.set_status(backend, BackendStatus.DRAINING, f"drained by {by}")
    return backend


async def resume_named_backend(gateway: Gateway, name: str, by: str = "the admin API") -> Backend:
    """Probe the backend again; it is routed to once healthy."""
    backend = _backend_or_404(gateway, name)
    gateway.registry.set_status(backend, BackendStatus.UNKNOWN, f"resumed by {by}")
    await gateway.resume_backend(backend)
    return backend


class AdminController(Controller):
    """``/admin/backends`` and ``/admin/keys``: the running server's backends and keys."""

    path = "/admin"
    guards = [admin_guard]
    tags = ["admin"]

    @get("/backends", responses=errors(ErrorEnvelope, REFUSALS))
    async def list_backends(self, gateway: NamedDependency[Gateway]) -> BackendList:
        """Every backend, with its status, load and models."""
        return answer(BackendList, {"object": "list", "data": gateway.backends()})

    @post(
        "/backends",
        status_code=201,
        responses=errors(
            ErrorEnvelope,
            {
                **WRITE_REFUSALS,
                409: "A backend of that name exists (backend_exists), or the server is a "
                "backend under another name (backend_url_exists).",
            },
        ),
    )
    async def add_backend(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[Gateway],
        data: JSONBody[NewBackend],
    ) -> BackendAnswer:
        """Add a backend: probed (its type detected unless given) before the answer."""
        backend = await add_new_backend(gateway, data, request.app.state.adding)
        return _snapshot(backend)

    @delete(
        "/backends/{name:str}",
        status_code=200,
        responses=errors(ErrorEnvelope, {**REFUSALS, **NOT_FOUND, 503: WRITE_REFUSALS[503]}),
    )
    async def remove_backend(
        self, gateway: NamedDependency[Gateway], name: FromPath[str]
    ) -> Removed:
        """Remove a backend (requests on it finish) and forget it for restarts."""
        await remove_named_backend(gateway, name)
        return Removed(removed=name)

    @post(
        "/backends/{name:str}/drain",
        status_code=200,
        responses=errors(ErrorEnvelope, {**REFUSALS, **NOT_FOUND}),
    )
    async def drain_backend(
        self, gateway: NamedDependency[Gateway], name: FromPath[str]
    ) -> BackendAnswer:
        """No new requests for the backend; those in flight finish."""
        return _snapshot(drain_named_backend(gateway, name))

    @post(
        "/backends/{name:str}/resume",
        status_code=200,
        responses=errors(ErrorEnvelope, {**REFUSALS, **NOT_FOUND}),
    )
    async def resume_backend(
        self, gateway: NamedDependency[Gateway], name: FromPath[str]
    ) -> BackendAnswer:
        """Probe the backend again; it is routed to once healthy."""
        return _snapshot(await resume_named_backend(gateway, name))

    @get("/models", responses=errors(ErrorEnvelope, REFUSALS))
    async def list_models(self, gateway: NamedDependency[Gateway]) -> ModelList:
        """The same list as ``/v1/models`` (every model: the admin sees everything)."""
        return answer(ModelList, {"object": "list", "data": gateway.list_models()})

    # -- fleet ------------------------------------------------------------------------------------

    @get("/fleet", responses=errors(ErrorEnvelope, REFUSALS))
    async def fleet(self, gateway: NamedDependency[Gateway]) -> FleetList:
        """Every backend's models with their state and memory, as last read in the background."""
        return answer(FleetList, {"object": "list", "data": gateway.fleet.snapshot()})

    @post("/models/load", status_code=202, responses=errors(ErrorEnvelope, OPERATION_REFUSALS))
    async def load_model(
        self,
        gateway: NamedDependency[Gateway],
        data: JSONBody[ModelOperationBody],
        wait: Wait = False,
    ) -> Response[OperationAnswer]:
        """Load a model on a backend: 202 with the operation (``?wait=true``: 200 at its end)."""
        operation = gateway.operations.start("load", data.model, data.backend)
        return await _operation(operation, wait)

    @post("/models/unload", status_code=202, responses=errors(ErrorEnvelope, OPERATION_REFUSALS))
    async def unload_model(
        self,
        gateway: NamedDependency[Gateway],
        data: JSONBody[ModelOperationBody],
        wait: Wait = False,
    ) -> Response[OperationAnswer]:
        """Unload a model from a backend once its requests there have finished."""
        operation = gateway.operations.start("unload", data.model, data.backend)
        return await _operation(operation, wait)

    @post("/models/migrate", status_code=202, responses=errors(ErrorEnvelope, OPERATION_REFUSALS))
    async def migrate_model(
        self, gateway: NamedDependency[Gateway], data: JSONBody[MigrationBody], wait: Wait = False
    ) -> Response[OperationAnswer]:
        """Move a model: load on ``to``, shift new requests there, unload ``from``."""
        operation = gateway.operations.start("migrate", data.model, data.source, target=data.target)
        return await _operation(operation, wait)

    @get("/operations", responses=errors(ErrorEnvelope, REFUSALS))
    async def list_operations(self, gateway: NamedDependency[Gateway]) -> OperationList:
        """Running operations and the last finished ones, newest first."""
        data = [operation.snapshot() for operation in gateway.operations.list()]
        return answer(OperationList, {"object": "list", "data": data})

    @get(
        "/operations/{operation_id:str}",
        responses=errors(
            ErrorEnvelope, {**REFUSALS, 404: "No such operation (operation_not_found)."}
        ),
    )
    async def get_operation(
        self, gateway: NamedDependency[Gateway], operation_id: FromPath[str]
    ) -> OperationAnswer:
        """One operation, running or among the last finished."""
        operation = gateway.operations.get(operation_id)
        if operation is None:
            raise GatewayError(
                404,
                f"No operation '{operation_id}' (finished ones are kept up to "
                f"fleet.operations_kept)",
                code="operation_not_found",
            )
        return answer(OperationAnswer, operation.snapshot())

    @get("/keys", responses=errors(ErrorEnvelope, REFUSALS))
    async def list_keys(self, gateway: NamedDependency[Gateway]) -> KeyList:
        """Every gateway key's settings, never a key or its digest."""
        keys = [key.public() for key in gateway.keys.listing()]
        return answer(KeyList, {"object": "list", "data": keys})

    @post(
        "/keys",
        status_code=201,
        responses=errors(ErrorEnvelope, {**WRITE_REFUSALS, 409: "A key of that name exists."}),
    )
    async def create_key(
        self, gateway: NamedDependency[Gateway], data: JSONBody[NewKey]
    ) -> Response[CreatedKey]:
        """Make a gateway key; the answer is the only place its plaintext ever appears."""
        try:
            key, plaintext = await gateway.keys.create(
                data.name,
                models=data.models,
                requests_per_minute=data.requests_per_minute,
                tokens_per_minute=data.tokens_per_minute,
                monthly_budget_usd=data.monthly_budget_usd,
            )
        except KeyRingError as exc:
            raise GatewayError(exc.status, exc.message, param=exc.param) from None
        # The plaintext leaves once, in this answer; it is never stored or logged.
        return Response(
            answer(CreatedKey, {**key.public(), "key": plaintext}),
            status_code=201,
            headers={"Cache-Control": "no-store"},
        )

    @delete(
        "/keys/{name:str}",
        status_code=200,
        responses=errors(
            ErrorEnvelope,
            {
                **REFUSALS,
                404: "No key of that name.",
                409: "The key is configured ([[auth.keys]]): remove it there.",
                503: WRITE_REFUSALS[503],
            },
        ),
    )
    async def revoke_key(self, gateway: NamedDependency[Gateway], name: FromPath[str]) -> Revoked:
        """Revoke a key made at run time."""
        try:
            await gateway.keys.revoke(name)
        except KeyRingError as exc:
            raise GatewayError(exc.status, exc.message) from None
        return Revoked(revoked=name)
