"""Nexus backend type ``llamacpp``: llama.cpp's ``llama-server`` (one model, or router mode).

What it reads (see README.md): ``GET /health`` (503 while the model loads = ``loading``),
``GET /v1/models`` (models, per-slot context ``meta.n_ctx``, router-mode ``status``), ``GET /props``
(context, ``total_slots``, ``modalities.vision``, ``chat_template_caps.supports_tools``) and, for
the load, ``GET /slots`` (busy slots) or ``GET /metrics`` (``llamacpp:requests_processing``,
``llamacpp:requests_deferred``). Whether the server computes embeddings (``--embeddings``) is
said nowhere in what it lists: an empty ``POST /v1/embeddings`` tells, once per server start
(501 when off, before the body is read; 400 "input is required" when on). Requests go to
``/v1/...`` unchanged; error bodies, whose ``code`` llama-server sends as an int, are normalised.

Model lifecycle (``nexus_core.adapters.ModelLifecycle``), in router mode only: ``GET /models``
(every model of ``--models-dir`` with ``status.value``), ``POST /models/load`` (answered at once:
the adapter polls ``/models`` until the model is ``loaded``), ``POST /models/unload``. A
single-model server (``-m``) lists its one model as loaded and can load or unload nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeGuard

import httpx

from nexus_core import hookimpl, prometheus
from nexus_core.adapter_kit import (
    ErrorBody,
    ErrorQuirk,
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
    LoadSignal,
    ModelInfo,
    ModelInventory,
    ModelState,
    ProbeResult,
    clip,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = [
    "ERRORS",
    "LlamaCppAdapter",
    "metrics_load",
    "normalise_error_body",
    "register_backends",
]

PROCESSING = "llamacpp:requests_processing"
DEFERRED = "llamacpp:requests_deferred"
_METRICS = frozenset({PROCESSING, DEFERRED})
#: Router-mode model states in which a child server runs (``status.value``).
RUNNING_STATES = frozenset({"loaded", "loading", "sleeping"})
#: What a single-model llama-server says about the lifecycle.
SINGLE_MODEL = (
    "llama-server runs one model (-m): it cannot load or unload models; "
    "start it in router mode (--models-dir DIR) for that"
)
ROUTER = (
    "llama-server router mode (--models-dir): POST /models/load and /models/unload; "
    "beyond --models-max the least recently used model is unloaded"
)
#: llama-server's envelope with its int ``code`` as a string, as OpenAI clients expect; a prompt
#: over the context (``exceed_context_size_error``) gets OpenAI's code for it, which clients and
#: LiteLLM key on. A 501 (no ``--embeddings``) needs nothing: failover knows the status.
ERRORS = UpstreamErrors(
    "llama-server",
    body=ErrorBody.STRING_CODES,
    quirks=(ErrorQuirk(error_type="exceed_context_size_error", code="context_length_exceeded"),),
)


class LlamaCppAdapter(OpenAIWireAdapter):
    """llama-server: loading state, slot context, capabilities from ``/props``, slot load."""

    type_name: ClassVar[str] = "llamacpp"
    is_cloud: ClassVar[bool] = False
    errors: ClassVar[UpstreamErrors] = ERRORS

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        super().__init__(config, clients)
        self.root = self.api_base.removesuffix("/v1")
        #: Whether the last probe found a router (``--models-dir``) rather than one model.
        self.router = False
        #: Router mode: the models whose child server runs, as the last probe saw them.
        self.running_models: tuple[str, ...] = ()
        self._total_slots: int | None = None
        self._slots_endpoint = True
        #: Whether embeddings are on (None: unknown), and for which server start it was asked.
        self._embeddings: bool | None = None
        self._embeddings_asked: tuple[Any, ...] | None = None

    # -- probing -------------------------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        """``loading`` while ``/health`` is 503; then models and capabilities (README.md)."""
        result = await self._probe()
        if result.status is not BackendStatus.HEALTHY:
            # Down or loading: it may come back restarted with other flags; ask again then.
            self._embeddings_asked = None
        return result

    async def _probe(self) -> ProbeResult:
        health = await self.probe_get(self.root + "/health")
        if health.failure is not None:
            return health.unreachable()
        if health.status == 503:
            return ProbeResult(BackendStatus.LOADING, detail=_loading_detail(health))
        if health.status != 200:
            return ProbeResult(
                BackendStatus.UNHEALTHY, detail=f"/health answered HTTP {health.status}"
            )
        listing = await self.probe_get(self.api_base + "/models")
        if listing.failure is not None:
            return listing.unreachable()
        if listing.status == 503:
            return ProbeResult(BackendStatus.LOADING, detail=_loading_detail(listing))
        if listing.status != 200:
            return ProbeResult(
                BackendStatus.UNHEALTHY,
                detail=f"/v1/models answered HTTP {listing.status}: {_error_message(listing)}",
            )
        entries = listing.get("data")
        if not isinstance(entries, list):
            return ProbeResult(BackendStatus.UNHEALTHY, detail="unreadable model list")
        cards = [entry for entry in entries if isinstance(entry, dict)]
        self.router = any(isinstance(card.get("status"), dict) for card in cards)
        try:
            models = await (
                self._router_models(cards) if self.router else self._single_model(cards)
            )
        except (ValueError, TypeError, KeyError) as exc:
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"unreadable model list: {exc}")
        # A restarted server may have gained or lost --slots: try /slots again.
        self._slots_endpoint = True
        return ProbeResult(BackendStatus.HEALTHY, models=tuple(models))

    async def _single_model(self, cards: list[dict[str, Any]]) -> list[ModelInfo]:
        props = await self._props()
        total = props.get("total_slots")
        self._total_slots = total if _is_int(total) and total > 0 else None
        self.running_models = ()
        embeddings = await self._embeddings_enabled(props)
        return [
            dataclasses.replace(
                self._with_props(self.model_info(card), card, props), embeddings=embeddings
            )
            for card in cards
        ]

    async def _embeddings_enabled(self, props: Mapping[str, Any]) -> bool | None:
        """Whether the server was started with ``--embeddings`` (None: it did not say).

        Neither ``/props`` nor ``/v1/models`` says it; ``POST /v1/embeddings`` with an empty body
        does, without computing anything: 501 "does not support embeddings" when off (checked
        before the body is read), 400 "input is required" when on. Asked again only when the
        server may have restarted: a ``/props`` that differs (its ``media_marker`` is drawn at
        each start), or after a probe that did not find it healthy.
        """
        started = tuple(
            props.get(key) for key in ("media_marker", "build_info", "model_path", "model_alias")
        )
        if started == self._embeddings_asked:
            return self._embeddings
        try:
            response = await self.clients.probe.post(
                self.api_base + "/embeddings", json={}, headers=self.probe_headers
            )
        except httpx.HTTPError:
            return self._embeddings
        if response.status_code == 501:
            self._embeddings = False
        elif response.status_code in (200, 400):
            self._embeddings = True
        else:  # refused before the check (a key the server does not take): ask next time
            return self._embeddings
        self._embeddings_asked = started
        return self._embeddings

    async def _router_models(self, cards: list[dict[str, Any]]) -> list[ModelInfo]:
        router_props = await self._props()
        # Without autoload the router answers 400 "model is not loaded" for a stopped model.
        autoload = router_props.get("models_autoload") is not False
        self._total_slots = None
        running: list[str] = []
        models: list[ModelInfo] = []
        for card in cards:
            status = card["status"] if isinstance(card.get("status"), dict) else {}
            state = status.get("value")
            # A model whose last load crashed (status.failed) stays offered: only a request can
            # make the router try it again, and failover covers a second crash.
            if state not in RUNNING_STATES and not autoload:
                continue
            info = self.model_info(card)
            if state in RUNNING_STATES:
                running.append(info.id)
            if state == "loaded":
                # autoload=false: read the child's props without waking or loading anything.
                query = {"model": info.id, "autoload": "false"}
                props = await self._props(query)
                info = self._with_props(info, card, props)
            models.append(info)
        self.running_models = tuple(running)
        return models

    async def _props(self, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``/props``, or ``{}`` when it cannot be read: it only refines what the list says."""
        answer = await self.probe_get(self.root + "/props", params=params)
        body = answer.payload if answer.ok else None
        return body if isinstance(body, dict) else {}

    def model_info(self, entry: Mapping[str, Any]) -> ModelInfo:
        """One ``/v1/models`` card: slot context from ``meta``, vision from its modalities."""
        info = super().model_info(entry)
        meta = entry.get("meta")
        context = None
        if isinstance(meta, dict):
            context = next(
                (meta[key] for key in ("n_ctx", "n_ctx_train") if _is_int(meta.get(key))), None
            )
        architecture = entry.get("architecture")
        modalities = (
            architecture.get("input_modalities") if isinstance(architecture, dict) else None
        )
        return dataclasses.replace(
            info,
            context_length=context if context is not None else info.context_length,
            vision="image" in modalities if isinstance(modalities, list) else info.vision,
            # llama-server turns response_format (json_object / json_schema) into a grammar.
            json_mode=True,
        )

    def _with_props(
        self, info: ModelInfo, card: Mapping[str, Any], props: Mapping[str, Any]
    ) -> ModelInfo:
        """Refine a model with ``/props``: runtime slot context, vision, template tool support."""
        settings = props.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        meta = card.get("meta")
        has_slot_context = isinstance(meta, dict) and _is_int(meta.get("n_ctx"))
        if _is_int(n_ctx) and n_ctx > 0 and not has_slot_context:
            info = dataclasses.replace(info, context_length=n_ctx)
        modalities = props.get("modalities")
        vision = modalities.get("vision") if isinstance(modalities, dict) else None
        caps = props.get("chat_template_caps")
        tools = caps.get("supports_tools") if isinstance(caps, dict) else None
        return dataclasses.replace(
            info,
            vision=vision if isinstance(vision, bool) else info.vision,
            tools=tools if isinstance(tools, bool) else info.tools,
        )

    # -- load ------------------------------------------------------------------------------------

    async def load(self) -> LoadSignal | None:
        """Busy and total slots from ``/slots`` (summed over a router's running models); from
        ``/metrics`` (busy and deferred requests) when the server has no ``/slots``."""
        if self.router:
            return await self._router_load()
        if self._slots_endpoint:
            slots = await self.probe_get(self.root + "/slots")
            if slots.ok:
                return _slots_load(slots.payload)
            if slots.failure is not None:
                return None
            if slots.status == 501:  # started with --no-slots
                self._slots_endpoint = False
        metrics = await self.probe_get(self.root + "/metrics")
        return metrics_load(metrics.text, self._total_slots) if metrics.ok else None

    async def _router_load(self) -> LoadSignal | None:
        busy = total = 0
        for model in self.running_models:
            slots = await self.probe_get(
                self.root + "/slots", params={"model": model, "autoload": "false"}
            )
            if slots.failure is not None:
                return None
            signal = _slots_load(slots.payload) if slots.ok else None
            if signal is not None:
                busy += signal.busy_slots or 0
                total += signal.total_slots or 0
        return LoadSignal(busy_slots=busy, total_slots=total) if total else None

    # -- model lifecycle -------------------------------------------------------------------------

    async def lifecycle_support(self) -> LifecycleSupport:
        """Router mode: everything; a single-model server: the listing only (from ``/props``)."""
        props = await self._props()
        if props.get("role") == "router":
            autoload = props.get("models_autoload") is not False
            return LifecycleSupport(
                available_models=True, load=True, unload=True, autoload=autoload, detail=ROUTER
            )
        if not props:
            return LifecycleSupport(detail="llama-server did not answer GET /props")
        return LifecycleSupport(available_models=True, autoload=False, detail=SINGLE_MODEL)

    async def available_models(self) -> ModelInventory:
        """``GET /models``: each model with its ``status.value``, size and context once loaded."""
        answer = await self.lifecycle_request(
            "GET", self.root + "/models", timeout=LIST_TIMEOUT_SECONDS
        )
        entries = answer.get("data")
        if not isinstance(entries, list):
            raise BackendError(ErrorKind.MALFORMED, "llama-server's /models is not a model list")
        return ModelInventory(
            tuple(_available(entry) for entry in entries if isinstance(entry, dict))
        )

    async def load_model(
        self,
        model: str,
        *,
        timeout: float = LOAD_TIMEOUT_SECONDS,  # noqa: ASYNC109 - ModelLifecycle's contract
    ) -> AvailableModel:
        """``POST /models/load``, then ``/models`` until the model is loaded (or failed)."""
        deadline = deadline_in(timeout)
        entry = await self._router_entry(model, "load")
        if entry.state in (ModelState.LOADED, ModelState.SLEEPING):
            return entry  # a sleeping child wakes on the first request by itself
        if entry.state is not ModelState.LOADING:
            answer = await self.lifecycle_request(
                "POST",
                self.root + "/models/load",
                body={"model": model},
                timeout=time_left(deadline),
                check=False,
            )
            if answer.status == 404:
                raise unknown_model(model, self.name)
            if not answer.ok and "already running" not in _error_message(answer):
                raise self.answer_error(answer)

        async def loaded() -> AvailableModel | None:
            now = (await self.available_models()).get(model)
            if now is None:
                raise unknown_model(model, self.name)
            if now.state is ModelState.LOADED:
                return now
            if now.state is ModelState.UNLOADED:
                raise LifecycleError(
                    LifecycleFailure.LOAD_FAILED,
                    f"llama-server could not load '{model}'"
                    + (f": {now.detail}" if now.detail else ": it was unloaded before it served"),
                )
            return None

        return await poll_until(
            loaded, timeout=time_left(deadline), what=f"loading '{model}' on {self.name}"
        )

    async def unload_model(
        self,
        model: str,
        *,
        timeout: float = UNLOAD_TIMEOUT_SECONDS,  # noqa: ASYNC109 - ModelLifecycle's contract
    ) -> None:
        """``POST /models/unload``, then ``/models`` until the model's child server is gone."""
        deadline = deadline_in(timeout)
        entry = await self._router_entry(model, "unload")
        if entry.state in (ModelState.UNLOADED, ModelState.DOWNLOADING):
            return
        answer = await self.lifecycle_request(
            "POST",
            self.root + "/models/unload",
            body={"model": model},
            timeout=time_left(deadline),
            check=False,
        )
        if not answer.ok and "not running" not in _error_message(answer):
            raise self.answer_error(answer)

        async def gone() -> bool | None:
            now = (await self.available_models()).get(model)
            return True if now is None or now.state is ModelState.UNLOADED else None

        await poll_until(
            gone, timeout=time_left(deadline), what=f"unloading '{model}' on {self.name}"
        )

    async def _router_entry(self, model: str, operation: str) -> AvailableModel:
        """The model's entry on a router; NOT_SUPPORTED on a single-model server."""
        answer = await self.lifecycle_request(
            "GET", self.root + "/models", timeout=LIST_TIMEOUT_SECONDS
        )
        entries = answer.get("data")
        cards = (
            [entry for entry in entries if isinstance(entry, dict)]
            if isinstance(entries, list)
            else []
        )
        if not any(isinstance(card.get("status"), dict) for card in cards):
            raise LifecycleError(
                LifecycleFailure.NOT_SUPPORTED, f"cannot {operation} '{model}': {SINGLE_MODEL}"
            )
        entry = next((_available(card) for card in cards if card.get("id") == model), None)
        if entry is None:
            raise unknown_model(model, self.name)
        return entry

    # -- detection -------------------------------------------------------------------------------

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/health`` answers like llama-server and ``/props`` is llama-server's."""
        root = api_base(url).removesuffix("/v1")
        health = await probe_get(clients, root + "/health")
        body = health.payload
        if not isinstance(body, dict):
            return False
        if health.status == 503:
            # The model is still loading: every other endpoint answers the same 503.
            return _error_type(body) == "unavailable_error"
        if health.status != 200 or body.get("status") != "ok":
            return False
        props = await probe_get(clients, root + "/props", bearer(api_key))
        payload = props.payload
        if not isinstance(payload, dict):
            return False
        if props.status == 401:
            return _error_type(payload) == "authentication_error"
        return props.ok and (
            isinstance(payload.get("default_generation_settings"), dict)
            or payload.get("role") == "router"
        )


