"""The Anthropic Messages front door: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

What Claude Code and the ``anthropic`` SDK speak. A request is translated to OpenAI chat
(``nexus_server.anthropic_wire``), routed like any chat request (policies, budget, failover,
queue, headers), and the answer translated back: a Message, or Anthropic's event stream. Errors
use Anthropic's shape and status codes, so the SDK raises its usual exception classes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nexus_core.adapters import Endpoint
from nexus_core.anthropic_format import TranslationError, anthropic_error_body, count_tokens
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway
from nexus_core.observability import RequestRecord
from nexus_server.anthropic_wire import (
    ChatStreamToAnthropic,
    anthropic_request_to_chat,
    chat_answer_to_anthropic,
    wants_thinking,
)
from nexus_server.proxy import (
    JSON,
    ProxyEndpoint,
    Send,
    StreamBroke,
    answer_data,
    end_cut_stream,
    header_list,
    openai_chunks,
    route_headers,
    send_chunk,
    send_whole,
    start_response,
)

SSE = b"text/event-stream; charset=utf-8"


class _AnthropicEndpoint(ProxyEndpoint):
    """Shared by the Anthropic endpoints: the front-door name and Anthropic's error shape."""

    front_door = "anthropic"

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway, Endpoint.CHAT)

    async def send_error(self, send: Send, error: GatewayError) -> None:
        """Anthropic's ``{"type": "error", "error": {...}}`` with the same status."""
        body = anthropic_error_body(error.status, error.message)
        await send_whole(send, error.status, JSON, body, header_list(error.headers))


class MessagesEndpoint(_AnthropicEndpoint):
    """``POST /v1/messages``: Anthropic in, OpenAI chat to the backend, Anthropic out."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        #: ``routing.system_messages``: how a system message after the first turn is folded.
        self.system_messages = gateway.config.routing.system_messages.value

    async def serve(
        self,
        send: Send,
        body: bytes,
        data: Any,
        flexible: bool,
        high: bool,
        record: RequestRecord,
    ) -> None:
        """Translate, route, and answer a Message or Anthropic's event stream."""
        try:
            if not isinstance(data, dict):
                raise TranslationError("the request body must be a JSON object")
            chat = anthropic_request_to_chat(data, system_messages=self.system_messages)
        except TranslationError as exc:
            await self.reject(send, record, GatewayError(400, str(exc), param=exc.param))
            return
        model = str(data["model"])
        stop_sequences = data.get("stop_sequences") or ()
        if not isinstance(stop_sequences, list):
            stop_sequences = ()
        include_thinking = wants_thinking(data)
        result = await self.route(send, Endpoint.CHAT, chat, flexible, high, record)
        if result is None:
            return
        headers = route_headers(result)
        if result.stream is None:
            answer = answer_data(result)
            message = chat_answer_to_anthropic(
                answer,
                model=model,
                stop_sequences=stop_sequences,
                include_thinking=include_thinking,
            )
            out = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
            await send_whole(send, result.status, JSON, out, headers)
            return
        stream = result.stream
        converter = ChatStreamToAnthropic(
            model,
            input_tokens=count_tokens(data),
            stop_sequences=stop_sequences,
            include_thinking=include_thinking,
        )
        try:
            await start_response(send, 200, SSE, headers)
            # Anthropic opens every stream with message_start and a ping.
            await send_chunk(send, converter.start() + converter.ping())
            try:
                async for chunk in openai_chunks(stream):
                    events = converter.feed(chunk)
                    if events:
                        await send_chunk(send, events)
            except asyncio.CancelledError:
                await end_cut_stream(send, converter.error("Nexus is shutting down"))
                raise
            except StreamBroke as broke:
                await send_chunk(send, converter.error(broke.message))
            else:
                if converter.finish_reason is None:
                    # The upstream ended without finishing: never present it as a whole answer.
                    await send_chunk(
                        send, converter.error("the upstream stream ended before the answer did")
                    )
                else:
                    await send_chunk(send, converter.finish())
            await send({"type": "http.response.body", "body": b""})
        finally:
            await stream.aclose()


class CountTokensEndpoint(_AnthropicEndpoint):
    """``POST /v1/messages/count_tokens``: an estimate of the request's input tokens.

    No backend is asked (an OpenAI-wire server has no such call): characters / 4 over the
    system prompt, messages and tools, plus a fixed amount per image.
    """

    async def serve(
        self,
        send: Send,
        body: bytes,
        data: Any,
        flexible: bool,
        high: bool,
        record: RequestRecord,
    ) -> None:
        """``{"input_tokens": n}`` for a valid Messages request (``max_tokens`` not needed)."""
        try:
            if not isinstance(data, dict):
                raise TranslationError("the request body must be a JSON object")
            if not isinstance(data.get("model"), str) or not data["model"]:
                raise TranslationError("model: field required", "model")
            if not isinstance(data.get("messages"), list):
                raise TranslationError("messages: field required", "messages")
            tokens = count_tokens(data)
        except TranslationError as exc:
            await self.send_error(send, GatewayError(400, str(exc), param=exc.param))
            return
        out = json.dumps({"input_tokens": tokens}).encode()
        await send_whole(send, 200, JSON, out, [])
