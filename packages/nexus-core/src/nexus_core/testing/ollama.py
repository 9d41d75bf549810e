"""A fake Ollama: its native API (``/api/...``) next to its OpenAI-compatible ``/v1`` layer.

Shapes follow Ollama v0.33 (``server/routes.go``, ``api/types.go``, ``openai/openai.go``): ``GET /``
says ``Ollama is running``; ``/api/version``, ``/api/tags`` (with ``capabilities`` and
``details.context_length`` as v0.33 adds them, or without, like older servers), ``/api/show``
(``capabilities``, ``model_info["<arch>.context_length"]``), ``/api/ps`` (loaded models, runtime
context), ``/api/embed`` (batched) and the legacy ``/api/embeddings``. Native errors are
``{"error": "text"}``; ``/v1`` errors are Ollama's OpenAI envelope (``type`` from the status,
``param`` and ``code`` null). ``/api/chat`` is not served, and ``/api/generate`` only as Ollama's
API docs use it to load and unload a model: ``{"model": m}`` with no prompt loads it (answered
``{"model", "created_at", "response": "", "done": true}`` once loaded, after ``load_seconds``),
``"keep_alive": 0`` unloads it (``"done_reason": "unload"``, at once; the model leaves
``/api/ps`` ``unload_seconds`` later); an unknown model is 404 ``model 'x' not found``; a model in
``fail_loads`` fails every load with Ollama's 500 ``model requires more system memory ...``.
A request for a model not in memory loads it too (``load_seconds``); beyond ``max_loaded``
models (``OLLAMA_MAX_LOADED_MODELS``) the least recently used leaves memory.
``Behaviour(lifecycle=True)`` applies to ``/api/tags``, ``/api/ps`` and ``/api/generate``.

Models are names, or mappings with an ``id`` and any of ``capabilities`` (list, default
``["completion"]``; None leaves it out like servers before 0.6.4), ``context_length`` (training
context, default 8192), ``architecture`` (default ``llama``), ``loaded`` (in ``/api/ps`` from
the start), ``runtime_context_length`` (default 4096), ``digest``, ``modified_at``,
``embedding_length``, ``size`` (bytes on disk and, loaded, in memory), ``size_vram`` (of which in
GPU memory; default all of it). Like Ollama, a model is loaded by the first request that uses it.

    with FakeOllama("o", [{"id": "nomic-embed-text:latest", "capabilities": ["embedding"]}]
                    ).running() as fake:
        fake.busy = True  # inference answers 503 "server busy" (OLLAMA_MAX_QUEUE exceeded)
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import http
import json
import math
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from nexus_core.testing import openai_shapes as shapes
from nexus_core.testing.fake_backend import Behaviour, FakeBackend, _Exchange, _json

__all__ = ["BUSY_MESSAGE", "FakeOllama"]

#: Ollama's ``ErrMaxQueue`` (``server/sched.go``), answered with 503 when its queue is full.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
RUNNING_TEXT = "Ollama is running"

_INFERENCE_PATHS = {
    **FakeBackend.inference_paths,
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
}
_DEFAULT_MODIFIED = datetime(2026, 8, 1, 12, 0, 0, tzinfo=UTC)
# Whether the request being answered is on the native API (error shapes differ).
_native: contextvars.ContextVar[bool] = contextvars.ContextVar("ollama_native", default=False)


class FakeOllama(FakeBackend):
    """A fake Ollama server on ``127.0.0.1``: native API plus the ``/v1`` compatibility layer."""

    inference_paths = _INFERENCE_PATHS
    lifecycle_paths = frozenset({"/api/tags", "/api/ps", "/api/generate"})

    def __init__(
        self,
        name: str = "ollama",
        models: Sequence[str | Mapping[str, Any]] = ("llama3.2:latest",),
        *,
        version: str | None = "0.33.0",
        legacy_tags: bool = False,
        load_seconds: float = 0.0,
        unload_seconds: float = 0.0,
        max_loaded: int | None = None,
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
        #: What ``/api/version`` reports; None: a server older than that endpoint (404).
        self.version = version
        #: ``/api/tags`` without ``capabilities`` and ``details.context_length`` (before v0.33).
        self.legacy_tags = legacy_tags
        #: While True, inference answers 503 ``server busy`` as Ollama does with a full queue.
        self.busy = False
        #: Seconds ``/api/show`` takes to answer (to test how callers bound it).
        self.show_delay = 0.0
        #: The most ``/api/show`` requests that were in progress at once.
        self.show_peak = 0
        self._showing = 0
        #: Loaded models (what ``/api/ps`` lists) and their runtime context length.
        self.loaded: dict[str, int] = {}
        for entry in models:
            if isinstance(entry, Mapping) and entry.get("loaded"):
                card = self._card(str(entry["id"]))
                if card is not None:
                    self.loaded[card["id"]] = card["runtime_context_length"]
        self._loaded_lock = threading.Lock()
        #: Seconds a load takes (``/api/generate`` without a prompt, or a request's own load).
        self.load_seconds = load_seconds
        #: Seconds an unloaded model stays in ``/api/ps`` after ``keep_alive: 0``.
        self.unload_seconds = unload_seconds
        #: Models in memory at most (``OLLAMA_MAX_LOADED_MODELS``); None: no limit.
        self.max_loaded = max_loaded
        #: Models whose every load fails (not enough memory).
        self.fail_loads: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    # -- steering --------------------------------------------------------------------------------

    def set_model(self, model: str, **fields: Any) -> None:
        """Change fields of one model (``digest``, ``capabilities``...); the next read sees it."""
        for index, entry in enumerate(self.models):
            entry_id = entry if isinstance(entry, str) else str(entry.get("id"))
            if entry_id == model:
                base = {"id": entry} if isinstance(entry, str) else dict(entry)
                self.models[index] = {**base, **fields}
                return
        raise KeyError(model)

    def reset(self) -> None:
        """Forget requests, behaviours and ``busy``/``show_delay``; loaded models stay."""
        super().reset()
        self.busy = False
        self.show_delay = 0.0
        self.show_peak = 0

    def error_body(self, status: int) -> dict[str, Any]:
        """``{"error": "text"}`` on the native API, Ollama's OpenAI envelope on ``/v1``."""
        message = _phrase(status)
        return {"error": message} if _native.get() else _v1_error(status, message)

    # -- serving ---------------------------------------------------------------------------------

    async def _answer(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        # The handler runs in its own task, so this is seen by error_body() for this request only.
        _native.set(request.path == "/" or request.path.startswith("/api/"))
        return await super()._answer(request, body, kind, behaviour, exchange)

    async def route(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse | None:
        """Ollama's native endpoints, its ``/v1`` model list and error shapes, and ``busy``."""
        path, method = request.path, request.method
        reading = method in ("GET", "HEAD")
        if reading and path == "/":
            return web.Response(text=RUNNING_TEXT)
        if reading and path == "/api/version":
            if self.version is None:
                return web.Response(status=404, text="404 page not found")  # gin's own 404
            return _json({"version": self.version}, 200)
        if reading and path == "/api/tags":
            return self._ok(behaviour, {"models": self._tags()}, extra=False)
        if method == "GET" and path == "/api/ps":
            return self._ok(behaviour, {"models": self._ps()}, extra=False)
        if method == "POST" and path == "/api/show":
            return await self._show(behaviour, body)
        if method == "POST" and path == "/api/generate":
            return await self._generate_native(behaviour, body)
        if method == "GET" and path == "/v1/models":
            cards = [self._openai_card(card) for card in self._cards()]
            return self._ok(behaviour, {"object": "list", "data": cards}, extra=False)
        if method == "GET" and path.startswith("/v1/models/"):
            wanted = path.removeprefix("/v1/models/")
            card = self._card(wanted)
            if card is None:
                return _json(_v1_error(404, f"model '{wanted}' not found"), 404)
            return self._ok(behaviour, self._openai_card(card), extra=False)
        if kind is None:
            return None
        return await self._inference(behaviour, path, body, kind)

    async def _inference(
        self, behaviour: Behaviour, path: str, body: bytes, kind: str
    ) -> web.StreamResponse | None:
        native = path.startswith("/api/")
        payload = _loads(body)
        if not isinstance(payload, dict):
            message = "missing request body" if not body else "invalid JSON body"
            return _error(native, 400, message)
        model = payload.get("model")
        if native and kind == "embeddings" and not model:
            return _error(native, 400, "model is required")
        card = self._card(model) if isinstance(model, str) else None
        if card is None and isinstance(model, str) and model:
            return _error(native, 404, f"model '{model}' not found")
        if card is None:
            return None  # no model at all: the OpenAI layer's own 400
        if self.busy:
            return _error(native, 503, BUSY_MESSAGE)
        if not await self._load(card):
            return _error(native, 500, self._memory_error(card))
        if path == "/api/embed":
            return self._embed(behaviour, payload, card)
        if path == "/api/embeddings":
            prompt = payload.get("prompt")
            vector = shapes.embedding_vector(
                prompt if isinstance(prompt, str) else "", self._dim(card)
            )
            return self._ok(behaviour, {"embedding": vector}, extra=True)
        return None  # /v1: FakeBackend answers in OpenAI shapes

    def _embed(
        self, behaviour: Behaviour, payload: dict[str, Any], card: dict[str, Any]
    ) -> web.Response:
        raw = payload.get("input")
        if isinstance(raw, str):
            inputs = [raw] if raw else []
        elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            inputs = list(raw)
        elif raw is None:
            inputs = []
        else:
            return _error(True, 400, "invalid input type")
        if payload.get("truncate") is False:
            for text in inputs:
                if shapes.count_tokens(text) > card["context_length"]:
                    return _error(True, 400, "the input length exceeds the context length")
        dimensions = payload.get("dimensions")
        vectors = []
        for text in inputs:
            vector = shapes.embedding_vector(text, self._dim(card))
            if isinstance(dimensions, int) and 0 < dimensions < len(vector):
                vector = _normalise(vector[:dimensions])
            vectors.append(vector)
        answer = {
            "model": payload["model"],
            "embeddings": vectors,
            "total_duration": 14_143_917,
            "load_duration": 1_019_500,
            "prompt_eval_count": sum(max(1, shapes.count_tokens(text)) for text in inputs),
        }
        return self._ok(behaviour, answer, extra=True)

    async def _generate_native(self, behaviour: Behaviour, body: bytes) -> web.Response:
        """``/api/generate`` without a prompt: load, or with ``keep_alive: 0`` unload."""
        payload = _loads(body)
        if not isinstance(payload, dict):
            return _error(True, 400, "missing request body" if not body else "invalid JSON body")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return _error(True, 400, "model is required")
        card = self._card(model)
        if card is None:
            return _error(True, 404, f"model '{model}' not found")
        if payload.get("prompt") or payload.get("images"):
            return _error(True, 501, "the fake Ollama generates nothing on /api/generate")
        answer: dict[str, Any] = {
            "model": model,
            "created_at": datetime.now(UTC).isoformat(),
            "response": "",
            "done": True,
        }
        if payload.get("keep_alive") in (0, "0", "0s"):
            self._unload(model)
            return self._ok(behaviour, {**answer, "done_reason": "unload"}, extra=False)
        if not await self._load(card):
            return _error(True, 500, self._memory_error(card))
        return self._ok(behaviour, answer, extra=False)

    async def _load(self, card: Mapping[str, Any]) -> bool:
        """Bring a model into memory (after ``load_seconds`` when it was not), evicting the
        least recently used beyond ``max_loaded``; False when the load fails."""
        model = card["id"]
        with self._loaded_lock:
            loaded = model in self.loaded
        if not loaded:
            if self.load_seconds:
                await asyncio.sleep(self.load_seconds)
            if model in self.fail_loads:
                return False
        with self._loaded_lock:
            self.loaded[model] = self.loaded.pop(model, card["runtime_context_length"])
            while self.max_loaded is not None and len(self.loaded) > self.max_loaded:
                del self.loaded[next(iter(self.loaded))]
        return True

    def _unload(self, model: str) -> None:
        def drop() -> None:
            with self._loaded_lock:
                self.loaded.pop(model, None)

        if not self.unload_seconds:
            drop()
            return

        async def later() -> None:
            await asyncio.sleep(self.unload_seconds)
            drop()

        task = asyncio.ensure_future(later())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _memory_error(card: Mapping[str, Any]) -> str:
        need = card["size"] / 2**30
        return f"model requires more system memory ({need:.1f} GiB) than is available (0.5 GiB)"

    async def _show(self, behaviour: Behaviour, body: bytes) -> web.Response:
        payload = _loads(body)
        if not isinstance(payload, dict):
            return _error(True, 400, "missing request body" if not body else "invalid JSON body")
        model = payload.get("model") or payload.get("name")
        if not isinstance(model, str) or not model:
            return _error(True, 400, "model is required")
        self._showing += 1
        self.show_peak = max(self.show_peak, self._showing)
        try:
            if self.show_delay:
                await asyncio.sleep(self.show_delay)
        finally:
            self._showing -= 1
        card = self._card(model)
        if card is None:
            return _error(True, 404, f"model '{model}' not found")
        arch = card["architecture"]
        answer: dict[str, Any] = {
            "license": "",
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {card["id"]}\n',
            "parameters": 'stop "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": self._details(card, rich=False),
            "model_info": {
                "general.architecture": arch,
                "general.file_type": 15,
                "general.parameter_count": 3_212_749_888,
                f"{arch}.context_length": card["context_length"],
                f"{arch}.embedding_length": self._dim(card),
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.tokens": [],  # filled only with "verbose": true
            },
            "modified_at": card["modified_at"].isoformat(),
        }
        if card["capabilities"] is not None:
            answer["capabilities"] = card["capabilities"]
        return self._ok(behaviour, answer, extra=False)

    # -- model views -----------------------------------------------------------------------------

    def _cards(self) -> list[dict[str, Any]]:
        cards = []
        for entry in list(self.models):
            fields: Mapping[str, Any] = {"id": entry} if isinstance(entry, str) else entry
            model_id = str(fields["id"])
            raw = fields.get("capabilities", ["completion"])
            cards.append(
                {
                    "id": model_id,
                    "capabilities": None if raw is None else list(raw),
                    "context_length": int(fields.get("context_length", 8192)),
                    "architecture": str(fields.get("architecture", "llama")),
                    "runtime_context_length": int(fields.get("runtime_context_length", 4096)),
                    "digest": str(
                        fields.get("digest", hashlib.sha256(model_id.encode()).hexdigest())
                    ),
                    "modified_at": _as_datetime(fields.get("modified_at", _DEFAULT_MODIFIED)),
                    "embedding_length": fields.get("embedding_length"),
                    "size": int(fields.get("size", 2_019_393_189)),
                    "size_vram": fields.get("size_vram"),
                }
            )
        return cards

    def _card(self, model: str) -> dict[str, Any] | None:
        for card in self._cards():
            if card["id"] == model:
                return card
        return None

    def _dim(self, card: Mapping[str, Any]) -> int:
        length = card.get("embedding_length")
        return length if isinstance(length, int) else self.embeddings_dim

    def _details(self, card: Mapping[str, Any], *, rich: bool) -> dict[str, Any]:
        arch = card["architecture"]
        details: dict[str, Any] = {
            "parent_model": "",
            "format": "gguf",
            "family": arch,
            "families": [arch],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        }
        if rich:
            details["context_length"] = card["context_length"]
            details["embedding_length"] = self._dim(card)
        return details

    def _tags(self) -> list[dict[str, Any]]:
        entries = []
        for card in sorted(self._cards(), key=lambda c: c["modified_at"], reverse=True):
            entry: dict[str, Any] = {
                "name": card["id"],
                "model": card["id"],
                "modified_at": card["modified_at"].isoformat(),
                "size": card["size"],
                "digest": card["digest"],
                "details": self._details(card, rich=not self.legacy_tags),
            }
            if not self.legacy_tags and card["capabilities"]:
                entry["capabilities"] = card["capabilities"]
            entries.append(entry)
        return entries

    def _ps(self) -> list[dict[str, Any]]:
        with self._loaded_lock:
            loaded = dict(self.loaded)
        expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        entries = []
        for card in self._cards():
            if card["id"] not in loaded:
                continue
            entries.append(
                {
                    "name": card["id"],
                    "model": card["id"],
                    "size": card["size"],
                    "digest": card["digest"],
                    "details": self._details(card, rich=False),
                    "expires_at": expires,
                    "size_vram": card["size"] if card["size_vram"] is None else card["size_vram"],
                    "context_length": loaded[card["id"]],
                }
            )
        return entries

    def _openai_card(self, card: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": card["id"],
            "object": "model",
            "created": int(card["modified_at"].timestamp()),
            "owned_by": namespace(card["id"]),
        }


def namespace(name: str) -> str:
    """The namespace part of an Ollama model name (``library`` when there is none)."""
    parts = name.rsplit(":", 1)[0].split("/") if "/" in name else [name]
    return parts[-2] if len(parts) > 1 else "library"


def _v1_error(status: int, message: str) -> dict[str, Any]:
    # openai.NewError: the type follows the status; param and code are always null.
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return shapes.error_body(message, kind)


def _error(native: bool, status: int, message: str) -> web.Response:
    return _json({"error": message} if native else _v1_error(status, message), status)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase.lower()
    except ValueError:
        return f"HTTP {status}"


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