def normalise_error_body(body: bytes, status: int = 400) -> bytes:
    """llama-server's error body as ``ERRORS`` leaves it: its int ``code`` a string, OpenAI's
    ``context_length_exceeded`` for a prompt over the context, the rest of the body kept."""
    return ERRORS.rewrite(body, status)


def metrics_load(text: str, total_slots: int | None) -> LoadSignal | None:
    """Busy and deferred requests from a llama-server ``/metrics`` page (needs ``--metrics``)."""
    samples = prometheus.parse(text, _METRICS)
    processing = prometheus.total(samples, PROCESSING)
    deferred = prometheus.total(samples, DEFERRED)
    if processing is None and deferred is None:
        return None
    return LoadSignal(
        busy_slots=None if processing is None else int(processing),
        queue_depth=None if deferred is None else int(deferred),
        total_slots=total_slots,
    )


def _available(card: Mapping[str, Any]) -> AvailableModel:
    """One ``/models`` card as an ``AvailableModel`` (a single-model server's card is loaded)."""
    status = card.get("status")
    detail = None
    if isinstance(status, dict):
        value = status.get("value")
        try:
            state = ModelState(str(value))
        except ValueError:
            state, detail = ModelState.UNLOADED, f"llama-server says '{clip(str(value))}'"
        if status.get("failed") is True:
            code = status.get("exit_code")
            detail = "the last load failed" + (f" (exit code {code})" if _is_int(code) else "")
    else:
        state = ModelState.LOADED
    meta = card.get("meta")
    size = context = None
    if isinstance(meta, dict):
        size = meta["size"] if _is_int(meta.get("size")) else None
        context = meta["n_ctx"] if _is_int(meta.get("n_ctx")) else None
    return AvailableModel(
        id=str(card.get("id")),
        state=state,
        size_bytes=size,
        context_length=context,
        detail=detail,
    )


def _slots_load(slots: Any) -> LoadSignal | None:
    if not isinstance(slots, list):
        return None
    states = [slot.get("is_processing") for slot in slots if isinstance(slot, dict)]
    return LoadSignal(busy_slots=sum(state is True for state in states), total_slots=len(states))


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _error_type(payload: Mapping[str, Any]) -> str | None:
    error = payload.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None


def _error_message(answer: ProbeAnswer) -> str:
    return clip(read_error(answer.content).message or "")


def _loading_detail(answer: ProbeAnswer) -> str:
    message = _error_message(answer) or "Loading model"
    return f"llama-server: {message}"


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``llamacpp`` backend type."""
    register("llamacpp", LlamaCppAdapter)
