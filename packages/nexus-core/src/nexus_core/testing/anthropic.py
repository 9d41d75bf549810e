"""A fake Anthropic API: the Messages API (``POST /v1/messages``, streamed too) and the model list.

Shapes follow Anthropic's API reference and the ``anthropic`` SDK's types (2.x), and the tests
drive this fake with that SDK:

- Every request needs a key, in ``x-api-key`` or (as the ``anthropic`` SDK 2.x sends it)
  ``Authorization: Bearer`` (the given ``api_key``, or any key when None), and an
  ``anthropic-version`` header: 401 ``authentication_error`` for a missing or wrong key, 400
  ``invalid_request_error`` without the version.
- Errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}``; every answer
  carries ``request-id`` and ``anthropic-organization-id``. ``Behaviour(status=429)`` is a
  ``rate_limit_error`` (with ``retry-after`` when ``retry_after`` is set), 529 an
  ``overloaded_error``.
- ``GET /v1/models`` pages with ``limit`` (default 20), ``after_id`` and ``before_id``:
  ``{"data": [{"type": "model", "id", "display_name", "created_at", ...}], "has_more",
  "first_id", "last_id"}``. A model given as a mapping may add fields (``max_input_tokens``,
  ``capabilities``...).
- ``POST /v1/messages`` checks what the real API checks (``model``, ``max_tokens``, roles, block
  types, every ``tool_result`` answering a ``tool_use`` of the assistant turn just before) and
  answers a ``Message`` (``msg_...``) or, with ``"stream": true``, Anthropic's SSE events:
  ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``
  (``text_delta`` / ``input_json_delta``), ``content_block_stop``, ``message_delta`` (stop
  reason, usage), ``message_stop``. One word is one token; an answer longer than ``max_tokens``
  stops at ``max_tokens``, one reaching a stop sequence at ``stop_sequence``.

``Behaviour`` works as for every fake: ``content``, ``tool_calls`` (OpenAI-shaped calls or
``{"name", "input"}``; answered as ``tool_use`` blocks after the text, if ``content`` is set too),
``delay_*``, ``reset``, ``hang``, ``cut_after_events``, ``malformed``, ``split_events``, ``crlf``
and ``extra_response_fields`` (merged into the message); ``omit_done`` leaves out
``message_stop``. ``AnthropicBehaviour`` adds ``stream_error``: an ``error`` event of that type
after ``stream_error_after`` events, then the end of the stream, as the API does when it
overloads mid-answer.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from nexus_core.anthropic_format import anthropic_error_type, count_tokens, new_tool_use_id
from nexus_core.testing.fake_backend import (
    _MALFORMED_JSON,
    _SSE_HEADERS,
    Behaviour,
    FakeBackend,
    _drop,
    _Exchange,
    _json,
)

__all__ = ["DEFAULT_MODELS", "AnthropicBehaviour", "FakeAnthropic"]

#: What the fake lists by default: current ids as the API spells them.
DEFAULT_MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5-20251001", "claude-opus-4-8")
_CREATED_AT = "2025-10-01T00:00:00Z"
_BLOCK_TYPES = frozenset(
    {
        "text",
        "image",
        "document",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "search_result",
    }
)
_MESSAGES = {
    400: "Invalid request",
    401: "invalid x-api-key",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not found",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}


@dataclass
class AnthropicBehaviour(Behaviour):
    """A ``Behaviour`` with what only Anthropic's streams do: an ``error`` event mid-answer."""

    #: Stream: after ``stream_error_after`` events, send an ``error`` event of this type
    #: (``overloaded_error``, ``api_error``...) and end the stream.
    stream_error: str | None = None
    stream_error_after: int = 3


