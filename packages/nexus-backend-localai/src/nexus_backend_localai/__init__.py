"""Nexus backend type ``localai``: a LocalAI server.

Implemented: probing with ``GET /readyz`` then ``GET /v1/models`` (the base class); recognising a
server by ``/readyz`` answering 200 next to an OpenAI model list. Requests go to ``/v1/...``
unchanged.
Not yet: capabilities per model (LocalAI's model gallery metadata).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl
from nexus_core.adapters import BackendStatus, ProbeResult
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["LocalAIAdapter", "register_backends"]


class LocalAIAdapter(OpenAIWireAdapter):
    """LocalAI: readiness from ``/readyz``, models from ``/v1/models``."""

    type_name: ClassVar[str] = "localai"
    is_cloud: ClassVar[bool] = False

    async def probe(self) -> ProbeResult:
        """Unhealthy unless ``/readyz`` answers 200; then the model list decides."""
        root = self.api_base.removesuffix("/v1")
        try:
            ready = await self.clients.probe.get(root + "/readyz", headers=self._probe_headers())
        except httpx.TimeoutException:
            return ProbeResult(BackendStatus.UNHEALTHY, detail="probe timed out")
        except httpx.HTTPError as exc:
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"cannot connect: {exc}")
        if ready.status_code != 200:
            return ProbeResult(
                BackendStatus.UNHEALTHY, detail=f"/readyz answered HTTP {ready.status_code}"
            )
        return await super().probe()

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/readyz`` answers 200 and ``/v1/models`` an OpenAI model list."""
        root = api_base(url).removesuffix("/v1")
        try:
            ready = await clients.probe.get(root + "/readyz")
            if ready.status_code != 200:
                return False
            response = await clients.probe.get(root + "/v1" + cls.models_path)
            return response.status_code == 200 and isinstance(response.json().get("data"), list)
        except (httpx.HTTPError, ValueError, AttributeError):
            return False


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``localai`` backend type."""
    register("localai", LocalAIAdapter)
