"""A fake llama-cpp-python server: a real HTTP server on 127.0.0.1 that speaks its dialect.

It is ``nexus_core.testing.FakeBackend`` (requests recorded, misbehaviour on cue through
``Behaviour``) with what llama-cpp-python 0.3.36 does differently, as observed:

- routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``/v1/completions`` and
  ``/v1/embeddings``; any other path, ``/health`` included, is FastAPI's 404
  ``{"detail": "Not Found"}``;
- model cards: ``{"id", "object": "model", "owned_by": "me", "permissions": []}``;
- any model name is answered (the loaded model serves it under the name asked for);
- streams: ``text/event-stream; charset=utf-8``, ``json.dumps`` spacing, a role chunk first, a
  finish chunk, ``[DONE]``, and no usage chunk whatever ``stream_options`` says;
- a prompt of ``n_ctx`` tokens (words here) or more: a 400 ``context_length_exceeded`` or,
  streamed, a 200 with an empty body;
- a body that is not JSON: a plain-text 500; with ``api_key``, a wrong or missing key: a 401
  ``{"detail": "Invalid API key"}``; ``Behaviour(status=...)``: the body this server, or
  FastAPI under it, sends with that status.

Every ``Behaviour`` field applies except ``split_events`` and ``crlf`` (the framing is the
server's). Embeddings are the OpenAI fake's answer.
"""

from __future__ import annotations

import asyncio
import http
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from nexus_core.testing import Behaviour, FakeBackend
from nexus_core.testing import openai_shapes as shapes

__all__ = ["FakeLlamaCppPython"]

_ROUTES = {
    "/v1/models": "GET",
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/embeddings": "POST",
}
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}
_TOO_LONG = {
    "chat": "This model's maximum context length is {} tokens. However, you requested {} tokens"
    " ({} in the messages, {} in the completion). Please reduce the length of the messages or"
    " completion.",
    "completions": "This model's maximum context length is {} tokens, however you requested {}"
    " tokens ({} in your prompt; {} for the completion). Please reduce your prompt; or"
    " completion length.",
}
_BROKEN_EVENT = b'data: {"id": "broken", "choices": [{"delta": {"content": "x\n\n'


class Exchange(Protocol):
    """The base fake's per-request state: set ``dropped`` before dropping a connection."""

    dropped: bool


