"""Nexus backend type ``openai``: the OpenAI API, a cloud backend (zone ``open`` by default).

Implemented: probing with ``GET /v1/models`` sending the key from ``api_key_env`` (the base
class); recognising ``api.openai.com`` by its host name, since it cannot be probed without a key.
Requests go to ``/v1/...`` unchanged, with the configured key, never the client's.
Not yet: the capability and price table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter

__all__ = ["OpenAIAdapter", "register_backends"]

OPENAI_HOST = "api.openai.com"


class OpenAIAdapter(OpenAIWireAdapter):
    """OpenAI: the reference OpenAI wire API, in the cloud."""

    type_name: ClassVar[str] = "openai"
    is_cloud: ClassVar[bool] = True

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True for ``api.openai.com``; no request is made."""
        try:
            return httpx.URL(url).host == OPENAI_HOST
        except httpx.InvalidURL:
            return False


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``openai`` backend type."""
    register("openai", OpenAIAdapter)
