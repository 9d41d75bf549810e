"""Errors the gateway answers with, each able to render itself as an OpenAI error envelope."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any


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


def no_backend(model: str, reasons: list[dict[str, Any]]) -> GatewayError:
    """503 when the model exists but no backend can take the request, with per-backend reasons.

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


def payload_too_large(limit: int) -> GatewayError:
    """413 for a body over ``server.max_body_bytes``."""
    return GatewayError(
        413,
        f"Request body is larger than the limit of {limit} bytes",
        code="request_too_large",
    )
