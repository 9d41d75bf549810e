"""The ``mdns`` discovery source: inference servers announced over mDNS (DNS-SD) on the LAN."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nexus_core.discovery import MdnsDiscovery
from nexus_core.hookspecs import hookimpl


@hookimpl
def register_discovery_sources(register: Callable[[str, Any], None]) -> None:
    """Register ``mdns``, the zeroconf browser of ``[discovery] service_types``."""
    register("mdns", MdnsDiscovery)
