"""Pre-warming: keep the models traffic asks for loaded on enough backends.

``plan`` is a pure function: from each model's demand (``nexus_core.fleet.demand``), each
backend's inventory, its requests in flight and the operations in progress, it says which loads
would bring every model in demand up to its target number of backends, and why not where it
cannot. It never unloads: room is left to the servers' own eviction and to the operator (a
recommendation blocked by the headroom says how much memory it lacks).

A load goes only to a healthy backend that can load models, lists the model unloaded (or
sleeping), has no operation in progress on it, has memory for it where memory is known (the
headroom rule of ``Operations.start``) and has no request in flight for another model: servers
evict on their own (llama-server's ``--models-max``, Ollama's ``OLLAMA_MAX_LOADED_MODELS``) with
limits Nexus cannot read, so a load on a backend that is serving could push out a model in use.

``Prewarmer`` runs it every ``fleet.prewarm.interval_seconds`` when enabled and, unless dry-run,
starts each load through ``Operations.start(..., origin="prewarm")``. docs/fleet.md has the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nexus_core.adapters import RESIDENT_STATES, AvailableModel, BackendStatus, ModelState
from nexus_core.config import PrewarmConfig
from nexus_core.errors import GatewayError
from nexus_core.fleet.demand import DemandLog, ModelDemand
from nexus_core.fleet.inventory import FleetInventory
from nexus_core.fleet.operations import Operation, Operations, Origin
from nexus_core.registry import Registry
from nexus_core.state import StateError, StateStore, StoreOutage

__all__ = [
    "BackendView",
    "Load",
    "ModelPlan",
    "Plan",
    "PlanSettings",
    "Prewarmer",
    "Skip",
    "plan",
]

log = logging.getLogger("nexus.fleet")

#: States a load can start from.
LOADABLE_STATES = frozenset({ModelState.UNLOADED, ModelState.SLEEPING})


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """What ``plan`` needs of ``[fleet]`` and ``[fleet.prewarm]``."""

    min_requests: int = 3
    backends_per_model: int = 1
    max_loads: int = 1
    headroom_percent: float = 20.0


@dataclass(frozen=True, slots=True)
class BackendView:
    """One backend as the planner sees it: its inventory, memory, requests in flight."""

    name: str
    healthy: bool
    #: Its server can load models now (``LifecycleSupport.load``).
    can_load: bool
    models: tuple[AvailableModel, ...] = ()
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    #: Requests in flight through Nexus, per model.
    in_flight: Mapping[str, int] = field(default_factory=dict)
    #: Models an operation is loading, unloading or moving here now.
    busy: frozenset[str] = frozenset()

    def entry(self, model: str) -> AvailableModel | None:
        """The inventory entry of ``model``, if the backend can serve it."""
        return next((entry for entry in self.models if entry.id == model), None)


@dataclass(frozen=True, slots=True)
class Load:
    """A recommended load, with the figures behind it."""

    model: str
    backend: str
    reason: str
    #: The model's size as the server reports it (None: unknown, not checked).
    model_bytes: int | None
    #: The backend's memory in use before the load (with this cycle's earlier loads), its total.
    memory_used_bytes: int | None
    memory_total_bytes: int | None


@dataclass(frozen=True, slots=True)
class Skip:
    """A backend that could serve a model in demand but gets no load, and why."""

    backend: str
    #: ``not_healthy``, ``cannot_load``, ``not_loadable``, ``operation_in_progress``,
    #: ``serving_other_models``, ``no_headroom`` or ``max_loads_per_cycle``.
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One model with demand: its figures, its target, where it is and what is planned."""

    demand: ModelDemand
    in_demand: bool
    #: Backends it should be loaded on (``backends_per_model``, at most those listing it).
    target: int
    loaded_on: tuple[str, ...]
    loading_on: tuple[str, ...]
    #: Every healthy backend listing it, whatever its state.
    available_on: tuple[str, ...]
    loads: tuple[str, ...]
    skipped: tuple[Skip, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's answer: the loads, in order, and every model considered."""

    loads: tuple[Load, ...]
    models: tuple[ModelPlan, ...]


def plan(
    demand: Mapping[str, ModelDemand],
    backends: Sequence[BackendView],
    settings: PlanSettings,
) -> Plan:
    """The loads that bring each model in demand up to its target (pure, deterministic)."""
    views = sorted(backends, key=lambda view: view.name)
    # Memory in use as the planned loads add to it, and loads planned per backend.
    used = {view.name: view.memory_used_bytes for view in views}
    planned: dict[str, int] = {view.name: 0 for view in views}
    loads: list[Load] = []
    plans: list[ModelPlan] = []
    ordered = sorted(demand.values(), key=lambda d: (-d.recent, -d.same_hour, d.model))
    for figures in ordered:
        model = figures.model
        in_demand = figures.meets(settings.min_requests)
        listing = [v for v in views if v.healthy and v.entry(model) is not None]
        loaded = tuple(v.name for v in listing if _state(v, model) is ModelState.LOADED)
        loading = tuple(v.name for v in listing if _state(v, model) is ModelState.LOADING)
        target = min(settings.backends_per_model, len(listing))
        missing = target - len(loaded) - len(loading) if in_demand else 0
        chosen: list[str] = []
        skipped: list[Skip] = []
        if missing > 0:
            candidates = [v for v in views if v.entry(model) is not None]
            candidates = [v for v in candidates if _state(v, model) not in RESIDENT_STATES]
            # Fewest models resident (and loads planned) first: spread the models out.
            candidates.sort(key=lambda v: (_resident(v) + planned[v.name], v.name))
            for view in candidates:
                if len(chosen) >= missing:
                    break
                if len(loads) >= settings.max_loads:
                    skipped.append(
                        Skip(
                            view.name,
                            "max_loads_per_cycle",
                            f"this cycle already has its {settings.max_loads} load(s) "
                            "(fleet.prewarm.max_loads_per_cycle)",
                        )
                    )
                    continue
                skip = _refusal(view, model, used[view.name], settings)
                if skip is not None:
                    skipped.append(skip)
                    continue
                entry = view.entry(model)
                assert entry is not None
                needed = entry.memory_bytes or entry.size_bytes
                before = used[view.name]
                loads.append(
                    Load(
                        model,
                        view.name,
                        _reason(figures, settings, len(loaded) + len(loading), target),
                        needed,
                        before,
                        view.memory_total_bytes,
                    )
                )
                if needed is not None:
                    used[view.name] = (before or 0) + needed
                planned[view.name] += 1
                chosen.append(view.name)
        plans.append(
            ModelPlan(
                demand=figures,
                in_demand=in_demand,
                target=target,
                loaded_on=loaded,
                loading_on=loading,
                available_on=tuple(v.name for v in listing),
                loads=tuple(chosen),
                skipped=tuple(skipped),
            )
        )
    return Plan(tuple(loads), tuple(plans))


def _state(view: BackendView, model: str) -> ModelState | None:
    entry = view.entry(model)
    return None if entry is None else entry.state


def _resident(view: BackendView) -> int:
    return sum(1 for entry in view.models if entry.state in RESIDENT_STATES)


def _refusal(
    view: BackendView, model: str, used: int | None, settings: PlanSettings
) -> Skip | None:
    """Why ``model`` cannot be loaded on ``view`` now; None when it can."""
    if not view.healthy:
        return Skip(view.name, "not_healthy", "the backend is not healthy")
    if not view.can_load:
        return Skip(view.name, "cannot_load", "the backend cannot load models")
    entry = view.entry(model)
    if entry is None or entry.state not in LOADABLE_STATES:
        state = "absent" if entry is None else entry.state.value
        return Skip(view.name, "not_loadable", f"the model is {state} there")
    if model in view.busy:
        return Skip(
            view.name,
            "operation_in_progress",
            "an operation on this model is in progress there",
        )
    serving = {m: n for m, n in view.in_flight.items() if n > 0 and m != model}
    if serving:
        listed = ", ".join(f"{m} ({n})" for m, n in sorted(serving.items()))
        return Skip(
            view.name,
            "serving_other_models",
            f"requests are in flight there for {listed}: a load could evict a model in use",
        )
    total = view.memory_total_bytes
    needed = entry.memory_bytes or entry.size_bytes
    if total is not None and needed is not None:
        allowed = total * (1 - settings.headroom_percent / 100)
        if (used or 0) + needed > allowed:
            return Skip(
                view.name,
                "no_headroom",
                f"{(used or 0) + needed} bytes in use after the load, more than the "
                f"{allowed:.0f} of {total} allowed (fleet.headroom_percent = "
                f"{settings.headroom_percent:g})",
            )
    return None


def _reason(figures: ModelDemand, settings: PlanSettings, resident: int, target: int) -> str:
    parts = [f"{figures.recent} request(s) in the window"]
    if figures.days:
        parts.append(f"{figures.same_hour_average:g} a day at this hour over {figures.days} day(s)")
    return (
        f"{' and '.join(parts)} (at least {settings.min_requests} count as demand); "
        f"loaded on {resident} of the {target} backend(s) wanted"
    )


# -- the loop --------------------------------------------------------------------------------


class Prewarmer:
    """Runs ``plan`` on the live fleet: for ``GET /v1/fleet/recommendations``, and every
    interval when ``fleet.prewarm.enabled`` (loading, unless ``dry_run``)."""

    def __init__(
        self,
        registry: Registry,
        inventory: FleetInventory,
        operations: Operations,
        demand: DemandLog,
        config: PrewarmConfig,
        *,
        headroom_percent: float,
        store: Callable[[], StateStore] | None = None,
        outage: StoreOutage | None = None,
    ) -> None:
        self.registry = registry
        #: The state store keeping the hourly counts (called: it is opened at start).
        self._store = store
        self._outage = outage
        self.inventory = inventory
        self.operations = operations
        self.demand = demand
        self.config = config
        self.settings = PlanSettings(
            min_requests=config.min_requests,
            backends_per_model=config.backends_per_model,
            max_loads=config.max_loads_per_cycle,
            headroom_percent=headroom_percent,
        )
        #: What the last cycle did (None before the first).
        self.last_cycle: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def views(self) -> list[BackendView]:
        """Every backend whose inventory Nexus has read, as the planner sees it."""
        busy: dict[str, set[str]] = {}
        for operation in self.operations.list():
            if not operation.finished:
                for name in (operation.backend, operation.target):
                    if name is not None:
                        busy.setdefault(name, set()).add(operation.model)
        views = []
        for backend in self.registry:
            reading = self.inventory.reading(backend.name)
            if reading is None or reading.inventory is None:
                continue
            inventory = reading.inventory
            # The registry's states are newer than the reading: an operation that just ended
            # set its model's state there; the next reading says the same later.
            states = backend.model_states
            models = tuple(
                entry
                if states.get(entry.id, entry.state) is entry.state
                else replace(entry, state=states[entry.id])
                for entry in inventory.models
            )
            views.append(
                BackendView(
                    name=backend.name,
                    healthy=backend.status is BackendStatus.HEALTHY,
                    can_load=reading.support.load,
                    models=models,
                    memory_total_bytes=inventory.memory_total_bytes,
                    memory_used_bytes=inventory.memory_used_bytes,
                    in_flight=dict(backend.in_flight),
                    busy=frozenset(busy.get(backend.name, ())),
                )
            )
        return views

    def plan(self, now: float | None = None) -> tuple[Plan, list[BackendView]]:
        """The plan for the fleet as it is now, and the views it was made from."""
        views = self.views()
        return plan(self.demand.demand(now), views, self.settings), views

    def recommendations(self, now: float | None = None) -> dict[str, Any]:
        """``GET /v1/fleet/recommendations``: the plan with its numbers."""
        now = time.time() if now is None else now
        current, views = self.plan(now)
        config = self.config
        headroom = self.settings.headroom_percent
        return {
            "object": "fleet.recommendations",
            "enabled": config.enabled,
            "dry_run": config.dry_run,
            "generated_at": now,
            "settings": {
                "interval_seconds": config.interval_seconds,
                "window_seconds": config.window_seconds,
                "min_requests": config.min_requests,
                "backends_per_model": config.backends_per_model,
                "max_loads_per_cycle": config.max_loads_per_cycle,
                "hour_lookback_days": config.hour_lookback_days,
                "headroom_percent": self.settings.headroom_percent,
            },
            "recommendations": [
                {
                    "action": "load",
                    "model": load.model,
                    "backend": load.backend,
                    "reason": load.reason,
                    "model_bytes": load.model_bytes,
                    "memory_used_bytes": load.memory_used_bytes,
                    "memory_total_bytes": load.memory_total_bytes,
                }
                for load in current.loads
            ],
            "models": [
                {
                    "model": entry.demand.model,
                    "recent_requests": entry.demand.recent,
                    "same_hour_requests": entry.demand.same_hour,
                    "same_hour_average": round(entry.demand.same_hour_average, 3),
                    "in_demand": entry.in_demand,
                    "target": entry.target,
                    "loaded_on": list(entry.loaded_on),
                    "loading_on": list(entry.loading_on),
                    "available_on": list(entry.available_on),
                    "loads": list(entry.loads),
                    "skipped": [
                        {"backend": s.backend, "reason": s.reason, "detail": s.detail}
                        for s in entry.skipped
                    ],
                }
                for entry in current.models
            ],
            "backends": [
                {
                    "name": view.name,
                    "healthy": view.healthy,
                    "can_load": view.can_load,
                    "loaded": [e.id for e in view.models if e.state is ModelState.LOADED],
                    "loading": [e.id for e in view.models if e.state is ModelState.LOADING],
                    "in_flight": {m: n for m, n in sorted(view.in_flight.items()) if n > 0},
                    "memory_total_bytes": view.memory_total_bytes,
                    "memory_used_bytes": view.memory_used_bytes,
                    "memory_allowed_bytes": (
                        None
                        if view.memory_total_bytes is None
                        else int(view.memory_total_bytes * (1 - headroom / 100))
                    ),
                }
                for view in sorted(views, key=lambda v: v.name)
            ],
            "last_cycle": self.last_cycle,
        }

    def cycle(self) -> list[Operation]:
        """Plan once and, unless dry-run, start the loads; the operations started."""
        current, _ = self.plan()
        started: list[Operation] = []
        skipped: list[dict[str, str]] = []
        for load in current.loads:
            if self.config.dry_run:
                log.info(
                    "pre-warming (dry run) would load %s on %s: %s",
                    load.model,
                    load.backend,
                    load.reason,
                )
                continue
            try:
                operation = self.operations.start(
                    "load", load.model, load.backend, origin=Origin.PREWARM
                )
            except GatewayError as exc:
                # 409: someone else is at it; 400/404: the fleet changed since the reading.
                log.info(
                    "pre-warming skipped loading %s on %s: %s",
                    load.model,
                    load.backend,
                    exc.message,
                )
                skipped.append(
                    {"model": load.model, "backend": load.backend, "error": exc.code or ""}
                )
                continue
            log.info("pre-warming loads %s on %s: %s", load.model, load.backend, load.reason)
            started.append(operation)
        self.last_cycle = {
            "at": time.time(),
            "dry_run": self.config.dry_run,
            "recommended": len(current.loads),
            "started": [operation.id for operation in started],
            "skipped": skipped,
        }
        return started

    def start(self) -> None:
        """Run a cycle every interval in the background (only when enabled)."""
        if self.config.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="nexus-prewarm")

    async def stop(self) -> None:
        """Stop the background cycles (operations already started go on until Nexus stops)
        and save the hourly counts."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.sync()

    async def sync(self) -> None:
        """Save and read the hourly counts in the state store (``DemandLog.sync``)."""
        if self._store is None:
            return
        try:
            await self.demand.sync(self._store())
        except StateError as exc:
            if self._outage is not None:
                self._outage.failed("keep the pre-warming counts", exc)
        except Exception:  # a store bug must not end pre-warming for good
            log.exception("saving the pre-warming counts failed")

    async def _loop(self) -> None:
        while True:
            # First: the counts of previous days kept by earlier runs and other workers.
            await self.sync()
            await asyncio.sleep(self.config.interval_seconds)
            try:
                self.cycle()
            except Exception:  # a planner bug must not end pre-warming for good
                log.exception("pre-warming cycle failed")
