"""Clamping ``max_tokens`` to what the chosen backend's context leaves after the prompt.

Coding agents ask for ``max_tokens: 32000`` whatever the model; a server that refuses a prompt
plus ``max_tokens`` over its context (vLLM does, with a 400) would then refuse every request.
Per attempt, when the backend states the model's context length, a ``max_tokens`` (or
``max_completion_tokens``) larger than the room left is lowered to it, and the response says so
in ``X-Nexus-Max-Tokens-Clamped``. Nothing changes when the context is unknown, when the request
names no limit, or when its limit fits.

The prompt is estimated high on purpose, from the size of the whole body (tool definitions
included) at ``BYTES_PER_TOKEN``: a prompt estimated too long only leaves a smaller answer limit,
one estimated too short gets the request refused. A request with images is left alone (their
base64 bytes say nothing about their tokens).
"""

from __future__ import annotations

import json
from typing import Any

from nexus_core.adapters import Endpoint

#: Bytes of request body counted as one prompt token (real tokenizers: about 3-4.5 characters
#: per token of English, code and JSON, and the body adds JSON syntax on top).
BYTES_PER_TOKEN = 3
#: The keys a request may limit its answer with; both are lowered when they exceed the room.
LIMIT_KEYS = ("max_tokens", "max_completion_tokens")


def requested_limit(endpoint: Endpoint, data: Any, vision: bool) -> int | None:
    """The answer limit a chat or completions request asks for (the larger of the two keys),
    or None when there is nothing to clamp: no limit, embeddings, or images in the prompt."""
    if vision or endpoint is Endpoint.EMBEDDINGS or not isinstance(data, dict):
        return None
    limit = None
    for key in LIMIT_KEYS:
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            limit = value if limit is None or value > limit else limit
    return limit


def room(context_length: int, body: bytes) -> int:
    """Tokens a context of ``context_length`` leaves after the (high) estimate of ``body``."""
    return context_length - len(body) // BYTES_PER_TOKEN


def clamp(body: bytes, limit: int) -> bytes:
    """``body`` with every answer limit above ``limit`` lowered to it (re-encoded)."""
    data = json.loads(body)
    for key in LIMIT_KEYS:
        value = data.get(key)
        if isinstance(value, int) and value > limit:
            data[key] = limit
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
