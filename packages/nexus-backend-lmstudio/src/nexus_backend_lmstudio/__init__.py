"""Nexus backend type ``lmstudio``: LM Studio's local server (default port 1234).

A probe asks ``GET /v1/models`` what requests may name (every downloaded model while
just-in-time loading is on, only the loaded ones when it is off), then LM Studio's REST API
``GET /api/v0/models`` (0.3.6+) what each model is: ``type`` (``llm`` / ``vlm`` /
``embeddings``), ``state`` (``loaded`` / ``not-loaded``), ``max_context_length`` and, for a loaded
model, ``loaded_context_length``. Servers without ``/api/v0`` (LM Studio answers unknown paths with
HTTP 200 ``{"error": "Unexpected endpoint or method. ..."}``) are described by ``/v1/models``
alone. Which models are in memory is kept for a router that prefers them (``model_loaded``).
Requests go to ``/v1/...`` unchanged; LM Studio sends no usage chunk in streams, which the relay
passes through as it is. Its ``{"error": "text"}`` error bodies become OpenAI's envelope.

Model lifecycle (``nexus_core.adapters.ModelLifecycle``) through the REST API v1 (LM Studio 0.4+):
``GET /api/v1/models`` (every downloaded model, its ``size_bytes`` and ``loaded_instances``),
``POST /api/v1/models/load {"model"}`` (answers once loaded; it would load a second instance of
a loaded model, so the adapter loads only what has no instance), ``POST /api/v1/models/unload
{"instance_id"}`` for each instance. Before 0.4 only the listing (``/api/v0/models``'s
``state``) is there: loading and unloading are the ``lms`` command's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from nexus_core import hookimpl
from nexus_core.adapter_kit import (
    ErrorBody,
    ProbeAnswer,
    UpstreamErrors,
    bearer,
    deadline_in,
    poll_until,
    probe_get,
    read_error,
    time_left,
    unknown_model,
)
from nexus_core.adapters import (
    LIST_TIMEOUT_SECONDS,
    LOAD_TIMEOUT_SECONDS,
    UNLOAD_TIMEOUT_SECONDS,
    AvailableModel,
    BackendError,
    BackendStatus,
    ErrorKind,
    LifecycleError,
    LifecycleFailure,
    LifecycleSupport,
    ModelInfo,
    ModelInventory,
    ModelState,
    ProbeResult,
    clip,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["ERRORS", "LMStudioAdapter", "describe", "register_backends"]

#: How LM Studio answers (with HTTP 200) a path it does not serve.
UNEXPECTED_ENDPOINT = "Unexpected endpoint or method."
_VISION = {"vlm": True, "llm": False, "embeddings": False}
_EMBEDDINGS = {"embeddings": True, "llm": False, "vlm": False}
REST_V1 = (
    "LM Studio REST API v1: /api/v1/models, /api/v1/models/load and /api/v1/models/unload; "
    "whether a request loads a model (just-in-time loading) is a server setting it does not report"
)
REST_V0 = (
    "LM Studio before 0.4: /api/v0/models lists the models and their state; its REST API "
    "has no load or unload (use the lms command)"
)

#: LM Studio's ``{"error": "text"}`` bodies as OpenAI's envelope (its OpenAI-shaped ones pass).
ERRORS = UpstreamErrors("LM Studio", body=ErrorBody.OPENAI)


class LMStudioAdapter(OpenAIWireAdapter):
    """LM Studio: OpenAI wire for requests, the ``/api/v0`` REST API for what each model is."""

    type_name: ClassVar[str] = "lmstudio"
    is_cloud: ClassVar[bool] = False
    errors: ClassVar[UpstreamErrors] = ERRORS

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        super().__init__(config, clients)
        self._loaded: frozenset[str] | None = None

    @property
    def loaded_models(self) -> frozenset[str] | None:
        """Models in memory at the last probe; None when ``/api/v0/models`` did not answer."""
        return self._loaded

    def model_loaded(self, model: str) -> bool | None:
        """True when ``model`` is in memory (a request skips the load), None if unknown."""
        return None if self._loaded is None else model in self._loaded

    async def probe(self) -> ProbeResult:
        """The servable models from ``/v1/models``, described by ``/api/v0/models``."""
        # Both at once: the probe's duration counts as the backend's latency.
        result: ProbeResult
        details: dict[str, Mapping[str, Any]] | None
        result, details = await asyncio.gather(super().probe(), self._rest_models())
        if result.status is not BackendStatus.HEALTHY:
            return result
        if details is None:
            self._loaded = None
            return result
        self._loaded = frozenset(
            model_id for model_id, entry in details.items() if entry.get("state") == "loaded"
        )
        models = tuple(describe(model, details.get(model.id)) for model in result.models)
        return dataclasses.replace(result, models=models)

    async def _rest_models(self) -> dict[str, Mapping[str, Any]] | None:
        """``/api/v0/models`` by id; None when the server has no REST API or it fails."""
        answer = await self.probe_get(self.api_base.removesuffix("/v1") + "/api/v0/models")
        data = answer.get("data")
        if not answer.ok or not isinstance(data, list):
            return None
        return {
            entry["id"]: entry
            for entry in data
            if isinstance(entry, dict) and isinstance(entry.get("id"), str)
        }

    # -- model lifecycle -------------------------------------------------------------------------

    @property
    def _root(self) -> str:
        return self.api_base.removesuffix("/v1")

    async def lifecycle_support(self) -> LifecycleSupport:
        """Everything with the REST API v1 (0.4+); the listing alone with ``/api/v0``."""
        v1 = await self.probe_get(self._root + "/api/v1/models")
        if v1.ok and isinstance(v1.get("models"), list):
            return LifecycleSupport(available_models=True, load=True, unload=True, detail=REST_V1)
        v0 = await self.probe_get(self._root + "/api/v0/models")
        if v0.ok and isinstance(v0.get("data"), list):
            return LifecycleSupport(available_models=True, detail=REST_V0)
        return LifecycleSupport(detail="LM Studio's REST API did not answer")

    async def available_models(self) -> ModelInventory:
        """``/api/v1/models`` (sizes, instances); ``/api/v0/models`` before LM Studio 0.4."""
        v1 = await self._v1_models()
        if v1 is not None:
            return ModelInventory(tuple(_v1_available(card) for card in v1))
        v0 = await self.lifecycle_request(
            "GET", self._root + "/api/v0/models", timeout=LIST_TIMEOUT_SECONDS
        )
        data = v0.get("data")
        if not isinstance(data, list):
            raise BackendError(ErrorKind.MALFORMED, "LM Studio's /api/v0/models is not a list")
        return ModelInventory(
            tuple(_v0_available(entry) for entry in data if isinstance(entry, dict))
        )

    async def load_model(
        self,
        model: str,
        *,
        timeout: float = LOAD_TIMEOUT_SECONDS,  # noqa: ASYNC109 - ModelLifecycle's contract
    ) -> AvailableModel:
        """``POST /api/v1/models/load`` unless an instance is loaded; LM Studio answers once
        the model is loaded."""
        deadline = deadline_in(timeout)
        card = await self._v1_card(model, "load")
        if _instances(card):
            return _v1_available(card)
        answer = await self.lifecycle_request(
            "POST",
            self._root + "/api/v1/models/load",
            body={"model": model},
            timeout=time_left(deadline),
            check=False,
        )
        self._check_answer(answer, model, "load")

        async def loaded() -> AvailableModel | None:
            now = (await self.available_models()).get(model)
            return now if now is not None and now.loaded else None

        return await poll_until(
            loaded, timeout=time_left(deadline), what=f"loading '{model}' on {self.name}"
        )

    async def unload_model(
        self,
        model: str,
        *,
        timeout: float = UNLOAD_TIMEOUT_SECONDS,  # noqa: ASYNC109 - ModelLifecycle's contract
    ) -> None:
        """``POST /api/v1/models/unload`` for each loaded instance of ``model``."""
        deadline = deadline_in(timeout)
        card = await self._v1_card(model, "unload")
        for instance in _instances(card):
            answer = await self.lifecycle_request(
                "POST",
                self._root + "/api/v1/models/unload",
                body={"instance_id": instance},
                timeout=time_left(deadline),
                check=False,
            )
            if answer.status != 404:  # gone meanwhile (its TTL ran out): nothing to do
                self._check_answer(answer, model, "unload")

    async def _v1_models(self) -> list[dict[str, Any]] | None:
        """``/api/v1/models``' models; None on a server without the v1 API (before 0.4)."""
        answer = await self.lifecycle_request(
            "GET", self._root + "/api/v1/models", timeout=LIST_TIMEOUT_SECONDS, check=False
        )
        models = answer.get("models")
        if answer.ok and isinstance(models, list):
            return [card for card in models if isinstance(card, dict)]
        if answer.ok or answer.status == 404:
            return None  # LM Studio's 200 "Unexpected endpoint or method."
        raise self.answer_error(answer)

    async def _v1_card(self, model: str, operation: str) -> dict[str, Any]:
        cards = await self._v1_models()
        if cards is None:
            raise LifecycleError(
                LifecycleFailure.NOT_SUPPORTED, f"cannot {operation} '{model}': {REST_V0}"
            )
        card = next((card for card in cards if card.get("key") == model), None)
        if card is None:
            raise unknown_model(model, self.name)
        return card

    def _check_answer(self, answer: ProbeAnswer, model: str, operation: str) -> None:
        """Raise what an answer to a load or unload other than a 200 means."""
        error = answer.get("error")
        if answer.ok and error is None:
            return
        if answer.status == 404:
            raise unknown_model(model, self.name)
        message = read_error(answer.content).message or f"HTTP {answer.status}"
        raise LifecycleError(
            LifecycleFailure.LOAD_FAILED,
            f"LM Studio could not {operation} '{model}': {clip(message)}",
            status=answer.status,
            body=answer.content,
        )

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/api/v0/models`` answers a model list, or LM Studio's own 200 error."""
        answer = await probe_get(
            clients, api_base(url).removesuffix("/v1") + "/api/v0/models", bearer(api_key)
        )
        if not answer.ok:
            return False
        error = answer.get("error")
        # A server before 0.3.6 has no /api/v0, but its "Returning 200 anyway" is unmistakable.
        return isinstance(answer.get("data"), list) or (
            isinstance(error, str) and error.startswith(UNEXPECTED_ENDPOINT)
        )


