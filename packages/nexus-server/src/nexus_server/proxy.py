"""The proxy endpoints as plain ASGI: the hot path, kept free of framework work per request.

Each request: read the body (bounded), parse it once, let the gateway route and fail over, then
answer with the upstream body or relay its SSE events one by one, up to ``[DONE]``; the answer
carries Nexus's own content type (JSON, or an event stream), never the backend's. A watcher task
notices the client going away and cancels the work, so the upstream connection is closed within
milliseconds and every counter is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote

from nexus_core import fastjson
from nexus_core.adapters import Endpoint
from nexus_core.auth import presented_key
from nexus_core.errors import GatewayError, payload_too_large
from nexus_core.failover import NativeRequest, ProxyResult, ProxyStream
from nexus_core.gateway import Gateway
from nexus_core.observability import RequestRecord
from nexus_core.sse import error_event, event_data
from nexus_server.protocol import DISCONNECT_KEY, Disconnect

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
#: At most this many bytes of events that arrived together are gathered into one write.
BATCH_BYTES = 64 * 1024
#: The event that ends an OpenAI stream.
DONE_EVENTS = (b"data: [DONE]", b"data:[DONE]")
REQUEST_ID_KEY = "nexus.request_id"
#: What a request gets when answering it fails in Nexus itself (a bug): never a bare 500.
INTERNAL_ERROR = GatewayError(
    500, "Internal error in the gateway", type="server_error", code="internal_error"
)

log = logging.getLogger("nexus.server")


async def send_error(send: Send, error: GatewayError) -> None:
    """Send a ``GatewayError`` as its envelope (or the upstream's own body)."""
    body = error.body()
    headers = header_list(error.headers)
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", error.content_type.encode("latin-1")),
                (b"content-length", b"%d" % len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ProxyEndpoint:
    """ASGI app for one OpenAI endpoint (chat, completions or embeddings).

    The other front doors (Anthropic, Ollama) subclass it: they keep the body reading, the
    header pass and the disconnect watcher, and replace ``serve`` and ``send_error``.
    """

    #: The ``front_door`` of this endpoint's request records and metrics.
    front_door = "openai"
    #: Whether a non-browser client may send a body not declared as JSON (``accepts_body_type``).
    lenient_body_type = False

    def __init__(self, gateway: Gateway, endpoint: Endpoint) -> None:
        self.gateway = gateway
        self.endpoint = endpoint
        self.max_body = gateway.config.server.max_body_bytes

    async def send_error(self, send: Send, error: GatewayError) -> None:
        """Answer ``error`` in this front door's error shape (OpenAI's envelope here)."""
        await send_error(send, error)

    async def route(
        self,
        send: Send,
        endpoint: Endpoint,
        body: dict[str, Any],
        flexible: bool,
        high: bool,
        record: RequestRecord,
        native: NativeRequest | None = None,
    ) -> ProxyResult | None:
        """Proxy a body a translating door made; on a gateway error answer it in the door's
        shape and return None. ``native``: the door's own request, for the backends that speak
        its API (``result.native`` says one answered)."""
        payload = fastjson.dumps(body)
        try:
            return await self.gateway.proxy(
                endpoint,
                payload,
                data=body,
                flexible=flexible,
                priority_high=high,
                record=record,
                native=native,
            )
        except GatewayError as error:
            await self.send_error(send, error)
            return None

    async def reject(self, send: Send, record: RequestRecord, error: GatewayError) -> None:
        """Answer a request refused before routing, and count it."""
        record.begin(self.endpoint.value)
        record.status = error.status
        record.error = error.code or error.type
        record.error_message = error.message
        self.gateway.monitor.finish(record)
        await self.send_error(send, error)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        record = RequestRecord(
            request_id=scope.get(REQUEST_ID_KEY, b"").decode("latin-1"),
            front_door=self.front_door,
            client=client[0] if client else None,
            started=time.time(),
            started_perf=time.perf_counter(),
        )
        if scope["method"] != "POST":
            await self.reject(
                send,
                record,
                GatewayError(
                    405,
                    f"Method {scope['method']} is not allowed here; use POST",
                    code="method_not_allowed",
                    headers={"Allow": "POST"},
                ),
            )
            return
        # One pass over the headers: the body size, the tier mode, the queue priority, the key.
        length: bytes | None = None
        authorization: bytes | None = None
        api_key: bytes | None = None
        content_type: bytes | None = None
        flexible = strict = high = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                content_type = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = value
            elif name == b"x-nexus-flexible":
                flexible = value.strip().lower() == b"true"
            elif name == b"x-nexus-strict":
                strict = value.strip().lower() == b"true"
            elif name == b"x-nexus-priority":
                high = value.strip().lower() == b"high"
            elif name == b"traceparent":
                record.traceparent = value.decode("latin-1")
        keys = self.gateway.keys
        if keys.enabled:
            presented = presented_key(authorization, api_key)
            found = keys.identify(presented)
            if found is None:
                await self.reject(send, record, missing_key(presented))
                return
            record.api_key = found
        if authorization is not None:
            record.client_auth = authorization.decode("latin-1")
        if content_type != JSON and not accepts_body_type(
            content_type, scope["headers"], lenient=self.lenient_body_type
        ):
            await self.reject(send, record, unsupported_media_type())
            return
        try:
            body = await self._read_body(length, receive)
        except GatewayError as error:
            await self.reject(send, record, error)
            return
        try:
            data = fastjson.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested beyond reason
            await self.reject(
                send,
                record,
                GatewayError(
                    400, f"The request body is not valid JSON: {exc}", code="invalid_json"
                ),
            )
            return

        task = asyncio.current_task()
        assert task is not None
        # When the client goes, the work is cancelled (so is the upstream request). Nexus's
        # protocol says so through the scope; under another server a task watches receive().
        disconnect = scope.get(DISCONNECT_KEY)
        watch: DisconnectWatch | None = None
        timer: asyncio.TimerHandle | None = None
        if not isinstance(disconnect, Disconnect):
            disconnect = Disconnect()
            watch = DisconnectWatch(receive, disconnect)
            timer = asyncio.get_running_loop().call_later(WATCH_AFTER, watch.start)
        if disconnect.gone:
            return  # it left while sending the body: nobody to answer
        disconnect.callback = task.cancel
        try:
            await self.serve(send, body, data, flexible and not strict, high, record)
        except asyncio.CancelledError:
            if not disconnect.left():
                raise
            task.uncancel()
        except Exception as exc:
            await self.failed(send, record, exc)
        finally:
            disconnect.callback = None
            if watch is not None and timer is not None:
                timer.cancel()
                watch.stop()
            # Whatever ``serve`` did or raised, the answer's stream is closed and its backend
            # slot released (closing is idempotent: a stream served to its end is closed already).
            stream = record.open_stream
            if stream is not None:
                await stream.aclose()

    async def failed(self, send: Send, record: RequestRecord, exc: Exception) -> None:
        """An exception while answering: a 500 in this door's shape if nothing was sent yet.

        Once the answer had started (the ASGI server refuses a second start) nothing more can be
        said: the answer is left incomplete and the server closes the connection. Either way one
        log line, the traceback at DEBUG: a backend's answer of a shape a door cannot translate
        must not flood the log with tracebacks.
        """
        try:
            await self.send_error(send, INTERNAL_ERROR)
            answered = True
        except Exception:
            answered = False
        log.error(
            "%s %s: the answer failed %s: %r",
            record.request_id or "-",
            self.endpoint.value,
            "before it was sent" if answered else "after it started; the connection is closed",
            exc,
            extra={"request_id": record.request_id},
        )
        log.debug(
            "%s the failure's traceback",
            record.request_id or "-",
            exc_info=exc,
            extra={"request_id": record.request_id},
        )
        if not record.finished:
            if answered:
                record.status = 500
            record.error = INTERNAL_ERROR.code
            record.error_message = INTERNAL_ERROR.message
            if record.open_stream is None:  # else it is finished when its stream is closed
                if not record.endpoint:
                    record.begin(self.endpoint.value)
                self.gateway.monitor.finish(record)

    async def serve(
        self,
        send: Send,
        body: bytes,
        data: Any,
        flexible: bool,
        high: bool,
        record: RequestRecord,
    ) -> None:
        """Route ``body`` (``data`` parsed) and answer: the whole body, or the relayed stream."""
        try:
            result = await self.gateway.proxy(
                self.endpoint,
                body,
                data=data,
                flexible=flexible,
                priority_high=high,
                record=record,
            )
        except GatewayError as error:
            await self.send_error(send, error)
            return
        headers = route_headers(result)
        if result.stream is None:
            payload = result.body or b""
            await send(
                {
                    "type": "http.response.start",
                    "status": result.status,
                    "headers": [
                        # Failover accepted JSON only; the backend's own type is not repeated.
                        (b"content-type", JSON),
                        (b"content-length", b"%d" % len(payload)),
                        *headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        stream = result.stream
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                        *headers,
                    ],
                }
            )
            # Events that arrived together go out in one write; none waits for a later one.
            # At [DONE] the answer is complete: it is sent whole then, and the stream ends right
            # after it (ProxyStream reads nothing more from the backend); its own end (releasing
            # the backend, pricing, the request's record and log line) comes after.
            ready = stream.ready
            batch: list[bytes] = []
            size = 0
            answered = False
            try:
                async for event in stream:
                    if event.startswith(DONE_EVENTS):
                        batch.append(event)
                        answered = True
                        await send({"type": "http.response.body", "body": b"".join(batch)})
                        continue
                    if ready() and size < BATCH_BYTES:
                        batch.append(event)
                        size += len(event)
                        continue
                    if batch:
                        batch.append(event)
                        event = b"".join(batch)
                        batch.clear()
                        size = 0
                    await send({"type": "http.response.body", "body": event, "more_body": True})
            except asyncio.CancelledError:
                if not answered:
                    await end_cut_stream(send, OPENAI_CUT)
                raise
            if not answered:
                await send({"type": "http.response.body", "body": b"".join(batch)})
        finally:
            await stream.aclose()

    async def _read_body(self, length: bytes | None, receive: Receive) -> bytes:
        limit = self.max_body
        if length is not None:
            try:
                if int(length) > limit:
                    raise payload_too_large(limit)
            except ValueError:
                raise GatewayError(400, "Invalid Content-Length header") from None
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise payload_too_large(limit)
            return body
        parts = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise GatewayError(400, "The client went away while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise payload_too_large(limit)
            parts.append(chunk)
        return b"".join(parts)


def is_json_type(content_type: bytes | None) -> bool:
    """Whether a ``Content-Type`` says JSON (``application/json``, ``application/*+json``)."""
    if content_type is None:
        return False
    if content_type == JSON:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == JSON or (media.startswith(b"application/") and media.endswith(b"+json"))


def from_browser(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a browser sent the request (browsers send ``Origin`` with every POST and
    ``Sec-Fetch-*`` with every request; other clients send neither)."""
    return any(name == b"origin" or name.startswith(b"sec-fetch-") for name, _ in headers)


def accepts_body_type(
    content_type: bytes | None, headers: list[tuple[bytes, bytes]], *, lenient: bool
) -> bool:
    """Whether a POST body may be read: JSON, or (``lenient``: Ollama's door, whose clients and
    documentation use ``curl -d``) any type from a client that is not a browser.

    A web page can send a cross-site form or a ``text/plain`` fetch without asking the server
    first (no CORS preflight); it cannot send ``application/json`` that way, and its requests
    always say they come from a browser.
    """
    if is_json_type(content_type):
        return True
    return lenient and not from_browser(headers)


def unsupported_media_type() -> GatewayError:
    """415 for a POST body that is not declared as JSON."""
    return GatewayError(
        415,
        "The request body must be JSON sent with Content-Type: application/json (with curl: "
        "-H 'Content-Type: application/json')",
        param="Content-Type",
        code="unsupported_media_type",
    )


def missing_key(presented: str | None) -> GatewayError:
    """401 for a request without a valid gateway key (the key itself is never echoed)."""
    if presented is None:
        message = "An API key is required: send it as Authorization: Bearer <key> or x-api-key"
    else:
        message = "The API key is not valid"
    return GatewayError(
        401,
        message,
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="nexus"'},
    )


def answer_data(result: ProxyResult) -> Any:
    """A whole answer's JSON: parsed already on the request path, or parsed now."""
    return result.data if result.data is not None else json.loads(result.body or b"{}")


def route_headers(result: ProxyResult) -> list[tuple[bytes, bytes]]:
    """The ``X-Nexus-*`` headers of an answer, ready for ``http.response.start``."""
    return header_list(result.headers())


def header_list(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as ASGI wants them in ``http.response.start``; values made safe to send.

    The names are Nexus's own. A value may come from outside (a model name a backend lists, in
    ``X-Nexus-Fallback-Model``): printable ASCII goes as it is (one ``isascii`` and one
    ``isprintable`` on the fast path); anything else is percent-encoded (``header_value``).
    """
    return [
        (
            name.encode("latin-1"),
            value.encode("ascii")
            if value.isascii() and value.isprintable()
            else header_value(value),
        )
        for name, value in headers.items()
    ]


#: Printable ASCII that ``header_value`` keeps as it is: all but ``%`` (so decoding is exact).
_KEPT = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) != "%")


def header_value(value: str) -> bytes:
    """A header value that any HTTP/1.1 peer accepts: printable ASCII, the rest percent-encoded.

    Control characters (CR and LF above all) and characters outside ASCII become ``%XX`` of
    their UTF-8 bytes, as does ``%`` itself, so ``urllib.parse.unquote`` gives the value back.
    """
    if value.isascii() and value.isprintable():
        return value.encode("ascii")
    return quote(value, safe=_KEPT).encode("ascii")


#: Under an ASGI server other than Nexus's own protocol: seconds before a request gets a task
#: watching for its client to leave. Most answers through a fast backend are sent before then,
#: and a task per request is the priciest part of watching; a model's answer takes far longer,
#: so the upstream is still dropped within this much.
WATCH_AFTER = 0.01


class DisconnectWatch:
    """Fires a ``Disconnect`` when ``receive()`` says the client left (started by a timer)."""

    __slots__ = ("disconnect", "receive", "watcher")

    def __init__(self, receive: Receive, disconnect: Disconnect) -> None:
        self.receive = receive
        self.disconnect = disconnect
        self.watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin watching (a timer calls this)."""
        self.watcher = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        """The request is over: stop watching."""
        if self.watcher is not None:
            self.watcher.cancel()

    async def _watch(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    self.disconnect.fire()
                    return


#: What a stream cut short by Nexus itself (shutdown) ends with, on the OpenAI door.
OPENAI_CUT = error_event(
    "Nexus is shutting down; the answer was cut short", kind="server_error", code="shutdown"
)


async def end_cut_stream(send: Send, last: bytes) -> None:
    """Try to end a stream that Nexus is cancelling with an error event (never with [DONE]).

    When the client is the one who left, the send fails: that is fine, nobody is listening.
    """
    with contextlib.suppress(Exception):
        await send({"type": "http.response.body", "body": last, "more_body": False})


class StreamBroke(Exception):
    """The relayed stream ended with Nexus's error event (the upstream broke after the start)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def openai_chunks(stream: ProxyStream) -> AsyncIterator[dict[str, Any]]:
    """A relayed OpenAI stream as chunk dicts, for front doors that translate it.

    Ends at ``[DONE]`` (the stream's last event) or when the upstream ends; Nexus's error event
    raises ``StreamBroke``.
    """
    async for event in stream:
        data = event_data(event)
        if not data:
            continue
        if data == b"[DONE]":
            continue  # the last event: the stream ends after it
        try:
            chunk = fastjson.loads(data)
        except ValueError:
            raise StreamBroke("the backend sent a stream event that is not JSON") from None
        if not isinstance(chunk, dict):
            continue
        error = chunk.get("error")
        if error is not None and len(chunk) == 1:
            message = error.get("message") if isinstance(error, dict) else error
            raise StreamBroke(str(message or "the upstream stream broke"))
        yield chunk


async def start_response(
    send: Send, status: int, content_type: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Send ``http.response.start`` for a streamed body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
                *headers,
            ],
        }
    )


async def send_chunk(send: Send, body: bytes) -> None:
    """One piece of a streamed body."""
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def send_whole(
    send: Send, status: int, content_type: bytes, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """A complete response with a body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", b"%d" % len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