class FakeAnthropic(FakeBackend):
    """A fake Anthropic API on ``127.0.0.1`` (the SDK's ``base_url`` is ``url``, without /v1)."""

    inference_paths: Mapping[str, str] = {"/v1/messages": "messages"}
    public_paths: frozenset[str] = frozenset()

    def __init__(
        self,
        name: str = "anthropic",
        models: Sequence[str | Mapping[str, Any]] = DEFAULT_MODELS,
        *,
        behaviour: Behaviour | None = None,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(name, models, behaviour=behaviour, api_key=api_key, port=port)
        #: The most models one page holds, whatever ``limit`` asks (the API's cap is 1000).
        self.page_limit = 1000

    def error_body(self, status: int) -> dict[str, Any]:
        """Anthropic's error shape for ``status``."""
        message = _MESSAGES.get(status, "Internal server error" if status >= 500 else "Error")
        return _error(status, message)

    def response_headers(self, request: web.Request) -> Mapping[str, str]:
        """``request-id`` and ``anthropic-organization-id`` on every answer."""
        return {
            "request-id": f"req_{secrets.token_hex(12)}",
            "anthropic-organization-id": "00000000-0000-4000-8000-00000000fake",
        }

    async def _answer(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        if behaviour.delay_before_headers:
            await asyncio.sleep(behaviour.delay_before_headers)
        if behaviour.reset:
            await _drop(request, exchange, reset=True)
        if behaviour.hang:
            await asyncio.get_running_loop().create_future()
        key = request.headers.get("x-api-key")
        if key is None and request.headers.get("Authorization", "").startswith("Bearer "):
            # What the anthropic SDK 2.x sends its api_key as.
            key = request.headers["Authorization"].removeprefix("Bearer ")
        if not key:
            return _json(_error(401, "x-api-key header is required"), 401)
        if self.api_key is not None and key != self.api_key:
            return _json(_error(401, "invalid x-api-key"), 401)
        if not request.headers.get("anthropic-version"):
            return _json(_error(400, "anthropic-version: header is required"), 400)
        if behaviour.status >= 400:
            headers = {}
            if behaviour.retry_after is not None:
                headers["retry-after"] = f"{behaviour.retry_after:g}"
            error = behaviour.error_body or self.error_body(behaviour.status)
            return _json(error, behaviour.status, headers)
        path, method = request.path, request.method
        if method == "GET" and path == "/v1/models":
            return self._model_page(request, behaviour)
        if method == "GET" and path.startswith("/v1/models/"):
            wanted = path.removeprefix("/v1/models/")
            for card in self._cards():
                if card["id"] == wanted:
                    return self._ok(behaviour, card, extra=False)
            return _json(_error(404, f"model: {wanted}"), 404)
        if kind == "messages":
            return await self._messages(request, body, behaviour, exchange)
        return _json(_error(404, "Not Found"), 404)

    # -- models ----------------------------------------------------------------------------------

    def _cards(self) -> list[dict[str, Any]]:
        cards = []
        for entry in list(self.models):
            card: dict[str, Any] = {"type": "model"}
            if isinstance(entry, str):
                card["id"] = entry
            else:
                card.update(entry)
            card.setdefault("display_name", _display_name(str(card["id"])))
            card.setdefault("created_at", _CREATED_AT)
            card.setdefault("lifecycle", "active")
            cards.append(card)
        return cards

    def _model_page(self, request: web.Request, behaviour: Behaviour) -> web.Response:
        cards = self._cards()
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return _json(_error(400, "limit: Input should be between 1 and 1000"), 400)
        limit = min(limit, self.page_limit)
        ids = [card["id"] for card in cards]
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if before is not None:
            end = ids.index(before) if before in ids else 0
            page = cards[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            start = ids.index(after) + 1 if after in ids else 0
            page = cards[start : start + limit]
            has_more = start + limit < len(cards)
        value = {
            "data": page,
            "has_more": has_more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
        return self._ok(behaviour, value, extra=False)

    # -- messages --------------------------------------------------------------------------------

    async def _messages(
        self, request: web.Request, body: bytes, behaviour: Behaviour, exchange: _Exchange
    ) -> web.StreamResponse:
        try:
            payload = json.loads(body)
        except ValueError:
            return _json(_error(400, "There was an error parsing the body: invalid JSON"), 400)
        problem = _check_request(payload)
        if problem is not None:
            return _json(_error(400, problem), 400)
        model = payload["model"]
        if model not in self._model_ids():
            return _json(_error(404, f"model: {model}"), 404)
        message = self._message(behaviour, payload)
        if payload.get("stream") is not True:
            if behaviour.malformed:
                return web.Response(
                    body=_MALFORMED_JSON, status=200, content_type="application/json"
                )
            return _json({**message, **(behaviour.extra_response_fields or {})}, 200)
        return await self._stream(request, behaviour, message, exchange)

    def _message(self, behaviour: Behaviour, payload: Mapping[str, Any]) -> dict[str, Any]:
        number = next(self._ids)
        words = (
            behaviour.content if behaviour.content is not None else f"Hello from {self.name}"
        ).split(" ")
        stop_reason, stop_sequence = "end_turn", None
        text = " ".join(words)
        for sequence in payload.get("stop_sequences") or ():
            if sequence and sequence in text:
                text, stop_reason, stop_sequence = (
                    text.split(sequence)[0],
                    "stop_sequence",
                    sequence,
                )
                words = text.split(" ")
        max_tokens = payload["max_tokens"]
        if len(words) > max_tokens:
            text, stop_reason, stop_sequence = " ".join(words[:max_tokens]), "max_tokens", None
        content: list[dict[str, Any]] = []
        tools = _tool_uses(behaviour.tool_calls)
        if tools and stop_reason != "max_tokens":
            if behaviour.content is not None:
                content.append({"type": "text", "text": text})
            content.extend(tools)
            stop_reason, stop_sequence = "tool_use", None
        else:
            content.append({"type": "text", "text": text})
        output = sum(len(b.get("text", "").split()) for b in content) + 8 * len(tools)
        return {
            "id": f"msg_{self.name}{number:04d}{secrets.token_hex(8)}",
            "type": "message",
            "role": "assistant",
            "model": payload["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": count_tokens(payload),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": max(1, output),
                "service_tier": "standard",
            },
        }

    async def _stream(
        self,
        request: web.Request,
        behaviour: Behaviour,
        message: dict[str, Any],
        exchange: _Exchange,
    ) -> web.StreamResponse:
        start = {
            **message,
            **(behaviour.extra_response_fields or {}),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**message["usage"], "output_tokens": 1},
        }
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start})
        ]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                first: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [
                    {"type": "text_delta", "text": piece}
                    for piece in _pieces(block["text"], by_word=True)
                ]
            else:
                first = {**block, "input": {}}
                deltas = [
                    {"type": "input_json_delta", "partial_json": piece}
                    for piece in _pieces(json.dumps(block["input"]), by_word=False)
                ]
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": first},
                )
            )
            if index == 0:
                events.append(("ping", {"type": "ping"}))
            events.extend(
                ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                for d in deltas
            )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": message["stop_reason"],
                        "stop_sequence": message["stop_sequence"],
                    },
                    "usage": {"output_tokens": message["usage"]["output_tokens"]},
                },
            )
        )
        if not behaviour.omit_done:
            events.append(("message_stop", {"type": "message_stop"}))
        error_type = getattr(behaviour, "stream_error", None)
        if error_type is not None:
            after = getattr(behaviour, "stream_error_after", 3)
            status = {"overloaded_error": 529, "rate_limit_error": 429}.get(error_type, 500)
            error = _error(status, _MESSAGES.get(status, "Error"))
            error["error"]["type"] = error_type
            del error["request_id"]  # an event carries the error object only
            events = [*events[:after], ("error", error)]
        return await _write_events(request, behaviour, events, exchange)