class FakeLlamaCppPython(FakeBackend):
    """llama-cpp-python's server (``python -m llama_cpp.server``), misbehaving on cue."""

    def __init__(
        self,
        name: str = "llama-cpp-python",
        models: Sequence[str | Mapping[str, Any]] = ("tiny",),
        *,
        n_ctx: int = 512,
        api_key: str | None = None,
        behaviour: Behaviour | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(name, models, behaviour=behaviour, port=port)
        #: The context window, in words: a prompt that fills it is refused the server's way.
        self.n_ctx = n_ctx
        #: Checked in ``route``, after the path: FastAPI checks the key per route, so an unknown
        #: path is a 404 even without the key. (Not given to the base class, which checks first.)
        self.server_api_key = api_key

    def error_body(self, status: int) -> dict[str, Any]:
        """The server's own OpenAI-style errors for 400 and 500; FastAPI's for the rest."""
        if status == 400:
            message = _TOO_LONG["chat"].format(self.n_ctx, self.n_ctx + 16, self.n_ctx, 16)
            return shapes.error_body(
                message, "invalid_request_error", param="messages", code="context_length_exceeded"
            )
        if status == 500:
            return shapes.error_body("llama_decode returned -1", "internal_server_error")
        if status == 401:
            return {"detail": "Invalid API key"}
        if status == 422:
            missing = {"type": "missing", "loc": ["body", "messages"], "msg": "Field required"}
            return {"detail": [{**missing, "input": {}}]}
        try:
            return {"detail": http.HTTPStatus(status).phrase}
        except ValueError:
            return {"detail": "Error"}

    async def route(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: Exchange,
    ) -> web.StreamResponse | None:
        """Answer as llama-cpp-python; None (the base's answer) for embeddings only."""
        method = _ROUTES.get(request.path)
        if method is None:
            return _json({"detail": "Not Found"}, 404)
        if request.method != method:
            return _json({"detail": "Method Not Allowed"}, 405)
        key = self.server_api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            return _json(self.error_body(401), 401)
        if kind is None:  # GET /v1/models: the one route that is not inference
            cards = [_card(entry) for entry in self.models]
            return _ok(behaviour, {"object": "list", "data": cards})
        if kind == "embeddings":
            return None
        try:
            payload = json.loads(body)
        except ValueError:
            # FastAPI's error handler fails on the body too; Starlette answers in plain text.
            return web.Response(text="Internal Server Error", status=500)
        if not isinstance(payload, dict):
            message = "Input should be a valid dictionary or object to extract fields from"
            error = {"type": "model_attributes_type", "loc": ["body"], "msg": message}
            return _json({"detail": [{**error, "input": payload}]}, 422)
        return await self._complete(request, behaviour, payload, kind, exchange)

    async def _complete(
        self,
        request: web.Request,
        behaviour: Behaviour,
        payload: dict[str, Any],
        kind: str,
        exchange: Exchange,
    ) -> web.StreamResponse:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            model = _card(self.models[0])["id"]
        stream = payload.get("stream") is True
        # A missing "messages" is no error here: the server generates from an empty prompt.
        prompt = payload.get("messages") if kind == "chat" else payload.get("prompt")
        prompt_tokens = max(1, shapes.count_tokens(prompt or ""))
        if prompt_tokens >= self.n_ctx:
            if stream:
                return await _sse(request, behaviour, [], exchange, done=False)
            max_tokens = payload.get("max_tokens")
            total = prompt_tokens + (max_tokens if isinstance(max_tokens, int) else 0)
            message = _TOO_LONG[kind].format(self.n_ctx, total, prompt_tokens, max_tokens)
            error = shapes.error_body(
                message, "invalid_request_error", param="messages", code="context_length_exceeded"
            )
            return _json(error, 400)

        content = behaviour.content if behaviour.content is not None else f"Hello from {self.name}"
        created = int(time.time())
        if kind == "chat":
            chat_id = f"chatcmpl-{uuid.uuid4()}"
            if not stream:
                answer = shapes.chat_completion(
                    completion_id=chat_id,
                    model=model,
                    created=created,
                    content=content,
                    tool_calls=behaviour.tool_calls,
                    prompt_tokens=prompt_tokens,
                )
                return _ok(behaviour, answer)
            chunks = shapes.chat_chunks(
                completion_id=chat_id,
                model=model,
                created=created,
                content=content,
                tool_calls=behaviour.tool_calls,
                prompt_tokens=prompt_tokens,
                include_usage=False,  # whatever the request says
            )
        else:
            text_id = f"cmpl-{uuid.uuid4()}"
            if not stream:
                answer = shapes.text_completion(
                    completion_id=text_id,
                    model=model,
                    created=created,
                    text=content,
                    prompt_tokens=prompt_tokens,
                )
                return _ok(behaviour, answer)
            chunks = shapes.completion_chunks(
                completion_id=text_id,
                model=model,
                created=created,
                text=content,
                prompt_tokens=prompt_tokens,
                include_usage=False,
            )
        return await _sse(request, behaviour, chunks, exchange, done=True)


def _card(entry: str | Mapping[str, Any]) -> dict[str, Any]:
    model_id = entry if isinstance(entry, str) else str(entry["id"])
    return {"id": model_id, "object": "model", "owned_by": "me", "permissions": []}


def _json(value: Any, status: int) -> web.Response:
    return web.Response(body=shapes.dumps(value), status=status, content_type="application/json")


def _ok(behaviour: Behaviour, value: dict[str, Any]) -> web.Response:
    if behaviour.malformed:
        return web.Response(body=b'{"id": "broken", "choi', content_type="application/json")
    value.pop("system_fingerprint", None)  # OpenAI's; llama-cpp-python sends none
    return _json({**value, **(behaviour.extra_response_fields or {})}, 200)


async def _sse(
    request: web.Request,
    behaviour: Behaviour,
    chunks: list[dict[str, Any]],
    exchange: Exchange,
    *,
    done: bool,
) -> web.StreamResponse:
    """Write ``chunks`` as the server does (``done=False``: nothing at all, not even ``[DONE]``)."""
    extra = behaviour.extra_response_fields or {}
    events = []
    for chunk in chunks:
        chunk.pop("system_fingerprint", None)
        events.append(b"data: " + json.dumps({**chunk, **extra}).encode() + b"\n\n")
    if behaviour.malformed and len(events) > 1:
        events[1] = _BROKEN_EVENT
    if done and not behaviour.omit_done:
        events.append(b"data: [DONE]\n\n")
    cut = behaviour.cut_after_events
    if cut is not None:
        events = events[:cut]

    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    for index, event in enumerate(events):
        if index and behaviour.delay_between_events:
            await asyncio.sleep(behaviour.delay_between_events)
        await response.write(event)
    if cut is not None and request.transport is not None:
        exchange.dropped = True
        request.transport.close()  # what was written goes out, then FIN: no [DONE]
        await asyncio.sleep(5)  # aiohttp cancels this handler when the connection is gone
        raise ConnectionResetError("the fake dropped the connection")
    await response.write_eof()
    return response
