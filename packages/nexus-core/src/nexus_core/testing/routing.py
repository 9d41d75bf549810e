"""Backends for routing tests: registered, with their models and a status, and an adapter that
fails the test if routing touches it (routing decides from the registry alone)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nexus_core.adapters import BackendStatus, ModelInfo
from nexus_core.config import BackendConfig
from nexus_core.registry import Backend, Registry


class UntouchedAdapter:
    """Stands in for a backend's adapter where none may be called."""

    name = "x"
    url = "http://127.0.0.1:9"
    type_name = "generic"
    is_cloud = False

    def __getattr__(self, item: str) -> Any:
        raise AssertionError(f"router touched adapter.{item}")


def routed_backend(
    registry: Registry,
    name: str,
    models: Iterable[ModelInfo | str] = ("m",),
    *,
    status: BackendStatus = BackendStatus.HEALTHY,
    cloud: bool = False,
    **config: Any,
) -> Backend:
    """A backend named ``name`` in ``registry``, serving ``models``; ``config``: more
    ``BackendConfig`` fields (``priority``, ``max_concurrent``, ``zone``...)."""
    settings = BackendConfig(name=name, url="http://127.0.0.1:9", **config)
    backend = Backend(
        name=name,
        config=settings,
        adapter=UntouchedAdapter(),  # type: ignore[arg-type]
        zone=settings.zone_for(cloud),
        is_cloud=cloud,
    )
    registry.add(backend)
    registry.set_models(
        backend, [model if isinstance(model, ModelInfo) else ModelInfo(model) for model in models]
    )
    backend.status = status
    return backend
