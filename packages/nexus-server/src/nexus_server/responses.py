"""The OpenAI Responses front door: ``POST /v1/responses``.

What ``client.responses`` of the openai SDK, the openai-agents SDK and the Codex CLI speak. A
request is translated to OpenAI chat (``nexus_server.responses_wire``), routed like any chat
request (policies, budget, failover, queue, headers), and the answer translated back: a
``response`` object, or the Responses API's typed event stream. A backend that speaks the
Responses API natively is sent the request as it is instead, and its answer relayed unchanged
(the second half of this module); failover picks the body per attempt, so one route list can
mix both. What Nexus changes for a native backend (``native_request``): ``model`` (per attempt),
``store: false`` (the conversation is Nexus's to keep), and ``previous_response_id`` replaced by
the stored conversation it names; ``NativeStream`` watches a relayed stream with a few byte
checks per event. Errors before the answer starts
use OpenAI's envelope with the chat door's codes; a stream that breaks later ends with an
``error`` event and ``response.failed``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from nexus_core import fastjson
from nexus_core.adapters import Endpoint, speaks_responses
from nexus_core.anthropic_format import JSONDict
from nexus_core.errors import GatewayError
from nexus_core.failover import NativeRequest, ProxyResult
from nexus_core.gateway import Gateway, state_unavailable
from nexus_core.observability import RequestRecord
from nexus_core.registry import Backend
from nexus_core.sse import event_data
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
from nexus_server.responses_store import MAX_ID_LENGTH, ResponseStore, StoredResponse
from nexus_server.responses_wire import (
    ChatStreamToResponses,
    ResponsesRequestError,
    chat_answer_to_response,
    input_items,
    responses_request_to_chat,
)

SSE = b"text/event-stream; charset=utf-8"
#: The statuses of a finished response: kept, and handed to ``on_complete``.
FINISHED = ("completed", "incomplete")

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
            previous = await self._previous(data, owner, record)
        except GatewayError as error:
            await self.reject(send, record, error)
            return
        # What the backend is asked: the stored conversation, then this request's input.
        earlier = previous.items if previous is not None else []
        items = [*earlier, *input_items(data)]
        asked = {**data, "input": items} if earlier else data
        refusal = None
        try:
            chat = responses_request_to_chat(asked, system_messages=self.system_messages)
        except ResponsesRequestError as exc:
            refusal = GatewayError(400, str(exc), param=exc.param, code=exc.code)
            model = data.get("model")
            if not isinstance(model, str) or not model:
                await self.reject(send, record, refusal)
                return
            # What only the Responses API has (built-in tools, background...): a backend that
            # speaks it may serve it, the others are passed over; none, and this is the answer.
            chat = {"model": model, "messages": []}
            if data.get("stream") is True:
                chat["stream"] = True
        keep = self.store.enabled and data.get("store", True) is not False
        # A backend that speaks the Responses API is sent this instead of the chat body.
        native = native_request(data, earlier, refusal)
        result = await self.route(send, Endpoint.CHAT, chat, flexible, high, record, native)
        if result is None:
            return
        headers = route_headers(result)
        if result.native:
            new = items[len(earlier) :]
            await self._relay_native(
                send, result, headers, data, new, previous, keep, owner, record
            )
            return
        if result.stream is None:
            answer = answer_data(result)
            response = chat_answer_to_response(answer, data)
            if keep:
                await self._save(response, items[len(earlier) :], previous, owner, record)
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
                        new = items[len(earlier) :]
                        await self._save(converter.response, new, previous, owner, record)
            # The last events and the body's end in one write.
            await send({"type": "http.response.body", "body": b"".join(held) + last})
        finally:
            await stream.aclose()
        if self.on_complete is not None and converter.response is not None:
            await self.on_complete(input_items(data), converter.response)

    async def _relay_native(
        self,
        send: Send,
        result: ProxyResult,
        headers: list[tuple[bytes, bytes]],
        data: JSONDict,
        new: list[JSONDict],
        previous: StoredResponse | None,
        keep: bool,
        owner: str | None,
        record: RequestRecord,
    ) -> None:
        """A native backend's answer, relayed unchanged: its response object or its events,
        kept and reported as a translated answer is; a cut stream ends with ``response.failed``."""
        stream = result.stream
        if stream is None:
            answer = answer_data(result)
            final = (
                answer if isinstance(answer, dict) and answer.get("status") in FINISHED else None
            )
            if keep and final is not None:
                await self._save(final, new, previous, owner, record)
            await send_whole(send, result.status, JSON, result.body or b"", headers)
            if final is not None and self.on_complete is not None:
                await self.on_complete(input_items(data), final)
            return
        watch = NativeStream(result.route.model)
        try:
            await start_response(send, 200, SSE, headers)
            try:
                async for event in stream:
                    final = watch.feed(event)
                    if final is not None and keep:
                        # Kept before the client hears it is complete: a next turn finds it.
                        await self._save(final, new, previous, owner, record)
                    await send_chunk(send, event)
            except asyncio.CancelledError:
                await end_cut_stream(
                    send,
                    watch.error("Nexus is shutting down; the answer was cut short", "shutdown"),
                )
                raise
            except StreamBroke as broke:
                await send_chunk(send, watch.error(broke.message))
            else:
                if not watch.ended:
                    # The upstream ended without a final event: never a silent truncation.
                    await send_chunk(
                        send, watch.error("the upstream stream ended before the answer did")
                    )
            await send({"type": "http.response.body", "body": b""})
        finally:
            await stream.aclose()
        if watch.response is not None and self.on_complete is not None:
            await self.on_complete(input_items(data), watch.response)

    async def _previous(
        self, data: JSONDict, owner: str | None, record: RequestRecord
    ) -> StoredResponse | None:
        """The stored conversation ``previous_response_id`` names (None without one)."""
        previous = data.get("previous_response_id")
        if previous is None:
            return None
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
        return stored

    async def _save(
        self,
        response: JSONDict,
        items: list[JSONDict],
        previous: StoredResponse | None,
        owner: str | None,
        record: RequestRecord,
    ) -> None:
        """Keep ``response`` with its turn's ``items``, linked to ``previous``; a store that
        fails costs the client only the chance to continue it (the answer still goes out), and
        is logged as an outage."""
        output = response.get("output")
        outputs = (
            [item for item in output if isinstance(item, dict)] if isinstance(output, list) else []
        )
        try:
            await self.store.save(response, [*items, *outputs], owner, previous=previous)
        except StateError as exc:
            self.gateway.store_outage.failed("keep a response", exc, record.request_id)


# --------------------------------------------------------------------------------------------
# Native pass-through: a backend that speaks the Responses API gets the request as it is

#: The events that end a Responses stream; the first two carry the final response.
_FINAL = (b'"response.completed"', b'"response.incomplete"')
_FAILED = b'"response.failed"'
_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


def speaks_natively(backend: Backend) -> bool:
    """Whether ``backend`` is sent Responses requests as they are: its ``native_responses``
    setting, else what its adapter declares (``speaks_responses``)."""
    override = backend.config.native_responses
    return speaks_responses(backend.adapter) if override is None else override


def native_request(
    data: Mapping[str, Any], earlier: list[JSONDict] | None, refusal: GatewayError | None = None
) -> NativeRequest:
    """The request a native backend is sent: the client's, with ``store: false`` and the stored
    conversation (``earlier``) in place of ``previous_response_id``. ``refusal``: why it cannot
    be translated (only native backends may then serve it)."""
    body: JSONDict = {key: value for key, value in data.items() if key != "previous_response_id"}
    body["store"] = False
    if earlier:
        body["input"] = [*_replayed(earlier), *input_items(data)]
    return NativeRequest(Endpoint.RESPONSES, body, speaks_natively, refusal)


def _replayed(earlier: list[JSONDict]) -> list[JSONDict]:
    """Stored items as a backend that keeps nothing accepts them again.

    With ``store: false`` OpenAI answers 404 for an input item whose ``id`` it did not store, so
    the ids go (an id is optional on a message, a function call or its output). A reasoning item
    is kept only with its ``encrypted_content`` (then with its id, as OpenAI asks): without it
    (another model's reasoning, or OpenAI's own with nothing stored upstream) it is refused, and
    it means nothing to the model.
    """
    out: list[JSONDict] = []
    for item in earlier:
        if item.get("type") == "reasoning":
            if item.get("encrypted_content"):
                out.append(item)
        else:
            out.append({key: value for key, value in item.items() if key != "id"})
    return out


class NativeStream:
    """Follows a relayed Responses event stream with a few byte checks per event.

    ``feed`` each event before it is sent: it returns the final response when the event is
    ``response.completed`` or ``response.incomplete`` (so it can be stored before the client
    hears the answer is complete), and raises ``StreamBroke`` for Nexus's own error event (the
    upstream broke). ``ended`` tells a stream that finished (or failed upstream) from a cut one;
    ``error`` gives the events that end a cut one.
    """

    __slots__ = ("_last", "_shell", "ended", "model", "response")

    def __init__(self, model: str) -> None:
        #: The model of the answer, for a ``response.failed`` when no event named it.
        self.model = model
        #: The final response object, once ``response.completed``/``incomplete`` came.
        self.response: JSONDict | None = None
        #: The stream reached a final event (completed, incomplete or failed).
        self.ended = False
        self._shell: JSONDict | None = None
        self._last = b""

    def feed(self, event: bytes) -> JSONDict | None:
        """Note one upstream event; the final response if it is the final event."""
        if event.startswith(b'data: {"error"'):
            # Nexus's error event (``ProxyStream``): the upstream broke after the start.
            raise StreamBroke(_error_message(event))
        self._last = event
        if self._shell is None:
            # The first event (response.created) holds the response as it started.
            self._shell = self._response_of(event, None) or {}
        if b'"response.' not in event:
            return None
        if any(name in event for name in _FINAL):
            response = self._response_of(event, ("response.completed", "response.incomplete"))
            if response is not None:
                self.ended = True
                self.response = response
                return response
        elif _FAILED in event and self._response_of(event, ("response.failed",)) is not None:
            self.ended = True
        return None

    @staticmethod
    def _response_of(event: bytes, types: tuple[str, ...] | None) -> JSONDict | None:
        try:
            payload = fastjson.loads(event_data(event))
        except ValueError:
            return None
        if not isinstance(payload, dict) or (
            types is not None and payload.get("type") not in types
        ):
            return None
        response = payload.get("response")
        return response if isinstance(response, dict) else None

    def error(self, message: str, code: str = "server_error") -> bytes:
        """An ``error`` event and ``response.failed``, numbered after the last upstream event."""
        found = _SEQUENCE.findall(self._last)
        number = int(found[-1]) + 1 if found else 0
        response: JSONDict = {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": int(time.time()),
            "model": self.model,
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            **(self._shell or {}),
        }
        response["status"] = "failed"
        response["error"] = {"code": "server_error", "message": message}
        error = {
            "type": "error",
            "sequence_number": number,
            "code": code,
            "message": message,
            "param": None,
        }
        failed = {"type": "response.failed", "sequence_number": number + 1, "response": response}
        return _native_sse(error) + _native_sse(failed)


def _native_sse(event: JSONDict) -> bytes:
    kind = str(event["type"]).encode()
    return b"event: " + kind + b"\ndata: " + fastjson.dumps(event) + b"\n\n"


def _error_message(event: bytes) -> str:
    try:
        payload = fastjson.loads(event_data(event))
    except ValueError:
        return "the upstream stream broke"
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or "the upstream stream broke")
