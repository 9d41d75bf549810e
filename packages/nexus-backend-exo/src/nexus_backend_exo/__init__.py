"""Nexus backend type ``exo``: an exo cluster's API, on its API port (52415 by default).

exo's ``GET /v1/models`` lists every model card it knows, whether or not it runs; a chat for a
model without a running instance is a 404. A probe therefore reads the cards (``context_length``,
0 meaning unknown; ``capabilities`` such as ``vision``; ``tasks``, to leave out image models) and
keeps the models that ``GET /ollama/api/ps`` says have an instance (every text card when that
endpoint is missing). exo serves chat only: no ``/v1/completions``, no ``/v1/embeddings``.

Requests go to ``/v1/chat/completions`` unchanged. Its streams carry SSE comments
(``: keep-alive``, ``: prefill_progress``...) that the SSE parser drops, the usage on the finish
chunk, and chunks whose ``object`` says ``chat.completion``, which the adapter corrects to
``chat.completion.chunk``. Errors (``{"error": {"type": "<HTTP phrase>", "code": <int>}}``) become
OpenAI envelopes; a 404 for a model without an instance (stopped since the last probe) moves the
request to another backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl
from nexus_core.adapter_kit import ErrorBody, ErrorQuirk, UpstreamErrors, probe_get
from nexus_core.adapters import BackendStatus, ErrorKind, ModelInfo, ProbeResult
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["ERRORS", "EXO_API_PORT", "ExoAdapter", "register_backends"]

log = logging.getLogger("nexus.backend.exo")

#: exo's default API (and dashboard) port (``--api-port``).
EXO_API_PORT = 52415
NO_INSTANCE = "No instance found for model"
#: exo's ``{"error": {"type": "<HTTP phrase>", "code": <int>}}`` and FastAPI's ``{"detail"}`` as
#: OpenAI's envelope; a model listed at the last probe and stopped since is worth a failover.
ERRORS = UpstreamErrors(
    "exo",
    body=ErrorBody.OPENAI,
    quirks=(
        ErrorQuirk(
            status=404,
            says=NO_INSTANCE,
            kind=ErrorKind.SERVER_ERROR,
            message="exo has no running instance: {message}",
        ),
    ),
)
# exo dumps its chunks with pydantic (compact, "id" first): the first occurrence is the top level.
_CHUNK_OBJECT = (b'"object":"chat.completion",', b'"object":"chat.completion.chunk",')


class ExoAdapter(OpenAIWireAdapter):
    """exo: model cards from ``/v1/models``, running instances from ``/ollama/api/ps``."""

    type_name: ClassVar[str] = "exo"
    is_cloud: ClassVar[bool] = False
    errors: ClassVar[UpstreamErrors] = ERRORS

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        super().__init__(config, clients)
        parsed = httpx.URL(config.url)
        if parsed.scheme == "http" and parsed.port is None:
            log.warning(
                "backend %s: exo listens on port %d by default, but %s names no port",
                config.name,
                EXO_API_PORT,
                config.url,
            )

    async def probe(self) -> ProbeResult:
        """Healthy when the cards list; the models are the text cards with a running instance."""
        # Both at once: the probe's duration counts as the backend's latency.
        result, running = await asyncio.gather(super().probe(), self._running())
        if result.status is not BackendStatus.HEALTHY or running is None:
            return result
        models = tuple(model for model in result.models if model.id in running)
        return dataclasses.replace(result, models=models)

    async def _running(self) -> set[str] | None:
        """Models with an instance, from exo's Ollama shim; None when it does not answer."""
        answer = await self.probe_get(self.api_base.removesuffix("/v1") + "/ollama/api/ps")
        models = answer.get("models")
        if not answer.ok or not isinstance(models, list):
            return None
        return {
            entry["model"]
            for entry in models
            if isinstance(entry, dict) and isinstance(entry.get("model"), str)
        }

    def parse_models(self, payload: Any) -> list[ModelInfo]:
        """Text-generation cards only (image cards cannot chat)."""
        entries = payload["data"]
        if not isinstance(entries, list):
            raise TypeError("'data' is not a list")
        return [
            self.model_info(entry)
            for entry in entries
            if isinstance(entry, dict) and _generates_text(entry.get("tasks"))
        ]

    def model_info(self, entry: Mapping[str, Any]) -> ModelInfo:
        """A card: ``context_length`` (0 is unknown) and ``vision`` from ``capabilities``."""
        context = entry.get("context_length")
        capabilities = entry.get("capabilities")
        owned_by = entry.get("owned_by")
        return ModelInfo(
            id=str(entry["id"]),
            context_length=context if isinstance(context, int) and context > 0 else None,
            vision=(
                "vision" in capabilities
                if isinstance(capabilities, list) and capabilities
                else None
            ),
            embeddings=False,
            owned_by=owned_by if isinstance(owned_by, str) else None,
        )

    def stream_events(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Streamed chunks with ``object: chat.completion.chunk`` (exo says ``chat.completion``)."""
        return _as_chunks(events)

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/v1/models`` lists a card owned by ``exo``."""
        answer = await probe_get(clients, api_base(url) + cls.models_path)
        entries = answer.get("data") if answer.ok else None
        return isinstance(entries, list) and any(
            isinstance(entry, dict) and entry.get("owned_by") == "exo" for entry in entries
        )


def _generates_text(tasks: Any) -> bool:
    return not isinstance(tasks, list) or not tasks or "TextGeneration" in tasks


async def _as_chunks(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    old, new = _CHUNK_OBJECT
    try:
        async for event in events:
            yield event.replace(old, new, 1)
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``exo`` backend type."""
    register("exo", ExoAdapter)
