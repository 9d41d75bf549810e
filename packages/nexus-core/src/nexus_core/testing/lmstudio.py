"""A fake LM Studio: its OpenAI-compatible ``/v1`` API next to its REST API ``/api/v0``.

Shapes follow the LM Studio docs (``1_developer/2_rest/endpoints.mdx``, REST API v0, 0.3.6+) and
what its server is known to do (``/work/shared/reference/backend-apis.md`` §2.4):

- ``GET /api/v0/models`` lists every downloaded model with ``type`` (``llm``/``vlm``/
  ``embeddings``), ``state`` (``loaded``/``not-loaded``), ``max_context_length`` and, for a
  loaded model, ``loaded_context_length``; ``GET /api/v0/models/{id}`` one of them.
- ``GET /v1/models`` lists what requests may name: every downloaded model while just-in-time
  loading is on (the default), only the loaded ones when it is off. Entries are
  ``{"id", "object": "model", "owned_by": "organization_owner"}``.
- A request for a model that is not loaded loads it (JIT on, after ``load_delay`` seconds) or
  fails with 404 ``model_not_found`` (JIT off).
- Streams ignore ``stream_options.include_usage`` (lmstudio-bug-tracker #713): no usage chunk.
- The REST API v1 (LM Studio 0.4+, ``v1_api=True``; docs ``1_developer/2_rest/{list,load,
  unload}.md``): ``GET /api/v1/models`` lists each model by ``key`` with ``type`` (``llm``/
  ``embedding``), ``size_bytes``, ``max_context_length``, ``capabilities`` and its
  ``loaded_instances`` (``id``, ``config.context_length``); ``POST /api/v1/models/load
  {"model"}`` answers ``{"model_instance_id", "config", "load_time_seconds"}`` once loaded
  (``load_delay``), and loads **another instance** of a model already loaded (its id
  ``key:2``...), as LM Studio does; ``POST /api/v1/models/unload {"instance_id"}`` answers
  ``{"instance_id"}``. Not documented, so chosen here: an unknown model is 404
  ``model_not_found``, an unknown instance 404 ``{"error": "..."}``, a model in ``fail_loads``
  500 ``{"error": "Failed to load model ..."}``. ``Behaviour(lifecycle=True)`` applies to these
  three paths only.
- Any other path answers **200** ``{"error": "Unexpected endpoint or method. (GET /x)"}``, as
  LM Studio's server does ("Returning 200 anyway"); with ``rest_api=False`` that includes
  ``/api/v0/...``, like servers before 0.3.6, and ``v1_api=False`` ``/api/v1/...``, like servers
before 0.4.

Models are names, or mappings with an ``id`` and any of ``type`` (default ``llm``), ``state``
(default ``loaded``), ``max_context_length`` (default 32768), ``loaded_context_length`` (default
4096, reported while loaded), ``publisher``, ``arch``, ``compatibility_type``, ``quantization``,
``size_bytes`` (default 4,920,000,000).

    with FakeLMStudio("lms", [{"id": "qwen2-vl-7b-instruct", "type": "vlm",
                               "state": "not-loaded"}]).running() as fake:
        ...
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from nexus_core.testing import openai_shapes as shapes
from nexus_core.testing.fake_backend import Behaviour, FakeBackend, _Exchange, _json

__all__ = ["FakeLMStudio", "unexpected_endpoint"]

_INFERENCE_PATHS = {
    **FakeBackend.inference_paths,
    "/api/v0/chat/completions": "chat",
    "/api/v0/completions": "completions",
    "/api/v0/embeddings": "embeddings",
}
_DEFAULTS: Mapping[str, Any] = {
    "type": "llm",
    "publisher": "lmstudio-community",
    "arch": "llama",
    "compatibility_type": "gguf",
    "quantization": "Q4_K_M",
    "state": "loaded",
    "max_context_length": 32768,
    "loaded_context_length": 4096,
    "size_bytes": 4_920_000_000,
}


def unexpected_endpoint(method: str, path: str) -> dict[str, str]:
    """What LM Studio answers (with HTTP 200) for a path or method it does not serve."""
    return {"error": f"Unexpected endpoint or method. ({method} {path})"}


def model_not_found(model: str) -> dict[str, Any]:
    """LM Studio's 404 body for a model it cannot serve."""
    return shapes.error_body(
        f'Model "{model}" not found. Please specify a valid model.',
        "invalid_request_error",
        param="model",
        code="model_not_found",
    )


