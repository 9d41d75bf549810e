"""Nexus backend type ``vllm``: a vLLM OpenAI-compatible server.

Implemented: probing with ``GET /health`` (200 when the engine is alive, 503 when it is dead) then
``GET /v1/models`` (the served model and its ``max_model_len``); recognising a server by its
``/v1/models`` cards (``owned_by: vllm``, ``max_model_len``). Requests go to ``/v1/...`` unchanged.
vLLM refuses connections while it loads a model, so a starting server looks unhealthy until then.
Not yet: the load signal from ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl
from nexus_core.adapters import BackendStatus, ProbeResult
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["VLLMAdapter", "register_backends"]


class VLLMAdapter(OpenAIWireAdapter):
    """vLLM: engine health from ``/health``, models and context length from ``/v1/models``."""

    type_name: ClassVar[str] = "vllm"
    is_cloud: ClassVar[bool] = False

    async def probe(self) -> ProbeResult:
        """Unhealthy unless ``/health`` answers 200; then the model list decides."""
        root = self.api_base.removesuffix("/v1")
        try:
            health = await self.clients.probe.get(root + "/health", headers=self._probe_headers())
        except httpx.TimeoutException:
            return ProbeResult(BackendStatus.UNHEALTHY, detail="probe timed out")
        except httpx.HTTPError as exc:
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"cannot connect: {exc}")
        if health.status_code != 200:
            return ProbeResult(
                BackendStatus.UNHEALTHY, detail=f"/health answered HTTP {health.status_code}"
            )
        return await super().probe()

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/v1/models`` lists a vLLM model card."""
        try:
            response = await clients.probe.get(api_base(url) + cls.models_path)
            entries = response.json().get("data") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return isinstance(entries, list) and any(
            isinstance(entry, dict)
            and (entry.get("owned_by") == "vllm" or isinstance(entry.get("max_model_len"), int))
            for entry in entries
        )


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``vllm`` backend type."""
    register("vllm", VLLMAdapter)
