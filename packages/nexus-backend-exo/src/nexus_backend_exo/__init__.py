"""Nexus backend type ``exo``: an exo cluster's API (default port 52415).

Implemented: probing with ``GET /v1/models`` (the base class; exo states ``context_length``);
recognising a server by its model cards (``owned_by: exo``). Requests go to ``/v1/...`` unchanged.
Not yet: which models have a running instance (``/state``); exo lists every model card it knows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["ExoAdapter", "register_backends"]


class ExoAdapter(OpenAIWireAdapter):
    """exo: an OpenAI-wire server whose model cards say ``owned_by: exo``."""

    type_name: ClassVar[str] = "exo"
    is_cloud: ClassVar[bool] = False

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/v1/models`` lists a card owned by ``exo``."""
        try:
            response = await clients.probe.get(api_base(url) + cls.models_path)
            entries = response.json().get("data") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return isinstance(entries, list) and any(
            isinstance(entry, dict) and entry.get("owned_by") == "exo" for entry in entries
        )


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``exo`` backend type."""
    register("exo", ExoAdapter)
