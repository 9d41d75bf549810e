"""The discovery-source contract: how a plugin finds backends (``register_discovery_sources``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nexus_core.gateway import Gateway

__all__ = ["DiscoverySource", "DiscoverySourceFactory"]


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
