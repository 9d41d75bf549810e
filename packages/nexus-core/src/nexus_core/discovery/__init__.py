"""Discovery: finding backends. One module per job:

- ``sources``: the contract a discovery source keeps (``DiscoverySource``), what plugins register;
- ``announcements``: what an mDNS service says, read as rules (URL, type, name), no sockets;
- ``mdns``: the built-in source, ``MdnsDiscovery`` (plugin ``builtin:mdns``), browsing with
  zeroconf and keeping the registry in step.

Announcing a server (``nexus advertise``) is the server's: ``nexus_server.advertise``. Its names
are still found here, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from nexus_core.discovery.announcements import (
    LLM_SERVICE,
    NAME_BASE_LENGTH,
    OLLAMA_SERVICE,
    SOURCE,
    TYPE_ALIASES,
    Announcement,
    backend_name,
    base_path,
    instance_label,
    parse_service,
    pick_address,
    resolve_type,
    same_server,
    txt_values,
)
from nexus_core.discovery.mdns import (
    IGNORED_LOG_SECONDS,
    RESOLVE_TIMEOUT_MS,
    MdnsDiscovery,
    MdnsUnavailable,
    open_zeroconf,
)
from nexus_core.discovery.sources import DiscoverySource, DiscoverySourceFactory
from nexus_core.registry import is_this_machine as is_this_machine  # where it used to live

__all__ = [
    "IGNORED_LOG_SECONDS",
    "LLM_SERVICE",
    "NAME_BASE_LENGTH",
    "OLLAMA_SERVICE",
    "RESOLVE_TIMEOUT_MS",
    "SOURCE",
    "TYPE_ALIASES",
    "Announcement",
    "DiscoverySource",
    "DiscoverySourceFactory",
    "MdnsDiscovery",
    "MdnsUnavailable",
    "backend_name",
    "base_path",
    "instance_label",
    "open_zeroconf",
    "parse_service",
    "pick_address",
    "resolve_type",
    "same_server",
    "txt_values",
]

#: Names that moved to the server, which alone announces (``nexus advertise``).
MOVED = {
    "ADVERTISED_TTL": "nexus_server.advertise",
    "Advertisement": "nexus_server.advertise",
    "Advertiser": "nexus_server.advertise",
    "default_addresses": "nexus_server.advertise",
}


def __getattr__(name: str) -> Any:
    module = MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"nexus_core.discovery.{name} moved to {module}.{name}", DeprecationWarning, stacklevel=2
    )
    return getattr(importlib.import_module(module), name)
