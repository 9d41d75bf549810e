"""A fake vLLM OpenAI-compatible server (``vllm serve``), built from vLLM 0.33's wire format.

What it serves, as vLLM does (``reference/backend-apis.md`` §2.2):

- ``GET /health``: 200 with an empty body; 503, empty, once ``engine_dead`` is set.
- ``GET /version`` ``{"version": ...}``, ``GET /ping``, ``GET /load`` ``{"server_load": N}``.
- ``GET /v1/models``: one card per served model (``owned_by: vllm``, ``root``, ``parent: null``,
  ``max_model_len``, ``permission``) and one per LoRA adapter (``parent`` = its base model,
  ``max_model_len: null``). LoRA adapters are served models too.
- ``GET /metrics``: Prometheus text (``# HELP``/``# TYPE``, one label set per engine) with
  ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``
  (``vllm:gpu_cache_usage_perc`` for a pre-0.9 server) and the usual counters and histograms.
  The figures follow the requests in flight (over ``max_num_seqs`` they wait), or ``set_load``.
- A prompt over ``max_model_len``, or a prompt plus ``max_tokens`` (``max_completion_tokens``)
  over it, is refused with vLLM's 400 and its words (tokens here are words).
- Errors ``{"error": {"message", "type": "NotFoundError"..., "param", "code": <int status>}}``;
  with ``api_key``, ``/v1/...`` without the key is 401 ``{"error": "Unauthorized"}`` while
  ``/health``, ``/metrics``, ``/version``, ``/load`` and ``/ping`` stay public.

Sleep mode (``dev_mode=True``: a server started with ``VLLM_SERVER_DEV_MODE=1`` and
``--enable-sleep-mode``), as vLLM's ``sleep_mode`` docs and its dev router describe it:
``POST /sleep?level=1`` and ``POST /wake_up`` answer 200 with an empty body once done
(``sleep_seconds``, ``wake_seconds``), ``GET /is_sleeping`` ``{"is_sleeping": bool}``. While
asleep, inference answers 503 ``ServiceUnavailableError`` (what vLLM's docs say of a sleeping
model). Without ``dev_mode`` those paths are 404 ``{"detail": "Not Found"}``, FastAPI's. A
``Behaviour(lifecycle=True)`` applies to those three paths only.

vLLM refuses connections while it loads a model (the port is bound but not listening): a test
models that by pointing an adapter at a ``FakeVLLM(port=free_port())`` that is not started yet.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from aiohttp import web

from nexus_core.testing import openai_shapes as shapes
from nexus_core.testing.fake_backend import Behaviour, FakeBackend, _Exchange, _json

KV_CACHE_METRIC = "vllm:kv_cache_usage_perc"
LEGACY_KV_CACHE_METRIC = "vllm:gpu_cache_usage_perc"

# vLLM's error ``type`` per status (create_error_response); other statuses use the HTTP phrase.
_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class FakeVLLM(FakeBackend):
    """A vLLM server on ``127.0.0.1``: OpenAI wire plus vLLM's health, models and metrics."""

    #: As vLLM started with ``--enable-prompt-tokens-details`` (without it: ``null``).
    reports_cached_tokens = True

    public_paths = frozenset({"/health", "/ping", "/load", "/version", "/metrics"})
    lifecycle_paths = frozenset({"/sleep", "/wake_up", "/is_sleeping"})

    def __init__(
        self,
        name: str = "vllm",
        models: Sequence[str | Mapping[str, Any]] = ("fake-model",),
        *,
        behaviour: Behaviour | None = None,
        embeddings_dim: int = 8,
        api_key: str | None = None,
        port: int = 0,
        max_model_len: int = 8192,
        lora_modules: Mapping[str, str] | None = None,
        max_num_seqs: int = 256,
        engines: int = 1,
        kv_cache_metric: str = KV_CACHE_METRIC,
        version: str = "0.33.0",
        dev_mode: bool = False,
        sleeping: bool = False,
        sleep_seconds: float = 0.0,
        wake_seconds: float = 0.0,
    ) -> None:
        super().__init__(
            name,
            models,
            behaviour=behaviour,
            embeddings_dim=embeddings_dim,
            api_key=api_key,
            port=port,
        )
        self.max_model_len = max_model_len
        #: LoRA adapter name -> the base model it applies to (``--lora-modules name=path``).
        self.lora_modules: dict[str, str] = dict(lora_modules or {})
        self.max_num_seqs = max_num_seqs
        self.engines = engines
        self.kv_cache_metric = kv_cache_metric
        self.version = version
        #: While True, ``/health`` answers 503 (vLLM's ``EngineDeadError``).
        self.engine_dead = False
        #: Serve ``/sleep``, ``/wake_up`` and ``/is_sleeping`` (``VLLM_SERVER_DEV_MODE=1``).
        self.dev_mode = dev_mode
        #: Whether the engine is asleep (its models out of GPU memory).
        self.sleeping = sleeping
        #: The level of the last ``/sleep``.
        self.sleep_level: int | None = 1 if sleeping else None
        #: Seconds ``/sleep`` and ``/wake_up`` take.
        self.sleep_seconds = sleep_seconds
        self.wake_seconds = wake_seconds
        #: Generation requests being answered right now.
        self.in_flight = 0
        self._load_override: tuple[int | None, int | None, float | None] | None = None
        self._stream_failures: list[tuple[int, int, str]] = []

    def set_load(
        self,
        *,
        running: int | None = None,
        waiting: int | None = None,
        kv_cache_usage: float | None = None,
    ) -> None:
        """Report these figures in ``/metrics`` (totals over engines); no argument: real ones."""
        if running is None and waiting is None and kv_cache_usage is None:
            self._load_override = None
        else:
            self._load_override = (running, waiting, kv_cache_usage)

    def fail_next_stream(
        self, *, after_events: int = 0, status: int = 500, message: str = "engine failure"
    ) -> None:
        """Make the next streamed answer send ``after_events`` chunks, then vLLM's in-stream
        error event ``data: {"error": {..., "code": status}}`` and ``data: [DONE]``."""
        self._stream_failures.append((after_events, status, message))

    def reset(self) -> None:
        """Forget requests and steering; back to a healthy, idle server."""
        super().reset()
        self.engine_dead = False
        self._load_override = None
        self._stream_failures.clear()

    # -- serving -------------------------------------------------------------------------------

    async def route(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse | None:
        """vLLM's own endpoints, and its checks of an inference request."""
        path, method = request.path, request.method
        if kind is not None:
            return self._check_request(body, kind)
        if path in self.lifecycle_paths:
            return await self._sleep_mode(request, path)
        if method != "GET" and path != "/ping":
            return None
        if path == "/health":
            return web.Response(status=503 if self.engine_dead else 200)
        if path == "/version":
            return _json({"version": self.version}, 200)
        if path == "/ping":
            return web.Response(status=503 if self.engine_dead else 200)
        if path == "/load":
            return _json({"server_load": self.in_flight}, 200)
        if path == "/metrics":
            return web.Response(
                body=self.metrics_text().encode(), headers={"Content-Type": _PROMETHEUS}
            )
        if path == "/v1/models":
            return self._ok(behaviour, {"object": "list", "data": self.model_cards()}, extra=False)
        return _json(self._error("Not Found", 404, "Not Found"), 404)

    async def _sleep_mode(self, request: web.Request, path: str) -> web.Response:
        wanted = "GET" if path == "/is_sleeping" else "POST"
        if not self.dev_mode:
            return _json({"detail": "Not Found"}, 404)
        if request.method != wanted:
            return _json({"detail": "Method Not Allowed"}, 405)
        if path == "/is_sleeping":
            return _json({"is_sleeping": self.sleeping}, 200)
        if path == "/sleep":
            level = request.query.get("level", "1")
            if not level.isdigit():
                return _json({"detail": "invalid level"}, 422)
            await asyncio.sleep(self.sleep_seconds)
            self.sleeping, self.sleep_level = True, int(level)
        else:
            await asyncio.sleep(self.wake_seconds)
            self.sleeping = False
        return web.Response(status=200)

    def _check_request(self, body: bytes, kind: str) -> web.Response | None:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return _json(self._error("Invalid JSON body", 400), 400)
        model = payload.get("model")
        if isinstance(model, str) and model not in self._model_ids():
            error = self._error(f"The model `{model}` does not exist.", 404, param="model")
            return _json(error, 404)
        if self.sleeping:
            return _json(self._error("The model is sleeping.", 503), 503)
        if kind != "embeddings":
            return self._check_context(payload, kind)
        return None

    def _check_context(self, payload: dict[str, Any], kind: str) -> web.Response | None:
        """vLLM's 400s for a prompt, or a prompt plus ``max_tokens``, over ``max_model_len``
        (the fake's tokens are words, ``openai_shapes.count_tokens``)."""
        context = self.max_model_len
        prompt = shapes.count_tokens(payload.get("messages" if kind == "chat" else "prompt"))
        if prompt >= context:
            message = (
                f"This model's maximum context length is {context} tokens. However, your "
                f"request has {prompt} input tokens. Please reduce the length of the input "
                "messages."
            )
            return _json(self._error(message, 400), 400)
        wanted = payload.get("max_completion_tokens")
        if wanted is None:
            wanted = payload.get("max_tokens")
        if isinstance(wanted, int) and prompt + wanted > context:
            message = (
                f"'max_tokens' or 'max_completion_tokens' is too large: {wanted}. This model's "
                f"maximum context length is {context} tokens and your request has {prompt} "
                f"input tokens ({wanted} > {context} - {prompt})."
            )
            return _json(self._error(message, 400), 400)
        return None

    def template_error(self, message: str) -> web.Response:
        """A chat template's refusal: vLLM's 400 ``BadRequestError``."""
        return _json(self._error(message, 400), 400)

    async def _generate(
        self,
        request: web.Request,
        behaviour: Behaviour,
        payload: dict[str, Any],
        model: str,
        kind: str,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        self.in_flight += 1
        try:
            if payload.get("stream") is True and self._stream_failures:
                return await self._failing_stream(request, behaviour, payload, model)
            return await super()._generate(request, behaviour, payload, model, kind, exchange)
        finally:
            self.in_flight -= 1

    async def _failing_stream(
        self, request: web.Request, behaviour: Behaviour, payload: dict[str, Any], model: str
    ) -> web.StreamResponse:
        after_events, status, message = self._stream_failures.pop(0)
        chunks = shapes.chat_chunks(
            completion_id=f"chatcmpl-{uuid.uuid4().hex}",
            model=model,
            created=self._created,
            content=behaviour.content or f"Hello from {self.name}",
            tool_calls=None,
            prompt_tokens=1,
            include_usage=False,
        )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks[:after_events]:
            await response.write(b"data: " + shapes.dumps(chunk) + b"\n\n")
            await asyncio.sleep(0)
        # vLLM writes this one with json.dumps' default separators.
        error = json.dumps(self._error(message, status))
        await response.write(f"data: {error}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def error_body(self, status: int) -> dict[str, Any]:
        """vLLM's error envelope (``code`` is the int status); its API-key guard's 401 body."""
        if status == 401:
            return {"error": "Unauthorized"}
        message = shapes.default_error(status)["error"]["message"]
        return self._error(message, status)

    def _error(
        self, message: str, status: int, error_type: str | None = None, param: str | None = None
    ) -> dict[str, Any]:
        if error_type is None:
            error_type = _ERROR_TYPES.get(status) or _phrase(status)
        return {"error": {"message": message, "type": error_type, "param": param, "code": status}}

    def _model_ids(self) -> set[str]:
        return super()._model_ids() | set(self.lora_modules)

    # -- what vLLM reports ---------------------------------------------------------------------

    def model_cards(self) -> list[dict[str, Any]]:
        """The ``data`` of ``/v1/models``: base models, then LoRA adapters."""
        cards = []
        for entry in self.models:
            model = entry if isinstance(entry, str) else str(entry.get("id"))
            card = self._card(model, root=model, parent=None, max_model_len=self.max_model_len)
            if not isinstance(entry, str):
                card.update(entry)
            cards.append(card)
        for lora, parent in self.lora_modules.items():
            cards.append(
                self._card(lora, root=f"/adapters/{lora}", parent=parent, max_model_len=None)
            )
        return cards

    def _card(
        self, model: str, *, root: str, parent: str | None, max_model_len: int | None
    ) -> dict[str, Any]:
        return {
            "id": model,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
            "max_model_len": max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": self._created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }

    def current_load(self) -> tuple[int, int, float]:
        """(running, waiting, KV-cache use) over all engines, as ``/metrics`` reports them."""
        in_flight = self.in_flight
        capacity = self.max_num_seqs * self.engines
        running = min(in_flight, capacity)
        waiting = in_flight - running
        kv_cache = running / capacity if capacity else 0.0
        if self._load_override is not None:
            set_running, set_waiting, set_kv = self._load_override
            running = running if set_running is None else set_running
            waiting = waiting if set_waiting is None else set_waiting
            kv_cache = kv_cache if set_kv is None else set_kv
        return running, waiting, kv_cache

    def metrics_text(self) -> str:
        """The ``/metrics`` page, laid out as prometheus_client writes it."""
        running, waiting, kv_cache = self.current_load()
        first = self.models[0] if self.models else "model"
        model = first if isinstance(first, str) else str(first.get("id"))
        engines = [str(index) for index in range(self.engines)]
        labels = {engine: f'engine="{engine}",model_name="{_escape(model)}"' for engine in engines}

        def split(value: int) -> list[int]:
            share, extra = divmod(value, self.engines)
            return [share + (1 if index < extra else 0) for index in range(self.engines)]

        lines = [
            "# HELP python_gc_objects_collected_total Objects collected during gc",
            "# TYPE python_gc_objects_collected_total counter",
            'python_gc_objects_collected_total{generation="0"} 12873.0',
            'python_gc_objects_collected_total{generation="1"} 1954.0',
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            *(
                f"vllm:num_requests_running{{{labels[engine]}}} {float(count)}"
                for engine, count in zip(engines, split(running), strict=True)
            ),
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            *(
                f"vllm:num_requests_waiting{{{labels[engine]}}} {float(count)}"
                for engine, count in zip(engines, split(waiting), strict=True)
            ),
            "# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.",
            "# TYPE vllm:num_requests_waiting_by_reason gauge",
            *(
                f'vllm:num_requests_waiting_by_reason{{{labels[engine]},reason="capacity"}} '
                f"{float(count)}"
                for engine, count in zip(engines, split(waiting), strict=True)
            ),
            f"# HELP {self.kv_cache_metric} KV-cache usage. 1 means 100 percent usage.",
            f"# TYPE {self.kv_cache_metric} gauge",
            *(f"{self.kv_cache_metric}{{{labels[engine]}}} {kv_cache!r}" for engine in engines),
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            *(f"vllm:prompt_tokens_total{{{labels[engine]}}} 1234.0" for engine in engines),
            *(f"vllm:prompt_tokens_created{{{labels[engine]}}} 1.7e+09" for engine in engines),
            "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
            "# TYPE vllm:time_to_first_token_seconds histogram",
        ]
        for engine in engines:
            for bound, count in (("0.001", 0), ("0.1", 7), ("1.0", 9), ("+Inf", 9)):
                lines.append(
                    f'vllm:time_to_first_token_seconds_bucket{{{labels[engine]},le="{bound}"}} '
                    f"{float(count)}"
                )
            lines.append(f"vllm:time_to_first_token_seconds_count{{{labels[engine]}}} 9.0")
            lines.append(f"vllm:time_to_first_token_seconds_sum{{{labels[engine]}}} 0.42")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
