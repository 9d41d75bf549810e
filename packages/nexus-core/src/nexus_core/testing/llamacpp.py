"""A fake llama.cpp ``llama-server``, built from what a real one (build 11434) answers.

What it serves (``reference/backend-apis.md`` §2.3, observed on a real server):

- ``GET /health`` (and ``/v1/health``, never behind the API key): 200 ``{"status":"ok"}``; while
  ``loading`` is set every path answers 503 ``{"error":{"message":"Loading model",
  "type":"unavailable_error","code":503}}``.
- ``GET /v1/models`` (= ``/models``): an Ollama-style ``models`` array and the OpenAI ``data``
  array whose card carries ``architecture.input_modalities`` and ``meta`` (``n_ctx`` is the
  per-slot context: ``ctx_size / parallel``; ``n_ctx_train``...).
- ``GET /props``: ``default_generation_settings.n_ctx``, ``total_slots``, ``modalities``,
  ``chat_template_caps``...; ``GET /slots``: one object per slot with ``is_processing`` (501
  when started with ``--no-slots``); ``GET /metrics`` (only with ``metrics=True``, else 501):
  ``llamacpp:requests_processing`` and ``llamacpp:requests_deferred`` among the others.
  Busy slots follow the requests in flight (beyond ``parallel`` they are deferred), or
  ``set_load``.
- Chat and completions in llama-server's shape (``timings``, ``system_fingerprint``); any model
  name is served by the one model, as llama-server does. ``/v1/embeddings`` only with
  ``embeddings=True``; else 501 ``not_supported_error`` "This server does not support
  embeddings. Start it with `--embeddings`" before the body is read, as the real one answers.
  A request the real server refuses without computing anything (that 501, or 400 for a body
  without ``input``: what the llamacpp adapter's probe sends) is answered without taking a
  ``behave`` turn, as the real refusal comes before any work.
- Errors ``{"error":{"code":<int>,"message","type":"invalid_request_error"...}}``; with
  ``api_key``, 401 ``{"error":{"message":"Invalid API Key","type":"authentication_error",
  "code":401}}``.
- Router mode (``router=True``, like ``llama-server --models-dir DIR``): ``models`` are the
  models it can run; ``/v1/models`` shows each with ``status.value`` (``unloaded``/``loading``/
  ``loaded``...) and, once running, its ``meta``; a request for a stopped model loads it
  (``load_seconds``), evicting the least recently used beyond ``models_max``; an unknown model
  is 400 ``model '...' not found``; ``/props`` without ``?model=`` describes the router
  (``"role":"router"``), ``/slots`` and ``/metrics`` need ``?model=``; ``?autoload=false``
  never starts a model; ``POST /models/load`` and ``/models/unload``.
- The router's lifecycle, as a real one (build 11434) answers it: ``POST /models/load`` answers
  ``{"success":true}`` at once, the model is ``loading`` from that moment (the least recently
  used one beyond ``models_max`` is ``unloaded`` at the same moment) and ``loaded``
  ``load_seconds`` later; a model already running is 400 "model is already running", an
  unknown one 404 ``not_found_error``. ``POST /models/unload`` answers at once and the model
  stays ``loaded`` for ``unload_seconds``; a model not running is 400 "model is not running",
  an unknown one 400 "model is not found". A model in ``crash_on_load`` fails every load: it
  goes back to ``unloaded`` with ``status.failed`` and ``exit_code`` 1, and a request that
  autoloaded it gets 503 ``unavailable_error`` (what a real router answers then is not
  recorded). ``Behaviour(lifecycle=True)`` applies to ``/models``, ``/models/load`` and
  ``/models/unload`` only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from nexus_core.testing import openai_shapes as shapes
from nexus_core.testing.fake_backend import (
    Behaviour,
    FakeBackend,
    RecordedRequest,
    _Exchange,
    _json,
    _stream,
)

FINGERPRINT = "b0-unknown"
_PROMETHEUS = "text/plain; version=0.0.4"
_ERROR_CODES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "server_error": 500,
    "not_supported_error": 501,
    "unavailable_error": 503,
    "exceed_context_size_error": 400,
}
_HELP = {
    "prompt_tokens_total": "Number of prompt tokens processed, excluding cached tokens",
    "prompt_tokens_cached_total": "Number of prompt tokens reused from the cache",
    "prompt_seconds_total": "Total time spent processing prompts",
    "tokens_predicted_total": "Number of generation tokens processed",
    "tokens_predicted_seconds_total": "Total time spent generating tokens",
    "n_decode_total": "Total number of llama_decode() calls, excluding speculative decoding and"
    " multimodal decoding",
    "n_tokens_max": "Largest observed sequence length (prompt + generation)",
    "spec_decode_num_draft_tokens_total": "Speculative: Total draft tokens generated",
    "spec_decode_num_accepted_tokens_total": "Speculative: Total draft tokens accepted by the"
    " target model",
    "spec_decode_num_drafts_total": "Speculative: Total speculative decoding verification steps",
    "prompt_tokens_seconds": "Average prompt throughput in tokens/s",
    "predicted_tokens_seconds": "Average generation throughput in tokens/s",
    "requests_processing": "Number of requests processing",
    "requests_deferred": "Number of requests deferred",
    "n_busy_slots_per_decode": "Average number of busy slots per llama_decode() call",
}
#: A slot's sampling parameters as /props and /slots show them (llama-server's defaults).
SAMPLING_PARAMS: dict[str, Any] = {
    "seed": 4294967295,
    "temperature": 0.800000011920929,
    "dynatemp_range": 0.0,
    "dynatemp_exponent": 1.0,
    "top_k": 40,
    "top_p": 0.949999988079071,
    "min_p": 0.05000000074505806,
    "top_n_sigma": -1.0,
    "xtc_probability": 0.0,
    "xtc_threshold": 0.10000000149011612,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "dry_multiplier": 0.0,
    "dry_base": 1.75,
    "dry_allowed_length": 2,
    "dry_penalty_last_n": 64,
    "mirostat": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.10000000149011612,
    "adaptive_target": -1.0,
    "adaptive_decay": 0.8999999761581421,
    "max_tokens": -1,
    "n_predict": -1,
    "n_keep": 0,
    "n_discard": 0,
    "ignore_eos": False,
    "stream": False,
    "n_probs": 0,
    "min_keep": 0,
    "chat_format": "Content-only",
    "reasoning_format": "none",
    "reasoning_in_content": False,
    "generation_prompt": "",
    "samplers": [
        "penalties",
        "dry",
        "top_n_sigma",
        "top_k",
        "typ_p",
        "top_p",
        "min_p",
        "xtc",
        "temperature",
    ],
    "speculative.types": "none",
    "timings_per_token": False,
    "post_sampling_probs": False,
    "backend_sampling": False,
    "lora": [],
}
_NOT_FOUND = {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}
_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


def llama_error(message: str, error_type: str) -> dict[str, Any]:
    """llama-server's ``format_error_response``: ``{"error":{"code","message","type"}}``."""
    code = _ERROR_CODES.get(error_type, 500)
    return {"error": {"code": code, "message": message, "type": error_type}}


