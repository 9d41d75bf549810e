"""Nexus backend type ``llamacpppython``: the server of llama-cpp-python (``llama_cpp.server``).

It speaks the OpenAI wire protocol with habits of its own (observed on 0.3.36), and this adapter
does one thing about each:

- No health endpoint (``/health`` is a 404): the base class's probe, ``GET /v1/models``, is the
  health check. The server loads its model before it listens, so it is never ``loading``: a 503
  comes from something in front of it and counts as unhealthy.
- Model cards carry the id and nothing else (``owned_by: "me"``, ``permissions: []``, no
  ``created``): context length and capabilities stay unknown rather than guessed. That exact
  card is also how ``detect`` recognises the server.
- ``stream_options.include_usage`` is ignored, so streams carry no usage chunk. They are passed
  through as they are: a token count the server did not send would be an invented one.
- Errors come as OpenAI's envelope, as FastAPI's ``{"detail": ...}`` or as a plain-text 500; the
  last two are rewritten into OpenAI's envelope, on the error path only. That is data
  (``ERRORS``), applied by the base class: this adapter has no ``send`` of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from nexus_core import (
    BackendStatus,
    ErrorBody,
    ErrorQuirk,
    OpenAIWireAdapter,
    ProbeResult,
    UpstreamErrors,
    bearer,
    hookimpl,
    probe_get,
)
from nexus_core.http import HttpClients
from nexus_core.openai_wire import api_base

__all__ = ["ERRORS", "LlamaCppPythonAdapter", "register_backends"]

#: FastAPI's ``{"detail": ...}`` and Starlette's plain-text 500 in OpenAI's envelope (the
#: server's own errors, such as a 400 ``context_length_exceeded``, already are: they pass
#: untouched); a refused key is OpenAI's ``invalid_api_key``.
ERRORS = UpstreamErrors(
    "llama-cpp-python",
    body=ErrorBody.OPENAI,
    quirks=[ErrorQuirk(status=401, code="invalid_api_key")],
)


class LlamaCppPythonAdapter(OpenAIWireAdapter):
    """llama-cpp-python's server: probed through its model list, its errors made OpenAI's."""

    type_name: ClassVar[str] = "llamacpppython"
    is_cloud: ClassVar[bool] = False
    errors: ClassVar[UpstreamErrors] = ERRORS

    async def probe(self) -> ProbeResult:
        """The base probe (``GET /v1/models``), except that a 503 is unhealthy, not loading."""
        result = await super().probe()
        if result.status is BackendStatus.LOADING:
            return dataclasses.replace(
                result,
                status=BackendStatus.UNHEALTHY,
                detail=f"HTTP 503, which llama-cpp-python itself never sends: {result.detail}",
            )
        return result

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``GET /v1/models`` lists cards exactly as llama-cpp-python writes them."""
        answer = await probe_get(clients, api_base(url) + cls.models_path, bearer(api_key))
        cards = answer.get("data")
        return (
            answer.ok
            and isinstance(cards, list)
            and bool(cards)
            and all(_is_llama_cpp_python_card(card) for card in cards)
        )


def _is_llama_cpp_python_card(card: Any) -> bool:
    # {"id": ..., "object": "model", "owned_by": "me", "permissions": []}: no other server
    # says "me", and OpenAI-style servers all send "created".
    return (
        isinstance(card, dict)
        and card.get("owned_by") == "me"
        and card.get("permissions") == []
        and "created" not in card
    )


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``llamacpppython`` backend type."""
    register("llamacpppython", LlamaCppPythonAdapter)
