"""Nexus backend type ``ollama``: an Ollama server, used through its OpenAI-compatible ``/v1`` API.

Implemented: probing with ``GET /api/version`` (liveness and version) then ``GET /api/tags`` (the
models, with the context length and capabilities Ollama 0.33+ puts there; older servers leave them
unknown); recognising a server by ``/api/version``. Requests go to ``/v1/...`` unchanged.
Not yet: capabilities from ``/api/show`` for older servers, loaded models from ``/api/ps``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl
from nexus_core.adapters import BackendStatus, ModelInfo, ProbeResult
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["OllamaAdapter", "register_backends"]


class OllamaAdapter(OpenAIWireAdapter):
    """Ollama: health and models from its native API, requests through ``/v1``."""

    type_name: ClassVar[str] = "ollama"
    is_cloud: ClassVar[bool] = False

    async def probe(self) -> ProbeResult:
        """Healthy when ``/api/version`` and ``/api/tags`` answer; models come from the tags."""
        root = self.api_base.removesuffix("/v1")
        headers = self._probe_headers()
        try:
            version_response = await self.clients.probe.get(root + "/api/version", headers=headers)
            if version_response.status_code != 200:
                return ProbeResult(
                    BackendStatus.UNHEALTHY,
                    detail=f"/api/version answered HTTP {version_response.status_code}",
                )
            tags_response = await self.clients.probe.get(root + "/api/tags", headers=headers)
        except httpx.TimeoutException:
            return ProbeResult(BackendStatus.UNHEALTHY, detail="probe timed out")
        except httpx.HTTPError as exc:
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"cannot connect: {exc}")
        if tags_response.status_code != 200:
            return ProbeResult(
                BackendStatus.UNHEALTHY,
                detail=f"/api/tags answered HTTP {tags_response.status_code}",
            )
        try:
            version = version_response.json().get("version")
            entries = tags_response.json()["models"]
            models = tuple(tag_model(entry) for entry in entries if isinstance(entry, dict))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"unreadable model list: {exc}")
        return ProbeResult(
            BackendStatus.HEALTHY,
            models=models,
            version=version if isinstance(version, str) else None,
        )

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``GET /api/version`` answers ``{"version": "..."}``."""
        root = api_base(url).removesuffix("/v1")
        try:
            response = await clients.probe.get(root + "/api/version")
            return response.status_code == 200 and isinstance(response.json().get("version"), str)
        except (httpx.HTTPError, ValueError, AttributeError):
            return False


def tag_model(entry: Mapping[str, Any]) -> ModelInfo:
    """One ``/api/tags`` entry; what the server does not say stays unknown."""
    details = entry.get("details")
    context = details.get("context_length") if isinstance(details, dict) else None
    capabilities = entry.get("capabilities")

    def has(capability: str) -> bool | None:
        return capability in capabilities if isinstance(capabilities, list) else None

    return ModelInfo(
        id=str(entry["name"]),
        context_length=context if isinstance(context, int) else None,
        vision=has("vision"),
        tools=has("tools"),
        embeddings=has("embedding"),
    )


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``ollama`` backend type."""
    register("ollama", OllamaAdapter)
