"""What a gateway is built from (registry, router, health, accounting, clients, queue,
monitor, tracing, keys), wired once; the other modules of this package add its behaviour."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from nexus_core.accounting import Accountant
from nexus_core.adapters import AdapterFactory, ResponseLimits, Timeouts
from nexus_core.auth import KeyRing
from nexus_core.config import NexusConfig, validate_config
from nexus_core.failover import Failover
from nexus_core.fleet import DemandLog, FleetInventory, Operations, Prewarmer
from nexus_core.health import HealthChecker
from nexus_core.http import PROBE_DEADLINE_SECONDS, HttpClients
from nexus_core.observability import Monitor
from nexus_core.quality import QualityTracker
from nexus_core.queueing import CapacityQueue
from nexus_core.registry import Backend, Registry
from nexus_core.routing import Router
from nexus_core.state import StateStore, open_store
from nexus_core.telemetry import Tracing

if TYPE_CHECKING:
    from nexus_core.discovery import DiscoverySource, DiscoverySourceFactory

__all__ = ["GatewayComponents"]


class GatewayComponents:
    """The gateway's parts and settings, built from its config (``Gateway(config)`` runs this)."""

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
        #: What every backend could serve and in which state (read in the background).
        self.fleet = FleetInventory(
            self.registry,
            interval=config.health_check.interval_seconds,
            timeout=max(PROBE_DEADLINE_SECONDS, config.health_check.timeout_seconds),
        )
        fleet = config.fleet
        #: Loads, unloads and migrations (the admin API's; pre-warming's later).
        self.operations = Operations(
            self.registry,
            self.fleet,
            fleet,
            drain_timeout=(
                fleet.drain_timeout_seconds
                if fleet.drain_timeout_seconds is not None
                else server.drain_timeout_seconds
            ),
            probe=self.health.check,
        )
        prewarm = fleet.prewarm
        by_model = self.monitor.by_model
        #: Requests per model over time, for pre-warming (sampled from the monitor's totals).
        self.demand = DemandLog(
            window_seconds=prewarm.window_seconds,
            lookback_days=prewarm.hour_lookback_days,
            totals=lambda: [(model, series.requests) for model, series in by_model.items()],
        )
        #: Keeps the models in demand loaded (``[fleet.prewarm]``); its plan is always readable.
        self.prewarmer = Prewarmer(
            self.registry,
            self.fleet,
            self.operations,
            self.demand,
            prewarm,
            headroom_percent=fleet.headroom_percent,
            store=lambda: self.accountant.store,
            outage=self.store_outage,
        )
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

    def _on_registry_event(self, event: str, backend: Backend) -> None:
        """A backend was added, removed or changed (``BackendManagement`` acts on it)."""
