"""What an mDNS service says, read as rules: its URL, its backend type, its backend name.

Pure functions of what a resolved DNS-SD service announced, with no sockets: ``parse_service``
turns one into an ``Announcement``; ``resolve_type`` picks the backend type (TXT ``type``, else
the service type, else None: "probe the server"); ``backend_name`` makes a valid backend name of
an instance label; ``same_server`` tells whether a backend known otherwise is the announced one.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nexus_core.adapters import AdapterFactory
from nexus_core.config import AUTO_TYPE
from nexus_core.registry import DISCOVERED, server_address

log = logging.getLogger("nexus.discovery")

__all__ = [
    "LLM_SERVICE",
    "NAME_BASE_LENGTH",
    "OLLAMA_SERVICE",
    "SOURCE",
    "TYPE_ALIASES",
    "Announcement",
    "backend_name",
    "base_path",
    "instance_label",
    "parse_service",
    "pick_address",
    "resolve_type",
    "same_server",
    "txt_values",
]

#: The ``source`` of backends this module adds (``Backend.source``, ``/admin/backends``).
SOURCE = DISCOVERED
OLLAMA_SERVICE = "_ollama._tcp.local."
LLM_SERVICE = "_llm._tcp.local."
#: What people write in TXT ``type`` for a type registered under another name.
TYPE_ALIASES = {
    "llama.cpp": "llamacpp",
    "llama-cpp": "llamacpp",
    "llama_cpp": "llamacpp",
    "lm-studio": "lmstudio",
    "lm_studio": "lmstudio",
}


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
