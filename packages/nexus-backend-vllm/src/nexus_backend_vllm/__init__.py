"""Nexus backend type ``vllm``: a vLLM OpenAI-compatible server (``vllm serve``).

What it reads (see README.md): ``GET /health`` for the engine, ``GET /v1/models`` for the served
model, its ``max_model_len`` and its LoRA adapters (``parent``), ``GET /version``, and
``GET /metrics`` for the load (running and waiting requests, KV-cache use). Requests go to
``/v1/...`` unchanged; error bodies, whose ``code`` vLLM sends as an int, are normalised.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from http import HTTPStatus
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl, prometheus
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    LoadSignal,
    ModelInfo,
    ProbeResult,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base, dumps
from nexus_core.sse import event_data

__all__ = ["VLLMAdapter", "load_from_metrics", "normalise_error_body", "register_backends"]

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
        headers = self._probe_headers()
        try:
            health = await self.clients.probe.get(self.root + "/health", headers=headers)
        except httpx.TimeoutException:
            return ProbeResult(BackendStatus.UNHEALTHY, detail="probe timed out")
        except httpx.HTTPError as exc:
            if _refused(exc) and self.still_starting():
                return ProbeResult(
                    BackendStatus.LOADING,
                    detail="not answering yet (vLLM refuses connections while it loads the "
                    f"model); unhealthy if still refused {self.startup_grace_seconds / 60:g} "
                    "min after it was added",
                )
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"cannot connect: {exc}")
        self._answered = True
        if health.status_code != 200:
            # 503 is vLLM's EngineDeadError: the engine process is gone.
            return ProbeResult(
                BackendStatus.UNHEALTHY, detail=f"/health answered HTTP {health.status_code}"
            )
        result = await super().probe()
        if result.status is not BackendStatus.HEALTHY:
            return result
        return dataclasses.replace(result, version=await self._version(headers))

    def still_starting(self) -> bool:
        """True while the server has never answered and the start-up grace has not run out."""
        return not self._answered and time.monotonic() - self._created < self.startup_grace_seconds

    async def _version(self, headers: Mapping[str, str]) -> str | None:
        try:
            response = await self.clients.probe.get(self.root + "/version", headers=headers)
            version = response.json().get("version") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return version if isinstance(version, str) else None

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
        try:
            response = await self.clients.probe.get(
                self.root + "/metrics", headers=self._probe_headers()
            )
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return load_from_metrics(response.text)

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Forward the body; error bodies come back normalised, stream errors classified."""
        try:
            response = await self.clients.transport.post(
                self._urls[endpoint], body, self._headers, stream=stream, timeouts=timeouts
            )
        except BackendError as exc:
            if exc.status is not None and exc.body:
                exc.body = normalise_error_body(exc.body, exc.status)
            raise
        if response.events is not None:
            response.events = _checked_events(response.events)
        return response

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/v1/models`` lists vLLM model cards (or, behind a key we lack, when the
        server answers like vLLM: an empty 200 on ``/health`` and ``{"version"}`` on ``/version``).
        """
        root = api_base(url).removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            response = await clients.probe.get(root + "/v1/models", headers=headers)
            if response.status_code == 401:
                return await _answers_like_vllm(root, clients)
            entries = response.json().get("data") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
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
    """vLLM's error body as an OpenAI envelope whose ``code`` is a string.

    vLLM sends ``code`` as the int HTTP status (strict OpenAI clients expect a string or null),
    vLLM before 0.10 a flat ``{"object": "error", ...}`` body, and its ``--api-key`` guard
    ``{"error": "Unauthorized"}``. Anything else is returned unchanged.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    error = _error_fields(payload, status)
    if error is None or error == payload.get("error"):
        return body
    return dumps({"error": error})


def _error_fields(payload: Any, status: int) -> dict[str, Any] | None:
    """The error object of an error body, with a string ``code``; None for anything else."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        fields = dict(error)
    elif isinstance(error, str):
        fields = {"message": error, "type": _phrase(status), "param": None, "code": status}
    elif payload.get("object") == "error":
        fields = {key: payload.get(key) for key in ("message", "type", "param", "code")}
    else:
        return None
    code = fields.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        fields["code"] = str(code)
    return fields


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


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
                try:
                    payload = json.loads(data)
                except ValueError:
                    payload = None
                error = _error_fields(payload, 500)
                if error is not None:
                    if first:
                        raise _stream_error(error)
                    if error != payload.get("error"):
                        event = b"data: " + dumps({"error": error}) + b"\n\n"
            first = False
            yield event
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()


def _stream_error(error: Mapping[str, Any]) -> BackendError:
    code = error.get("code")
    status = int(code) if isinstance(code, str) and code.isdigit() else 500
    if not 400 <= status <= 599:
        status = 500
    classified = BackendError.from_status(
        status, dumps({"error": dict(error)}), {"content-type": "application/json"}
    )
    return BackendError(
        classified.kind,
        f"stream failed before its first token: {error.get('message') or 'no message'}",
        status=status,
        body=classified.body,
        headers=classified.headers,
    )


def _refused(exc: BaseException) -> bool:
    """True when a connection error comes down to ECONNREFUSED (nothing listens on the port)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _answers_like_vllm(root: str, clients: HttpClients) -> bool:
    health = await clients.probe.get(root + "/health")
    if health.status_code != 200 or health.content:
        return False
    version = await clients.probe.get(root + "/version")
    body = version.json() if version.status_code == 200 else None
    return isinstance(body, dict) and isinstance(body.get("version"), str)


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``vllm`` backend type."""
    register("vllm", VLLMAdapter)
