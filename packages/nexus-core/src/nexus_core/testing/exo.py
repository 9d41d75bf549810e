"""A fake exo cluster API (exo 1.0, default port 52415): model cards, instances, chat.

Shapes follow exo-explore/exo b5375f8 (``src/exo/api/main.py``, ``api/types/api.py``,
``api/adapters/chat_completions.py``, ``api/keepalive.py``; see
``/work/shared/reference/backend-apis.md`` §2.5):

- ``GET /v1/models`` (= ``/models``) lists **every model card** exo knows, running or not, with
  ``owned_by: "exo"``, ``context_length`` (0 when the card does not say), ``capabilities``
  (``text``, ``thinking``, ``vision``, ``code``, ``image_gen``...), ``tasks`` and more;
  ``?status=downloaded`` keeps the downloaded ones.
- ``GET /ollama/api/ps`` lists the models with a running instance; ``GET /node_id`` the node id;
  ``GET /ollama/api/version`` ``{"version": "1.0.0"}``.
- ``POST /v1/chat/completions`` for a model without an instance: 404
  ``No instance found for model …``. exo serves no ``/v1/completions`` and no ``/v1/embeddings``
  (FastAPI's ``{"detail": "Not Found"}``).
- Streams open with an SSE comment ``: keep-alive`` (repeated every ``keepalive_interval``
  seconds of silence), send ``: prefill_progress {…}`` comments, chunks whose ``object`` is
  ``chat.completion`` (sic) with ``role`` in every delta and no null fields, the usage **on the
  finish chunk** (whatever ``stream_options`` says), a ``: generation_stats {…}`` comment, then
  ``data: [DONE]``. ``stream_error`` makes a stream fail after its first token the exo way:
  ``data: {"error": {"message", "type": "InternalServerError", "code": 500}}`` then ``[DONE]``.
- Errors: ``{"error": {"message", "type": "<HTTP phrase>", "param": null, "code": <int>}}``.

Models are names, or mappings with an ``id`` and any card field (``context_length``, default
131072; ``capabilities``, default ``["text"]``; ``tasks``, default ``["TextGeneration"]``;
``family``, ``quantization``...) plus ``running`` (has an instance, default True) and
``downloaded`` (default True). Behaviours apply to chat (delays, cut, ``omit_done``, ``crlf``,
``malformed``, status codes); ``split_events`` is not supported here.
"""

from __future__ import annotations

import asyncio
import http
import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from nexus_core.testing import openai_shapes as shapes
from nexus_core.testing.fake_backend import (
    Behaviour,
    FakeBackend,
    _drop,
    _Exchange,
    _json,
)

__all__ = ["FakeExo", "exo_error"]

EXO_PORT = 52415
KEEPALIVE = b": keep-alive\n\n"
_CARD_DEFAULTS: Mapping[str, Any] = {
    "context_length": 131072,
    "capabilities": ["text"],
    "tasks": ["TextGeneration"],
    "family": "llama",
    "quantization": "4bit",
    "base_model": "",
    "storage_size_megabytes": 1024,
    "supports_tensor": True,
    "is_custom": False,
    "reasoning_dialect": "none",
}
_FAKE_FIELDS = ("running", "downloaded")
_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "close",
    "X-Accel-Buffering": "no",
}


