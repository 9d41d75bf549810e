"""Fleet operations: loading, unloading and moving a model, tracked from start to end.

``Operations.start`` checks what it can at once (the backends exist and can do it, no other
operation holds the model there, the load fits the memory headroom) and raises a
``GatewayError`` (404, 400, 409) when it cannot start; otherwise the operation runs in the
background and ``await operation.wait()`` waits for its end. The admin API calls it with
``origin="admin"``; pre-warming will call it with ``origin="prewarm"``.

An unload drains the model on its backend first (``Registry.drain_model``: new requests for that
model go elsewhere, other models are untouched) and waits for the model's requests in flight
there to finish. A migration loads on the target, waits until Nexus routes to it, then unloads
the source that way: no request is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nexus_core.adapters import (
    RESIDENT_STATES,
    BackendError,
    BackendStatus,
    LifecycleError,
    LifecycleFailure,
    ModelLifecycle,
    ModelState,
    lifecycle_of,
)
from nexus_core.config import FleetConfig
from nexus_core.errors import GatewayError
from nexus_core.fleet.inventory import FleetInventory
from nexus_core.registry import Backend, Registry

__all__ = [
    "Operation",
    "OperationKind",
    "OperationState",
    "Operations",
    "Origin",
]

log = logging.getLogger("nexus.fleet")

#: Before counting a drained model's requests in flight: a request that was routed just before
#: the drain reaches its backend (and is counted) within this.
DRAIN_GRACE_SECONDS = 0.05
#: How often a drain looks at the count of requests in flight.
DRAIN_POLL_SECONDS = 0.05


class OperationKind(enum.StrEnum):
    """What an operation does."""

    LOAD = "load"
    UNLOAD = "unload"
    MIGRATE = "migrate"


class OperationState(enum.StrEnum):
    """Where an operation stands."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Origin(enum.StrEnum):
    """Who started an operation."""

    ADMIN = "admin"
    PREWARM = "prewarm"


#: Each kind's steps, in order: ``progress`` is the share of them done.
STEPS = {
    OperationKind.LOAD: ("loading", "waiting until it serves"),
    OperationKind.UNLOAD: ("draining", "unloading"),
    OperationKind.MIGRATE: (
        "loading on the target",
        "waiting until the target serves",
        "draining the source",
        "unloading the source",
    ),
}


