"""Nexus backend type ``lmstudio``: LM Studio's local server (default port 1234).

A probe asks ``GET /v1/models`` what requests may name (every downloaded model while
just-in-time loading is on, only the loaded ones when it is off), then LM Studio's REST API
``GET /api/v0/models`` (0.3.6+) what each model is: ``type`` (``llm`` / ``vlm`` /
``embeddings``), ``state`` (``loaded`` / ``not-loaded``), ``max_context_length`` and, for a loaded
model, ``loaded_context_length``. Servers without ``/api/v0`` (LM Studio answers unknown paths with
HTTP 200 ``{"error": "Unexpected endpoint or method. ..."}``) are described by ``/v1/models``
alone. Which models are in memory is kept for a router that prefers them (``model_loaded``).
Requests go to ``/v1/...`` unchanged; LM Studio sends no usage chunk in streams, which the relay
passes through as it is. Its ``{"error": "text"}`` error bodies become OpenAI's envelope.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from nexus_core import hookimpl
from nexus_core.adapter_kit import ErrorBody, UpstreamErrors, bearer, probe_get
from nexus_core.adapters import BackendStatus, ModelInfo, ProbeResult
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["ERRORS", "LMStudioAdapter", "describe", "register_backends"]

#: How LM Studio answers (with HTTP 200) a path it does not serve.
UNEXPECTED_ENDPOINT = "Unexpected endpoint or method."
_VISION = {"vlm": True, "llm": False, "embeddings": False}
_EMBEDDINGS = {"embeddings": True, "llm": False, "vlm": False}
#: LM Studio's ``{"error": "text"}`` bodies as OpenAI's envelope (its OpenAI-shaped ones pass).
ERRORS = UpstreamErrors("LM Studio", body=ErrorBody.OPENAI)


class LMStudioAdapter(OpenAIWireAdapter):
    """LM Studio: OpenAI wire for requests, the ``/api/v0`` REST API for what each model is."""

    type_name: ClassVar[str] = "lmstudio"
    is_cloud: ClassVar[bool] = False
    errors: ClassVar[UpstreamErrors] = ERRORS

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        super().__init__(config, clients)
        self._loaded: frozenset[str] | None = None

    @property
    def loaded_models(self) -> frozenset[str] | None:
        """Models in memory at the last probe; None when ``/api/v0/models`` did not answer."""
        return self._loaded

    def model_loaded(self, model: str) -> bool | None:
        """True when ``model`` is in memory (a request skips the load), None if unknown."""
        return None if self._loaded is None else model in self._loaded

    async def probe(self) -> ProbeResult:
        """The servable models from ``/v1/models``, described by ``/api/v0/models``."""
        # Both at once: the probe's duration counts as the backend's latency.
        result: ProbeResult
        details: dict[str, Mapping[str, Any]] | None
        result, details = await asyncio.gather(super().probe(), self._rest_models())
        if result.status is not BackendStatus.HEALTHY:
            return result
        if details is None:
            self._loaded = None
            return result
        self._loaded = frozenset(
            model_id for model_id, entry in details.items() if entry.get("state") == "loaded"
        )
        models = tuple(describe(model, details.get(model.id)) for model in result.models)
        return dataclasses.replace(result, models=models)

    async def _rest_models(self) -> dict[str, Mapping[str, Any]] | None:
        """``/api/v0/models`` by id; None when the server has no REST API or it fails."""
        answer = await self.probe_get(self.api_base.removesuffix("/v1") + "/api/v0/models")
        data = answer.get("data")
        if not answer.ok or not isinstance(data, list):
            return None
        return {
            entry["id"]: entry
            for entry in data
            if isinstance(entry, dict) and isinstance(entry.get("id"), str)
        }

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/api/v0/models`` answers a model list, or LM Studio's own 200 error."""
        answer = await probe_get(
            clients, api_base(url).removesuffix("/v1") + "/api/v0/models", bearer(api_key)
        )
        if not answer.ok:
            return False
        error = answer.get("error")
        # A server before 0.3.6 has no /api/v0, but its "Returning 200 anyway" is unmistakable.
        return isinstance(answer.get("data"), list) or (
            isinstance(error, str) and error.startswith(UNEXPECTED_ENDPOINT)
        )


def describe(model: ModelInfo, entry: Mapping[str, Any] | None) -> ModelInfo:
    """``model`` (from ``/v1/models``) with what ``/api/v0/models`` says about it."""
    if entry is None:
        return model
    kind = entry.get("type")
    context = _positive(entry.get("max_context_length"))
    if entry.get("state") == "loaded":
        # The window it was loaded with is what a request must fit in now.
        context = _positive(entry.get("loaded_context_length")) or context
    embedder = kind == "embeddings"
    return ModelInfo(
        id=model.id,
        context_length=context or model.context_length,
        vision=_VISION.get(kind) if isinstance(kind, str) else None,
        tools=False if embedder else None,
        json_mode=False if embedder else None,
        embeddings=_EMBEDDINGS.get(kind) if isinstance(kind, str) else None,
        owned_by=model.owned_by,
    )


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``lmstudio`` backend type."""
    register("lmstudio", LMStudioAdapter)