def _error(status: int, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": message},
        "request_id": f"req_{secrets.token_hex(12)}",
    }


def _display_name(model_id: str) -> str:
    # claude-sonnet-4-5-20250929 -> "Claude Sonnet 4.5"
    parts = [p for p in model_id.split("-") if not (p.isdigit() and len(p) == 8)]
    words = [p.capitalize() for p in parts if not p.isdigit()]
    version = ".".join(p for p in parts if p.isdigit())
    return " ".join(words + ([version] if version else []))


def _pieces(text: str, *, by_word: bool) -> list[str]:
    if by_word:
        words = text.split(" ")
        return (
            [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0] if text else []
        )
    third = max(1, len(text) // 3)
    return [text[i : i + third] for i in range(0, len(text), third)]


def _tool_uses(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """``tool_use`` blocks from OpenAI-shaped tool calls or ``{"name", "input"}`` entries."""
    blocks = []
    for call in calls or ():
        function = call.get("function")
        if isinstance(function, Mapping):
            arguments = function.get("arguments") or "{}"
            tool_input = json.loads(arguments) if isinstance(arguments, str) else arguments
            name = function.get("name")
        else:
            tool_input, name = call.get("input") or {}, call.get("name")
        tool_id = call.get("id")
        if not (isinstance(tool_id, str) and tool_id.startswith("toolu_")):
            tool_id = new_tool_use_id()
        blocks.append({"type": "tool_use", "id": tool_id, "name": name, "input": tool_input})
    return blocks


def _check_request(payload: Any) -> str | None:
    """What the real API answers 400 for, in its wording; None for a valid request."""
    if not isinstance(payload, dict):
        return "body: Input should be a valid dictionary"
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        return "model: Field required"
    max_tokens = payload.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return "max_tokens: Field required"
    if max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    temperature = payload.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        return "temperature: Input should be less than or equal to 1"
    system = payload.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or list"
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return (
            "messages: Field required"
            if messages is None
            else "messages: at least one message is required"
        )
    previous_tool_ids: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if isinstance(content, str):
            previous_tool_ids = set()
            continue
        if not isinstance(content, list):
            return f"messages.{i}.content: Input should be a valid list"
        tool_ids: set[str] = set()
        for j, block in enumerate(content):
            block_type = block.get("type") if isinstance(block, dict) else None
            if block_type not in _BLOCK_TYPES:
                return f"messages.{i}.content.{j}.type: Input tag {block_type!r} is not valid"
            if block_type == "tool_use":
                if message["role"] != "assistant":
                    return f"messages.{i}.content.{j}: tool_use blocks belong to assistant turns"
                tool_ids.add(str(block.get("id")))
            if block_type == "tool_result" and block.get("tool_use_id") not in previous_tool_ids:
                return (
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result`"
                    " blocks: each `tool_result` block must have a corresponding `tool_use`"
                    " block in the previous message."
                )
        previous_tool_ids = tool_ids
    return None


async def _write_events(
    request: web.Request,
    behaviour: Behaviour,
    events: list[tuple[str, dict[str, Any]]],
    exchange: _Exchange,
) -> web.StreamResponse:
    """Write Anthropic SSE events (``event:`` and ``data:`` lines), misbehaving on cue."""
    end = b"\r\n" if behaviour.crlf else b"\n"
    raw = [
        b"event: " + name.encode() + end + b"data: " + json.dumps(data).encode() + end + end
        for name, data in events
    ]
    if behaviour.malformed and len(raw) > 1:
        raw[1] = b"event: content_block_start" + end + b'data: {"type": "content_bl' + end + end
    cut = behaviour.cut_after_events
    if cut is not None:
        raw = raw[:cut]
    response = web.StreamResponse(status=200, headers=dict(_SSE_HEADERS))
    await response.prepare(request)
    carry = b""
    for index, event in enumerate(raw):
        if index and behaviour.delay_between_events:
            await asyncio.sleep(behaviour.delay_between_events)
        if not behaviour.split_events:
            await response.write(event)
            continue
        middle = len(event) // 2
        pieces = (carry + event[:3], event[3:middle], event[middle:-1])
        carry = event[-1:]
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.001)
    if carry:
        await response.write(carry)
    if cut is not None:
        await _drop(request, exchange, reset=False)
    await response.write_eof()
    return response
