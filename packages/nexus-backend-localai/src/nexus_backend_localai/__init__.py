"""Nexus backend type ``localai``: a LocalAI server (default port 8080).

A probe asks ``GET /readyz`` first: 200 is ready, 503 ``{"status": "starting"}`` is ``loading``
(start-up preload), anything else unhealthy. The models come from ``GET /v1/models/capabilities``
(LocalAI 3.x: ``capabilities`` such as ``chat``, ``embeddings``, ``vision``, ``tools``), leaving
out models that only do speech, images, reranking and the like; older servers answer 404 there
and ``GET /v1/models`` (ids only) is used. ``GET /version`` gives the version. LocalAI reports no
context length: it stays unknown.

Requests go to ``/v1/...`` unchanged. LocalAI's error bodies (``{"error": {"code": <int>,
"message", "type": ""}}``, or none at all with opaque errors) become OpenAI envelopes; a model
that is still loading answers 503 with ``Retry-After``, which fails over like any 5xx.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from nexus_core import hookimpl
from nexus_core.adapter_kit import (
    ErrorBody,
    ErrorQuirk,
    ProbeAnswer,
    UpstreamErrors,
    bearer,
    probe_get,
)
from nexus_core.adapters import BackendStatus, ModelInfo, ProbeResult
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["ERRORS", "LocalAIAdapter", "register_backends"]

#: Capabilities of models Nexus can route to; a model with none of them is left out.
SERVED_CAPABILITIES = frozenset({"chat", "completion", "edit", "embeddings"})
#: LocalAI's ``{"error": {"code": <int>, "message", "type": ""}}`` (or no body at all, with
#: ``--opaque-errors``) as OpenAI's envelope; its 404 for a model it does not have says so.
ERRORS = UpstreamErrors(
    "LocalAI",
    body=ErrorBody.OPENAI,
    quirks=(ErrorQuirk(status=404, says="model", code="model_not_found"),),
)


class LocalAIAdapter(OpenAIWireAdapter):
    """LocalAI: readiness from ``/readyz``, models and capabilities from ``/v1/models[...]``."""

    type_name: ClassVar[str] = "localai"
    is_cloud: ClassVar[bool] = False
    errors: ClassVar[UpstreamErrors] = ERRORS
    #: LocalAI's superset of ``/models`` with capabilities (relative to the API base).
    capabilities_path: ClassVar[str] = "/models/capabilities"

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        super().__init__(config, clients)
        self._root = self.api_base.removesuffix("/v1")
        self._version: str | None = None

    async def probe(self) -> ProbeResult:
        """``/readyz``, then the models (with capabilities where the server has them)."""
        # Both at once: the probe's duration counts as the backend's latency.
        ready, models = await asyncio.gather(
            self.probe_get(self._root + "/readyz"), self._models_with_capabilities()
        )
        if ready.failure is not None:
            return ready.unreachable()
        if ready.status != 200:
            self._version = None
            if ready.status == 503 and ready.get("status") == "starting":
                reason = ready.get("reason") or "starting"
                return ProbeResult(BackendStatus.LOADING, detail=f"LocalAI: {reason}")
            return ProbeResult(
                BackendStatus.UNHEALTHY, detail=f"/readyz answered HTTP {ready.status}"
            )
        result = (
            await super().probe()
            if models is None
            else ProbeResult(BackendStatus.HEALTHY, models=tuple(models))
        )
        if result.status is not BackendStatus.HEALTHY:
            return result
        if self._version is None:
            version = (await self.probe_get(self._root + "/version")).get("version")
            self._version = version if isinstance(version, str) else None
        return ProbeResult(result.status, models=result.models, version=self._version)

    async def _models_with_capabilities(self) -> list[ModelInfo] | None:
        """``/v1/models/capabilities``; None when the server does not have it (or it fails)."""
        answer = await self.probe_get(self.api_base + self.capabilities_path)
        data = answer.get("data") if answer.ok else None
        if not isinstance(data, list):
            return None
        models = [
            capability_info(entry)
            for entry in data
            if isinstance(entry, dict) and isinstance(entry.get("id"), str)
        ]
        return [model for model in models if model is not None]

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/readyz`` and ``/healthz`` answer as LocalAI's do, next to a model list."""
        root = api_base(url).removesuffix("/v1")
        headers = bearer(api_key)
        ready = await probe_get(clients, root + "/readyz", headers)
        alive = await probe_get(clients, root + "/healthz", headers)
        if not _bare_ok(alive):
            return False
        if ready.status == 503:
            return bool(ready.get("status") == "starting")
        if not _bare_ok(ready):
            return False
        listing = await probe_get(clients, root + "/v1" + cls.models_path, headers)
        return listing.ok and isinstance(listing.get("data"), list)


def capability_info(entry: Mapping[str, Any]) -> ModelInfo | None:
    """One ``/v1/models/capabilities`` entry; None for a model Nexus cannot route to."""
    model_id = str(entry["id"])
    capabilities = entry.get("capabilities")
    if not isinstance(capabilities, list) or not capabilities:
        return ModelInfo(model_id)  # no configuration file: nothing is known
    if SERVED_CAPABILITIES.isdisjoint(capabilities):
        return None  # speech, images, rerank...: endpoints Nexus does not front
    # Only "yes" is trusted: LocalAI leaves out "tools" for models it drives through grammars.
    return ModelInfo(
        model_id,
        vision=True if "vision" in capabilities else None,
        tools=True if "tools" in capabilities else None,
        embeddings="embeddings" in capabilities,
    )


def _bare_ok(answer: ProbeAnswer) -> bool:
    # LocalAI answers its probes with no body (older, Fiber-based versions: "OK").
    return answer.ok and answer.text.strip() in ("", "OK")


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``localai`` backend type."""
    register("localai", LocalAIAdapter)