class FakeLlamaCpp(FakeBackend):
    """llama-server on ``127.0.0.1``: one model, or a router over several."""

    inference_paths = {
        "/v1/chat/completions": "chat",
        "/chat/completions": "chat",
        "/v1/completions": "completions",
        "/v1/embeddings": "embeddings",
    }
    public_paths = frozenset({"/health", "/v1/health"})
    lifecycle_paths = frozenset({"/models", "/models/load", "/models/unload"})

    def __init__(
        self,
        name: str = "llamacpp",
        models: Sequence[str | Mapping[str, Any]] = ("fake-model",),
        *,
        behaviour: Behaviour | None = None,
        embeddings_dim: int = 8,
        api_key: str | None = None,
        port: int = 0,
        ctx_size: int = 1024,
        parallel: int = 2,
        n_ctx_train: int = 2048,
        vision: bool = False,
        supports_tools: bool = True,
        metrics: bool = False,
        slots_endpoint: bool = True,
        embeddings: bool = False,
        router: bool = False,
        loaded: Sequence[str] = (),
        models_autoload: bool = True,
        models_max: int = 4,
        load_seconds: float = 0.05,
        unload_seconds: float = 0.0,
    ) -> None:
        super().__init__(
            name,
            models,
            behaviour=behaviour,
            embeddings_dim=embeddings_dim,
            api_key=api_key,
            port=port,
        )
        if not router and len(self.models) != 1:
            raise ValueError("llama-server serves one model (use router=True for several)")
        self.ctx_size = ctx_size
        self.parallel = parallel
        self.n_ctx_train = n_ctx_train
        self.vision = vision
        self.supports_tools = supports_tools
        self.metrics = metrics
        self.slots_endpoint = slots_endpoint
        self.embeddings = embeddings
        self.router = router
        self.models_autoload = models_autoload
        self.models_max = models_max
        self.load_seconds = load_seconds
        #: Router mode: seconds an unloaded model stays ``loaded`` after ``/models/unload``.
        self.unload_seconds = unload_seconds
        #: Router mode: models whose child server crashes at every load.
        self.crash_on_load: set[str] = set()
        #: Router mode: each model's ``status.value``.
        names = [entry if isinstance(entry, str) else str(entry.get("id")) for entry in models]
        self.states: dict[str, str] = {
            name: ("loaded" if name in loaded or not router else "unloaded") for name in names
        }
        #: Router mode: models whose last load failed (``status.failed``, ``exit_code``).
        self.failed: set[str] = set()
        #: Generation requests being answered right now, per model.
        self.in_flight: dict[str, int] = dict.fromkeys(self.states, 0)
        self._overrides: dict[str, tuple[int | None, int | None]] = {}
        self._tasks_served: dict[str, int] = dict.fromkeys(self.states, 0)
        self._used: dict[str, float] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._unloading: set[asyncio.Task[None]] = set()

    @property
    def alias(self) -> str:
        """The one model's name (``--alias``) outside router mode."""
        return next(iter(self.states))

    def set_load(
        self,
        *,
        processing: int | None = None,
        deferred: int | None = None,
        model: str | None = None,
    ) -> None:
        """Report these busy slots and deferred requests (no argument: the real ones)."""
        key = model or self.alias
        if processing is None and deferred is None:
            self._overrides.pop(key, None)
        else:
            self._overrides[key] = (processing, deferred)

    def reset(self) -> None:
        """Forget requests and steering (model states stay as they are)."""
        super().reset()
        self._overrides.clear()

    # -- serving -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Embeddings refused before any work: answered at once, recorded, no behaviour used."""
        if request.method == "POST" and request.path == "/v1/embeddings" and not self.loading:
            body = await request.read()
            refusal = self._embeddings_refusal(request, body)
            if refusal is not None:
                record = RecordedRequest(
                    method=request.method,
                    path=request.path,
                    headers={key.lower(): value for key, value in request.headers.items()},
                    body=body,
                    query=dict(request.query),
                    received_at=time.monotonic(),
                )
                with self._lock:
                    self.requests.append(record)
                return refusal
        return await super()._handle(request)

    def _embeddings_refusal(self, request: web.Request, body: bytes) -> web.Response | None:
        """llama-server's answer to embeddings it refuses before reading the input, or None."""
        if self.api_key is not None and (
            request.headers.get("Authorization") != f"Bearer {self.api_key}"
        ):
            return None  # the API-key check comes first
        if not self.embeddings:
            return self._error(
                "This server does not support embeddings. Start it with `--embeddings`",
                "not_supported_error",
            )
        try:
            payload = json.loads(body)
        except ValueError:
            return None
        if isinstance(payload, dict) and "input" not in payload and "content" not in payload:
            return self._error('"input" or "content" must be provided', "invalid_request_error")
        return None

    async def route(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse | None:
        """Every path: llama-server answers them all itself (404 for unknown ones)."""
        path, method = request.path, request.method
        if kind is not None:
            return await self._inference(request, body, kind, behaviour, exchange)
        if method == "GET":
            if path in ("/health", "/v1/health"):
                return _json({"status": "ok"}, 200)
            if path in ("/v1/models", "/models"):
                return self._ok(behaviour, self.models_list(), extra=False)
            if path in ("/props", "/slots", "/metrics"):
                return await self._model_endpoint(request, path)
        if method == "POST" and self.router and path in ("/models/load", "/models/unload"):
            return await self._load_or_unload(body, unload=path == "/models/unload")
        return _json(
            {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}, 404
        )

    async def _model_endpoint(self, request: web.Request, path: str) -> web.Response:
        model = self.alias if not self.router else request.query.get("model", "")
        if self.router:
            if path == "/props" and not model:
                return _json(self.router_props(), 200)
            autoload = request.query.get("autoload")
            refused = await self._ready(model, autoload != "false" if autoload else None)
            if refused is not None:
                return refused
        if path == "/props":
            return _json(self.props(model), 200)
        if path == "/slots":
            if not self.slots_endpoint:
                return self._error(
                    "This server does not support slots endpoint. Start it with `--slots`",
                    "not_supported_error",
                )
            slots = self.slots(model)
            if request.query.get("fail_on_no_slot") and all(s["is_processing"] for s in slots):
                return self._error("no slot available", "unavailable_error")
            return _json(slots, 200)
        if not self.metrics:
            return self._error(
                "This server does not support metrics endpoint. Start it with `--metrics`",
                "not_supported_error",
            )
        return web.Response(
            body=self.metrics_text(model).encode(),
            headers={"Content-Type": _PROMETHEUS, "Process-Start-Time-Unix": str(self._created)},
        )

    async def _inference(
        self,
        request: web.Request,
        body: bytes,
        kind: str,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return self._error(
                f"[json.exception.parse_error.101] parse error: {exc}", "invalid_request_error"
            )
        if not isinstance(payload, dict):
            return self._error("request body must be a JSON object", "invalid_request_error")
        requested = payload.get("model")
        if self.router:
            model = requested if isinstance(requested, str) else ""
            refused = await self._ready(model, None)
            if refused is not None:
                return refused
            self._used[model] = time.monotonic()
        else:
            model = self.alias  # llama-server answers any model name with its one model
        if kind == "embeddings":
            return self._llama_embeddings(behaviour, payload, model)
        if kind == "chat":
            messages = payload.get("messages")
            if not isinstance(messages, list):
                return self._error("'messages' is required", "invalid_request_error")
            refusal = self.template_refusal(behaviour, messages)
            if refusal is not None:
                return refusal
        self.in_flight[model] += 1
        self._tasks_served[model] += 1
        try:
            return await self._generate(request, behaviour, payload, model, kind, exchange)
        finally:
            self.in_flight[model] -= 1

    def _llama_embeddings(
        self, behaviour: Behaviour, payload: dict[str, Any], model: str
    ) -> web.Response:
        answer = self._embeddings(behaviour, payload, model)
        if answer.status != 200 or behaviour.malformed or not isinstance(answer.body, bytes):
            return answer
        value = json.loads(answer.body)
        reordered = {
            "model": value.get("model"),
            "object": "list",
            "usage": value.get("usage"),
            "data": [
                {"embedding": item["embedding"], "index": item["index"], "object": "embedding"}
                for item in value["data"]
            ],
        }
        return self._ok(behaviour, reordered, extra=True)

    async def _ready(self, model: str, autoload: bool | None) -> web.Response | None:
        """Router mode: None when ``model`` runs (loading it first if allowed), else the error."""
        if not model:
            return self._error("model name is missing from the request", "invalid_request_error")
        if model not in self.states:
            return self._error(f"model '{model}' not found", "invalid_request_error")
        if autoload is None:
            autoload = self.models_autoload
        if self.states[model] == "loaded":
            return None
        if not autoload:
            if self.states[model] in ("loading", "sleeping"):
                return None
            return self._error("model is not loaded", "invalid_request_error")
        await asyncio.shield(self._loading.get(model) or self._start_load(model))
        if self.states[model] != "loaded":
            return self._error("model failed to load", "unavailable_error")
        return None

    def _start_load(self, model: str) -> asyncio.Task[None]:
        """Evict the least recently used beyond ``models_max``, mark ``model`` loading (both at
        once, as the real router does) and finish the load in the background."""
        running = [m for m, state in self.states.items() if state != "unloaded" and m != model]
        while len(running) >= self.models_max:
            oldest = min(running, key=lambda m: self._used.get(m, 0.0))
            self.states[oldest] = "unloaded"
            running.remove(oldest)
        self.states[model] = "loading"
        self.failed.discard(model)
        task = asyncio.ensure_future(self._finish_load(model))
        self._loading[model] = task
        return task

    async def _finish_load(self, model: str) -> None:
        try:
            await asyncio.sleep(self.load_seconds)
            if self.states[model] != "loading":
                return  # unloaded meanwhile
            if model in self.crash_on_load:
                self.states[model] = "unloaded"
                self.failed.add(model)
                return
            self.states[model] = "loaded"
            self._used[model] = time.monotonic()
        finally:
            self._loading.pop(model, None)

    async def _finish_unload(self, model: str) -> None:
        await asyncio.sleep(self.unload_seconds)
        self.states[model] = "unloaded"

    async def _load_or_unload(self, body: bytes, *, unload: bool) -> web.Response:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return self._error(f"[json.exception.parse_error.101] {exc}", "invalid_request_error")
        model = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(model, str) or model not in self.states:
            kind = "invalid_request_error" if unload else "not_found_error"
            return self._error("model is not found", kind)
        running = self.states[model] != "unloaded"
        if unload:
            if not running:
                return self._error("model is not running", "invalid_request_error")
            if self.unload_seconds:
                task = asyncio.ensure_future(self._finish_unload(model))
                self._unloading.add(task)
                task.add_done_callback(self._unloading.discard)
            else:
                self.states[model] = "unloaded"
        else:
            if running:
                return self._error("model is already running", "invalid_request_error")
            self._start_load(model)
        return _json({"success": True}, 200)

    def error_body(self, status: int) -> dict[str, Any]:
        """llama-server's error body for ``status`` (its API-key guard's for 401)."""
        if status == 401:
            return {
                "error": {"message": "Invalid API Key", "type": "authentication_error", "code": 401}
            }
        message = shapes.default_error(status)["error"]["message"]
        error_type = _TYPES_BY_STATUS.get(status, "server_error")
        return {"error": {"code": status, "message": message, "type": error_type}}

    def template_error(self, message: str) -> web.Response:
        """A chat template's refusal: llama-server's 400 ``invalid_request_error``."""
        return self._error(message, "invalid_request_error")

    def _error(self, message: str, error_type: str) -> web.Response:
        body = llama_error(message, error_type)
        status = body["error"]["code"]
        # llama-server's HTTP layer rewrites the body of every 404 it sends.
        return _json(_NOT_FOUND if status == 404 else body, status)

    # -- answers in llama-server's shape -----------------------------------------------------------

    async def _generate(
        self,
        request: web.Request,
        behaviour: Behaviour,
        payload: dict[str, Any],
        model: str,
        kind: str,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        stream = payload.get("stream") is True
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        content = behaviour.content if behaviour.content is not None else f"Hello from {self.name}"
        # llama-server names completions chatcmpl-... too.
        completion_id = f"chatcmpl-{self.name}-{next(self._ids)}"
        created = int(time.time())
        if kind == "chat":
            messages = payload.get("messages")
            prompt_tokens = max(1, shapes.count_tokens(messages))
            cached = self.cached_prompt_tokens(messages if isinstance(messages, list) else [])
            if not stream:
                answer = shapes.chat_completion(
                    completion_id=completion_id,
                    model=model,
                    created=created,
                    content=content,
                    tool_calls=behaviour.tool_calls,
                    prompt_tokens=prompt_tokens,
                    reasoning=behaviour.reasoning,
                )
                shapes.add_cached_tokens(answer, cached)
                return self._ok(behaviour, _llama_answer(answer, "message"), extra=True)
            chunks = shapes.chat_chunks(
                completion_id=completion_id,
                model=model,
                created=created,
                content=content,
                tool_calls=behaviour.tool_calls,
                prompt_tokens=prompt_tokens,
                include_usage=True,
                reasoning=behaviour.reasoning,
            )
            shapes.add_cached_tokens(chunks[-1], cached)
            events = _llama_chat_chunks(chunks, include_usage=include_usage)
        else:
            prompt_tokens = max(1, shapes.count_tokens(payload.get("prompt", "")))
            if not stream:
                answer = shapes.text_completion(
                    completion_id=completion_id,
                    model=model,
                    created=created,
                    text=content,
                    prompt_tokens=prompt_tokens,
                )
                return self._ok(behaviour, _llama_answer(answer, "text"), extra=True)
            chunks = shapes.completion_chunks(
                completion_id=completion_id,
                model=model,
                created=created,
                text=content,
                prompt_tokens=prompt_tokens,
                include_usage=True,
            )
            events = _llama_completion_chunks(chunks)
        return await _stream(request, behaviour, events, exchange)

    # -- what llama-server reports -----------------------------------------------------------------

    def slot_context(self) -> int:
        """The context of one slot: ``-c`` divided among ``-np`` slots."""
        return self.ctx_size // max(1, self.parallel)

    def model_card(self, model: str) -> dict[str, Any]:
        """The OpenAI ``data`` entry of a running model."""
        return {
            "id": model,
            "aliases": [model],
            "tags": [],
            "object": "model",
            "architecture": self._architecture(),
            "created": int(time.time()),
            "owned_by": "llamacpp",
            "meta": {
                "vocab_type": 1,
                "n_vocab": 32000,
                "n_ctx": self.slot_context(),
                "n_ctx_train": self.n_ctx_train,
                "n_embd": 64,
                "n_params": 4170048,
                "size": 8488192,
                "ftype": "F16",
            },
        }

    def models_list(self) -> dict[str, Any]:
        """The ``/v1/models`` body (single model, or the router's list)."""
        if not self.router:
            model = self.alias
            capabilities = ["completion", "multimodal"] if self.vision else ["completion"]
            ollama_style = {
                "name": model,
                "model": model,
                "modified_at": "",
                "size": "",
                "digest": "",
                "type": "model",
                "description": "",
                "tags": [""],
                "capabilities": capabilities,
                "parameters": "",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "",
                    "families": [""],
                    "parameter_size": "",
                    "quantization_level": "",
                },
            }
            return {"models": [ollama_style], "object": "list", "data": [self.model_card(model)]}
        data = []
        for model, state in self.states.items():
            args = [
                "llama-server",
                *("--host", "127.0.0.1", "--port", "0", "--alias", model),
                *("--ctx-size", str(self.ctx_size), "--model", f"/models/{model}.gguf"),
                *("--parallel", str(self.parallel)),
            ]
            status: dict[str, Any] = {
                "value": state,
                "args": args,
                "preset": f"[{model}]\nctx-size = {self.ctx_size}\nmodel = /models/{model}.gguf"
                f"\nparallel = {self.parallel}\n\n",
            }
            if model in self.failed:
                status.update(exit_code=1, failed=True)
            entry: dict[str, Any] = {
                "id": model,
                "aliases": [],
                "tags": [],
                "object": "model",
                "owned_by": "llamacpp",
                "created": int(time.time()),
                "status": status,
                "architecture": self._architecture(),
                "source": "models_dir",
                "can_remove": False,
            }
            if state in ("loaded", "loading", "sleeping"):
                for key, value in self.model_card(model).items():
                    entry.setdefault(key, value)
            data.append(entry)
        return {"data": data, "object": "list"}

    def props(self, model: str) -> dict[str, Any]:
        """``GET /props`` of the server running ``model``."""
        return {
            "default_generation_settings": {
                "params": SAMPLING_PARAMS,
                "n_ctx": self.slot_context(),
            },
            "total_slots": self.parallel,
            "model_alias": model,
            "model_ftype": "F16",
            "model_path": f"/models/{model}.gguf",
            "modalities": {"vision": self.vision, "video": False, "audio": False},
            "media_marker": "<__media__>",
            "endpoint_slots": self.slots_endpoint,
            "endpoint_props": False,
            "endpoint_metrics": self.metrics,
            "ui": False,
            "ui_settings": {},
            "chat_template": "{{ bos_token }}{% for message in messages %}...{% endfor %}",
            "chat_template_caps": {
                "supports_object_arguments": False,
                "supports_parallel_tool_calls": self.supports_tools,
                "supports_preserve_reasoning": False,
                "supports_reasoning_effort": False,
                "supports_string_content": True,
                "supports_system_role": True,
                "supports_tool_calls": self.supports_tools,
                "supports_tools": self.supports_tools,
                "supports_typed_content": False,
            },
            "bos_token": "<s>",
            "eos_token": "</s>",
            "build_info": FINGERPRINT,
            "is_sleeping": False,
            "cors_proxy_enabled": False,
        }

    def router_props(self) -> dict[str, Any]:
        """``GET /props`` of a router (no ``?model=``)."""
        return {
            "role": "router",
            "max_instances": self.models_max,
            "models_autoload": self.models_autoload,
            "model_alias": "llama-server",
            "model_path": "none",
            "default_generation_settings": {"params": None, "n_ctx": 0},
            "ui_settings": {},
            "build_info": FINGERPRINT,
            "cors_proxy_enabled": False,
        }

    def current_load(self, model: str | None = None) -> tuple[int, int]:
        """(busy slots, deferred requests) of ``model``'s server."""
        key = model or self.alias
        in_flight = self.in_flight.get(key, 0)
        processing = min(in_flight, self.parallel)
        deferred = in_flight - processing
        override = self._overrides.get(key)
        if override is not None:
            processing = processing if override[0] is None else override[0]
            deferred = deferred if override[1] is None else override[1]
        return processing, deferred

    def slots(self, model: str | None = None) -> list[dict[str, Any]]:
        """``GET /slots``: one object per slot; the first ``busy`` are processing."""
        key = model or self.alias
        busy, _ = self.current_load(key)
        served = self._tasks_served.get(key, 0)
        slots = []
        for index in range(self.parallel):
            slot: dict[str, Any] = {
                "id": index,
                "n_ctx": self.slot_context(),
                "speculative": False,
                "is_processing": index < busy,
            }
            # The slots that served a task show it (llama-server keeps the last one).
            if index >= self.parallel - served:
                slot.update(
                    id_task=served - 1,
                    n_prompt_tokens=19,
                    n_prompt_tokens_processed=0,
                    n_prompt_tokens_cache=0,
                    params={**SAMPLING_PARAMS, "max_tokens": 8, "n_predict": 8},
                    next_token=[
                        {
                            "has_next_token": index < busy,
                            "has_new_line": False,
                            "n_remain": -1,
                            "n_decoded": 0,
                        }
                    ],
                )
            slots.append(slot)
        return slots

    def metrics_text(self, model: str | None = None) -> str:
        """``GET /metrics``: counters then gauges, each with ``# HELP`` and ``# TYPE``."""
        processing, deferred = self.current_load(model)
        served = self._tasks_served.get(model or self.alias, 0)
        counters = [
            ("prompt_tokens_total", _HELP["prompt_tokens_total"], 12 * served),
            ("prompt_tokens_cached_total", _HELP["prompt_tokens_cached_total"], 0),
            ("prompt_seconds_total", _HELP["prompt_seconds_total"], 0.004193 * served),
            ("tokens_predicted_total", _HELP["tokens_predicted_total"], 8 * served),
            ("tokens_predicted_seconds_total", _HELP["tokens_predicted_seconds_total"], 0.0018),
            ("n_decode_total", _HELP["n_decode_total"], 9 * served),
            ("n_tokens_max", _HELP["n_tokens_max"], 20 if served else 0),
            ("spec_decode_num_draft_tokens_total", _HELP["spec_decode_num_draft_tokens_total"], 0),
            (
                "spec_decode_num_accepted_tokens_total",
                _HELP["spec_decode_num_accepted_tokens_total"],
                0,
            ),
            ("spec_decode_num_drafts_total", _HELP["spec_decode_num_drafts_total"], 0),
        ]
        gauges = [
            ("prompt_tokens_seconds", _HELP["prompt_tokens_seconds"], 2384.93 if served else 0),
            (
                "predicted_tokens_seconds",
                _HELP["predicted_tokens_seconds"],
                1389.27 if served else 0,
            ),
            ("requests_processing", _HELP["requests_processing"], processing),
            ("requests_deferred", _HELP["requests_deferred"], deferred),
            ("n_busy_slots_per_decode", _HELP["n_busy_slots_per_decode"], 1),
        ]
        lines = []
        for kind, items in (("counter", counters), ("gauge", gauges)):
            for name, description, value in items:
                lines.append(f"# HELP llamacpp:{name} {description}")
                lines.append(f"# TYPE llamacpp:{name} {kind}")
                # C++ streams doubles with 6 significant digits: 2, 0.008386, 2384.93, 1.2e+06.
                lines.append(f"llamacpp:{name} {value:g}")
        return "\n".join(lines) + "\n"

    def _architecture(self) -> dict[str, Any]:
        inputs = ["text", "image"] if self.vision else ["text"]
        return {"input_modalities": inputs, "output_modalities": ["text"]}


def _llama_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "completion_tokens": usage["completion_tokens"],
        "prompt_tokens": usage["prompt_tokens"],
        "total_tokens": usage["total_tokens"],
        "prompt_tokens_details": {"cached_tokens": _cached(usage)},
    }


def _cached(usage: Mapping[str, Any]) -> int:
    details = usage.get("prompt_tokens_details")
    return int(details["cached_tokens"]) if isinstance(details, Mapping) else 0


def _llama_answer(answer: Mapping[str, Any], field: str) -> dict[str, Any]:
    """A whole chat completion (``field="message"``) or completion (``"text"``), in
    llama-server's key order, with its ``usage.prompt_tokens_details`` and ``timings``."""
    choices = []
    for choice in answer["choices"]:
        if field == "message":
            message = {
                key: value
                for key, value in choice["message"].items()
                if key != "refusal" and (key != "content" or value is not None)
            }
            choices.append(
                {"finish_reason": choice["finish_reason"], "index": 0, "message": message}
            )
        else:
            choices.append(
                {
                    "text": choice["text"],
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": choice["finish_reason"],
                }
            )
    usage = answer["usage"]
    return {
        "choices": choices,
        "created": answer["created"],
        "model": answer["model"],
        "system_fingerprint": FINGERPRINT,
        "object": answer["object"],
        "usage": _llama_usage(usage),
        "id": answer["id"],
        "timings": _timings(usage["prompt_tokens"], usage["completion_tokens"], _cached(usage)),
    }


def _llama_chat_chunks(
    chunks: Sequence[Mapping[str, Any]], *, include_usage: bool
) -> list[dict[str, Any]]:
    """OpenAI chat chunks (the last one the usage chunk) as llama-server streams them: the first
    delta ``{"role":"assistant","content":null}``, ``timings`` on the finish chunk, or on the
    ``choices: []`` usage chunk when the client asked for usage."""
    *answer, usage_chunk = chunks
    usage = usage_chunk["usage"]
    result: list[dict[str, Any]] = []
    for index, chunk in enumerate(answer):
        choices = []
        for choice in chunk["choices"]:
            delta = dict(choice["delta"])
            delta.pop("refusal", None)
            if index == 0 and "role" in delta:
                delta["content"] = None
            choices.append({"finish_reason": choice["finish_reason"], "index": 0, "delta": delta})
        result.append(
            {
                "choices": choices,
                "created": chunk["created"],
                "id": chunk["id"],
                "model": chunk["model"],
                "system_fingerprint": FINGERPRINT,
                "object": "chat.completion.chunk",
            }
        )
    timings = _timings(usage["prompt_tokens"], usage["completion_tokens"], _cached(usage))
    if include_usage:
        last = {**result[-1], "choices": [], "usage": _llama_usage(usage), "timings": timings}
        result.append(last)
    else:
        result[-1]["timings"] = timings
    return result


def _llama_completion_chunks(chunks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI completion chunks as llama-server streams them: the finish chunk always carries
    ``usage`` and ``timings`` (it ignores ``include_usage`` here)."""
    *answer, usage_chunk = chunks
    usage = usage_chunk["usage"]
    result: list[dict[str, Any]] = []
    for chunk in answer:
        choice = chunk["choices"][0]
        result.append(
            {
                "choices": [
                    {
                        "text": choice["text"],
                        "index": 0,
                        "logprobs": None,
                        "finish_reason": choice["finish_reason"],
                    }
                ],
                "created": chunk["created"],
                "model": chunk["model"],
                "system_fingerprint": FINGERPRINT,
                "object": "text_completion",
                "id": chunk["id"],
            }
        )
    final = result[-1]
    completion_id = final.pop("id")
    final["usage"] = _llama_usage(usage)
    final["id"] = completion_id
    final["timings"] = _timings(usage["prompt_tokens"], usage["completion_tokens"])
    return result


def _timings(prompt_tokens: int, predicted: int, cached: int = 0) -> dict[str, Any]:
    """llama-server's ``timings``: ``prompt_n`` the prompt tokens evaluated, ``cache_n`` those
    taken from the slot's cache."""
    return {
        "cache_n": cached,
        "prompt_n": prompt_tokens - cached,
        "prompt_ms": 0.9,
        "prompt_per_token_ms": 0.9 / max(1, prompt_tokens),
        "prompt_per_second": prompt_tokens / 0.0009,
        "predicted_n": predicted,
        "predicted_ms": 2.5,
        "predicted_per_token_ms": 2.5 / max(1, predicted),
        "predicted_per_second": predicted / 0.0025,
    }
