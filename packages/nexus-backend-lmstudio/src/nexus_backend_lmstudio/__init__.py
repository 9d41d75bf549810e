"""Nexus backend type ``lmstudio``: LM Studio's local server.

Implemented: probing with ``GET /v1/models`` (the base class); recognising a server by LM Studio's
own ``GET /api/v0/models``. Requests go to ``/v1/...`` unchanged.
Not yet: loaded state, model type (llm / vlm / embeddings) and max context from ``/api/v0/models``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["LMStudioAdapter", "register_backends"]


class LMStudioAdapter(OpenAIWireAdapter):
    """LM Studio: an OpenAI-wire server recognised by its ``/api/v0`` REST API."""

    type_name: ClassVar[str] = "lmstudio"
    is_cloud: ClassVar[bool] = False

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``GET /api/v0/models`` answers a model list."""
        root = api_base(url).removesuffix("/v1")
        try:
            response = await clients.probe.get(root + "/api/v0/models")
            return response.status_code == 200 and isinstance(response.json().get("data"), list)
        except (httpx.HTTPError, ValueError, AttributeError):
            return False


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``lmstudio`` backend type."""
    register("lmstudio", LMStudioAdapter)
