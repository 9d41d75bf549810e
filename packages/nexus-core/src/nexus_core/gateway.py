"""The Gateway facade: everything the server does, as an async Python API with no server needed."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, overload
from urllib.parse import urlsplit

from pydantic import ValidationError

from nexus_core import fastjson
from nexus_core.accounting import Accountant, usd
from nexus_core.adapters import (
    AdapterFactory,
    BackendStatus,
    Endpoint,
    ModelInfo,
    ResponseLimits,
    Timeouts,
)
from nexus_core.auth import ApiKey, KeyRing
from nexus_core.config import (
    AUTO_TYPE,
    BACKEND_NAME,
    BACKEND_NAME_RULE,
    BackendConfig,
    NexusConfig,
    StateBackend,
    validate_config,
)
from nexus_core.errors import GatewayError, model_not_found
from nexus_core.failover import Failover, ProxyResult, ProxyStream
from nexus_core.health import HealthChecker
from nexus_core.http import PROBE_DEADLINE_SECONDS, HttpClients
from nexus_core.observability import Monitor, RequestRecord
from nexus_core.quality import QualityTracker
from nexus_core.queueing import CapacityQueue, is_full
from nexus_core.registry import Backend, Registry
from nexus_core.routing import RequestNeeds, Route, Router, analyze
from nexus_core.sse import event_data
from nexus_core.state import (
    MemoryStore,
    StateError,
    StateStore,
    is_default_path,
    open_store,
    store_location,
)
from nexus_core.telemetry import Tracing

if TYPE_CHECKING:
    from nexus_core.discovery import DiscoverySource, DiscoverySourceFactory

log = logging.getLogger("nexus.gateway")

__all__ = ["Gateway", "ProxyResult", "ProxyStream"]

#: How often a worker of several catches up with keys and backends its siblings changed.
SYNC_SECONDS = 2.0
#: The state-store collection of backends added at run time.
BACKENDS_COLLECTION = "backends"
#: Rank of a backend type without a ``detect_rank`` attribute (lower is more specific).
DEFAULT_DETECT_RANK = 50


class Gateway:
    """One OpenAI-compatible entry point over many backends, usable in-process.

    ``async with Gateway(config) as gateway:`` starts health checks and discovery; the methods
    mirror the HTTP API (chat, completions, embeddings, models, backends).
    """

    def __init__(
        self,
        config: NexusConfig | Mapping[str, Any] | None = None,
        *,
        backend_types: Mapping[str, AdapterFactory] | None = None,
        discovery_sources: Mapping[str, DiscoverySourceFactory] | None = None,
        clients: HttpClients | None = None,
        state: StateStore | None = None,
        clock: Callable[[], float] = time.time,
        span_exporter: Any = None,
    ) -> None:
        if config is None:
            config = NexusConfig()
        elif not isinstance(config, NexusConfig):
            config = validate_config(config, source="Gateway(config)")
        self.config: NexusConfig = config
        self.registry = Registry()
        self.quality = QualityTracker(config.quality)
        #: Prices, spend and the monthly budget (``state``: where spend is kept, else ``[state]``).
        self.accountant = Accountant(
            config.routing.budget,
            config.pricing,
            state if state is not None else open_store(config.state, port=config.server.port),
            clock=clock,
        )
        self.router = Router(
            self.registry, config.routing, quality=self.quality, budget=self.accountant
        )
        self.router.health_interval = config.health_check.interval_seconds
        self.health = HealthChecker(self.registry, config.health_check)
        server = config.server
        # What is read from backends is bounded by [server]'s limits (an embedder's own clients
        # keep theirs); a probe may take as long as a health check allows, at least the default.
        self.clients = clients or HttpClients(
            limits=ResponseLimits(
                body=server.max_response_body_bytes,
                headers=server.max_response_header_bytes,
                event=server.max_stream_event_bytes,
            ),
            probe_deadline=max(PROBE_DEADLINE_SECONDS, config.health_check.timeout_seconds),
        )
        self._backend_types = dict(backend_types) if backend_types is not None else None
        self._discovery_sources = dict(discovery_sources) if discovery_sources is not None else None
        #: The discovery sources running now, by name (empty while discovery is off).
        self.discovery: dict[str, DiscoverySource] = {}
        self.timeouts = Timeouts(
            connect=server.connect_timeout_seconds,
            first_byte=server.first_byte_timeout_seconds,
            idle=server.idle_timeout_seconds,
        )
        self.request_timeout = server.request_timeout_seconds
        queue = config.queue
        #: Requests waiting for a backend slot when every candidate is at ``max_concurrent``.
        self.queue = CapacityQueue(
            enabled=queue.enabled, max_size=queue.max_size, max_wait=queue.max_wait_seconds
        )
        #: Metrics, stats, history and request logs.
        self.monitor = Monitor(
            self.registry,
            queue=self.queue,
            accountant=self.accountant,
            enabled=config.telemetry.metrics,
        )
        #: OpenTelemetry spans (``[telemetry]``; ``span_exporter`` turns it on, for tests).
        self.tracing = Tracing(config.telemetry, exporter=span_exporter)
        #: Gateway API keys and their rate limits (``[auth]``), and the admin key.
        self.keys = KeyRing(config.auth, self.accountant.store)
        #: One log line per failure burst of the state store, whoever noticed it.
        self.store_outage = self.keys.outage = self.accountant.outage
        self._token_counts: set[asyncio.Task[None]] = set()
        self.started_at = time.time()
        self._started = False
        #: Saved run-time backends already found unreadable (logged once).
        self._refused: set[tuple[str, str]] = set()
        self._undetected: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        #: How each request's routes are tried; rebuilt at ``start`` (``debug`` is read then).
        self.failover = self._failover()
        self.registry.subscribe(self._on_registry_event)

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def backend_types(self) -> Mapping[str, AdapterFactory]:
        """Backend types known to this gateway (from plugins unless given)."""
        if self._backend_types is None:
            from nexus_core import plugins

            self._backend_types = dict(plugins.backend_types())
        return self._backend_types

    async def start(self) -> None:
        """Add and probe the configured backends, keep probing them, start discovery and plugins."""
        if self._started:
            return
        self._started = True
        self.started_at = time.time()
        # The DEBUG lines of routing and failover cost a request nothing while off: the levels
        # are read here, once, not per request.
        self.router.debug = logging.getLogger("nexus.routing").isEnabledFor(logging.DEBUG)
        self.failover = self._failover(
            debug=logging.getLogger("nexus.failover").isEnabledFor(logging.DEBUG)
        )
        await self._start_accounting()
        self.keys.store = self.accountant.store
        await self.keys.load()
        await asyncio.gather(*(self._add_static(b) for b in self.config.backends))
        await self._restore_backends()
        if self.config.server.workers > 1:
            # Sibling workers change keys and run-time backends through the shared store.
            task = asyncio.get_running_loop().create_task(self._sync_loop())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        from nexus_core import plugins

        if self.config.discovery.enabled:
            await self._start_discovery()
        await plugins.call_startup(self)

    def _failover(self, *, debug: bool = False) -> Failover:
        """The failover settings every request shares (each attempt logged with ``debug``)."""
        return Failover(
            timeouts=self.timeouts,
            deadline_seconds=self.request_timeout,
            queue=self.queue,
            quality=self.quality,
            accountant=self.accountant,
            debug=debug,
        )

    async def _add_static(self, config: BackendConfig) -> None:
        """Add a configured backend; one whose server turns out not to fit its config (a cloud
        API without a key, detected only now) is left out with an error line, not a traceback."""
        try:
            await self.add_backend(config, source="static")
        except GatewayError as exc:
            log.error("backend %s not added: %s", config.name, exc.message)

    async def _start_accounting(self) -> None:
        try:
            await self.accountant.start()
        except StateError as exc:
            state = self.config.state
            if state.backend is not StateBackend.SQLITE or not is_default_path(state):
                raise
            # The default file cannot be used (a read-only home, say): serve, but say so loudly.
            log.error("%s; spend is kept in memory only and lost on restart", exc)
            self.accountant.store = MemoryStore()
            self.store_outage.kind = "memory"
            await self.accountant.start()
            return
        log.info(
            "spend, rate limits, keys and backends added at run time are kept %s",
            store_location(self.accountant.store),
        )

    async def _restore_backends(self, saved: Mapping[str, str] | None = None) -> None:
        """Add the backends added at run time before the last stop (kept in the state store)."""
        if saved is None:
            try:
                saved = await self.accountant.store.items(BACKENDS_COLLECTION)
            except Exception as exc:
                log.error("could not read the backends added at run time: %s", exc)
                return
        static_urls = {b.url for b in self.config.backends}

        async def restore(name: str, raw: str) -> None:
            renamed = False
            try:
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise TypeError("not a JSON object")
                url = data.get("url")
                if isinstance(url, str) and not _valid_name(data.get("name")):
                    # Saved by a version that took any name: give it the one its URL makes.
                    data["name"] = _name_from_url(url)
                    renamed = True
                config = BackendConfig(**data)
            except ValidationError as exc:
                self._refuse_saved(name, raw, _problems(exc))
                return
            except (ValueError, TypeError) as exc:
                self._refuse_saved(name, raw, str(exc))
                return
            if config.name in self.registry or config.url in static_urls:
                return  # the configuration wins
            refusal = self.key_env_refusal(config)
            if refusal is not None:  # the store may have been written by someone else
                log.error("backend %r saved in the state store: %s", name, refusal.message)
                return
            try:
                backend = await self.add_backend(config, source="admin")
            except GatewayError as exc:
                log.error("backend %r saved in the state store: %s", name, exc.message)
                return
            if renamed:
                log.warning(
                    "backend %r saved in the state store: the name is not valid (%s); restored as "
                    "%r",
                    name,
                    BACKEND_NAME_RULE,
                    backend.name,
                )
                await self.save_backend(backend)
                await self.accountant.store.delete(BACKENDS_COLLECTION, name)

        await asyncio.gather(*(restore(name, raw) for name, raw in saved.items()))

    def _refuse_saved(self, name: str, raw: str, problem: str) -> None:
        """Log a saved backend that cannot be restored, once per process (sync runs often)."""
        if (name, raw) in self._refused:
            return
        self._refused.add((name, raw))
        log.error("backend %r saved in the state store is refused: %s", name, problem)

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                await self.keys.sync()
                await self.sync_backends()
            except Exception as exc:  # keep serving with what is known
                self.store_outage.failed("catch up with the other workers", exc)

    async def sync_backends(self) -> None:
        """Add the run-time backends another worker added; drop the ones it removed."""
        saved = await self.accountant.store.items(BACKENDS_COLLECTION)
        for backend in list(self.registry):
            if backend.source == "admin" and backend.name not in saved:
                await self.remove_backend(backend.name)
        missing = {name: raw for name, raw in saved.items() if name not in self.registry}
        if missing:
            await self._restore_backends(missing)

    def key_env_refusal(self, config: BackendConfig) -> GatewayError | None:
        """Why a backend added at run time may not name its ``api_key_env`` (None: it may).

        Only variables the configured backends already use, or ``auth.allowed_api_key_envs``
        lists, and never one of ``[auth]``'s or ``[state]``'s: whoever may add a backend must
        not be able to send the value of any variable of this process to a URL of their choice.
        """
        wanted = config.api_key_env
        if wanted is None:
            return None
        auth = self.config.auth
        reserved = {key.key_env for key in auth.keys}
        reserved.update(n for n in (auth.admin_key_env, self.config.state.redis_url_env) if n)
        allowed = {b.api_key_env for b in self.config.backends if b.api_key_env} | set(
            auth.allowed_api_key_envs
        )
        if wanted in allowed and wanted not in reserved:
            return None
        return GatewayError(
            400,
            f"api_key_env '{wanted}' is not a key variable this server may give a backend added "
            "at run time: only the variables of the configured backends and those listed in "
            "auth.allowed_api_key_envs (never a gateway, admin or state-store secret)",
            param="api_key_env",
            code="api_key_env_not_allowed",
        )

    async def save_backend(self, backend: Backend) -> None:
        """Keep a backend added at run time in the state store, so a restart brings it back."""
        data = backend.config.model_dump(mode="json", exclude_defaults=True)
        data["name"] = backend.config.name
        data["url"] = backend.config.url
        data["type"] = backend.config.type
        await self.accountant.store.put(
            BACKENDS_COLLECTION, backend.name, json.dumps(data, separators=(",", ":"))
        )

    async def forget_backend(self, name: str) -> None:
        """Stop bringing a backend back after restarts."""
        await self.accountant.store.delete(BACKENDS_COLLECTION, name)

    async def _start_discovery(self) -> None:
        from nexus_core import plugins

        sources = self._discovery_sources
        if sources is None:
            sources = plugins.discovery_sources()
        for name, factory in sources.items():
            try:
                source = factory(self)
                await source.start()
            except Exception:  # one broken source must not stop the gateway or the others
                log.exception("discovery source %r failed to start; carrying on without it", name)
                continue
            self.discovery[name] = source

    async def stop(self) -> None:
        """Stop plugins, discovery and health checks, close adapters and HTTP clients."""
        if not self._started:
            return
        self._started = False
        from nexus_core import plugins

        for task in list(self._background):
            task.cancel()
        try:
            await plugins.call_shutdown(self)
        finally:
            for name, source in list(self.discovery.items()):
                try:
                    await source.stop()
                except Exception:
                    log.exception("discovery source %r failed to stop", name)
            self.discovery.clear()
            await self.health.stop()
            for backend in self.registry:
                await backend.adapter.close()
            await self.clients.aclose()
            await self.accountant.stop()
            await self.tracing.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- backends -----------------------------------------------------------------------------

    async def add_backend(
        self, backend: BackendConfig | Mapping[str, Any] | str, *, source: str = "api"
    ) -> Backend:
        """Register a backend (a config, a dict, or just a URL), probe it once, keep probing it.

        With type ``auto`` (the default) the server is asked what it is first.
        """
        if isinstance(backend, str):
            config = BackendConfig(name=_name_from_url(backend), url=backend)
        elif isinstance(backend, BackendConfig):
            config = backend
        else:
            config = BackendConfig(**backend)
        if config.name in self.registry:
            raise GatewayError(
                409, f"A backend named '{config.name}' exists already", code="backend_exists"
            )
        undetected = False
        if config.type == AUTO_TYPE:
            detected = await self.detect_type(config.url, api_key=config.api_key())
            undetected = detected is None
            config = config.model_copy(update={"type": detected or "generic"})
        factory = self.backend_types.get(config.type)
        if factory is None:
            known = ", ".join(sorted(self.backend_types)) or "none"
            raise GatewayError(
                400,
                f"Unknown backend type '{config.type}' for backend '{config.name}' "
                f"(installed types: {known})",
                param="type",
                code="unknown_backend_type",
            )
        _check_cloud(config, factory)
        entry = Backend(
            name=config.name,
            config=config,
            adapter=factory(config, self.clients),
            zone=config.zone_for(factory.is_cloud),
            is_cloud=factory.is_cloud,
            source=source,
        )
        if undetected:
            self._undetected.add(entry.name)
        self.registry.add(entry)
        self.registry.set_models(entry, ())  # what the config declares, before any probe
        await self.resume_backend(entry)
        return entry

    async def resume_backend(self, backend: Backend) -> None:
        """Probe a registered backend now and keep probing it (its counters are kept)."""
        await self.health.check(backend)
        if self.config.health_check.enabled:
            self.health.watch(backend)
        else:
            # Trusted as healthy: the one probe above only taught us its models.
            self.registry.set_status(backend, BackendStatus.HEALTHY, "health checks disabled")
            self.health.watch(backend, probe=False)

    async def suspend_backend(self, backend: Backend, reason: str) -> None:
        """Stop probing a backend and mark it ``unknown`` (not routable), keeping it registered.

        Requests already on it finish; ``resume_backend`` brings it back with its counters.
        """
        await self.health.unwatch(backend.name)
        backend.last_error = reason
        self.registry.set_status(backend, BackendStatus.UNKNOWN, reason)

    async def reconfigure_backend(self, backend: Backend, config: BackendConfig) -> None:
        """Swap a registered backend's config (URL, type...) and probe it again; counters stay."""
        factory = self.backend_types.get(config.type)
        if factory is None:
            raise GatewayError(
                400,
                f"Unknown backend type '{config.type}' for backend '{backend.name}'",
                param="type",
                code="unknown_backend_type",
            )
        _check_cloud(config, factory)
        old = backend.adapter
        backend.config = config
        backend.adapter = factory(config, self.clients)
        backend.is_cloud = factory.is_cloud
        backend.zone = config.zone_for(factory.is_cloud)
        backend.priority = config.priority
        backend.tier = config.tier
        backend.max_concurrent = config.max_concurrent
        backend.rerank()
        await old.close()
        await self.health.unwatch(backend.name)
        await self.resume_backend(backend)

    async def detect_type(self, url: str, *, api_key: str | None = None) -> str | None:
        """The most specific installed backend type that recognises the server at ``url``.

        Every type's ``detect`` runs at once (bounded by the probe timeout); among the types
        that answer yes, the lowest ``detect_rank`` wins (default 50, then by name), and
        ``generic`` only when nothing more specific does. None when nothing recognises it.
        """
        timeout = self.config.health_check.timeout_seconds

        async def check(name: str, factory: AdapterFactory) -> str | None:
            try:
                async with asyncio.timeout(timeout):
                    found = await factory.detect(url, self.clients, api_key=api_key)
            except Exception as exc:  # a detector that raises only means "not this type"
                log.debug("detect of %s as %s failed: %r", url, name, exc)
                return None
            return name if found else None

        types = self.backend_types
        answers = await asyncio.gather(*(check(name, factory) for name, factory in types.items()))
        matches = [name for name in answers if name is not None]
        if not matches:
            return None
        return min(
            matches,
            key=lambda name: (
                name == "generic",
                getattr(types[name], "detect_rank", DEFAULT_DETECT_RANK),
                name,
            ),
        )

    def _on_registry_event(self, event: str, backend: Backend) -> None:
        # A backend added while its server was down was typed generic; ask again once it is up.
        if (
            event == "status"
            and backend.status is BackendStatus.HEALTHY
            and backend.name in self._undetected
        ):
            self._undetected.discard(backend.name)
            task = asyncio.get_running_loop().create_task(self._redetect(backend))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _redetect(self, backend: Backend) -> None:
        detected = await self.detect_type(backend.config.url, api_key=backend.config.api_key())
        if detected is None or detected == backend.config.type:
            return
        if self.registry.get(backend.name) is not backend:
            return
        log.info("backend %s: detected type %s", backend.name, detected)
        try:
            await self.reconfigure_backend(
                backend, backend.config.model_copy(update={"type": detected})
            )
        except GatewayError as exc:
            # A server that turns out to be a cloud API its config does not fit (no key, or
            # forwarding the client's credentials) is not served as a local one either.
            log.error("backend %s: %s; not routed until its config is fixed", backend.name, exc)
            await self.suspend_backend(backend, exc.message)

    async def remove_backend(self, name: str) -> bool:
        """Remove a backend; requests already on it finish. False if there was none."""
        await self.health.unwatch(name)
        backend = self.registry.remove(name)
        if backend is None:
            return False
        await backend.adapter.close()
        return True

    def backends(self) -> list[dict[str, Any]]:
        """Every backend as a JSON-ready snapshot."""
        return [backend.snapshot() for backend in self.registry]

    # -- models and health --------------------------------------------------------------------

    def list_models(self, key: ApiKey | None = None) -> list[dict[str, Any]]:
        """Models on healthy backends, one entry per id, with capabilities and backends.

        Each alias of ``routing.aliases`` whose target is listed appears under its own name
        with ``alias_of``; an alias whose target is not listed does not appear, even when a
        backend lists a model of that name (requests for it follow the alias). ``key``: only
        the models that gateway key may use (its ``models`` globs).
        """
        merged: dict[str, dict[str, Any]] = {}
        healthy = BackendStatus.HEALTHY
        created = int(self.started_at)
        for backend in self.registry:
            if backend.status is not healthy:
                continue
            for model in backend.models.values():
                entry = merged.get(model.id)
                if entry is None:
                    entry = merged[model.id] = {
                        "id": model.id,
                        "object": "model",
                        "created": created,
                        "owned_by": model.owned_by or backend.type_name,
                        "context_length": model.context_length,
                        "capabilities": {
                            "vision": model.vision,
                            "tools": model.tools,
                            "json_mode": model.json_mode,
                            "embeddings": model.embeddings,
                        },
                        "backends": [],
                    }
                else:
                    _merge_capabilities(entry, model)
                entry["backends"].append(backend.name)
        entries = dict(merged)
        resolve = self.router.resolve
        for alias in self.config.routing.aliases:
            # Routing follows an alias before it looks for a model of that name.
            target = merged.get(resolve(alias))
            if target is None:
                entries.pop(alias, None)
            else:
                entries[alias] = {**target, "id": alias, "alias_of": target["id"]}
        listed = sorted(entries.values(), key=lambda m: str(m["id"]))
        if key is None:
            return listed
        return [entry for entry in listed if key.allows(str(entry["id"]))]

    def model_ids(self, key: ApiKey | None = None) -> list[str]:
        """The ids of ``list_models(key)``: what a 404 ``model_not_found`` offers instead."""
        return [str(entry["id"]) for entry in self.list_models(key)]

    def model_count(self) -> int:
        """``len(self.list_models())`` without building its entries: ``/health`` stays cheap."""
        healthy = BackendStatus.HEALTHY
        served: set[str] = set()
        for backend in self.registry:
            if backend.status is healthy:
                served.update(backend.models)
        ids = set(served)
        resolve = self.router.resolve
        for alias in self.config.routing.aliases:
            if resolve(alias) in served:
                ids.add(alias)
            else:
                ids.discard(alias)
        return len(ids)

    def get_model(self, model_id: str, key: ApiKey | None = None) -> dict[str, Any] | None:
        """One entry of ``list_models(key)``, or None."""
        for entry in self.list_models(key):
            if entry["id"] == model_id:
                return entry
        return None

    def _now_loaded(self, backend: Backend, info: ModelInfo) -> None:
        """Mark ``info`` loaded on ``backend`` (it just answered with it) until a probe says."""
        models = [
            dataclasses.replace(model, loaded=True) if model is info else model
            for model in backend.models.values()
        ]
        self.registry.set_models(backend, models)

    def health_summary(self) -> dict[str, Any]:
        """``healthy`` when every backend is (or there is none), ``degraded`` when some are,
        ``unhealthy`` when there are backends and none is.

        No backend is no failure: nothing is there to fail yet (a fresh ``nexus serve`` waiting
        for a local Ollama, discovery or ``nexus backends add``). Whether anything can be served
        is ``/health/ready``'s question (503 without a healthy backend).
        """
        counts = {status.value: 0 for status in BackendStatus}
        for backend in self.registry:
            counts[backend.status.value] += 1
        total = len(self.registry)
        healthy = counts["healthy"]
        if healthy == total:
            status = "healthy"
        elif healthy:
            status = "degraded"
        else:
            status = "unhealthy"
        from nexus_core import __version__

        return {
            "status": status,
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "backends": {"total": total, **counts},
            "models": self.model_count(),
        }

    # -- requests -----------------------------------------------------------------------------

    async def proxy(
        self,
        endpoint: Endpoint,
        body: bytes,
        *,
        data: Any = None,
        flexible: bool = False,
        priority_high: bool = False,
        record: RequestRecord | None = None,
    ) -> ProxyResult:
        """Route and forward one raw request body; raise ``GatewayError`` if it cannot be served.

        ``flexible``: the tier mode; the client sent ``X-Nexus-Flexible: true`` and not
        ``X-Nexus-Strict: true``. It never admits a backend below a policy's ``min_tier``.
        ``priority_high``: ``X-Nexus-Priority: high``; served first when the request has to wait
        in the queue because every planned backend is at its ``max_concurrent``.
        ``record``: what the server knows of the request (id, front door, client); the gateway
        completes it and hands it to ``monitor`` when the request ends (a stream: at its end).
        """
        if record is None:
            # In-process: an id of its own, so its history entry and log lines name it.
            record = RequestRecord(request_id=os.urandom(8).hex())
        record.begin(endpoint.value)
        try:
            try:
                result = await self._proxy(endpoint, body, data, flexible, priority_high, record)
            except StateError as exc:
                # A rate limit, a budget or a priced route's spend needs the store: refused,
                # never served unchecked.
                self.store_outage.failed("serve a request", exc, record.request_id)
                raise state_unavailable() from None
        except GatewayError as error:
            record.status = error.status
            record.error = error.code or error.type
            record.error_message = error.message
            record.failed_backends = error.failed_backends
            record.attempts = len(error.failed_backends)
            self.monitor.finish(record)
            raise
        except asyncio.CancelledError:
            record.status = 499
            record.error = "client_closed"
            self.monitor.finish(record)
            raise
        route = result.route
        backend = route.backend
        info = backend.models.get(route.model)
        if info is not None and info.loaded is False:
            # It answered, so the model is in memory now (servers load on demand): /api/ps
            # and routing's warm-first order know it before the next probe says so.
            self._now_loaded(backend, info)
        record.backend = backend.name
        record.served_model = route.model
        record.route_reason = result.route_reason
        record.status = result.status
        if result.attempts:
            record.failed_backends = tuple(a.backend for a in result.attempts)
        record.attempts = len(result.attempts) + 1
        if route.fallback:
            record.fallback_from = result.requested_model
        stream = result.stream
        if self.config.logging.enable_content_logging:
            record.content = (_clip(body), None if result.body is None else _clip(result.body))
        if stream is None:
            usage = result.data.get("usage") if isinstance(result.data, dict) else None
            if isinstance(usage, dict):
                _tokens(record, usage)
            _cost(record, result)
            self._count_tokens(record)
            self.monitor.finish(record)
        else:
            # As the client sees it: from the request's arrival to the first event (queue and
            # failed attempts included); quality keeps each backend's own.
            record.ttft = time.perf_counter() - record.started_perf
            stream.on_end = lambda ended: self._stream_ended(record, result, ended)
            record.open_stream = stream
        return result

    async def _admit(self, key: ApiKey, model: str) -> None:
        """The gateway key's allow-list, monthly budget and rate limits, before routing."""
        if not key.allows(model):
            raise GatewayError(
                403,
                f"The API key '{key.name}' may not use the model '{model}'",
                type="permission_error",
                param="model",
                code="model_not_allowed",
            )
        if key.monthly_budget_usd is not None:
            spent = await self.accountant.track_key(key.name)
            if spent >= round(key.monthly_budget_usd * 1e9):
                wait = math.ceil(self.accountant.seconds_to_rollover())
                raise GatewayError(
                    429,
                    f"The API key '{key.name}' has spent its monthly budget of "
                    f"${key.monthly_budget_usd:.2f}",
                    type="insufficient_quota",
                    code="key_budget_exceeded",
                    headers={"Retry-After": str(max(1, wait))},
                )
        delay = await self.keys.admit(key)
        if delay:
            raise GatewayError(
                429,
                f"The API key '{key.name}' is over its rate limit; retry in {delay:.1f} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(delay)))},
            )

    def _count_tokens(self, record: RequestRecord) -> None:
        """Take the answer's tokens from its key's tokens-per-minute bucket (in the background)."""
        key = record.api_key
        if key is None or key.tokens_per_minute is None:
            return
        tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        task = asyncio.get_running_loop().create_task(
            self.keys.used_tokens(key, tokens, record.request_id)
        )
        self._token_counts.add(task)
        task.add_done_callback(self._token_counts.discard)

    def _stream_ended(
        self, record: RequestRecord, result: ProxyResult, stream: ProxyStream
    ) -> None:
        record.open_stream = None
        if stream.usage is not None:
            _tokens(record, stream.usage)
        _cost(record, result)
        if stream.error is not None:
            record.error = "stream_broken"
            record.error_message = stream.error.message
        elif not stream.completed and record.error is None:
            record.error = "client_closed"
        self._count_tokens(record)
        self.monitor.finish(record)

    async def _proxy(
        self,
        endpoint: Endpoint,
        body: bytes,
        data: Any,
        flexible: bool,
        priority_high: bool,
        record: RequestRecord,
    ) -> ProxyResult:
        if data is None:
            try:
                data = fastjson.loads(body)
            except (ValueError, RecursionError) as exc:
                raise GatewayError(
                    400, f"The request body is not valid JSON: {exc}", code="invalid_json"
                ) from None
        needs = analyze(endpoint, data)
        model = needs.model
        # The client names the model: a record (history, logs) keeps a bounded part of it.
        record.model = model if len(model) <= MODEL_NAME_KEPT else model[:MODEL_NAME_KEPT] + "…"
        key = record.api_key
        if key is not None:
            await self._admit(key, needs.model)
        tracing = self.tracing
        if tracing.enabled:
            record.span = tracing.start_request(
                operation=_OPERATIONS[endpoint],
                model=needs.model,
                front_door=record.front_door,
                request_id=record.request_id,
                stream=needs.stream,
                request=data if isinstance(data, dict) else None,
                traceparent=record.traceparent,
            )
        accountant = self.accountant
        if accountant.blocks_all:
            raise _budget_exhausted(accountant)
        needs.flexible = flexible
        if needs.stream and endpoint is Endpoint.EMBEDDINGS:
            needs.stream = False
        record.stream = needs.stream
        try:
            routes = self.router.plan(needs)
        except GatewayError as error:
            if self.router.debug:
                self.router.explain_refusal(needs, error, record.request_id)
            if error.code == "model_not_found":
                # The models this caller could use instead: /v1/models's list, aliases included.
                raise model_not_found(model, self.model_ids(key)) from None
            raise
        if self.router.debug:
            self.router.explain(needs, routes, record.request_id)
        # Full backends are ordered last, so a first route with room means no wait (the hot path).
        if routes and is_full(routes[0].backend) and all(is_full(r.backend) for r in routes):
            routes = await self._wait_for_slot(needs, routes, priority_high)
        result = await self.failover.execute(routes, endpoint, body, needs, data, record)
        if accountant.limit is not None:
            result.budget_headers = accountant.headers()
        return result

    async def _wait_for_slot(
        self, needs: RequestNeeds, routes: list[Route], high: bool
    ) -> list[Route]:
        """Queue until a planned backend has a free slot; then plan again (health may change)."""
        seq: int | None = None
        deadline: float | None = None
        while True:
            backends = [r.backend for r in routes]
            seq, deadline = await self.queue.wait(backends, high=high, seq=seq, deadline=deadline)
            try:
                routes = self.router.plan(needs)
            except BaseException:
                self.queue.pass_on(backends)  # the wake-up this request got is not used
                raise
            if not routes or not all(is_full(r.backend) for r in routes):
                return routes

    @overload
    async def chat_completions(
        self, request: Mapping[str, Any], *, stream: Literal[False] = False
    ) -> dict[str, Any]: ...

    @overload
    async def chat_completions(
        self, request: Mapping[str, Any], *, stream: Literal[True]
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def chat_completions(
        self, request: Mapping[str, Any], *, stream: bool = False
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """A chat completion: the response dict, or (``stream=True``) an iterator of chunks."""
        return await self._call(Endpoint.CHAT, request, stream)

    @overload
    async def completions(
        self, request: Mapping[str, Any], *, stream: Literal[False] = False
    ) -> dict[str, Any]: ...

    @overload
    async def completions(
        self, request: Mapping[str, Any], *, stream: Literal[True]
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def completions(
        self, request: Mapping[str, Any], *, stream: bool = False
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """A legacy text completion, whole or streamed."""
        return await self._call(Endpoint.COMPLETIONS, request, stream)

    async def embeddings(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Embeddings for a string or a list of strings."""
        result = await self._call(Endpoint.EMBEDDINGS, request, False)
        assert isinstance(result, dict)
        return result

    async def _call(
        self, endpoint: Endpoint, request: Mapping[str, Any], stream: bool
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        payload = dict(request)
        if stream:
            payload["stream"] = True
        else:
            payload.pop("stream", None)
        body = json.dumps(payload, separators=(",", ":")).encode()
        result = await self.proxy(endpoint, body, data=payload)
        if result.stream is not None:
            return _chunks(result.stream)
        data = result.data if result.data is not None else fastjson.loads(result.body or b"null")
        if not isinstance(data, dict):
            raise GatewayError(502, "Backend answered something other than a JSON object")
        return data


#: Characters of a requested model's name kept in its request record (history and logs).
MODEL_NAME_KEPT = 256
#: How much of a body content logging keeps.
CONTENT_LOG_LIMIT = 4096


def _clip(body: bytes) -> str:
    text = body[:CONTENT_LOG_LIMIT].decode("utf-8", errors="replace")
    return text + ("..." if len(body) > CONTENT_LOG_LIMIT else "")


#: GenAI operation names of the endpoints.
_OPERATIONS = {
    Endpoint.CHAT: "chat",
    Endpoint.COMPLETIONS: "text_completion",
    Endpoint.EMBEDDINGS: "embeddings",
}


def _tokens(record: RequestRecord, usage: Mapping[str, Any]) -> None:
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if isinstance(prompt, int):
        record.prompt_tokens = prompt
    if isinstance(completion, int):
        record.completion_tokens = completion


def _cost(record: RequestRecord, result: ProxyResult) -> None:
    charge = result.charge
    if charge is not None and charge.settled is not None:
        record.cost_usd = usd(charge.settled)


#: ``Retry-After`` of a request refused because the state store fails.
STATE_RETRY_AFTER_SECONDS = 5


def state_unavailable(
    needs: str = "a rate limit, a budget or the spend of a priced route",
) -> GatewayError:
    """503 ``state_unavailable``: the state store fails and the request ``needs`` it.

    The store's own error (its address, the file's path) goes to the log, not to the client.
    """
    return GatewayError(
        503,
        f"The gateway's state store is not answering and this request needs it ({needs}); "
        "it is refused, not served unchecked. Retry later.",
        type="service_unavailable",
        code="state_unavailable",
        headers={"Retry-After": str(STATE_RETRY_AFTER_SECONDS)},
    )


def _budget_exhausted(accountant: Accountant) -> GatewayError:
    wait = math.ceil(accountant.seconds_to_rollover())
    summary = accountant.summary()
    return GatewayError(
        503,
        f"The monthly budget of ${summary['limit_usd']:.2f} is spent "
        f"(${summary['spent_usd']:.4f}) and routing.budget.hard_limit_action is block_all: "
        "no request is served until the month rolls over (00:00 UTC on the 1st)",
        type="service_unavailable",
        code="budget_exceeded",
        details={"budget": summary},
        headers={"Retry-After": str(max(1, wait))},
    )


def _merge_capabilities(entry: dict[str, Any], model: ModelInfo) -> None:
    context = model.context_length
    if context is not None:
        current = entry["context_length"]
        entry["context_length"] = context if current is None else max(current, context)
    caps = entry["capabilities"]
    for key in ("vision", "tools", "json_mode", "embeddings"):
        value = getattr(model, key)
        if value is True or caps[key] is None:
            caps[key] = value


async def _chunks(stream: ProxyStream) -> AsyncIterator[dict[str, Any]]:
    """Decode relayed SSE events into chunk dicts; an error event raises ``GatewayError``."""
    try:
        async for event in stream:
            data = event_data(event)
            if not data or data == b"[DONE]":
                continue
            chunk = fastjson.loads(data)
            if isinstance(chunk, dict) and "error" in chunk and len(chunk) == 1:
                error = chunk["error"]
                raise GatewayError(
                    502,
                    str(error.get("message", "stream failed")),
                    type=str(error.get("type", "upstream_error")),
                    code=None if error.get("code") is None else str(error.get("code")),
                )
            yield chunk
    finally:
        await stream.aclose()


def _check_cloud(config: BackendConfig, factory: AdapterFactory) -> None:
    """400 when a backend of a cloud adapter lacks its key or would forward client credentials."""
    if not factory.is_cloud:
        return
    problems = config.cloud_problems()
    if problems:
        key, message = problems[0]
        raise GatewayError(
            400,
            f"Invalid backend '{config.name}': {key}: {message}",
            param=key,
            code="invalid_backend",
        )


#: Runs of characters a backend name may not hold (``BACKEND_NAME``).
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._~-]+")


def _problems(exc: ValidationError) -> str:
    """A validation error on one line: ``name: must be ...; url: ...``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: "
        f"{error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors()
    )


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and BACKEND_NAME.fullmatch(name) is not None


def _name_from_url(url: str) -> str:
    """A valid backend name from a URL: ``http://10.0.0.5:11434/v1`` -> ``10.0.0.5-11434``.

    An IPv6 host gets ``ip6-`` (``http://[::1]:8000`` -> ``ip6-1-8000``); any other character a
    name may not hold becomes ``-``; a name longer than 64 ends with a digest of the URL.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        host, port = "", None
    text = host if port is None else f"{host}-{port}"
    name = _NOT_IN_NAME.sub("-", text).strip("-._~")
    if ":" in host:
        name = f"ip6-{name}"
    if len(name) > 64:
        digest = hashlib.sha1(url.encode("utf-8", "replace")).hexdigest()[:8]
        name = f"{name[:55].rstrip('-._~')}-{digest}"
    return name if _valid_name(name) else "backend"
