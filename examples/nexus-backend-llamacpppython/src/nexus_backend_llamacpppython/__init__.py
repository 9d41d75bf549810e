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
  last two are rewritten into OpenAI's envelope, on the error path only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    ProbeResult,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base, dumps

__all__ = ["LlamaCppPythonAdapter", "openai_error_body", "register_backends"]


class LlamaCppPythonAdapter(OpenAIWireAdapter):
    """llama-cpp-python's server: probed through its model list, its errors made OpenAI's."""

    type_name: ClassVar[str] = "llamacpppython"
    is_cloud: ClassVar[bool] = False

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

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Forward the body unchanged; an error body not in OpenAI's shape is rewritten into it."""
        try:
            return await super().send(endpoint, body, stream=stream, timeouts=timeouts)
        except BackendError as exc:
            rewritten = openai_error_body(exc.status, exc.body) if exc.status else None
            if rewritten is not None:
                exc.body = rewritten
                stale = {"content-length", "content-type"}
                headers = {k: v for k, v in exc.headers.items() if k.lower() not in stale}
                exc.headers = {**headers, "content-type": "application/json"}
            raise

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``GET /v1/models`` lists cards exactly as llama-cpp-python writes them."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            response = await clients.probe.get(api_base(url) + cls.models_path, headers=headers)
            cards = response.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False
        return (
            response.status_code == 200
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


def openai_error_body(status: int, body: bytes) -> bytes | None:
    """OpenAI's error envelope for a FastAPI ``{"detail": ...}`` or plain-text error body.

    None when the body already is OpenAI's envelope (the server's own errors, such as a 400
    ``context_length_exceeded``): it is passed on untouched.
    """
    try:
        payload: Any = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return None
    detail = payload.get("detail") if isinstance(payload, dict) else None
    param = None
    if isinstance(detail, str):  # HTTPException: 401 "Invalid API key", 404 "Not Found"...
        message = detail
    elif isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        # Request validation (422): [{"loc": ["body", "messages"], "msg": "Field required"}]
        paths = [_field_path(d.get("loc")) for d in detail]
        message = "; ".join(
            f"{path}: {d.get('msg')}" for path, d in zip(paths, detail, strict=True)
        )
        param = paths[0] or None
    else:  # Starlette's own 500: text/plain "Internal Server Error"
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    code = "invalid_api_key" if status == 401 else None
    return dumps({"error": {"message": message, "type": error_type, "param": param, "code": code}})


def _field_path(loc: Any) -> str:
    # ["body", "messages", 0, "content"] -> "messages.0.content"
    if not isinstance(loc, list):
        return ""
    parts = loc[1:] if loc[:1] == ["body"] else loc
    return ".".join(str(part) for part in parts)


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``llamacpppython`` backend type."""
    register("llamacpppython", LlamaCppPythonAdapter)
