"""The fleet inventory: what every backend could serve and in which state, read from the
adapters' lifecycle operations in the background and handed to the registry.

One task per backend whose adapter has lifecycle operations (``nexus_core.adapters
.ModelLifecycle``) reads ``available_models`` once per health interval, when the backend turns
healthy, and after every operation on it. The registry gets each model's state
(``Registry.set_fleet_state``): ``loaded`` follows it and models that are loading are held back
from routing. Nothing is read on a request's path: the admin API shows the last reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from nexus_core.adapters import (
    NO_LIFECYCLE,
    BackendError,
    BackendStatus,
    LifecycleSupport,
    ModelInventory,
    lifecycle_of,
)
from nexus_core.registry import Backend, Registry

__all__ = ["FleetInventory", "Reading"]

log = logging.getLogger("nexus.fleet")

#: Spread the readings over +/- this fraction of the interval, as the probes are.
JITTER = 0.1


@dataclass(frozen=True, slots=True)
class Reading:
    """One backend's last inventory: what it supports, its models (None until read), when."""

    support: LifecycleSupport
    inventory: ModelInventory | None = None
    #: Why the last reading failed (the previous inventory is kept).
    error: str | None = None
    checked_at: float | None = None


class FleetInventory:
    """The last ``available_models`` of every backend, kept current in the background."""

    def __init__(self, registry: Registry, *, interval: float, timeout: float) -> None:
        self.registry = registry
        self.interval = interval
        #: Bounds one reading (support and listing), as a probe is bounded.
        self.timeout = timeout
        self._readings: dict[str, Reading] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._refreshing: set[asyncio.Task[Reading | None]] = set()
        self._running = False
        registry.subscribe(self._on_registry_event)

    def reading(self, name: str) -> Reading | None:
        """The last reading of backend ``name`` (None: none yet, or no lifecycle operations)."""
        return self._readings.get(name)

    def start(self) -> None:
        """Watch every backend with lifecycle operations, now and as they are added."""
        self._running = True
        for backend in self.registry:
            self._watch(backend)

    async def stop(self) -> None:
        """Stop every reading task."""
        self._running = False
        tasks = [*self._tasks.values(), *self._refreshing]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self, backend: Backend) -> Reading | None:
        """Read ``backend``'s inventory now and apply it (None: no lifecycle operations)."""
        lifecycle = lifecycle_of(backend.adapter)
        if lifecycle is None:
            return None
        previous = self._readings.get(backend.name)
        try:
            async with asyncio.timeout(self.timeout):
                support = await lifecycle.lifecycle_support()
                inventory = await lifecycle.available_models() if support.available_models else None
        except (BackendError, TimeoutError) as exc:
            message = exc.message if isinstance(exc, BackendError) else "no answer in time"
            reading = Reading(
                previous.support if previous is not None else NO_LIFECYCLE,
                previous.inventory if previous is not None else None,
                error=message,
                checked_at=time.time(),
            )
        except Exception as exc:  # an adapter bug must not stop the readings
            log.exception("inventory of %s raised", backend.name)
            reading = Reading(NO_LIFECYCLE, None, error=repr(exc), checked_at=time.time())
        else:
            reading = Reading(support, inventory, checked_at=time.time())
            if self.registry.get(backend.name) is backend:
                states = {} if inventory is None else {m.id: m.state for m in inventory.models}
                self.registry.set_fleet_state(backend, states, support.autoload)
        if self.registry.get(backend.name) is backend:
            self._readings[backend.name] = reading
        return reading

    def snapshot(self) -> list[dict[str, Any]]:
        """Every backend: its lifecycle support, memory and models with their states."""
        return [self.backend_snapshot(backend) for backend in self.registry]

    def backend_snapshot(self, backend: Backend) -> dict[str, Any]:
        """One backend as ``GET /admin/fleet`` shows it."""
        reading = self._readings.get(backend.name)
        support = reading.support if reading is not None else NO_LIFECYCLE
        if reading is None and lifecycle_of(backend.adapter) is not None:
            support = LifecycleSupport(detail="not read yet")
        inventory = reading.inventory if reading is not None else None
        models: list[dict[str, Any]]
        if inventory is not None:
            models = [
                {
                    "id": entry.id,
                    "state": entry.state.value,
                    "size_bytes": entry.size_bytes,
                    "memory_bytes": entry.memory_bytes,
                    "gpu_memory_bytes": entry.gpu_memory_bytes,
                    "context_length": entry.context_length,
                    "detail": entry.detail,
                    "in_flight": backend.in_flight.get(entry.id, 0),
                    "routable": entry.id in backend.models and entry.id not in backend.held,
                }
                for entry in inventory.models
            ]
        else:
            # No inventory: what the probe lists, with no state (Nexus does not pretend).
            models = [
                {
                    "id": info.id,
                    "state": None,
                    "size_bytes": None,
                    "memory_bytes": None,
                    "gpu_memory_bytes": None,
                    "context_length": info.context_length,
                    "detail": None,
                    "in_flight": backend.in_flight.get(info.id, 0),
                    "routable": info.id not in backend.held,
                }
                for info in backend.models.values()
            ]
        return {
            "name": backend.name,
            "type": backend.type_name,
            "status": backend.status.value,
            "lifecycle": {
                "available_models": support.available_models,
                "load": support.load,
                "unload": support.unload,
                "autoload": support.autoload,
                "detail": support.detail,
            },
            "memory_total_bytes": None if inventory is None else inventory.memory_total_bytes,
            "memory_used_bytes": None if inventory is None else inventory.memory_used_bytes,
            "memory_free_bytes": None if inventory is None else inventory.memory_free_bytes,
            "checked_at": None if reading is None else reading.checked_at,
            "error": None if reading is None else reading.error,
            "models": models,
        }

    # -- background ------------------------------------------------------------------------------

    def _on_registry_event(self, event: str, backend: Backend) -> None:
        if not self._running:
            return
        if event == "added":
            self._watch(backend)
        elif event == "removed":
            task = self._tasks.pop(backend.name, None)
            if task is not None:
                task.cancel()
            self._readings.pop(backend.name, None)
        elif event == "status" and backend.status is BackendStatus.HEALTHY:
            # Up (again), perhaps as another type: read now rather than at the next interval.
            self._watch(backend)
            self.refresh_soon(backend)

    def refresh_soon(self, backend: Backend) -> None:
        """Read ``backend``'s inventory in the background, now."""
        if lifecycle_of(backend.adapter) is None:
            return
        task = asyncio.get_running_loop().create_task(
            self.refresh(backend), name=f"nexus-fleet-refresh-{backend.name}"
        )
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    def _watch(self, backend: Backend) -> None:
        if backend.name in self._tasks or lifecycle_of(backend.adapter) is None:
            return
        self._tasks[backend.name] = asyncio.get_running_loop().create_task(
            self._loop(backend), name=f"nexus-fleet-{backend.name}"
        )

    async def _loop(self, backend: Backend) -> None:
        while True:
            if self.registry.get(backend.name) is not backend:
                return
            if backend.status is BackendStatus.HEALTHY:
                await self.refresh(backend)
            await asyncio.sleep(self.interval * random.uniform(1 - JITTER, 1 + JITTER))
