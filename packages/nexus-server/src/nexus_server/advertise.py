"""``nexus advertise``: announce an inference server over mDNS until SIGINT/SIGTERM.

``Advertiser`` publishes a server that does not announce itself (Ollama does not):
``_ollama._tcp.local.`` for Ollama, ``_llm._tcp.local.`` for anything else, with the TXT keys
discovery reads (``nexus_core.discovery.announcements``).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import zeroconf
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from nexus_core.discovery import (
    LLM_SERVICE,
    OLLAMA_SERVICE,
    MdnsUnavailable,
    backend_name,
    base_path,
    open_zeroconf,
)

#: TTL of what ``nexus advertise`` publishes. RFC 6762 suggests 75 minutes for service records;
#: two minutes means an advertiser that dies without a goodbye is forgotten within two minutes.
ADVERTISED_TTL = 120


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


def _error(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check(advertisement: Advertisement, known_types: list[str]) -> list[str]:
    """Problems that make the advertisement unusable, one line each (empty: fine)."""
    problems: list[str] = []
    if not 1 <= advertisement.port <= 65535:
        problems.append(f"--port: must be 1-65535 (got {advertisement.port})")
    try:
        base_path(advertisement.api_path)
    except ValueError as exc:
        problems.append(f"--api-path: {exc}")
    for address in advertisement.addresses:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        except OSError:
            problems.append(f"--address: not an IP address: {address!r}")
    label = advertisement.instance_label
    if not label.strip() or len(label.encode()) > 63:
        problems.append(f"--name: must be 1-63 bytes (got {label!r})")
    kind = advertisement.type
    if kind is not None and kind not in known_types:
        close = difflib.get_close_matches(kind, known_types, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        # Not fatal: the Nexus that finds it may have a plugin this machine lacks.
        _error(f"warning: {kind!r} is not a backend type installed here{hint}")
    return problems


def run(advertisement: Advertisement, interfaces: list[str]) -> int:
    """Announce until interrupted; 0 after a clean withdrawal, 1 if mDNS cannot run here."""
    return asyncio.run(_run(advertisement, interfaces))


async def _run(advertisement: Advertisement, interfaces: list[str]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still interrupts
            loop.add_signal_handler(signum, stop.set)
    advertiser = Advertiser(advertisement, interfaces=interfaces)
    try:
        addresses = advertiser.addresses
        await _warn_if_closed(addresses[0], advertisement.port)
        info = await advertiser.start()
    except (MdnsUnavailable, OSError, RuntimeError, ValueError, zeroconf.Error) as exc:
        _error(f"cannot advertise over mDNS: {exc}")
        return 1
    txt = " ".join(f"{key}={value}" for key, value in advertisement.txt().items()) or "(none)"
    where = ", ".join(f"{address}:{advertisement.port}" for address in addresses)
    print(f"advertising {info.name!r} at {where}; TXT {txt}", flush=True)
    print("press Ctrl-C (or send SIGTERM) to withdraw it", flush=True)
    try:
        await stop.wait()
    finally:
        await advertiser.stop()
    print(f"withdrawn {info.name!r}", flush=True)
    return 0


async def _warn_if_closed(address: str, port: int) -> None:
    """A friendly warning when nothing listens where clients will be sent."""
    try:
        async with asyncio.timeout(1):
            _, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        _error(f"warning: nothing answers at {address}:{port} yet ({reason}); advertising anyway")
        return
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
