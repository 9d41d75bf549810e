"""Errors the gateway answers with, each able to render itself as an OpenAI error envelope."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nexus_core import fastjson
from nexus_core.adapters import clip

#: Characters of a backend's own error message kept for the client (control characters removed).
MESSAGE_CHARS = 1000


class GatewayError(Exception):
    """A request the gateway cannot serve; ``envelope()`` is what the client sees."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
        raw_body: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.details = details
        self.headers: dict[str, str] = dict(headers or {})
        #: Backends tried and failed before this error, in order (for metrics and logs).
        self.failed_backends: tuple[str, ...] = ()
        self.raw_body = raw_body
        self.content_type = content_type

    def envelope(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code", ["details"]}}``."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}

    def body(self) -> bytes:
        """The response body: the upstream's own body when passed through, else the envelope."""
        if self.raw_body is not None:
            return self.raw_body
        return json.dumps(self.envelope(), separators=(",", ":")).encode()


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    """400 invalid_request_error."""
    return GatewayError(400, message, param=param, code=code)


def model_not_found(model: str, available: Iterable[str]) -> GatewayError:
    """404 naming the models that do exist."""
    names = sorted(available)
    shown = ", ".join(names[:50]) + (f" (and {len(names) - 50} more)" if len(names) > 50 else "")
    listing = f"Available models: {shown}" if names else "No models are available right now"
    asked = model if len(model) <= 256 else model[:256] + "…"
    return GatewayError(
        404,
        f"The model '{asked}' does not exist. {listing}.",
        param="model",
        code="model_not_found",
        details={"available_models": names},
    )


def backend_message(body: bytes) -> str | None:
    """The message a backend's error body carries, whatever its wire; None when it has none.

    OpenAI's envelope and Anthropic's both hold it in ``error.message``, Ollama's in ``error``
    (a string), vLLM's older shape and others in ``message``, FastAPI's in ``detail``. A body
    that is not JSON is text: its start is the message. Control characters are removed and the
    message is cut at ``MESSAGE_CHARS``.
    """
    if not body:
        return None
    try:
        payload = fastjson.loads(body)
    except (ValueError, RecursionError):
        text = clip(body[: MESSAGE_CHARS * 4].decode("utf-8", "replace"), MESSAGE_CHARS)
        return text or None
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    for found in (error, payload.get("message"), payload.get("detail")):
        if isinstance(found, str) and found.strip():
            return clip(found, MESSAGE_CHARS)
    return None


#: What a request needs that a model may lack, in the order one is named when several are
#: missing: the error ``code`` and ``param`` of a request that no backend can ever serve.
CAPABILITY_ERRORS: dict[str, tuple[str, str | None]] = {
    "context_length": ("context_length_exceeded", None),  # param: the prompt's field
    "tools": ("tools_not_supported", "tools"),
    "vision": ("vision_not_supported", "messages"),
    "json_mode": ("json_mode_not_supported", "response_format"),
    "embeddings": ("embeddings_not_supported", "model"),
}


def cannot_serve(
    model: str, reasons: Sequence[dict[str, Any]], *, tokens: int = 0, prompt: str = "messages"
) -> GatewayError:
    """400 for a request that no backend serving ``model`` can ever take, whatever the wait.

    ``reasons`` are the router's exclusions, each permanent; those of kind
    ``missing_capability`` say what is ``missing``. The code names what every such backend
    lacks (else the first of ``CAPABILITY_ERRORS`` that one lacks): ``context_length_exceeded``
    with OpenAI's wording (LiteLLM's context-window fallbacks key on it), or
    ``tools_not_supported``, ``vision_not_supported``, ``json_mode_not_supported``,
    ``embeddings_not_supported``. ``tokens``: the prompt's estimated size; ``prompt``: its field.
    """
    missing = [set(r.get("missing") or ()) for r in reasons if r["reason"] == "missing_capability"]
    common = set.intersection(*missing) if missing else set()
    union = set.union(*missing) if missing else set()
    capability = next(
        (name for name in CAPABILITY_ERRORS if name in common),
        next((name for name in CAPABILITY_ERRORS if name in union), "context_length"),
    )
    code, param = CAPABILITY_ERRORS[capability]
    if capability == "context_length":
        limit = max(
            (r["context_length"] for r in reasons if isinstance(r.get("context_length"), int)),
            default=0,
        )
        message = (
            f"This model's maximum context length is {limit} tokens, but the prompt is too long: "
            f"{tokens} tokens > {limit} maximum (estimated at 4 characters a token). Shorten "
            f"the {prompt}, or use a model with a longer context: no backend serving '{model}' "
            "can take it"
        )
        param = prompt
    elif capability == "tools":
        message = (
            f"The model '{model}' does not support tools on any backend that serves it: send "
            "the request without 'tools', or use a model that supports them"
        )
    elif capability == "vision":
        message = (
            f"The model '{model}' does not accept images on any backend that serves it: send "
            "text only, or use a vision model"
        )
    elif capability == "json_mode":
        message = (
            f"The model '{model}' does not support JSON mode (response_format) on any backend "
            "that serves it: send the request without it, or use a model that supports it"
        )
    else:
        message = (
            f"The model '{model}' does not serve embeddings on any backend that serves it: use "
            "an embedding model"
        )
    return GatewayError(400, message, param=param, code=code, details=list(reasons))


def no_backend(model: str, reasons: list[dict[str, Any]]) -> GatewayError:
    """503 when the model exists but no backend can take the request now, with per-backend
    reasons.

    ``Retry-After`` is set when waiting can help: the soonest ``retry_after`` of the reasons
    (a health re-check, the end of a cool-down, the budget's new month).
    """
    summary = "; ".join(f"{r['backend']}: {r.get('message') or r['reason']}" for r in reasons[:10])
    waits = [r["retry_after"] for r in reasons if isinstance(r.get("retry_after"), int | float)]
    headers = {"Retry-After": str(max(1, math.ceil(min(waits))))} if waits else {}
    return GatewayError(
        503,
        f"No backend can serve model '{model}' right now ({summary or 'no backends'})",
        type="service_unavailable",
        code="no_backend_available",
        details=reasons,
        headers=headers,
    )


def model_loading(model: str, reasons: list[dict[str, Any]]) -> GatewayError:
    """503 when every backend that could serve ``model`` is loading it: ``Retry-After`` says
    when to ask again."""
    waits = [r["retry_after"] for r in reasons if isinstance(r.get("retry_after"), int | float)]
    wait = max(1, math.ceil(min(waits))) if waits else 5
    names = ", ".join(str(r["backend"]) for r in reasons[:10])
    return GatewayError(
        503,
        f"Model '{model}' is being loaded ({names}); retry in {wait} s",
        type="service_unavailable",
        code="model_loading",
        details=reasons,
        headers={"Retry-After": str(wait)},
    )


def payload_too_large(limit: int) -> GatewayError:
    """413 for a body over ``server.max_body_bytes``."""
    return GatewayError(
        413,
        f"Request body is larger than the limit of {limit} bytes",
        code="request_too_large",
    )
