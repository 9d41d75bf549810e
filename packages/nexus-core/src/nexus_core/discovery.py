"""Discovery: inference servers found on the local network over mDNS (DNS-SD), and announced.

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

``Advertiser`` publishes a server that does not announce itself (Ollama does not) for
``nexus advertise``: ``_ollama._tcp.local.`` for Ollama, ``_llm._tcp.local.`` for anything else,
with the TXT keys above.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import ipaddress
import logging
import re
import socket
import time
import unicodedata
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import zeroconf
from pydantic import ValidationError
from zeroconf import InterfaceChoice, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from nexus_core.adapters import AdapterFactory
from nexus_core.config import AUTO_TYPE, BackendConfig
from nexus_core.errors import GatewayError
from nexus_core.registry import DISCOVERED, server_address
from nexus_core.registry import is_this_machine as is_this_machine  # where it used to live

if TYPE_CHECKING:
    from nexus_core.gateway import Gateway
    from nexus_core.registry import Backend

log = logging.getLogger("nexus.discovery")

__all__ = [
    "LLM_SERVICE",
    "OLLAMA_SERVICE",
    "SOURCE",
    "Advertisement",
    "Advertiser",
    "Announcement",
    "DiscoverySource",
    "DiscoverySourceFactory",
    "MdnsDiscovery",
    "MdnsUnavailable",
    "parse_service",
]

#: The ``source`` of backends this module adds (``Backend.source``, ``/admin/backends``).
SOURCE = DISCOVERED
OLLAMA_SERVICE = "_ollama._tcp.local."
LLM_SERVICE = "_llm._tcp.local."
#: How long one service may take to resolve (address, port, TXT) before it is skipped.
RESOLVE_TIMEOUT_MS = 3000
#: Services ignored past ``discovery.max_services`` are logged at most this often.
IGNORED_LOG_SECONDS = 60.0
#: TTL of what ``nexus advertise`` publishes. RFC 6762 suggests 75 minutes for service records;
#: two minutes means an advertiser that dies without a goodbye is forgotten within two minutes.
ADVERTISED_TTL = 120
#: What people write in TXT ``type`` for a type registered under another name.
TYPE_ALIASES = {
    "llama.cpp": "llamacpp",
    "llama-cpp": "llamacpp",
    "llama_cpp": "llamacpp",
    "lm-studio": "lmstudio",
    "lm_studio": "lmstudio",
}
# Errors that mean "no multicast here" (no interface, no such address, no route...).
_MDNS_ERRORS = (OSError, RuntimeError, zeroconf.Error)


class MdnsUnavailable(Exception):
    """mDNS cannot run here: no usable interface for multicast, or the address is not ours."""


class DiscoverySource(Protocol):
    """A way of finding backends, started and stopped with the gateway.

    A source adds what it finds with ``gateway.add_backend(..., source=NAME)`` and manages it
    with ``suspend_backend``, ``resume_backend``, ``reconfigure_backend`` and ``remove_backend``.
    """

    async def start(self) -> None:
        """Begin discovering; return quickly and do the work in background tasks."""
        ...

    async def stop(self) -> None:
        """Stop every task the source started."""
        ...


#: What ``register_discovery_sources`` registers: called with the gateway, once, at start-up.
DiscoverySourceFactory = Callable[["Gateway"], DiscoverySource]


# ---------------------------------------------------------------------------------------------
# What a service says


@dataclass(frozen=True, slots=True)
class Announcement:
    """What one resolved mDNS service says about the server behind it."""

    instance: str
    service_type: str
    #: The instance name without the service type (``GPU Box``).
    label: str
    url: str
    #: The backend type, or None: ask the server (``type = "auto"``).
    type: str | None
    #: The host name in the SRV record (``gpu-box.local``), without the final dot.
    host_name: str | None = None
    #: TXT ``models``: what the server says it serves; a hint, the probe is what counts.
    models: tuple[str, ...] = ()
    version: str | None = None


def parse_service(
    *,
    instance: str,
    service_type: str,
    addresses: Sequence[str],
    port: int | None,
    properties: Mapping[bytes, bytes | None],
    host_name: str | None,
    known_types: Mapping[str, AdapterFactory],
) -> Announcement:
    """Turn a resolved service into an ``Announcement``; ``ValueError`` says why it cannot be."""
    if not port:
        raise ValueError("no port")
    host = pick_address(addresses)
    if host is None:
        shown = ", ".join(addresses) or "none"
        raise ValueError(f"no usable address (advertised: {shown})")
    txt = txt_values(properties)
    url = f"http://{host}:{port}{base_path(txt.get('api_path', ''))}"
    models = tuple(m.strip() for m in txt.get("models", "").split(",") if m.strip())
    return Announcement(
        instance=instance,
        service_type=service_type,
        label=instance_label(instance, service_type),
        url=url,
        type=resolve_type(txt.get("type"), service_type, known_types, instance),
        host_name=host_name.rstrip(".").lower() if host_name else None,
        models=models,
        version=txt.get("version") or None,
    )


def txt_values(properties: Mapping[bytes, bytes | None]) -> dict[str, str]:
    """TXT key/value pairs as text; keys are case-insensitive (RFC 6763), so lower-cased."""
    out: dict[str, str] = {}
    for key, value in properties.items():
        name = key.decode("utf-8", "replace").strip().lower()
        if name and name not in out:
            out[name] = (value or b"").decode("utf-8", "replace").strip()
    return out


def base_path(raw: str) -> str:
    """TXT ``api_path`` as a URL base path: ``""``, or ``/x`` without a trailing slash."""
    path = raw.strip()
    if any(char.isspace() for char in path) or any(mark in path for mark in ("?", "#", "://")):
        raise ValueError(f"TXT api_path {raw!r} is not a URL path")
    path = path.strip("/")
    return "/" + path if path else ""


def pick_address(addresses: Sequence[str]) -> str | None:
    """The address to reach a server at, as a URL host: IPv4 first (routable before link-local
    before loopback), then IPv6 in brackets. Link-local IPv6 needs a zone id and is skipped."""
    ranked: list[tuple[tuple[int, bool, bool, int], str]] = []
    for index, text in enumerate(addresses):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.version == 6 and address.is_link_local:
            continue
        rank = (address.version, address.is_loopback, address.is_link_local, index)
        ranked.append((rank, str(address)))
    if not ranked:
        return None
    best = min(ranked)[1]
    return f"[{best}]" if ":" in best else best


def instance_label(instance: str, service_type: str) -> str:
    """``GPU Box._ollama._tcp.local.`` -> ``GPU Box``."""
    suffix = "." + service_type
    if instance.lower().endswith(suffix.lower()):
        return instance[: -len(suffix)]
    return instance.split(".", 1)[0]


def resolve_type(
    txt_type: str | None,
    service_type: str,
    known_types: Mapping[str, AdapterFactory],
    instance: str = "",
) -> str | None:
    """The backend type a service stands for; None means "probe the server"."""
    if txt_type:
        name = txt_type.strip().lower()
        name = TYPE_ALIASES.get(name, name)
        factory = known_types.get(name)
        if factory is not None and not factory.is_cloud:
            return name
        if name != AUTO_TYPE:
            # A cloud type needs a key and lives outside the LAN: what is meant is "speaks the
            # OpenAI protocol", which probing works out. An unknown type is not installed here.
            why = "is a cloud type" if factory is not None else "is not installed here"
            log.info("mDNS service %r: TXT type %r %s; probing the server", instance, name, why)
        return None
    label = service_type.split(".", 1)[0].lstrip("_").lower()
    factory = known_types.get(label)
    if factory is not None and not factory.is_cloud:
        return label
    return None


#: The longest name taken from a label, so that ``_name_for``'s suffixes (``-ollama``,
#: ``-<digest>-<n>``) keep it within the 64 characters of a backend name.
NAME_BASE_LENGTH = 40


def backend_name(label: str) -> str:
    """A backend name from an instance label: ``GPU Box (2)`` -> ``gpu-box-2``.

    Always a valid backend name (``config.BACKEND_NAME``) of at most ``NAME_BASE_LENGTH``.
    """
    text = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode().lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", text).strip("-._")[:NAME_BASE_LENGTH]
    return name.rstrip("-._") or "mdns"


def same_server(url: str, announcement: Announcement) -> bool:
    """Whether ``url`` (of a backend known otherwise) points at the announced server.

    Addresses of this machine all count as ``localhost``; a host name is compared with the
    service's host name, so ``http://gpu-box.local:11434`` matches ``gpu-box.local.``.
    """
    host, port, path = server_address(url)
    other_host, other_port, other_path = server_address(announcement.url)
    if (port, path) != (other_port, other_path):
        return False
    return host == other_host or (
        announcement.host_name is not None and host == announcement.host_name
    )


# ---------------------------------------------------------------------------------------------
# Browsing


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


# ---------------------------------------------------------------------------------------------
# Advertising


@dataclass(frozen=True)
class Advertisement:
    """A server to announce over mDNS; what ``nexus advertise`` publishes."""

    port: int
    #: The backend type (TXT ``type``), or None to let Nexus probe the server.
    type: str | None = None
    #: The instance name (default: this machine's host name and the type).
    name: str | None = None
    api_path: str = ""
    models: tuple[str, ...] = ()
    version: str | None = None
    #: Where clients reach the server (default: this machine's address on the interfaces used).
    addresses: tuple[str, ...] = ()

    @property
    def service_type(self) -> str:
        """``_ollama._tcp.local.`` for Ollama (what Ollama's own proposals use), else
        ``_llm._tcp.local.``."""
        return OLLAMA_SERVICE if self.type == "ollama" else LLM_SERVICE

    @property
    def instance_label(self) -> str:
        """The instance name without the service type."""
        return self.name or f"{socket.gethostname().split('.')[0]} {self.type or 'llm'}"

    def txt(self) -> dict[str, str]:
        """The TXT record: only the keys that say something."""
        values = {
            "type": self.type or "",
            "api_path": base_path(self.api_path),
            "models": ",".join(self.models),
            "version": self.version or "",
        }
        return {key: value for key, value in values.items() if value}

    def service_info(self, addresses: Sequence[str]) -> AsyncServiceInfo:
        """The zeroconf record for this advertisement at ``addresses``."""
        label = self.instance_label
        if len(label.encode()) > 63:
            raise ValueError(f"the name {label!r} is longer than 63 bytes (a DNS label)")
        return AsyncServiceInfo(
            self.service_type,
            f"{label}.{self.service_type}",
            port=self.port,
            properties=self.txt(),
            # A host name of its own: the machine's name may be published by Avahi already, and
            # the addresses may be another machine's.
            server=f"{backend_name(label)}.local.",
            host_ttl=ADVERTISED_TTL,
            other_ttl=ADVERTISED_TTL,
            parsed_addresses=list(addresses),
        )


def default_addresses(interfaces: Sequence[str] = ()) -> list[str]:
    """The addresses to announce: the interfaces given, else the one multicast leaves from."""
    if interfaces:
        return list(interfaces)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("224.0.0.251", 5353))  # a UDP connect sends nothing
        except OSError as exc:
            raise MdnsUnavailable(
                f"no route for multicast ({exc.strerror}); pass the address to announce"
            ) from exc
        address: str = probe.getsockname()[0]
    return [address]


class Advertiser:
    """Publishes one ``Advertisement`` until ``stop``, which sends the goodbye packets.

    ``async with Advertiser(ad, interfaces=["192.168.1.20"]) as advertiser:`` — ``info`` is the
    record as registered (its name gets a ``-2`` suffix if another host had taken it).
    """

    def __init__(self, advertisement: Advertisement, *, interfaces: Sequence[str] = ()) -> None:
        self.advertisement = advertisement
        self.interfaces = list(interfaces)
        self.info: AsyncServiceInfo | None = None
        self._zeroconf: AsyncZeroconf | None = None

    @property
    def addresses(self) -> list[str]:
        """The addresses announced."""
        return list(self.advertisement.addresses) or default_addresses(self.interfaces)

    async def start(self) -> AsyncServiceInfo:
        """Probe for the name, then announce the service; raise ``MdnsUnavailable`` or
        ``OSError`` without multicast."""
        info = self.advertisement.service_info(self.addresses)
        self._zeroconf = open_zeroconf(self.interfaces)
        try:
            announced = await self._zeroconf.async_register_service(info, allow_name_change=True)
            await announced
        except BaseException:
            await self.stop()
            raise
        self.info = info
        return info

    async def stop(self) -> None:
        """Withdraw the service (goodbye packets) and close the sockets."""
        instance, self._zeroconf = self._zeroconf, None
        info, self.info = self.info, None
        if instance is None:
            return
        try:
            if info is not None:
                withdrawn = await instance.async_unregister_service(info)
                await withdrawn
        finally:
            await instance.async_close()

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
