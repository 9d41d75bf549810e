"""A gateway's life cycle: ``start`` (accounting, backends, sync, discovery, plugins), ``stop``."""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Self, cast

from nexus_core.config import StateBackend
from nexus_core.gateway.backends import BackendManagement

if TYPE_CHECKING:
    from nexus_core.gateway.facade import Gateway
from nexus_core.state import MemoryStore, StateError, is_default_path, store_location

log = logging.getLogger("nexus.gateway")

__all__ = ["Lifecycle"]

#: How often a worker of several, or a replica sharing Redis, catches up with the keys and
#: run-time backends the others changed.
SYNC_SECONDS = 2.0


class Lifecycle(BackendManagement):
    """``start``/``stop`` and ``async with``: what runs between them."""

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
        self.fleet.start()
        self.demand.start()
        self.prewarmer.start()
        await asyncio.gather(*(self._add_static(b) for b in self.config.backends))
        await self._restore_backends()
        if self.config.server.workers > 1 or self.config.state.backend is StateBackend.REDIS:
            # Sibling workers, and replicas sharing Redis, change keys and run-time backends
            # through the shared store: a bounded catch-up, off the request path.
            task = asyncio.get_running_loop().create_task(self._sync_loop())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        from nexus_core import plugins

        if self.config.discovery.enabled:
            await self._start_discovery()
        await plugins.call_startup(self)

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

    async def _start_discovery(self) -> None:
        from nexus_core import plugins

        sources = self._discovery_sources
        if sources is None:
            sources = plugins.discovery_sources()
        for name, factory in sources.items():
            try:
                # Sources are handed the whole gateway, of which this is a part.
                source = factory(cast("Gateway", self))
                await source.start()
            except Exception:  # one broken source must not stop the gateway or the others
                log.exception("discovery source %r failed to start; carrying on without it", name)
                continue
            self.discovery[name] = source

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                await self.keys.sync()
                await self.sync_backends()
            except Exception as exc:  # keep serving with what is known
                self.store_outage.failed("catch up with the other workers", exc)

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
            await self.prewarmer.stop()
            await self.demand.stop()
            await self.operations.stop()
            await self.fleet.stop()
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
