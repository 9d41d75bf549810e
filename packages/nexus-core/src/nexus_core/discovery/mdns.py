"""The built-in discovery source: inference servers found on the local network over mDNS (DNS-SD).

``MdnsDiscovery`` is the built-in discovery source (plugin ``builtin:mdns``). It browses every
``[discovery] service_types`` entry with zeroconf's asyncio browser, off the request path, and
keeps what it finds in the gateway's registry:

- a resolved service becomes a backend named after its instance (``GPU Box._ollama._tcp.local.``
  -> ``gpu-box``, source ``mdns``), ``unknown`` until its first healthy probe;
- its URL is ``http://<address>:<port><api_path>``, IPv4 preferred, IPv6 bracketed. TXT
  ``api_path`` is the base path adapters add their own paths to (``/v1`` is never doubled);
- its type is TXT ``type``, else the service type when that names a backend type
  (``_ollama._tcp`` -> ``ollama``), else what probing the server finds (``Gateway.detect_type``);
- a backend known otherwise (configured, added through the API) at the same address wins;
- a withdrawn service is ``unknown`` (not routable) at once and removed after
  ``grace_period_seconds`` unless it comes back, in which case the same backend object, with its
  name and counters, is probed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zeroconf
from pydantic import ValidationError
from zeroconf import InterfaceChoice, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from nexus_core.config import AUTO_TYPE, BackendConfig
from nexus_core.discovery.announcements import (
    SOURCE,
    Announcement,
    backend_name,
    parse_service,
    same_server,
)
from nexus_core.errors import GatewayError

if TYPE_CHECKING:
    from nexus_core.gateway import Gateway
    from nexus_core.registry import Backend

log = logging.getLogger("nexus.discovery")

__all__ = ["MdnsDiscovery", "MdnsUnavailable", "open_zeroconf"]

#: How long one service may take to resolve (address, port, TXT) before it is skipped.
RESOLVE_TIMEOUT_MS = 3000
#: Services ignored past ``discovery.max_services`` are logged at most this often.
IGNORED_LOG_SECONDS = 60.0
# Errors that mean "no multicast here" (no interface, no such address, no route...).
_MDNS_ERRORS = (OSError, RuntimeError, zeroconf.Error)


class MdnsUnavailable(Exception):
    """mDNS cannot run here: no usable interface for multicast, or the address is not ours."""


@dataclass(eq=False)
class _Service:
    """One mDNS service instance as discovery tracks it (kept for the life of the source)."""

    instance: str
    service_type: str
    announcement: Announcement | None = None
    #: The backend name given to it, kept so that it comes back under the same name.
    name: str | None = None
    backend: Backend | None = None
    #: Being added right now: its name and address are taken.
    adding: bool = False
    #: The name of the backend that serves the same address instead of this service.
    shadowed_by: str | None = None
    withdrawn: bool = False
    removal: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def state(self) -> str:
        if self.shadowed_by is not None:
            return "shadowed"
        if self.backend is None:
            return "adding" if self.adding else "gone"
        return "withdrawn" if self.withdrawn else "active"


class MdnsDiscovery:
    """Browses DNS-SD service types and keeps the backends they announce in the registry."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config.discovery
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._services: dict[str, _Service] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        #: Services ignored past ``max_services`` since the last warning, and when it was.
        self._ignored = 0
        self._ignored_logged = -IGNORED_LOG_SECONDS

    async def start(self) -> None:
        """Start browsing; without multicast, log one warning and do nothing."""
        types = self.config.service_types
        if not types:
            log.info("mDNS discovery: no service types to browse")
            return
        where = ", ".join(self.config.interfaces) or "every IPv4 interface"
        try:
            self._zeroconf = open_zeroconf(self.config.interfaces)
            self._browser = AsyncServiceBrowser(
                self._zeroconf.zeroconf, types, handlers=[self._on_service_state_change]
            )
        except (MdnsUnavailable, *_MDNS_ERRORS) as exc:
            log.warning(
                "mDNS discovery is unavailable on %s (%s): no backend will be discovered; "
                "configured backends work as usual. Multicast may be blocked here (in Docker, "
                "use --network host); set discovery.enabled = false to silence this.",
                where,
                exc,
            )
            await self._close_zeroconf()
            return
        self._running = True
        self.gateway.registry.subscribe(self._on_registry_event)
        log.info("mDNS discovery: browsing %s on %s", ", ".join(types), where)

    async def stop(self) -> None:
        """Stop browsing and every pending resolution or removal."""
        self._running = False
        if self._browser is not None:
            browser, self._browser = self._browser, None
            with contextlib.suppress(*_MDNS_ERRORS):
                await browser.async_cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_zeroconf()

    def services(self) -> list[dict[str, Any]]:
        """Every service seen, JSON-ready: instance, URL, type, backend name and state."""
        out = []
        for service in self._services.values():
            announcement = service.announcement
            out.append(
                {
                    "instance": service.instance,
                    "service_type": service.service_type,
                    "url": announcement.url if announcement else None,
                    "type": announcement.type if announcement else None,
                    "models": list(announcement.models) if announcement else [],
                    "version": announcement.version if announcement else None,
                    "backend": service.name,
                    "state": service.state(),
                    "shadowed_by": service.shadowed_by,
                }
            )
        return out

    async def _close_zeroconf(self) -> None:
        if self._zeroconf is not None:
            instance, self._zeroconf = self._zeroconf, None
            with contextlib.suppress(*_MDNS_ERRORS):
                await instance.async_close()

    # -- events ----------------------------------------------------------------------------------

    def _on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if not self._running:
            return
        if state_change is ServiceStateChange.Removed:
            self._spawn(self._withdrawn(name, service_type))
        else:  # Added, or Updated (new TXT or address)
            self._spawn(self._announced(name, service_type))

    def _on_registry_event(self, event: str, backend: Backend) -> None:
        if not self._running:
            return
        if event == "added" and backend.source != SOURCE:
            # Configured or added by hand after we found the same server: it wins.
            for service in list(self._services.values()):
                found, announcement = service.backend, service.announcement
                if found is None or found is backend or announcement is None:
                    continue
                if same_server(backend.config.url, announcement):
                    self._spawn(self._give_way(service, backend.name))
        elif event == "removed" and any(
            service.shadowed_by == backend.name for service in self._services.values()
        ):
            self._spawn(self._reconsider(backend.name))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("mDNS discovery task failed", exc_info=task.exception())

    def _service(self, name: str, service_type: str) -> _Service | None:
        """The tracked service of ``name``; None when ``max_services`` are tracked already."""
        key = name.lower()
        service = self._services.get(key)
        if service is None:
            if len(self._services) >= self.config.max_services and not self._make_room():
                self._ignored += 1
                now = time.monotonic()
                if now - self._ignored_logged >= IGNORED_LOG_SECONDS:
                    log.warning(
                        "mDNS: %d service(s) ignored: discovery.max_services = %d are tracked "
                        "already (a flood of announcements, or raise the setting)",
                        self._ignored,
                        self.config.max_services,
                    )
                    self._ignored = 0
                    self._ignored_logged = now
                return None
            service = self._services[key] = _Service(name, service_type)
        return service

    def _make_room(self) -> bool:
        """Forget the oldest tracked service that is no backend and not being worked on."""
        for key, service in self._services.items():
            if service.backend is None and not service.adding and not service.lock.locked():
                del self._services[key]
                return True
        return False

    async def _announced(self, name: str, service_type: str) -> None:
        service = self._service(name, service_type)
        if service is None:
            return
        async with service.lock:
            announcement = await self._resolve(name, service_type)
            if announcement is None:
                return
            service.announcement = announcement
            await self._apply(service)

    async def _resolve(self, name: str, service_type: str) -> Announcement | None:
        assert self._zeroconf is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
            log.info("mDNS service %r did not resolve; skipped until it announces again", name)
            return None
        try:
            return parse_service(
                instance=name,
                service_type=service_type,
                addresses=info.parsed_scoped_addresses(),
                port=info.port,
                properties=info.properties,
                host_name=info.server,
                known_types=self.gateway.backend_types,
            )
        except ValueError as exc:
            log.warning("mDNS service %r skipped: %s", name, exc)
            return None

    async def _apply(self, service: _Service) -> None:
        """Make the registry match what ``service`` announces (its lock is held)."""
        announcement = service.announcement
        assert announcement is not None
        registry = self.gateway.registry
        backend = service.backend
        if backend is not None and registry.get(backend.name) is backend:
            await self._refresh(service, backend, announcement)
            return
        service.backend = None
        owner = self._owner(service, announcement)
        if owner is not None:
            if service.shadowed_by != owner:
                log.info(
                    "mDNS service %r at %s ignored: backend %r serves the same address",
                    service.instance,
                    announcement.url,
                    owner,
                )
            service.shadowed_by = owner
            return
        service.shadowed_by = None
        name = self._name_for(service, announcement)
        try:
            config = BackendConfig(
                name=name, url=announcement.url, type=announcement.type or AUTO_TYPE
            )
        except ValidationError as exc:
            log.warning("mDNS service %r skipped: %s", service.instance, exc)
            return
        hint = f"; says it serves {', '.join(announcement.models)}" if announcement.models else ""
        log.info(
            "mDNS: found %r at %s (type %s%s): backend %s",
            service.instance,
            announcement.url,
            announcement.type or "to be detected",
            hint,
            name,
        )
        service.name = name
        service.adding = True
        try:
            added = await self.gateway.add_backend(config, source=SOURCE)
        except GatewayError as exc:
            log.warning("mDNS service %r not added: %s", service.instance, exc.message)
            return
        finally:
            service.adding = False
        service.backend = added
        added.version = added.version or announcement.version

    async def _refresh(
        self, service: _Service, backend: Backend, announcement: Announcement
    ) -> None:
        """A known service announced again: back from withdrawal, moved, or new TXT."""
        if service.removal is not None:
            service.removal.cancel()
            service.removal = None
        was_withdrawn, service.withdrawn = service.withdrawn, False
        kind = announcement.type or backend.type_name
        if announcement.url != backend.config.url or kind != backend.type_name:
            log.info("backend %s: mDNS now says %s (type %s)", backend.name, announcement.url, kind)
            config = backend.config.model_copy(update={"url": announcement.url, "type": kind})
            await self.gateway.reconfigure_backend(backend, config)
        elif was_withdrawn:
            log.info("backend %s: back on mDNS; probing it again", backend.name)
            await self.gateway.resume_backend(backend)
        if announcement.version:
            backend.version = backend.version or announcement.version

    async def _withdrawn(self, name: str, service_type: str) -> None:
        service = self._services.get(name.lower())
        if service is None:
            return
        async with service.lock:
            backend = service.backend
            if backend is None or self.gateway.registry.get(backend.name) is not backend:
                # Never added (shadowed, unresolvable) or removed by someone else: forget it.
                service.backend = None
                service.shadowed_by = None
                service.announcement = None
                return
            if service.withdrawn:
                return
            service.withdrawn = True
            grace = self.config.grace_period_seconds
            await self.gateway.suspend_backend(
                backend, f"withdrawn from mDNS; removed in {grace:g} s unless it comes back"
            )
            service.removal = self._spawn(self._remove_later(service, backend, grace))

    async def _remove_later(self, service: _Service, backend: Backend, grace: float) -> None:
        await asyncio.sleep(grace)
        async with service.lock:
            if not service.withdrawn or service.backend is not backend:
                return
            service.removal = None
            service.backend = None
            service.withdrawn = False
            service.announcement = None
            if self.gateway.registry.get(backend.name) is backend:
                log.info(
                    "backend %s removed: its mDNS service has been gone for %g s",
                    backend.name,
                    grace,
                )
                # The registry's "removed" event gives services hidden behind it their chance.
                await self.gateway.remove_backend(backend.name)

    async def _give_way(self, service: _Service, owner: str) -> None:
        async with service.lock:
            backend = service.backend
            if backend is None or self.gateway.registry.get(backend.name) is not backend:
                return
            log.info(
                "backend %s (from mDNS) removed: backend %r serves the same address",
                backend.name,
                owner,
            )
            if service.removal is not None:
                service.removal.cancel()
                service.removal = None
            service.backend = None
            service.withdrawn = False
            service.shadowed_by = owner
            await self.gateway.remove_backend(backend.name)

    async def _reconsider(self, gone: str) -> None:
        """Services hidden behind backend ``gone`` get their chance now that it has left."""
        for service in list(self._services.values()):
            if service.shadowed_by != gone:
                continue
            async with service.lock:
                if service.shadowed_by == gone and service.announcement is not None:
                    service.shadowed_by = None
                    await self._apply(service)

    # -- names and precedence ------------------------------------------------------------------

    def _owner(self, service: _Service, announcement: Announcement) -> str | None:
        """The backend (or service being added) that already serves the announced address."""
        for backend in self.gateway.registry:
            if backend is not service.backend and same_server(backend.config.url, announcement):
                return backend.name
        for other in self._services.values():
            claimed = other.announcement if other is not service and other.adding else None
            if claimed is not None and other.name and same_server(claimed.url, announcement):
                return other.name
        return None

    def _name_for(self, service: _Service, announcement: Announcement) -> str:
        """The name it had before if free, else one from its label; stable for a given fleet."""
        taken = {backend.name for backend in self.gateway.registry}
        taken |= {
            s.name for s in self._services.values() if s is not service and s.adding and s.name
        }
        base = backend_name(announcement.label)
        kind = backend_name(announcement.service_type.split(".", 1)[0])
        digest = hashlib.sha1(service.instance.lower().encode()).hexdigest()[:6]
        for candidate in (service.name, base, f"{base}-{kind}", f"{base}-{digest}"):
            if candidate and candidate not in taken:
                return candidate
        number = 2
        while f"{base}-{digest}-{number}" in taken:
            number += 1
        return f"{base}-{digest}-{number}"


def open_zeroconf(interfaces: Sequence[str] = ()) -> AsyncZeroconf:
    """An ``AsyncZeroconf`` on the given local addresses (empty: every IPv4 interface)."""
    try:
        return AsyncZeroconf(interfaces=list(interfaces) if interfaces else InterfaceChoice.All)
    except OSError as exc:
        if interfaces and exc.errno in (errno.ENODEV, errno.EADDRNOTAVAIL):
            raise MdnsUnavailable(
                f"{', '.join(interfaces)}: not an address of a multicast-capable interface of "
                f"this machine ({exc.strerror})"
            ) from exc
        raise