class FakeLMStudio(FakeBackend):
    """A fake LM Studio server on ``127.0.0.1`` (``/v1`` and the ``/api/v0`` REST API)."""

    inference_paths = _INFERENCE_PATHS
    lifecycle_paths = frozenset({"/api/v1/models", "/api/v1/models/load", "/api/v1/models/unload"})

    def __init__(
        self,
        name: str = "lmstudio",
        models: Sequence[str | Mapping[str, Any]] = ("meta-llama-3.1-8b-instruct",),
        *,
        jit: bool = True,
        rest_api: bool = True,
        v1_api: bool = True,
        load_delay: float = 0.0,
        behaviour: Behaviour | None = None,
        embeddings_dim: int = 8,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        entries = [
            {**_DEFAULTS, "id": entry} if isinstance(entry, str) else {**_DEFAULTS, **entry}
            for entry in models
        ]
        super().__init__(
            name,
            entries,
            behaviour=behaviour,
            embeddings_dim=embeddings_dim,
            api_key=api_key,
            port=port,
        )
        #: Just-in-time loading: ``/v1/models`` lists every model and a request loads it.
        self.jit = jit
        #: Serve ``/api/v0`` (LM Studio 0.3.6 and later).
        self.rest_api = rest_api
        #: Seconds a load takes (just in time, or through ``/api/v1/models/load``).
        self.load_delay = load_delay
        #: Serve the REST API v1 (LM Studio 0.4 and later).
        self.v1_api = v1_api
        #: Models whose every load fails.
        self.fail_loads: set[str] = set()

    # -- steering --------------------------------------------------------------------------------

    def set_state(self, model: str, state: str) -> None:
        """Mark a model ``loaded`` or ``not-loaded`` (what ``lms load`` / ``lms unload`` do)."""
        entry = self._entry(model)
        entry["state"] = state
        entry["instances"] = [model] if state == "loaded" else []

    def instances(self, model: str) -> list[str]:
        """The ids of the model's loaded instances."""
        entry = self._entry(model)
        if "instances" not in entry:
            entry["instances"] = [model] if entry["state"] == "loaded" else []
        return list(entry["instances"])

    def state(self, model: str) -> str:
        """The model's current ``state``."""
        return str(self._entry(model)["state"])

    # -- serving ---------------------------------------------------------------------------------

    async def route(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse | None:
        """``/api/v0`` and ``/v1/models``; inference falls through; anything else is 200."""
        path, method = request.path, request.method
        if kind is not None:
            return await self._before_inference(body)
        if self.v1_api and path in self.lifecycle_paths:
            return await self._v1(request, behaviour, body)
        if method == "GET" and self.rest_api:
            if path == "/api/v0/models":
                data = [self._rest_card(entry) for entry in self._entries()]
                return self._ok(behaviour, {"object": "list", "data": data}, extra=False)
            if path.startswith("/api/v0/models/"):
                wanted = path.removeprefix("/api/v0/models/")
                for entry in self._entries():
                    if entry["id"] == wanted:
                        return self._ok(behaviour, self._rest_card(entry), extra=False)
                return _json(model_not_found(wanted), 404)
        if method == "GET" and path == "/v1/models":
            data = [
                {"id": entry["id"], "object": "model", "owned_by": "organization_owner"}
                for entry in self._entries()
                if self.jit or entry["state"] == "loaded"
            ]
            return self._ok(behaviour, {"object": "list", "data": data}, extra=False)
        return _json(unexpected_endpoint(method, path), 200)

    async def _v1(self, request: web.Request, behaviour: Behaviour, body: bytes) -> web.Response:
        """The REST API v1's model list, load and unload."""
        path, method = request.path, request.method
        if path == "/api/v1/models":
            if method != "GET":
                return _json(unexpected_endpoint(method, path), 200)
            models = [self._v1_card(entry) for entry in self._entries()]
            return self._ok(behaviour, {"models": models}, extra=False)
        if method != "POST":
            return _json(unexpected_endpoint(method, path), 200)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return _json({"error": "Invalid JSON body"}, 400)
        if path == "/api/v1/models/load":
            return await self._v1_load(behaviour, payload)
        wanted = payload.get("instance_id")
        for entry in self._entries():
            instances = self.instances(entry["id"])
            if wanted in instances:
                instances.remove(wanted)
                entry["instances"] = instances
                entry["state"] = "loaded" if instances else "not-loaded"
                return self._ok(behaviour, {"instance_id": wanted}, extra=False)
        return _json({"error": f"No loaded model instance with id '{wanted}'"}, 404)

    async def _v1_load(self, behaviour: Behaviour, payload: dict[str, Any]) -> web.Response:
        model = payload.get("model")
        entry = next((e for e in self._entries() if e["id"] == model), None)
        if entry is None or not isinstance(model, str):
            return _json(model_not_found(str(model)), 404)
        started = asyncio.get_running_loop().time()
        if self.load_delay:
            await asyncio.sleep(self.load_delay)
        if model in self.fail_loads:
            return _json({"error": f'Failed to load model "{model}": not enough memory'}, 500)
        instances = self.instances(model)
        instance = model if not instances else f"{model}:{len(instances) + 1}"
        entry["instances"] = [*instances, instance]
        entry["state"] = "loaded"
        config = payload.get("config")
        context = config.get("context_length") if isinstance(config, dict) else None
        if isinstance(context, int):
            entry["loaded_context_length"] = context
        answer = {
            "model_instance_id": instance,
            "config": {"context_length": entry["loaded_context_length"]},
            "load_time_seconds": round(asyncio.get_running_loop().time() - started, 3),
        }
        return self._ok(behaviour, answer, extra=False)

    def _v1_card(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        embedding = entry["type"] == "embeddings"
        card: dict[str, Any] = {
            "type": "embedding" if embedding else "llm",
            "publisher": entry["publisher"],
            "key": entry["id"],
            "display_name": entry["id"],
            "quantization": {"name": entry["quantization"], "bits_per_weight": 4},
            "size_bytes": entry["size_bytes"],
            "params_string": None if embedding else "8B",
            "loaded_instances": [
                {"id": instance, "config": {"context_length": entry["loaded_context_length"]}}
                for instance in self.instances(entry["id"])
            ],
            "max_context_length": entry["max_context_length"],
            "format": entry["compatibility_type"],
        }
        if not embedding:
            card["architecture"] = entry["arch"]
            card["capabilities"] = {
                "vision": entry["type"] == "vlm",
                "trained_for_tool_use": False,
            }
        return card

    async def _before_inference(self, body: bytes) -> web.Response | None:
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            return None  # the OpenAI layer answers malformed bodies
        if not isinstance(model, str):
            return None
        entry = next((e for e in self._entries() if e["id"] == model), None)
        if entry is None:
            return _json(model_not_found(model), 404)
        if entry["state"] != "loaded":
            if not self.jit:
                return _json(model_not_found(model), 404)
            if self.load_delay:
                await asyncio.sleep(self.load_delay)
            self.set_state(model, "loaded")
        return None

    async def _generate(
        self,
        request: web.Request,
        behaviour: Behaviour,
        payload: dict[str, Any],
        model: str,
        kind: str,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        # LM Studio does not honour stream_options.include_usage: no usage chunk, ever.
        payload = {key: value for key, value in payload.items() if key != "stream_options"}
        return await super()._generate(request, behaviour, payload, model, kind, exchange)

    def _model_ids(self) -> set[str]:
        return {
            str(entry["id"]) for entry in self._entries() if self.jit or entry["state"] == "loaded"
        }

    def _entries(self) -> list[dict[str, Any]]:
        return [entry for entry in list(self.models) if isinstance(entry, dict)]

    def _entry(self, model: str) -> dict[str, Any]:
        for entry in self._entries():
            if entry["id"] == model:
                return entry
        raise KeyError(model)

    @staticmethod
    def _rest_card(entry: Mapping[str, Any]) -> dict[str, Any]:
        card = {
            "id": entry["id"],
            "object": "model",
            "type": entry["type"],
            "publisher": entry["publisher"],
            "arch": entry["arch"],
            "compatibility_type": entry["compatibility_type"],
            "quantization": entry["quantization"],
            "state": entry["state"],
            "max_context_length": entry["max_context_length"],
        }
        if entry["state"] == "loaded" and entry.get("loaded_context_length") is not None:
            card["loaded_context_length"] = entry["loaded_context_length"]
        return card
