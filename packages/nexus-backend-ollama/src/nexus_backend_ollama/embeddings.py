"""OpenAI embeddings over Ollama's native ``/api/embed``: the request, the answer, the errors.

Ollama's own ``/v1/embeddings`` does the same translation (``middleware/openai.go``); going to
``/api/embed`` ourselves keeps the native knobs a client may send (``truncate``, ``keep_alive``,
``options``) and errors classified the way Nexus needs them.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from typing import Any

from nexus_core.adapter_kit import ErrorBody, ErrorQuirk, UpstreamErrors, dumps, refused
from nexus_core.adapters import BackendError, ErrorKind

#: How Ollama words a full request queue (``ErrMaxQueue``, HTTP 503): a busy server, not a
#: broken one.
BUSY_MARKER = "server busy"
#: That 503, which is "overloaded": the request fails over and the backend is not held broken.
SERVER_BUSY = ErrorQuirk(
    status=503,
    says=BUSY_MARKER,
    kind=ErrorKind.OVERLOADED,
    message="Ollama is busy: its request queue is full (OLLAMA_MAX_QUEUE)",
)
#: Native ``/api/embed`` fields passed on as they are when a client sends them.
NATIVE_FIELDS = ("truncate", "keep_alive", "options")
ENCODINGS = ("float", "base64")


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """An OpenAI embeddings request turned into an ``/api/embed`` body."""

    model: str
    #: ``float`` or ``base64``: how the client wants the vectors back.
    encoding: str
    body: bytes


def to_native(body: bytes) -> EmbedRequest:
    """Translate an OpenAI embeddings body; a request Ollama's ``/v1`` would refuse raises 400."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise invalid_request("the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise invalid_request("the request body must be a JSON object")
    model = payload.get("model")
    encoding = payload.get("encoding_format") or "float"
    if not isinstance(encoding, str) or encoding.lower() not in ENCODINGS:
        raise invalid_request(
            f"Invalid value for 'encoding_format' = {encoding}. "
            "Supported values: ['float', 'base64']."
        )
    raw = payload.get("input")
    if raw is None or raw == []:
        raise invalid_request("invalid input")
    # One string is a batch of one: OpenAI answers one vector even for "", and so must we.
    native: dict[str, Any] = {"model": model, "input": [raw] if isinstance(raw, str) else raw}
    dimensions = payload.get("dimensions")
    if dimensions is not None:
        native["dimensions"] = dimensions
    for key in NATIVE_FIELDS:
        if key in payload:
            native[key] = payload[key]
    return EmbedRequest(
        model=model if isinstance(model, str) else "", encoding=encoding.lower(), body=dumps(native)
    )


def from_native(data: bytes, request: EmbedRequest) -> bytes:
    """An ``/api/embed`` answer as an OpenAI embeddings ``list``; base64 packs float32 LE."""
    try:
        payload = json.loads(data)
        vectors = payload["embeddings"]
        if not isinstance(vectors, list):
            raise TypeError("'embeddings' is not a list")
        packed = request.encoding == "base64"
        items = [
            {
                "object": "embedding",
                "index": index,
                "embedding": _base64(vector) if packed else vector,
            }
            for index, vector in enumerate(vectors)
        ]
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise BackendError(
            ErrorKind.MALFORMED, f"/api/embed answered no list of vectors: {exc}"
        ) from None
    tokens = payload.get("prompt_eval_count")
    tokens = tokens if isinstance(tokens, int) else 0
    model = payload.get("model")
    return dumps(
        {
            "object": "list",
            "data": items,
            "model": model if isinstance(model, str) and model else request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def error_type(status: int) -> str:
    """The error type Ollama's own ``/v1`` gives a status (``middleware/openai.go``)."""
    return {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")


#: A native ``{"error": "text"}`` failure in the OpenAI envelope Ollama's own ``/v1`` sends, so
#: a client sees the same error shape from embeddings as from chat.
NATIVE_ERRORS = UpstreamErrors(
    "Ollama", body=ErrorBody.OPENAI, quirks=(SERVER_BUSY,), error_type=error_type
)


def invalid_request(message: str) -> BackendError:
    """A 400 the client sees as it is, for a request that cannot be translated."""
    return refused(400, message, type=error_type(400))


def _base64(vector: list[float]) -> str:
    # What the OpenAI API and Ollama's /v1 send: little-endian float32, base64.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
