"""A fake LocalAI: readiness and liveness probes, its model listings, its error shapes.

Shapes follow mudler/LocalAI 82c191a (``core/http/routes/health.go``, ``endpoints/openai/list.go``,
``list_capabilities.go``, ``core/http/app.go``, ``render.go``, ``middleware/request.go``,
``core/schema/openai.go``):

- ``GET /healthz`` answers 200 with no body; ``GET /readyz`` too once start-up is done, and 503
  ``{"status": "starting", "reason": "startup preload in progress"}`` before (``starting``).
  Both are public when an API key is required.
- ``GET /v1/models`` (= ``/models``): ``{"object": "list", "data": [{"id", "object": "model"}]}``
  (no ``owned_by``, no ``created``). ``GET /v1/models/capabilities`` (LocalAI 3.x, July 2026):
  the same models with ``capabilities`` (``chat``, ``completion``, ``embeddings``, ``vision``,
  ``tools``, ``tts``, ``image``...), ``input_modalities`` and ``output_modalities`` — ``null`` for a
  model without a configuration file; 404 with ``capabilities_endpoint=False`` (older servers).
- ``GET /version``: ``{"version": "..."}``.
- Errors: ``{"error": {"code": <int>, "message", "type": ""}}`` (``type`` is often empty, ``code``
  an integer), or no body at all with ``--opaque-errors`` (``opaque_errors``). An unknown model is
  404 ``model "x" not found. To see available models, call GET /v1/models``; a model still
  loading is 503 with ``Retry-After`` and ``{"error": {"code": "model_loading", ...},
  "loading": {...}}`` (see ``model_loading_error``).

Models are names, or mappings with an ``id`` and any of ``capabilities`` (default ``["chat",
"completion"]``; None for a model without a configuration file), ``input_modalities`` (default
``["text"]``) and ``output_modalities`` (default ``["text"]``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from nexus_core.testing.fake_backend import Behaviour, FakeBackend, _Exchange, _json

__all__ = ["FakeLocalAI", "localai_error", "model_loading_error"]

_DEFAULT_CAPABILITIES = ("chat", "completion")
_NOT_FOUND = {"error": {"code": 404, "message": "Resource not found", "type": ""}}


def localai_error(status: int, message: str, error_type: str = "") -> dict[str, Any]:
    """LocalAI's ``schema.ErrorResponse``: integer ``code``, ``type`` often empty, no ``param``."""
    return {"error": {"code": status, "message": message, "type": error_type}}


def model_loading_error(model: str, progress: float = 0.4) -> dict[str, Any]:
    """The 503 body LocalAI sends while ``model`` is still being loaded (with ``Retry-After``)."""
    return {
        "error": {
            "code": "model_loading",
            "message": f"model {model} is still loading",
            "type": "model_loading",
        },
        "loading": {"model": model, "stage": "loading", "progress": progress},
    }


class FakeLocalAI(FakeBackend):
    """A fake LocalAI server on ``127.0.0.1``."""

    public_paths = frozenset({"/healthz", "/readyz"})

    def __init__(
        self,
        name: str = "localai",
        models: Sequence[str | Mapping[str, Any]] = ("phi-2",),
        *,
        capabilities_endpoint: bool = True,
        version: str = "v3.9.0",
        behaviour: Behaviour | None = None,
        embeddings_dim: int = 8,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(
            name,
            models,
            behaviour=behaviour,
            embeddings_dim=embeddings_dim,
            api_key=api_key,
            port=port,
        )
        #: Serve ``/v1/models/capabilities`` (LocalAI from July 2026 on).
        self.capabilities_endpoint = capabilities_endpoint
        #: What ``/version`` reports.
        self.version = version
        #: While True, ``/readyz`` answers 503 ``starting`` (start-up preload in progress).
        self.starting = False
        #: ``--opaque-errors``: error answers carry their status (and ``Retry-After``) only.
        self.opaque_errors = False

    def error_body(self, status: int) -> dict[str, Any]:
        """LocalAI's error envelope for ``status``."""
        if status == 401:
            return localai_error(401, "An authentication key is required", "invalid_request_error")
        if status == 404:
            return _NOT_FOUND
        return localai_error(status, f"rpc error: code = Unknown desc = HTTP {status}")

    async def _answer(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        response = await super()._answer(request, body, kind, behaviour, exchange)
        if self.opaque_errors and response.status >= 400 and not response.prepared:
            kept = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
            return web.Response(status=response.status, headers=kept)
        return response

    async def route(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse | None:
        """LocalAI's probes and listings; inference falls through; anything else is 404."""
        path, method = request.path, request.method
        if kind is not None:
            try:
                model = json.loads(body).get("model")
            except (ValueError, AttributeError):
                return _json(localai_error(400, "failed parsing request body"), 400)
            if isinstance(model, str) and model not in self._model_ids():
                message = f'model "{model}" not found. To see available models, call GET /v1/models'
                return _json(localai_error(404, message, "invalid_request_error"), 404)
            return None
        if method == "GET" and path == "/healthz":
            return web.Response(status=200)
        if method == "GET" and path == "/readyz":
            if self.starting:
                starting = {"status": "starting", "reason": "startup preload in progress"}
                return _json(starting, 503)
            return web.Response(status=200)
        if method == "GET" and path == "/version":
            return self._ok(behaviour, {"version": self.version}, extra=False)
        if method == "GET" and path in ("/v1/models", "/models"):
            data = [{"id": model_id, "object": "model"} for model_id, _ in self._cards()]
            return self._ok(behaviour, {"object": "list", "data": data}, extra=False)
        if (
            method == "GET"
            and path in ("/v1/models/capabilities", "/models/capabilities")
            and self.capabilities_endpoint
        ):
            cards: list[dict[str, Any]] = [
                {
                    "id": model_id,
                    "object": "model",
                    "capabilities": entry.get("capabilities", list(_DEFAULT_CAPABILITIES)),
                    "input_modalities": entry.get("input_modalities", ["text"]),
                    "output_modalities": entry.get("output_modalities", ["text"]),
                }
                for model_id, entry in self._cards()
            ]
            for card in cards:
                if card["capabilities"] is None:  # no configuration file: Go's nil slices
                    card["input_modalities"] = card["output_modalities"] = None
            return self._ok(behaviour, {"object": "list", "data": cards}, extra=False)
        return _json(_NOT_FOUND, 404)

    def _cards(self) -> list[tuple[str, Mapping[str, Any]]]:
        return [
            (entry, {}) if isinstance(entry, str) else (str(entry["id"]), entry)
            for entry in list(self.models)
        ]
