"""The OpenAI Responses front door: ``POST /v1/responses``.

What ``client.responses`` of the openai SDK, the openai-agents SDK and the Codex CLI speak. A
request is translated to OpenAI chat (``nexus_server.responses_wire``), routed like any chat
request (policies, budget, failover, queue, headers), and the answer translated back: a
``response`` object, or the Responses API's typed event stream. Errors before the answer starts
use OpenAI's envelope with the chat door's codes; a stream that breaks later ends with an
``error`` event and ``response.failed``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from nexus_core.adapters import Endpoint
from nexus_core.anthropic_format import JSONDict
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway
from nexus_core.observability import RequestRecord
from nexus_server.proxy import (
    JSON,
    ProxyEndpoint,
    Send,
    StreamBroke,
    end_cut_stream,
    openai_chunks,
    route_headers,
    send_chunk,
    send_whole,
    start_response,
)
from nexus_server.responses_wire import (
    ChatStreamToResponses,
    ResponsesRequestError,
    chat_answer_to_response,
    input_items,
    responses_request_to_chat,
)

SSE = b"text/event-stream; charset=utf-8"

#: Called with the request's input items and the finished response object (completed or
#: incomplete, never failed): where a conversation store keeps them.
OnComplete = Callable[[list[JSONDict], JSONDict], Awaitable[None]]


class ResponsesEndpoint(ProxyEndpoint):
    """``POST /v1/responses``: Responses in, OpenAI chat to the backend, Responses out."""

    front_door = "responses"

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway, Endpoint.CHAT)
        #: ``routing.system_messages``: whether a later system message stays where it is.
        self.system_messages = gateway.config.routing.system_messages.value
        #: The conversation store's hook (none by default): see ``OnComplete``.
        self.on_complete: OnComplete | None = None

    async def serve(
        self,
        send: Send,
        body: bytes,
        data: Any,
        flexible: bool,
        high: bool,
        record: RequestRecord,
    ) -> None:
        """Translate, route, and answer a response object or the Responses event stream."""
        try:
            if not isinstance(data, dict):
                raise ResponsesRequestError("the request body must be a JSON object")
            chat = responses_request_to_chat(data, system_messages=self.system_messages)
        except ResponsesRequestError as exc:
            await self.reject(
                send, record, GatewayError(400, str(exc), param=exc.param, code=exc.code)
            )
            return
        payload = json.dumps(chat, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            result = await self.gateway.proxy(
                Endpoint.CHAT,
                payload,
                data=chat,
                flexible=flexible,
                priority_high=high,
                record=record,
            )
        except GatewayError as error:
            await self.send_error(send, error)
            return
        headers = route_headers(result)
        if result.stream is None:
            answer = result.data if result.data is not None else json.loads(result.body or b"{}")
            response = chat_answer_to_response(answer, data)
            out = json.dumps(response, ensure_ascii=False, separators=(",", ":")).encode()
            await send_whole(send, result.status, JSON, out, headers)
            if self.on_complete is not None:
                await self.on_complete(input_items(data), response)
            return
        stream = result.stream
        converter = ChatStreamToResponses(data)
        try:
            await start_response(send, 200, SSE, headers)
            await send_chunk(send, converter.start())
            try:
                async for chunk in openai_chunks(stream):
                    events = converter.feed(chunk)
                    if events:
                        await send_chunk(send, events)
            except asyncio.CancelledError:
                await end_cut_stream(
                    send,
                    converter.error(
                        "Nexus is shutting down; the answer was cut short", code="shutdown"
                    ),
                )
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
        if converter.response is not None and self.on_complete is not None:
            await self.on_complete(input_items(data), converter.response)
