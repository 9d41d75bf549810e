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
from collections.abc import Awaitable, Callable
from typing import Any

from nexus_core import fastjson
from nexus_core.adapters import Endpoint
from nexus_core.anthropic_format import JSONDict
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway, state_unavailable
from nexus_core.observability import RequestRecord
from nexus_core.state import StateError
from nexus_server.proxy import (
    BATCH_BYTES,
    JSON,
    ProxyEndpoint,
    Send,
    StreamBroke,
    answer_data,
    end_cut_stream,
    openai_chunks,
    route_headers,
    send_chunk,
    send_whole,
    start_response,
)
from nexus_server.responses_store import MAX_ID_LENGTH, ResponseStore
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
        #: Where ``store`` keeps responses and ``previous_response_id`` finds them.
        self.store = ResponseStore(gateway)
        #: An embedding application's hook (none by default): see ``OnComplete``.
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
        if not isinstance(data, dict):
            error = GatewayError(400, "the request body must be a JSON object")
            await self.reject(send, record, error)
            return
        owner = record.api_key.name if record.api_key is not None else None
        try:
            earlier = await self._earlier_items(data, owner, record)
        except GatewayError as error:
            await self.reject(send, record, error)
            return
        # What the backend is asked: the stored conversation, then this request's input.
        items = [*earlier, *input_items(data)]
        asked = {**data, "input": items} if earlier else data
        try:
            chat = responses_request_to_chat(asked, system_messages=self.system_messages)
        except ResponsesRequestError as exc:
            await self.reject(
                send, record, GatewayError(400, str(exc), param=exc.param, code=exc.code)
            )
            return
        keep = self.store.enabled and data.get("store", True) is not False
        result = await self.route(send, Endpoint.CHAT, chat, flexible, high, record)
        if result is None:
            return
        headers = route_headers(result)
        if result.stream is None:
            answer = answer_data(result)
            response = chat_answer_to_response(answer, data)
            if keep:
                await self._save(response, items, owner, record)
            await send_whole(send, result.status, JSON, fastjson.dumps(response), headers)
            if self.on_complete is not None:
                await self.on_complete(input_items(data), response)
            return
        stream = result.stream
        converter = ChatStreamToResponses(data)
        try:
            await start_response(send, 200, SSE, headers)
            # Events of chunks that arrived together go out in one write, as on the chat door.
            held = [converter.start()]
            size = len(held[0])
            try:
                async for chunk in openai_chunks(stream):
                    events = converter.feed(chunk)
                    held.append(events)
                    size += len(events)
                    if not stream.ready() or size >= BATCH_BYTES:
                        if size:
                            await send_chunk(send, b"".join(held))
                        held.clear()
                        size = 0
            except asyncio.CancelledError:
                await end_cut_stream(
                    send,
                    b"".join(held)
                    + converter.error(
                        "Nexus is shutting down; the answer was cut short", code="shutdown"
                    ),
                )
                raise
            except StreamBroke as broke:
                last = converter.error(broke.message)
            else:
                if converter.finish_reason is None:
                    # The upstream ended without finishing: never present it as a whole answer.
                    last = converter.error("the upstream stream ended before the answer did")
                else:
                    last = converter.finish()
                    if keep and converter.response is not None:
                        # Kept before the client hears it is complete: a next turn finds it.
                        await self._save(converter.response, items, owner, record)
            # The last events and the body's end in one write.
            await send({"type": "http.response.body", "body": b"".join(held) + last})
        finally:
            await stream.aclose()
        if self.on_complete is not None and converter.response is not None:
            await self.on_complete(input_items(data), converter.response)

    async def _earlier_items(
        self, data: JSONDict, owner: str | None, record: RequestRecord
    ) -> list[JSONDict]:
        """The stored conversation ``previous_response_id`` names (none without one)."""
        previous = data.get("previous_response_id")
        if previous is None:
            return []
        if not isinstance(previous, str) or not 0 < len(previous) <= MAX_ID_LENGTH:
            raise GatewayError(
                400,
                f"previous_response_id must be a response id of 1 to {MAX_ID_LENGTH} characters",
                param="previous_response_id",
                code="invalid_type",
            )
        try:
            stored = await self.store.load(previous, owner)
        except StateError as exc:
            self.gateway.store_outage.failed("continue a stored response", exc, record.request_id)
            raise state_unavailable("the stored conversation it continues") from exc
        if stored is None:  # missing, expired, another key's, or [responses] store off
            raise GatewayError(
                400,
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return stored.items

    async def _save(
        self, response: JSONDict, items: list[JSONDict], owner: str | None, record: RequestRecord
    ) -> None:
        """Keep ``response`` and its conversation; a store that fails costs the client only the
        chance to continue it (the answer still goes out), and is logged as an outage."""
        output = response.get("output")
        outputs = (
            [item for item in output if isinstance(item, dict)] if isinstance(output, list) else []
        )
        try:
            await self.store.save(response, [*items, *outputs], owner)
        except StateError as exc:
            self.gateway.store_outage.failed("keep a response", exc, record.request_id)
