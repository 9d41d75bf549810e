"""Which front door a path belongs to, and an error body in that door's own shape.

Errors raised before a request reaches its endpoint (headers too large, a refused ``Host``, a body
over the limit on a Litestar route) still answer in the shape the client's SDK parses: OpenAI's
envelope, Anthropic's ``{"type": "error", ...}`` on ``/v1/messages``, Ollama's ``{"error": "..."}``
on ``/api/``.
"""

from __future__ import annotations

from typing import Literal

from nexus_core.anthropic_format import anthropic_error_body
from nexus_core.errors import GatewayError
from nexus_server.ollama_wire.to_ollama import ollama_error

Door = Literal["openai", "anthropic", "ollama"]


def door_of(path: str) -> Door:
    """The front door whose clients call ``path``."""
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai"


def error_body(path: str, error: GatewayError) -> bytes:
    """``error`` as the body the client of ``path`` expects."""
    door = door_of(path)
    if door == "ollama":
        return ollama_error(error.message)
    if door == "anthropic":
        return anthropic_error_body(error.status, error.message)
    return error.body()
