"""Nexus backend type ``vllm``: a vLLM OpenAI-compatible server (``vllm serve``).

What it reads (see README.md): ``GET /health`` for the engine, ``GET /v1/models`` for the served
model, its ``max_model_len`` and its LoRA adapters (``parent``), ``GET /version``, and
``GET /metrics`` for the load (running and waiting requests, KV-cache use). Requests go to
``/v1/...`` unchanged; error bodies, whose ``code`` vLLM sends as an int, are normalised
(``ERRORS``), and an error event that starts a stream fails the attempt over.

Model lifecycle (``nexus_core.adapters.ModelLifecycle``) through vLLM's sleep mode, which it
serves only when started with ``VLLM_SERVER_DEV_MODE=1`` (and ``--enable-sleep-mode``):
``GET /is_sleeping``; unload is ``POST /sleep?level=1`` (weights to CPU memory, KV cache
dropped), load is ``POST /wake_up``. The engine sleeps and wakes as a whole: every model it
serves (the base model and its LoRA adapters) at once. Without the development endpoints its
models are listed as loaded and nothing can be loaded or unloaded.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from nexus_core import hookimpl, prometheus
from nexus_core.adapter_kit import (
    ErrorBody,
    ErrorFields,
    ErrorQuirk,
    ErrorShape,
    ProbeAnswer,
    UpstreamErrors,
    bearer,
    deadline_in,
    http_phrase,
    poll_until,
    probe_get,
    read_error,
    time_left,
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
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base
from nexus_core.sse import event_data

__all__ = [
    "ERRORS",
    "VLLMAdapter",
    "load_from_metrics",
    "normalise_error_body",
    "register_backends",
]

#: vLLM's envelope with its int ``code`` as a string, as strict OpenAI clients expect; the flat
#: body of vLLM before 0.10 and its ``--api-key`` guard's ``{"error": "Unauthorized"}`` put in
#: an envelope (the type an HTTP phrase, as vLLM's own are exception names); a prompt (or
#: ``max_tokens``) over the context gets OpenAI's ``context_length_exceeded``.
ERRORS = UpstreamErrors(
    "vLLM",
    body=ErrorBody.STRING_CODES,
    error_type=http_phrase,
    quirks=(ErrorQuirk(status=400, says="maximum context length", code="context_length_exceeded"),),
)
#: The shapes of an error event in a stream.
_ERROR_SHAPES = frozenset({ErrorShape.ENVELOPE, ErrorShape.TEXT_ERROR, ErrorShape.FLAT})

#: The sleep level Nexus uses: level 1 keeps the weights in CPU memory, so ``/wake_up`` alone
#: brings the model back; after level 2 the weights must be reloaded by other means.
SLEEP_LEVEL = "1"
SLEEP_MODE = (
    "vLLM sleep mode: unload puts the engine to sleep (level 1: weights to CPU memory, "
    "KV cache dropped), load wakes it; every model it serves sleeps and wakes together"
)
NO_SLEEP_MODE = (
    "vLLM serves one set of models for its lifetime; sleep and wake-up need "
    "VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode"
)

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
#: The name of the KV-cache gauge before vLLM 0.9 (both were served until it was hidden).
KV_CACHE_LEGACY = "vllm:gpu_cache_usage_perc"
_METRICS = frozenset({RUNNING, WAITING, KV_CACHE, KV_CACHE_LEGACY})


class VLLMAdapter(OpenAIWireAdapter):
    """vLLM: engine health, models with context length and LoRA adapters, load from metrics."""

    type_name: ClassVar[str] = "vllm"
    is_cloud: ClassVar[bool] = False
    errors: ClassVar[UpstreamErrors] = ERRORS
    #: How long after the adapter is made a server that has never answered may refuse
    #: connections and still count as loading, not dead.
    startup_grace_seconds: ClassVar[float] = 600.0

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        super().__init__(config, clients)
        self.root = self.api_base.removesuffix("/v1")
        self._created = time.monotonic()
        self._answered = False

    async def probe(self) -> ProbeResult:
        """Healthy when ``/health`` is 200 and the model list reads; see README for loading."""
        health = await self.probe_get(self.root + "/health")
        if health.failure is not None:
            if health.refused and self.still_starting():
                return ProbeResult(
                    BackendStatus.LOADING,
                    detail="not answering yet (vLLM refuses connections while it loads the "
                    f"model); unhealthy if still refused {self.startup_grace_seconds / 60:g} "
                    "min after it was added",
                )
            return health.unreachable()
        self._answered = True
        if health.status != 200:
            # 503 is vLLM's EngineDeadError: the engine process is gone.
            return ProbeResult(
                BackendStatus.UNHEALTHY, detail=f"/health answered HTTP {health.status}"
            )
        result = await super().probe()
        if result.status is not BackendStatus.HEALTHY:
            return result
        answer = await self.probe_get(self.root + "/version")
        version = answer.get("version") if answer.ok else None
        return dataclasses.replace(result, version=version if isinstance(version, str) else None)

    def still_starting(self) -> bool:
        """True while the server has never answered and the start-up grace has not run out."""
        return not self._answered and time.monotonic() - self._created < self.startup_grace_seconds

    def parse_models(self, payload: Any) -> list[ModelInfo]:
        """Model cards; a LoRA adapter (``parent`` set) inherits its base model's context."""
        models = super().parse_models(payload)
        contexts = {model.id: model.context_length for model in models}
        parents = {
            str(entry.get("id")): entry.get("parent")
            for entry in payload["data"]
            if isinstance(entry, dict)
        }
        for index, model in enumerate(models):
            parent = parents.get(model.id)
            if model.context_length is None and isinstance(parent, str):
                models[index] = dataclasses.replace(model, context_length=contexts.get(parent))
        return models

    async def load(self) -> LoadSignal | None:
        """Running and waiting requests summed over engines, the fullest engine's KV cache."""
        metrics = await self.probe_get(self.root + "/metrics")
        return load_from_metrics(metrics.text) if metrics.ok else None

    # -- model lifecycle (sleep mode) ------------------------------------------------------------

    async def lifecycle_support(self) -> LifecycleSupport:
        """Load and unload when ``/is_sleeping`` answers (development mode); else the listing."""
        answer = await self.probe_get(self.root + "/is_sleeping")
        if answer.ok and isinstance(answer.get("is_sleeping"), bool):
            return LifecycleSupport(
                available_models=True, load=True, unload=True, autoload=False, detail=SLEEP_MODE
            )
        if answer.status == 404:
            return LifecycleSupport(available_models=True, autoload=False, detail=NO_SLEEP_MODE)
        return LifecycleSupport(detail=f"vLLM did not answer GET /is_sleeping: {answer.failure}")

    async def available_models(self) -> ModelInventory:
        """The served models (``/v1/models``), ``sleeping`` while the engine sleeps."""
        listing = await self._lifecycle("GET", self.api_base + "/models", LIST_TIMEOUT_SECONDS)
        try:
            models = self.parse_models(listing.payload)
        except (TypeError, KeyError) as exc:
            raise BackendError(ErrorKind.MALFORMED, f"unreadable model list: {exc}") from None
        state = ModelState.SLEEPING if await self._sleeping() else ModelState.LOADED
        return ModelInventory(
            tuple(
                AvailableModel(model.id, state, context_length=model.context_length)
                for model in models
            )
        )

    async def load_model(
        self,
        model: str,
        *,
        timeout: float = LOAD_TIMEOUT_SECONDS,  # noqa: ASYNC109 - ModelLifecycle's contract
    ) -> AvailableModel:
        """``POST /wake_up`` when the engine sleeps, then ``/is_sleeping`` until it is awake."""
        deadline = deadline_in(timeout)
        entry = await self._entry(model)
        if entry.state is not ModelState.SLEEPING:
            return entry
        await self._lifecycle("POST", self.root + "/wake_up", time_left(deadline))
        await self._wait(asleep=False, deadline=deadline, what=f"waking '{model}'")
        return dataclasses.replace(entry, state=ModelState.LOADED)

    async def unload_model(
        self,
        model: str,
        *,
        timeout: float = UNLOAD_TIMEOUT_SECONDS,  # noqa: ASYNC109 - ModelLifecycle's contract
    ) -> None:
        """``POST /sleep?level=1`` unless the engine sleeps, then wait until it does."""
        deadline = deadline_in(timeout)
        entry = await self._entry(model)
        if entry.state is ModelState.SLEEPING:
            return
        if not await self._has_sleep_mode():
            raise LifecycleError(
                LifecycleFailure.NOT_SUPPORTED, f"cannot unload '{model}': {NO_SLEEP_MODE}"
            )
        await self._lifecycle(
            "POST", self.root + "/sleep", time_left(deadline), params={"level": SLEEP_LEVEL}
        )
        await self._wait(asleep=True, deadline=deadline, what=f"putting '{model}' to sleep")

    async def _entry(self, model: str) -> AvailableModel:
        entry = (await self.available_models()).get(model)
        if entry is None:
            raise LifecycleError(
                LifecycleFailure.UNKNOWN_MODEL,
                f"backend '{self.name}' has no model '{model}'",
                status=404,
            )
        return entry

    async def _wait(self, *, asleep: bool, deadline: float, what: str) -> None:
        async def done() -> bool | None:
            return True if await self._sleeping() is asleep else None

        await poll_until(done, timeout=time_left(deadline), what=f"{what} on {self.name}")

    async def _sleeping(self) -> bool:
        """``/is_sleeping``; False on a server without it (its engine never sleeps)."""
        answer = await self._lifecycle(
            "GET", self.root + "/is_sleeping", LIST_TIMEOUT_SECONDS, allow_missing=True
        )
        return answer.get("is_sleeping") is True

    async def _has_sleep_mode(self) -> bool:
        answer = await self._lifecycle(
            "GET", self.root + "/is_sleeping", LIST_TIMEOUT_SECONDS, allow_missing=True
        )
        return answer.status != 404

    async def _lifecycle(
        self,
        method: str,
        url: str,
        timeout: float,  # noqa: ASYNC109 - passed on to lifecycle_call
        *,
        params: dict[str, str] | None = None,
        allow_missing: bool = False,
    ) -> ProbeAnswer:
        answer = await self.lifecycle_request(
            method, url, params=params, timeout=timeout, check=False
        )
        if not answer.ok and not (answer.status == 404 and allow_missing):
            raise self.answer_error(answer)
        return answer

    def stream_events(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Events relayed; an error event first fails the attempt over, a later one gets a
        string ``code``."""
        return _checked_events(events)

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/v1/models`` lists vLLM model cards (or, behind a key we lack, when the
        server answers like vLLM: an empty 200 on ``/health`` and ``{"version"}`` on ``/version``).
        """
        root = api_base(url).removesuffix("/v1")
        listing = await probe_get(clients, root + "/v1/models", bearer(api_key))
        if listing.status == 401:
            return await _answers_like_vllm(root, clients)
        entries = listing.get("data") if listing.ok else None
        return isinstance(entries, list) and any(
            isinstance(entry, dict)
            and (entry.get("owned_by") == "vllm" or isinstance(entry.get("max_model_len"), int))
            for entry in entries
        )


def load_from_metrics(text: str) -> LoadSignal | None:
    """The load signal in a vLLM ``/metrics`` page; None when it has none of the gauges."""
    samples = prometheus.parse(text, _METRICS)
    running = prometheus.total(samples, RUNNING)
    waiting = prometheus.total(samples, WAITING)
    kv_cache = prometheus.highest(samples, KV_CACHE)
    if kv_cache is None:
        kv_cache = prometheus.highest(samples, KV_CACHE_LEGACY)
    if running is None and waiting is None and kv_cache is None:
        return None
    return LoadSignal(
        busy_slots=None if running is None else int(running),
        queue_depth=None if waiting is None else int(waiting),
        kv_cache_usage=None if kv_cache is None else min(1.0, max(0.0, kv_cache)),
    )


def normalise_error_body(body: bytes, status: int) -> bytes:
    """vLLM's error body as ``ERRORS`` leaves it: an OpenAI envelope whose ``code`` is a string.

    vLLM sends ``code`` as the int HTTP status (strict OpenAI clients expect a string or null),
    vLLM before 0.10 a flat ``{"object": "error", ...}`` body, and its ``--api-key`` guard
    ``{"error": "Unauthorized"}``. Anything else is returned unchanged.
    """
    return ERRORS.rewrite(body, status)


async def _checked_events(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Relay SSE events; an error event first fails the attempt, a later one is normalised.

    vLLM reports a failure inside a stream as ``data: {"error": {..., "code": 500}}`` (then
    ``[DONE]``). Before any token the gateway can still try another backend, so that error
    becomes a ``BackendError`` classified by its code, as if vLLM had answered that status.
    """
    first = True
    try:
        async for event in events:
            # A content chunk starts with {"id":...; only error events name "error" this early.
            if b'"error"' in event[:32]:
                data = event_data(event)
                fields = read_error(data)
                if fields.shape in _ERROR_SHAPES:
                    if first:
                        raise _stream_error(data, fields)
                    rewritten = ERRORS.rewrite(data, 500)
                    if rewritten is not data:
                        event = b"data: " + rewritten + b"\n\n"
            first = False
            yield event
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()


def _stream_error(data: bytes, fields: ErrorFields) -> BackendError:
    code = fields.code
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    body = ERRORS.rewrite(data, status)
    classified = BackendError.from_status(status, body, {"content-type": "application/json"})
    return BackendError(
        classified.kind,
        f"stream failed before its first token: {fields.message or 'no message'}",
        status=status,
        body=body,
        headers=classified.headers,
    )


async def _answers_like_vllm(root: str, clients: HttpClients) -> bool:
    health = await probe_get(clients, root + "/health")
    if not health.ok or health.content:
        return False
    version = await probe_get(clients, root + "/version")
    return version.ok and isinstance(version.get("version"), str)


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``vllm`` backend type."""
    register("vllm", VLLMAdapter)
