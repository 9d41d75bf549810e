"""Hook specifications of the ``nexus`` plugin host: markers and specs, nothing else.

Hooks are called at start-up and shut-down only, never per request. Registration hooks receive a
``register`` callable and hand over objects whose methods are async.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("nexus")
hookimpl = pluggy.HookimplMarker("nexus")


@hookspec
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register backend types: ``register(type_name, adapter_factory)``."""


@hookspec
def register_discovery_sources(register: Callable[[str, Any], None]) -> None:
    """Register discovery sources: ``register(name, source_factory)``."""


@hookspec
def register_routing_strategies(register: Callable[[str, Any], None]) -> None:
    """Register routing strategies: ``register(name, strategy)``, ``strategy`` a ``Strategy`` object
    or a factory ``(RoutingConfig, QualityTracker | None) -> Strategy``; ``[routing] strategy``
    selects one by name."""


@hookspec
def startup(gateway: Any) -> Any:
    """Called once the gateway has started; may return an awaitable."""


@hookspec
def shutdown(gateway: Any) -> Any:
    """Called when the gateway stops; may return an awaitable."""
