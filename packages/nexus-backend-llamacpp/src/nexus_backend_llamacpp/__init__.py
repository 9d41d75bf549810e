"""Nexus backend type ``llamacpp``: llama.cpp's ``llama-server``.

Implemented: probing with ``GET /health`` (503 while the model loads = ``loading``) then
``GET /v1/models`` (models, per-slot context size from ``meta.n_ctx``, vision from
``architecture.input_modalities``); recognising a server by the JSON its ``/health`` answers.
Requests go to ``/v1/...`` unchanged.
Not yet: ``/props`` (tools support, total context), the load signal from ``/slots`` or ``/metrics``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl
from nexus_core.adapters import BackendStatus, ModelInfo, ProbeResult
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["LlamaCppAdapter", "register_backends"]


class LlamaCppAdapter(OpenAIWireAdapter):
    """llama-server: ``/health`` tells loading from ready, ``/v1/models`` lists the model."""

    type_name: ClassVar[str] = "llamacpp"
    is_cloud: ClassVar[bool] = False

    async def probe(self) -> ProbeResult:
        """``loading`` on 503 from ``/health``, else the model list decides."""
        root = self.api_base.removesuffix("/v1")
        try:
            health = await self.clients.probe.get(root + "/health", headers=self._probe_headers())
        except httpx.TimeoutException:
            return ProbeResult(BackendStatus.UNHEALTHY, detail="probe timed out")
        except httpx.HTTPError as exc:
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"cannot connect: {exc}")
        if health.status_code == 503:
            return ProbeResult(BackendStatus.LOADING, detail="llama-server is loading the model")
        if health.status_code != 200:
            return ProbeResult(
                BackendStatus.UNHEALTHY, detail=f"/health answered HTTP {health.status_code}"
            )
        return await super().probe()

    def model_info(self, entry: Mapping[str, Any]) -> ModelInfo:
        """Add the per-slot context (``meta.n_ctx``) and vision from the input modalities."""
        info = super().model_info(entry)
        meta = entry.get("meta")
        n_ctx = meta.get("n_ctx") if isinstance(meta, dict) else None
        architecture = entry.get("architecture")
        modalities = (
            architecture.get("input_modalities") if isinstance(architecture, dict) else None
        )
        return dataclasses.replace(
            info,
            context_length=n_ctx if isinstance(n_ctx, int) else info.context_length,
            vision="image" in modalities if isinstance(modalities, list) else info.vision,
        )

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/health`` answers like llama-server: ``{"status": "ok"}`` or loading."""
        root = api_base(url).removesuffix("/v1")
        try:
            response = await clients.probe.get(root + "/health")
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return False
        if not isinstance(body, dict):
            return False
        if response.status_code == 200:
            return body.get("status") == "ok"
        error = body.get("error")
        return (
            response.status_code == 503
            and isinstance(error, dict)
            and error.get("type") == "unavailable_error"
        )


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``llamacpp`` backend type."""
    register("llamacpp", LlamaCppAdapter)
