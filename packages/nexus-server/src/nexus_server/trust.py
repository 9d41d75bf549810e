"""What a request may be trusted as: the Host it names, the client behind proxies, its Origin.

Nexus trusts a request without a key in one case: the admin API (and, with ``[auth]`` on, the
dashboard) answers clients on this machine. "On this machine" is never inferred from the peer
address alone:

- **DNS rebinding.** A web page on ``evil.example`` can make its name resolve to 127.0.0.1; the
  browser then sends the page's requests to Nexus over loopback, with ``Host: evil.example``. So
  a request is only local when its ``Host`` names this machine: an IP address, ``localhost`` (or
  ``*.localhost``), this machine's host name, or a name in ``server.allowed_hosts``. The same
  ``Host`` rule guards the dashboard and ``/ws`` always, and every route when Nexus listens on a
  loopback address only (a web page is then the only way a remote party reaches it).
- **Reverse proxies.** A proxy on the same host makes every request arrive over loopback. Its
  ``Forwarded`` / ``X-Forwarded-For`` headers are believed only from ``server.trusted_proxies``;
  a loopback request carrying them from anyone else is not local (a proxy nobody declared).
- **Browsers.** An admin request with an ``Origin`` that is not the server's own (its ``Host``,
  itself allowed) or in ``server.admin_origins`` is refused, so no other site's page can drive
  the admin API through a visitor's browser.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from nexus_core.config import ServerConfig
from nexus_core.errors import GatewayError

#: The scope key of a request's local trust, set by ``NexusApp`` for the paths that use it.
LOCAL_KEY = "nexus.local"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``Host`` values whose answer ``Trust.host_allowed`` keeps.
HOSTS_KEPT = 64


def host_name(host: bytes | str) -> str:
    """The name in a ``Host`` header: lower case, without port, brackets or a final dot."""
    text = host.decode("latin-1") if isinstance(host, bytes) else host
    text = text.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(address: str | None) -> bool:
    """Whether a client address is this machine's loopback."""
    if not address:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def machine_names() -> frozenset[str]:
    """This machine's own host names (``box`` and ``box.local``); no DNS is asked."""
    name = socket.gethostname().lower().rstrip(".")
    if not name:
        return frozenset()
    short = name.split(".", 1)[0]
    return frozenset({name, short, f"{short}.local"})


class Trust:
    """The ``Host``, proxy and ``Origin`` rules of one server (built once at start-up)."""

    __slots__ = ("_hosts", "admin_origins", "any_host", "local_only", "names", "proxies")

    def __init__(self, server: ServerConfig, *, names: Iterable[str] | None = None) -> None:
        allowed = set(server.allowed_hosts)
        self.any_host = "*" in allowed
        allowed.discard("*")
        own = machine_names() if names is None else frozenset(names)
        #: Names (besides IP addresses and ``localhost``) that are this server.
        self.names: frozenset[str] = frozenset(allowed) | own
        self.proxies: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in server.trusted_proxies
        )
        self.admin_origins = frozenset(server.admin_origins)
        #: ``host_allowed``'s answers by ``Host`` value: a server is called by a few names, and
        #: parsing an address costs microseconds on every request of a loopback-only server.
        self._hosts: dict[bytes, bool] = {}
        #: Listening on loopback only: every route checks the ``Host``.
        self.local_only = server.host.strip("[]").lower() == "localhost" or is_loopback(
            server.host.strip("[]")
        )

    def host_allowed(self, host: bytes | None) -> bool:
        """Whether a ``Host`` names this server (a request without one is not a browser's)."""
        if host is None or self.any_host:
            return True
        known = self._hosts.get(host)
        if known is not None:
            return known
        name = host_name(host)
        allowed = (
            name == "localhost" or name.endswith(".localhost") or name in self.names or _is_ip(name)
        )
        if len(self._hosts) >= HOSTS_KEPT:
            self._hosts.clear()  # clients that make up names get no memory from it
        self._hosts[host] = allowed
        return allowed

    def is_proxy(self, address: str | None) -> bool:
        """Whether ``address`` is one of ``server.trusted_proxies``."""
        if not address or not self.proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)

    def client(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The client's address: the peer, or what a trusted proxy says; None when unknown.

        From a trusted proxy, the last address of ``Forwarded`` (else ``X-Forwarded-For``) that
        is not itself a trusted proxy (the first, when all are); a trusted proxy that names
        nobody, or names something that is not an address, leaves it unknown. From
        anyone else the headers are ignored, and a loopback peer that sends them is unknown too:
        a proxy on this host that nobody declared, whose clients could be anyone.
        """
        forwarded: list[bytes] = []
        x_forwarded: list[bytes] = []
        real_ip = False
        for name, value in headers:
            if name == b"forwarded":
                forwarded.append(value)
            elif name == b"x-forwarded-for":
                x_forwarded.append(value)
            elif name == b"x-real-ip":
                real_ip = True
        if not self.is_proxy(peer):
            if is_loopback(peer) and (forwarded or x_forwarded or real_ip):
                return None
            return peer
        if forwarded:
            chain = _forwarded_for(b",".join(forwarded))
        elif x_forwarded:
            chain = [item.strip() for item in b",".join(x_forwarded).decode("latin-1").split(",")]
        else:
            return None
        address = None
        for item in reversed(chain):
            address = _bare_address(item)
            if address is None:
                return None
            if not self.is_proxy(address):
                return address
        return address  # every hop a trusted proxy: the first is the client

    def is_local(self, peer: str | None, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether a request may be trusted as coming from this machine (see the module)."""
        host = None
        for name, value in headers:
            if name == b"host":
                host = value
                break
        if host is None or not self.host_allowed(host):
            return False
        return is_loopback(self.client(peer, headers))

    def origin_allowed(self, origin: bytes | None, host: bytes | None) -> bool:
        """Whether a browser page of ``origin`` may call the admin API (or ``/ws``)."""
        if origin is None:
            return True  # not sent by a browser's page
        text = origin.decode("latin-1").strip().lower().rstrip("/")
        if text in self.admin_origins:
            return True
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
            return False
        own = host.decode("latin-1").strip().lower()
        return parts.netloc == own and self.host_allowed(host)


def misdirected(host: bytes | None) -> GatewayError:
    """421 for a ``Host`` that does not name this server (DNS rebinding, or a missing setting)."""
    name = host_name(host or b"")[:100]
    return GatewayError(
        421,
        f"The Host '{name}' does not name this server; if it should, add it to "
        "server.allowed_hosts",
        code="misdirected_request",
    )


def _forwarded_for(value: bytes) -> list[str]:
    """The ``for=`` addresses of a ``Forwarded`` header (RFC 7239), in order."""
    out: list[str] = []
    for element in value.decode("latin-1").split(","):
        found = ""
        for pair in element.split(";"):
            key, _, item = pair.strip().partition("=")
            if key.strip().lower() == "for":
                found = item.strip().strip('"')
        out.append(found)
    return out


def _bare_address(item: str) -> str | None:
    """An address from a forwarding header, without port or brackets; None if it is not one."""
    item = item.strip()
    if item.startswith("["):
        item = item[1 : item.find("]")] if "]" in item else ""
    elif item.count(":") == 1:
        item = item.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(item))
    except ValueError:
        return None