@dataclass(eq=False, slots=True)
class Operation:
    """One load, unload or migration: what, where, by whom, how far, and how it ended."""

    id: str
    kind: OperationKind
    model: str
    #: The backend loaded or unloaded; a migration's source.
    backend: str
    #: A migration's target.
    target: str | None
    origin: Origin
    state: OperationState = OperationState.PENDING
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    #: What it is doing now (one of ``STEPS``), or did last.
    step: str | None = None
    #: Steps done / steps: no built-in server reports how far a load itself has come.
    progress: float = 0.0
    #: Why it failed, in words, and a code (``load_failed``, ``timeout``...).
    error: str | None = None
    error_code: str | None = None
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def finished(self) -> bool:
        """True once it succeeded or failed."""
        return self.state in (OperationState.SUCCEEDED, OperationState.FAILED)

    async def wait(self) -> Operation:
        """Wait until the operation has ended; itself, succeeded or failed."""
        await self._done.wait()
        return self

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view for the admin API and the CLI."""
        return {
            "id": self.id,
            "object": "fleet.operation",
            "kind": self.kind.value,
            "model": self.model,
            "backend": self.backend,
            "target": self.target,
            "origin": self.origin.value,
            "state": self.state.value,
            "step": self.step,
            "progress": round(self.progress, 3),
            "error": self.error,
            "error_code": self.error_code,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }

    def _at(self, index: int) -> None:
        steps = STEPS[self.kind]
        self.step = steps[index]
        self.progress = index / len(steps)


class Operations:
    """The operations of one gateway: started, running, and the last finished ones."""

    def __init__(
        self,
        registry: Registry,
        inventory: FleetInventory,
        config: FleetConfig,
        *,
        drain_timeout: float,
        probe: Callable[[Backend], Awaitable[object]],
    ) -> None:
        self.registry = registry
        self.inventory = inventory
        self.config = config
        #: How long a drained model's requests in flight get before its unload.
        self.drain_timeout = drain_timeout
        #: Probes a backend now (the health check's): after a load, so routing knows the model.
        self._probe = probe
        self._active: dict[str, Operation] = {}
        #: (model, backend) → the operation holding it.
        self._claims: dict[tuple[str, str], Operation] = {}
        self._finished: deque[Operation] = deque(maxlen=config.operations_kept)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the public API ---------------------------------------------------------------------------

    def start(
        self,
        kind: OperationKind | str,
        model: str,
        backend: str,
        *,
        target: str | None = None,
        origin: Origin | str = Origin.ADMIN,
    ) -> Operation:
        """Start an operation in the background; raise ``GatewayError`` when it cannot start
        (404: no such backend or model there; 400: not supported, no memory headroom, a bad
        request; 409: another operation holds the model on one of the backends)."""
        try:
            kind = OperationKind(kind)
            origin = Origin(origin)
        except ValueError as exc:
            raise GatewayError(400, str(exc), code="invalid_operation") from None
        if not model:
            raise GatewayError(400, "'model' is required", param="model")
        source = self._backend(backend, "backend" if kind is not OperationKind.MIGRATE else "from")
        destination: Backend | None = None
        if kind is OperationKind.MIGRATE:
            if target is None:
                raise GatewayError(400, "A migration needs a target backend ('to')", param="to")
            destination = self._backend(target, "to")
            if destination is source:
                raise GatewayError(
                    400,
                    f"Cannot migrate '{model}' from backend '{backend}' to itself",
                    param="to",
                    code="invalid_operation",
                )
            self._check(destination, model, "load")
            self._check(source, model, "unload")
        elif target is not None:
            raise GatewayError(400, f"A {kind.value} has no target", param="to")
        else:
            self._check(source, model, kind.value)
        involved = [source] if destination is None else [source, destination]
        for each in involved:
            holder = self._claims.get((model, each.name))
            if holder is not None:
                raise GatewayError(
                    409,
                    f"Operation {holder.id} ({holder.kind.value} of '{model}') is in progress "
                    f"on backend '{each.name}'; wait for it to end (GET /admin/operations/"
                    f"{holder.id})",
                    code="operation_in_progress",
                    details={"operation": holder.id},
                )
        loads_on = destination if destination is not None else source
        if kind is not OperationKind.UNLOAD:
            refusal = self.headroom_refusal(loads_on, model)
            if refusal is not None:
                raise refusal
        operation = Operation(
            id="op_" + os.urandom(6).hex(),
            kind=kind,
            model=model,
            backend=source.name,
            target=None if destination is None else destination.name,
            origin=origin,
        )
        for each in involved:
            self._claims[(model, each.name)] = operation
        self._active[operation.id] = operation
        task = asyncio.get_running_loop().create_task(
            self._run(operation, source, destination), name=f"nexus-operation-{operation.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info(
            "operation %s: %s of %s on %s%s started (%s)",
            operation.id,
            kind.value,
            model,
            source.name,
            f" -> {destination.name}" if destination is not None else "",
            origin.value,
        )
        return operation

    def list(self) -> list[Operation]:
        """Every operation known, newest first: the running ones and the last finished ones."""
        every = [*self._active.values(), *self._finished]
        return sorted(every, key=lambda op: op.created_at, reverse=True)

    def get(self, operation_id: str) -> Operation | None:
        """The operation ``operation_id``, if it runs or is among the last finished."""
        found = self._active.get(operation_id)
        if found is not None:
            return found
        return next((op for op in self._finished if op.id == operation_id), None)

    async def stop(self) -> None:
        """End every running operation (each fails as cancelled)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def headroom_refusal(self, backend: Backend, model: str) -> GatewayError | None:
        """The 400 for a load of ``model`` that would leave ``backend`` with less free memory
        than ``fleet.headroom_percent`` of its total; None when it fits or nothing is known
        (the server reports no total, or no size for the model)."""
        reading = self.inventory.reading(backend.name)
        inventory = reading.inventory if reading is not None else None
        if inventory is None or inventory.memory_total_bytes is None:
            return None
        entry = inventory.get(model)
        if entry is None or entry.state in RESIDENT_STATES:
            return None
        needed = entry.memory_bytes or entry.size_bytes
        if needed is None:
            return None
        total = inventory.memory_total_bytes
        used = inventory.memory_used_bytes or 0
        headroom = self.config.headroom_percent
        allowed = total * (1 - headroom / 100)
        if used + needed <= allowed:
            return None
        return GatewayError(
            400,
            f"Loading '{model}' ({_size(needed)}) on backend '{backend.name}' would use "
            f"{_size(used + needed)} of its {_size(total)}, more than the "
            f"{100 - headroom:g} % allowed (fleet.headroom_percent = {headroom:g}); unload "
            "a model there first, or load it on another backend",
            param="model",
            code="insufficient_memory",
            details={
                "backend": backend.name,
                "model": model,
                "model_bytes": needed,
                "memory_used_bytes": used,
                "memory_total_bytes": total,
                "headroom_percent": headroom,
            },
        )

    # -- checks -----------------------------------------------------------------------------------

    def _backend(self, name: str, param: str) -> Backend:
        backend = self.registry.get(name)
        if backend is None:
            raise GatewayError(
                404, f"No backend named '{name}'", param=param, code="backend_not_found"
            )
        return backend

    def _check(self, backend: Backend, model: str, operation: str) -> None:
        """400 when ``backend`` cannot ``operation`` (load/unload) at all; 404 when its
        inventory knows it cannot serve ``model``."""
        if lifecycle_of(backend.adapter) is None:
            raise GatewayError(
                400,
                f"Backend '{backend.name}' ({backend.type_name}) cannot {operation} models: "
                "its type has no model lifecycle operations",
                code="lifecycle_not_supported",
            )
        reading = self.inventory.reading(backend.name)
        if reading is None or reading.checked_at is None:
            return  # not read yet: the backend itself will say
        support = reading.support
        if support.available_models and not getattr(support, operation):
            detail = f": {support.detail}" if support.detail else ""
            raise GatewayError(
                400,
                f"Backend '{backend.name}' cannot {operation} models{detail}",
                code="lifecycle_not_supported",
            )
        inventory = reading.inventory
        if inventory is not None and inventory.get(model) is None:
            raise GatewayError(
                404,
                f"Backend '{backend.name}' has no model '{model}' (its models: "
                f"{', '.join(m.id for m in inventory.models[:20]) or 'none'})",
                param="model",
                code="model_not_found",
            )

    # -- running ----------------------------------------------------------------------------------

    async def _run(self, operation: Operation, source: Backend, target: Backend | None) -> None:
        operation.state = OperationState.RUNNING
        operation.started_at = time.time()
        try:
            if operation.kind is OperationKind.LOAD:
                await self._load(operation, source, 0)
            elif operation.kind is OperationKind.UNLOAD:
                await self._unload(operation, source, 0)
            else:
                assert target is not None
                await self._load(operation, target, 0)
                await self._unload(operation, source, 2)
        except BackendError as exc:
            code = exc.reason.value if isinstance(exc, LifecycleError) else exc.kind.value
            self._failed(operation, exc.message, code)
        except GatewayError as exc:
            self._failed(operation, exc.message, exc.code)
        except asyncio.CancelledError:
            self._failed(operation, "cancelled: Nexus is stopping", "cancelled")
            raise
        except Exception as exc:  # an adapter bug ends the operation, not the gateway
            log.exception("operation %s raised", operation.id)
            self._failed(operation, f"{type(exc).__name__}: {exc}", "internal_error")
        else:
            operation.state = OperationState.SUCCEEDED
            operation.progress = 1.0
            operation.step = None
            log.info("operation %s: succeeded", operation.id)
        finally:
            operation.finished_at = time.time()
            for name in (source.name, target.name if target is not None else None):
                if name is not None:
                    self._claims.pop((operation.model, name), None)
            self._active.pop(operation.id, None)
            self._finished.append(operation)
            operation._done.set()
            for backend in (source, target):
                if backend is not None and self.registry.get(backend.name) is backend:
                    # What the servers say now, not what the operation expected.
                    self.inventory.refresh_soon(backend)

    def _failed(self, operation: Operation, message: str, code: str | None) -> None:
        operation.state = OperationState.FAILED
        operation.error = message
        operation.error_code = code
        log.warning("operation %s: failed at %s: %s", operation.id, operation.step, message)

    async def _load(self, operation: Operation, backend: Backend, first_step: int) -> None:
        """Load the model on ``backend`` and wait until Nexus routes requests for it there."""
        model = operation.model
        lifecycle = _lifecycle(backend)
        operation._at(first_step)
        registry = self.registry
        # Not routed to while it loads (the next reading would say so too, later).
        registry.set_model_state(backend, model, ModelState.LOADING)
        try:
            await lifecycle.load_model(model, timeout=self.config.load_timeout_seconds)
        except BaseException:
            registry.set_model_state(backend, model, ModelState.UNLOADED)
            raise
        registry.set_model_state(backend, model, ModelState.LOADED)
        operation._at(first_step + 1)
        await self._until_routable(backend, model)

    async def _until_routable(self, backend: Backend, model: str) -> None:
        """Probe ``backend`` until it is healthy and lists ``model`` (the catalogue knows it)."""
        deadline = time.monotonic() + self.config.load_timeout_seconds
        pause = 0.05
        while True:
            await self._probe(backend)
            if (
                backend.status is BackendStatus.HEALTHY
                and model in backend.models
                and model not in backend.held
            ):
                return
            if time.monotonic() + pause > deadline:
                raise GatewayError(
                    503,
                    f"'{model}' was loaded on backend '{backend.name}', but the backend is "
                    f"{backend.status.value} or does not list it",
                    code="load_not_serving",
                )
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)

    async def _unload(self, operation: Operation, backend: Backend, first_step: int) -> None:
        """Drain the model on ``backend``, let its requests in flight finish, unload it."""
        model = operation.model
        lifecycle = _lifecycle(backend)
        registry = self.registry
        operation._at(first_step)
        registry.drain_model(backend, model)
        try:
            left = await self._drained(backend, model)
            if left:
                log.warning(
                    "operation %s: %d request(s) for %s still in flight on %s after %g s; "
                    "unloading anyway",
                    operation.id,
                    left,
                    model,
                    backend.name,
                    self.drain_timeout,
                )
            operation._at(first_step + 1)
            await lifecycle.unload_model(model, timeout=self.config.unload_timeout_seconds)
            registry.set_model_state(backend, model, ModelState.UNLOADED)
        finally:
            registry.resume_model(backend, model)

    async def _drained(self, backend: Backend, model: str) -> int:
        """Wait (up to the drain timeout) until no request for ``model`` is in flight on
        ``backend``; how many still are."""
        await asyncio.sleep(DRAIN_GRACE_SECONDS)
        deadline = time.monotonic() + self.drain_timeout
        in_flight = backend.in_flight
        while True:
            # Polled: the count changes on the request path, which signals nothing.
            left = in_flight.get(model, 0)
            if left <= 0 or time.monotonic() >= deadline:
                return max(0, left)
            await asyncio.sleep(DRAIN_POLL_SECONDS)


def _lifecycle(backend: Backend) -> ModelLifecycle:
    lifecycle = lifecycle_of(backend.adapter)
    if lifecycle is None:  # its adapter changed type since the operation started
        raise LifecycleError(
            LifecycleFailure.NOT_SUPPORTED,
            f"backend '{backend.name}' has no model lifecycle operations",
        )
    return lifecycle


def _size(count: int | float) -> str:
    """``1.5 GiB``: a byte count for a message."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"