def exo_error(status: int, message: str | None = None) -> dict[str, Any]:
    """exo's error body: the HTTP phrase as ``type`` and the status as an integer ``code``."""
    phrase = http.HTTPStatus(status).phrase
    return {"error": {"message": message or phrase, "type": phrase, "param": None, "code": status}}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        **shapes.usage(prompt_tokens, completion_tokens),
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class FakeExo(FakeBackend):
    """A fake exo API on ``127.0.0.1``."""

    inference_paths = {"/v1/chat/completions": "chat"}

    def __init__(
        self,
        name: str = "exo",
        models: Sequence[str | Mapping[str, Any]] = ("mlx-community/Llama-3.2-1B-Instruct-4bit",),
        *,
        behaviour: Behaviour | None = None,
        embeddings_dim: int = 8,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        cards = [{"id": entry} if isinstance(entry, str) else dict(entry) for entry in models]
        super().__init__(
            name,
            cards,
            behaviour=behaviour,
            embeddings_dim=embeddings_dim,
            api_key=api_key,
            port=port,
        )
        self._instances_lock = threading.Lock()
        #: Models with a running instance (what chat accepts and ``/ollama/api/ps`` lists).
        self.instances: set[str] = {
            str(card["id"]) for card in cards if card.get("running", True) is not False
        }
        #: ``/node_id``.
        self.node_id = f"12D3KooW{uuid.uuid5(uuid.NAMESPACE_DNS, name).hex[:24]}"
        #: Seconds of silence after which a stream sends ``: keep-alive`` (exo: 10).
        self.keepalive_interval = 10.0
        #: When set, a stream fails after its first token with this message (exo's error event).
        self.stream_error: str | None = None

    # -- steering --------------------------------------------------------------------------------

    def place(self, model: str) -> None:
        """Start an instance of ``model`` (what ``POST /instance`` does)."""
        with self._instances_lock:
            self.instances.add(model)

    def delete_instance(self, model: str) -> None:
        """Stop the instance of ``model``."""
        with self._instances_lock:
            self.instances.discard(model)

    def error_body(self, status: int) -> dict[str, Any]:
        """exo's HTTPException body."""
        return exo_error(status)

    # -- serving ---------------------------------------------------------------------------------

    async def route(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse | None:
        """exo's own endpoints; chat falls through; anything else is FastAPI's 404."""
        path, method = request.path, request.method
        if kind is not None:
            try:
                model = json.loads(body).get("model")
            except (ValueError, AttributeError):
                return None  # the OpenAI layer answers malformed bodies
            if isinstance(model, str) and model not in self._model_ids():
                return _json(exo_error(404, f"No instance found for model {model}"), 404)
            return None
        if method == "GET" and path in ("/v1/models", "/models"):
            downloaded_only = request.query.get("status") == "downloaded"
            data = [
                self._card(entry)
                for entry in self._entries()
                if not downloaded_only or entry.get("downloaded", True) is not False
            ]
            return self._ok(behaviour, {"object": "list", "data": data}, extra=False)
        if method == "GET" and path == "/ollama/api/ps":
            with self._instances_lock:
                running = sorted(self.instances)
            models = [
                {
                    "name": model,
                    "model": model,
                    "size": 0,
                    "digest": None,
                    "details": None,
                    "expires_at": None,
                    "size_vram": None,
                }
                for model in running
            ]
            return self._ok(behaviour, {"models": models}, extra=False)
        if method == "GET" and path == "/ollama/api/version":
            return self._ok(behaviour, {"version": "1.0.0"}, extra=False)
        if method == "GET" and path == "/node_id":
            return _json(self.node_id, 200)
        return _json({"detail": "Not Found"}, 404)

    def _model_ids(self) -> set[str]:
        with self._instances_lock:
            return set(self.instances)

    async def _generate(
        self,
        request: web.Request,
        behaviour: Behaviour,
        payload: dict[str, Any],
        model: str,
        kind: str,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        messages = payload.get("messages")
        if not isinstance(messages, list):
            return _json(exo_error(422, "messages: Field required"), 422)
        content = behaviour.content if behaviour.content is not None else f"Hello from {self.name}"
        prompt_tokens = max(1, shapes.count_tokens(messages))
        command_id = str(uuid.uuid4())
        created = int(time.time())
        pieces = shapes.split_text(content) or [""]
        usage = _usage(prompt_tokens, len(pieces))

        def response(choices: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
            value = {
                "id": command_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": choices,
                **more,
            }
            return {**value, **(behaviour.extra_response_fields or {})}

        calls = shapes.normalise_tool_calls(behaviour.tool_calls) if behaviour.tool_calls else None
        if payload.get("stream") is not True:
            message: dict[str, Any] = {"role": "assistant", "content": "" if calls else content}
            if calls:
                message["tool_calls"] = [{**call, "index": i} for i, call in enumerate(calls)]
            finish = "tool_calls" if calls else "stop"
            answer = response(
                [{"index": 0, "message": message, "finish_reason": finish}], usage=usage
            )
            return self._ok(behaviour, answer, extra=False)

        events: list[bytes] = []
        progress = {
            "model": model,
            "processed_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
        }
        events.append(b": prefill_progress " + shapes.dumps(progress) + b"\n\n")
        if calls:
            delta = {
                "role": "assistant",
                "tool_calls": [{**call, "index": i} for i, call in enumerate(calls)],
            }
            chunk = response([{"index": 0, "delta": delta, "finish_reason": "tool_calls"}])
            events.append(_data(chunk | {"usage": usage}))
        else:
            for index, piece in enumerate(pieces):
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"role": "assistant", "content": piece},
                }
                last = index == len(pieces) - 1
                if last:
                    choice["finish_reason"] = "stop"
                chunk = response([choice], usage=usage) if last else response([choice])
                events.append(_data(chunk))
                if index == 0 and self.stream_error is not None:
                    error = {
                        "error": {
                            "message": self.stream_error,
                            "type": "InternalServerError",
                            "code": 500,
                        }
                    }
                    events.append(_data(error))
                    break
        if self.stream_error is None:
            stats = {
                "prompt_tps": 100.0,
                "generation_tps": 30.0,
                "prompt_tokens": prompt_tokens,
                "generation_tokens": len(pieces),
                "peak_memory_usage": {"in_bytes": 1 << 30},
                "prefix_cache_hit": "none",
            }
            events.append(b": generation_stats " + shapes.dumps(stats) + b"\n\n")
        return await self._write_stream(request, behaviour, events, exchange)

    async def _write_stream(
        self,
        request: web.Request,
        behaviour: Behaviour,
        events: list[bytes],
        exchange: _Exchange,
    ) -> web.StreamResponse:
        if behaviour.malformed:
            index = next(i for i, e in enumerate(events) if e.startswith(b"data:"))
            events[index] = b'data: {"id": "broken", "choices": [{"delta": {"content": "x\n\n'
        if not behaviour.omit_done:
            events.append(b"data: [DONE]\n\n")
        if behaviour.crlf:
            events = [event.replace(b"\n", b"\r\n") for event in events]
        cut = behaviour.cut_after_events
        data_seen = 0
        stream = web.StreamResponse(status=behaviour.status, headers=_SSE_HEADERS)
        await stream.prepare(request)
        await stream.write(KEEPALIVE.replace(b"\n", b"\r\n") if behaviour.crlf else KEEPALIVE)
        for event in events:
            is_data = event.startswith(b"data:")
            if is_data and data_seen and behaviour.delay_between_events:
                await self._quiet(stream, behaviour.delay_between_events, behaviour.crlf)
            await stream.write(event)
            if is_data:
                data_seen += 1
                if cut is not None and data_seen >= cut:
                    await _drop(request, exchange, reset=False)
        await stream.write_eof()
        return stream

    async def _quiet(self, stream: web.StreamResponse, seconds: float, crlf: bool) -> None:
        """Wait ``seconds``, sending ``: keep-alive`` after each ``keepalive_interval``."""
        keepalive = KEEPALIVE.replace(b"\n", b"\r\n") if crlf else KEEPALIVE
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            if left <= self.keepalive_interval:
                await asyncio.sleep(left)
                return
            await asyncio.sleep(self.keepalive_interval)
            await stream.write(keepalive)

    def _entries(self) -> list[dict[str, Any]]:
        return [entry for entry in list(self.models) if isinstance(entry, dict)]

    def _card(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        model_id = str(entry["id"])
        card: dict[str, Any] = {
            "id": model_id,
            "object": "model",
            "created": self._created,
            "owned_by": "exo",
            "hugging_face_id": model_id,
            "name": model_id.rsplit("/", 1)[-1],
            "description": "",
            "tags": [],
        }
        card.update(_CARD_DEFAULTS)
        card.update({k: v for k, v in entry.items() if k not in _FAKE_FIELDS})
        return card


def _data(value: Any) -> bytes:
    return b"data: " + shapes.dumps(value) + b"\n\n"
