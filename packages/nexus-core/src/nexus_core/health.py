"""The health loop: one probing task per backend, with jitter, thresholds and a loading state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from nexus_core.adapters import BackendStatus, ProbeResult
from nexus_core.config import HealthCheckConfig
from nexus_core.registry import Backend, Registry

log = logging.getLogger("nexus.health")

#: Spread probes over +/- this fraction of the interval so backends are not probed in lockstep.
JITTER = 0.1


class HealthChecker:
    """Probes every backend on its own schedule and applies what it learns to the registry."""

    def __init__(self, registry: Registry, config: HealthCheckConfig) -> None:
        self.registry = registry
        self.config = config
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._load_tasks: dict[str, asyncio.Task[None]] = {}

    async def check(self, backend: Backend) -> ProbeResult:
        """Probe one backend now and apply the result."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                result = await backend.adapter.probe()
        except TimeoutError:
            result = ProbeResult(
                BackendStatus.UNHEALTHY,
                detail=f"probe timed out after {self.config.timeout_seconds:g} s",
            )
        except Exception as exc:  # an adapter bug must not kill the loop
            log.exception("probe of %s raised", backend.name)
            result = ProbeResult(BackendStatus.UNHEALTHY, detail=f"probe failed: {exc!r}")
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.apply(backend, result, elapsed_ms)
        return result

    def apply(self, backend: Backend, result: ProbeResult, elapsed_ms: float) -> None:
        """Update status (with thresholds), models, load and latency from one probe."""
        backend.last_checked = time.time()
        registry = self.registry
        if result.status is BackendStatus.HEALTHY:
            backend.consecutive_successes += 1
            backend.consecutive_failures = 0
            backend.last_error = None
            backend.observe_latency(elapsed_ms)
            registry.set_models(backend, result.models)
            if result.load is not None:
                backend.set_load(result.load)
            backend.version = result.version or backend.version
            if backend.status is BackendStatus.DRAINING:
                return
            recovering = backend.status is BackendStatus.UNHEALTHY
            if not recovering or backend.consecutive_successes >= self.config.recovery_threshold:
                registry.set_status(backend, BackendStatus.HEALTHY)
            return
        backend.consecutive_successes = 0
        backend.last_error = result.detail
        if result.models:
            registry.set_models(backend, result.models)
        if result.status is BackendStatus.LOADING:
            backend.consecutive_failures = 0
            if backend.status is not BackendStatus.DRAINING:
                registry.set_status(backend, BackendStatus.LOADING, result.detail)
            return
        backend.consecutive_failures += 1
        if backend.status is BackendStatus.DRAINING:
            return
        if (
            backend.status is not BackendStatus.HEALTHY
            or backend.consecutive_failures >= self.config.failure_threshold
        ):
            registry.set_status(backend, BackendStatus.UNHEALTHY, result.detail)

    def watch(self, backend: Backend, *, probe: bool = True) -> None:
        """Start the periodic tasks of one backend: probes, and load reads if it reports load."""
        loop = asyncio.get_running_loop()
        if probe and backend.name not in self._tasks:
            self._tasks[backend.name] = loop.create_task(
                self._loop(backend), name=f"nexus-health-{backend.name}"
            )
        if getattr(backend.adapter, "load", None) is not None and backend.name not in (
            self._load_tasks
        ):
            self._load_tasks[backend.name] = loop.create_task(
                self._load_loop(backend), name=f"nexus-load-{backend.name}"
            )

    async def unwatch(self, name: str) -> None:
        """Stop probing one backend."""
        for tasks in (self._tasks, self._load_tasks):
            task = tasks.pop(name, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def stop(self) -> None:
        """Stop every probe task."""
        for name in {*self._tasks, *self._load_tasks}:
            await self.unwatch(name)

    async def read_load(self, backend: Backend) -> None:
        """Ask a backend for its load now (adapters with an optional ``load()`` method)."""
        reader = getattr(backend.adapter, "load", None)
        if reader is None:
            return
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                signal = await reader()
        except Exception as exc:  # load is advisory: a failure only means "unknown"
            log.debug("load read of %s failed: %r", backend.name, exc)
            signal = None
        backend.set_load(signal)

    async def _load_loop(self, backend: Backend) -> None:
        interval = self.config.load_interval_seconds
        while True:
            await asyncio.sleep(interval * random.uniform(1 - JITTER, 1 + JITTER))
            if self.registry.get(backend.name) is not backend:
                return
            if backend.status is BackendStatus.HEALTHY:
                await self.read_load(backend)

    async def _loop(self, backend: Backend) -> None:
        interval = self.config.interval_seconds
        while True:
            await asyncio.sleep(interval * random.uniform(1 - JITTER, 1 + JITTER))
            if self.registry.get(backend.name) is not backend:
                return
            await self.check(backend)