def describe(model: ModelInfo, entry: Mapping[str, Any] | None) -> ModelInfo:
    """``model`` (from ``/v1/models``) with what ``/api/v0/models`` says about it."""
    if entry is None:
        return model
    kind = entry.get("type")
    context = _positive(entry.get("max_context_length"))
    if entry.get("state") == "loaded":
        # The window it was loaded with is what a request must fit in now.
        context = _positive(entry.get("loaded_context_length")) or context
    embedder = kind == "embeddings"
    return ModelInfo(
        id=model.id,
        context_length=context or model.context_length,
        vision=_VISION.get(kind) if isinstance(kind, str) else None,
        tools=False if embedder else None,
        json_mode=False if embedder else None,
        embeddings=_EMBEDDINGS.get(kind) if isinstance(kind, str) else None,
        owned_by=model.owned_by,
    )


def _instances(card: Mapping[str, Any]) -> list[str]:
    """The ids of a ``/api/v1/models`` card's loaded instances."""
    instances = card.get("loaded_instances")
    if not isinstance(instances, list):
        return []
    return [str(item["id"]) for item in instances if isinstance(item, dict) and item.get("id")]


def _v1_available(card: Mapping[str, Any]) -> AvailableModel:
    instances = card.get("loaded_instances")
    first = instances[0] if isinstance(instances, list) and instances else None
    config = first.get("config") if isinstance(first, dict) else None
    context = _positive(config.get("context_length")) if isinstance(config, dict) else None
    count = len(_instances(card))
    return AvailableModel(
        id=str(card.get("key")),
        state=ModelState.LOADED if count else ModelState.UNLOADED,
        size_bytes=_positive(card.get("size_bytes")),
        context_length=context,
        detail=f"{count} instances loaded" if count > 1 else None,
    )


def _v0_available(entry: Mapping[str, Any]) -> AvailableModel:
    loaded = entry.get("state") == "loaded"
    return AvailableModel(
        id=str(entry.get("id")),
        state=ModelState.LOADED if loaded else ModelState.UNLOADED,
        context_length=_positive(entry.get("loaded_context_length")) if loaded else None,
    )


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``lmstudio`` backend type."""
    register("lmstudio", LMStudioAdapter)
