"""The hand-written HTTP/1.1 client (``nexus_core.h1``) on the wire, against scripted TCP servers.

``test_http.py`` checks what every hot-path client does against a fake backend; here each server
is a few lines that read a request and write exact bytes, and records what it received, so the
request format, the body framings, the pool's connection reuse and the edge cases of HTTP/1.1
(interim answers, garbage, idle closes, unsolicited bytes, backpressure, TLS) are seen directly.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from nexus_core.adapters import (
    BackendError,
    ErrorKind,
    ResponseLimits,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.h1 import HIGH_WATER, LINGER_SECONDS, TRACE_HEADERS, H1Transport

pytestmark = pytest.mark.anyio

FAST = Timeouts(connect=1.0, first_byte=1.0, idle=1.0)
JSON = {"Content-Type": "application/json"}
PATH = "/v1/chat/completions"
REQUEST_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"


# -- the scripted server --------------------------------------------------------------------


def parse_head(head: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    """A request head's first line and its headers (names as sent)."""
    assert head.endswith(b"\r\n\r\n")
    first, *lines = head[:-4].split(b"\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        assert colon, f"not a header line: {line!r}"
        assert name, f"no header name in {line!r}"
        assert name == name.strip(), f"bad header name in {line!r}"
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return first, headers


@dataclass(frozen=True, slots=True)
class Request:
    """One request as it arrived: the head (up to the blank line) and the body."""

    head: bytes
    body: bytes

    @property
    def line(self) -> bytes:
        return parse_head(self.head)[0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        return parse_head(self.head)[1]

    def values(self, name: str) -> list[str]:
        """Every value sent for ``name`` (matched case-insensitively)."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


class Peer:
    """One accepted connection, as a handler sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.requests: list[Request] = []
        #: Bytes written and drained (the client, or its kernel, took them).
        self.sent = 0
        #: When the client's close (EOF or reset) was seen, and an event for it.
        self.closed_at: float | None = None
        self.closed = asyncio.Event()
        #: Set by handlers at a point a test waits for.
        self.mark = asyncio.Event()
        self._reading = False

    def _saw_close(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        self.closed.set()

    async def read_request(self) -> Request | None:
        """The next request, or None when the client closed the connection."""
        self._reading = True
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line[15:])
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._saw_close()
            return None
        finally:
            self._reading = False
        request = Request(head, body)
        self.requests.append(request)
        return request

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def wait_closed(self, seconds: float = 1.0) -> bool:
        """Whether the client closes the connection within ``seconds``.

        Reads (and drops) what comes unless the handler is reading requests itself.
        """
        try:
            async with asyncio.timeout(seconds):
                if self._reading or self.closed.is_set():
                    await self.closed.wait()
                    return True
                self._reading = True
                try:
                    while await self.reader.read(65536):
                        pass
                except ConnectionError:
                    pass
                finally:
                    self._reading = False
                self._saw_close()
        except TimeoutError:
            return self.closed.is_set()
        return True

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0) rather than a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Peer], Awaitable[None]]


class ScriptedServer:
    """A TCP server on a loopback address whose handler scripts each connection byte by byte.

    The connection is closed (FIN) when the handler returns; a handler's own failure (not the
    client going away) fails the test when the server is left.
    """

    def __init__(
        self, handler: Handler, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> None:
        self.handler = handler
        self.host = host
        self.tls = tls
        self.port = 0
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    def url(self, path: str = PATH) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    @property
    def requests(self) -> list[Request]:
        return [request for peer in self.peers for request in peer.requests]

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._accept, self.host, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for peer in self.peers:
            if not peer.writer.transport.is_closing():
                peer.writer.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        if self.errors and exc_info[0] is None:
            raise self.errors[0]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        self.peers.append(peer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(peer)
        except asyncio.CancelledError:
            pass  # the server is being shut down (asyncio would log a cancelled handler)
        except ConnectionError:
            pass  # the client went away, which several tests expect
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            writer.close()


def response(
    body: bytes = b"{}",
    *,
    status: bytes = b"200 OK",
    headers: bytes = b"Content-Type: application/json\r\n",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """An answer with a Content-Length."""
    return b"%s %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
        version,
        status,
        headers,
        len(body),
        body,
    )


def chunk(data: bytes, extension: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), extension, data)


def answer_each(*answers: bytes) -> Handler:
    """Answer the requests on each connection with ``answers`` in turn (the last one repeats)."""

    async def handler(peer: Peer) -> None:
        count = 0
        while await peer.read_request() is not None:
            await peer.write(answers[min(count, len(answers) - 1)])
            count += 1

    return handler


async def until(predicate: Callable[[], bool], seconds: float = 1.0) -> None:
    """Wait until ``predicate()`` holds (polled), failing the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    for _ in range(100_000):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.002)
    pytest.fail(f"condition not met within {seconds} s")


def sse_events(count: int, pad: int = 0) -> list[bytes]:
    """``count`` numbered data events (each ``pad`` bytes bigger) and ``[DONE]``."""
    filler = b"x" * pad
    events = [b'data: {"i":%d,"pad":"%s"}\n\n' % (i, filler) for i in range(count)]
    return [*events, b"data: [DONE]\n\n"]


@pytest.fixture
async def client(anyio_backend: str) -> AsyncIterator[H1Transport]:
    transport = H1Transport()
    yield transport
    await transport.aclose()


async def post(
    client: H1Transport,
    url: str,
    body: bytes = REQUEST_BODY,
    headers: Mapping[str, str] = JSON,
    *,
    stream: bool = False,
    timeouts: Timeouts = FAST,
) -> UpstreamResponse:
    return await client.post(url, body, headers, stream=stream, timeouts=timeouts)


async def collect(response: UpstreamResponse) -> list[bytes]:
    assert response.events is not None
    return [event async for event in response.events]


async def read_into(response: UpstreamResponse, received: list[bytes]) -> None:
    """Append each event as it comes (so a test sees what arrived before an error)."""
    assert response.events is not None
    async for event in response.events:
        received.append(event)


# -- the request on the wire ----------------------------------------------------------------


async def test_request_bytes_on_the_wire(client: H1Transport) -> None:
    body = '{"model":"m","content":"Grüße ✓"}'.encode()
    headers = {
        "Content-Type": "application/json",
        "X-Custom-Header": "some value",
        "Authorization": "Bearer sk-adapter",
        # framing and connection management belong to the client: these are not sent
        "Host": "evil.example",
        "content-length": "999",
        "Connection": "close",
        "Transfer-Encoding": "chunked",
        "ACCEPT-ENCODING": "gzip",
    }
    async with ScriptedServer(answer_each(response(b'{"ok":true}'))) as server:
        answer = await post(
            client, server.url(PATH + "?api-version=2024-06-01&x=a%20b"), body, headers
        )
        assert (answer.status, answer.body) == (200, b'{"ok":true}')
        [request] = server.requests
    assert request.line == b"POST /v1/chat/completions?api-version=2024-06-01&x=a%20b HTTP/1.1"
    assert request.values("Host") == [f"127.0.0.1:{server.port}"]
    assert request.values("Accept-Encoding") == ["identity"]
    assert request.values("Content-Length") == [str(len(body))]
    assert request.values("Connection") == []
    assert request.values("Transfer-Encoding") == []
    assert request.values("Content-Type") == ["application/json"]
    assert request.values("Authorization") == ["Bearer sk-adapter"]
    # the caller's header names go out as given
    assert ("X-Custom-Header", "some value") in request.headers
    names = [name.lower() for name, _ in request.headers]
    assert len(names) == len(set(names)), f"a header was sent twice: {names}"
    assert request.body == body


async def test_a_root_url_and_an_ipv6_literal_host(client: H1Transport) -> None:
    try:
        server = ScriptedServer(answer_each(response()), host="::1")
        await server.__aenter__()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        url = f"http://[::1]:{server.port}"
        assert (await post(client, url)).status == 200
        [request] = server.requests
        assert request.line == b"POST / HTTP/1.1"
        assert request.values("Host") == [f"[::1]:{server.port}"]
    finally:
        await server.__aexit__(None, None, None)


@pytest.mark.parametrize("authorization", ["authorization", "Authorization", "AUTHORIZATION"])
async def test_trace_headers_are_sent_and_override_the_callers(
    client: H1Transport, authorization: str
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with ScriptedServer(answer_each(response())) as server:
        token = TRACE_HEADERS.set(
            (("traceparent", traceparent), ("Authorization", "Bearer forwarded"))
        )
        try:
            await post(client, server.url(), headers={**JSON, authorization: "Bearer sk-adapter"})
        finally:
            TRACE_HEADERS.reset(token)
        # outside the context the adapter's own headers go out again, and no trace
        await post(client, server.url(), headers={**JSON, authorization: "Bearer sk-adapter"})
        traced, plain = server.requests
    assert traced.values("traceparent") == [traceparent]
    assert traced.values("authorization") == ["Bearer forwarded"]
    assert traced.values("content-type") == ["application/json"]
    assert plain.values("traceparent") == []
    assert plain.values("authorization") == ["Bearer sk-adapter"]


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "\r\n"])
@pytest.mark.parametrize("via", ["headers", "trace"])
async def test_a_header_value_with_a_line_break_is_refused(
    client: H1Transport, value: str, via: str
) -> None:
    async with ScriptedServer(answer_each(response())) as server:
        headers = {**JSON, "X-Value": value} if via == "headers" else JSON
        token = TRACE_HEADERS.set((("tracestate", value),) if via == "trace" else None)
        try:
            with pytest.raises(BackendError) as caught:
                await post(client, server.url(), headers=headers)
        finally:
            TRACE_HEADERS.reset(token)
        assert caught.value.kind is ErrorKind.CLIENT_ERROR
        await asyncio.sleep(0.02)
        assert server.peers == []  # nothing was sent: not even a connection
        # and the client is fine afterwards
        assert (await post(client, server.url())).status == 200
        assert b"X-Injected" not in server.requests[0].head


async def test_a_header_name_with_a_line_break_is_refused(client: H1Transport) -> None:
    async with ScriptedServer(answer_each(response())) as server:
        with pytest.raises(BackendError) as caught:
            await post(client, server.url(), headers={**JSON, "X-A\r\nX-Injected": "1"})
        assert caught.value.kind is ErrorKind.CLIENT_ERROR
        await asyncio.sleep(0.02)
        assert server.requests == []


# -- answer bodies and connection reuse -----------------------------------------------------


async def test_content_length_body(client: H1Transport) -> None:
    body = bytes(range(256)) * 400  # 100 KB, every byte value
    async with ScriptedServer(answer_each(response(body))) as server:
        answer = await post(client, server.url())
    assert answer.body == body
    assert answer.content_type == "application/json"


async def test_chunked_body_with_tiny_chunks_extensions_and_a_trailer(client: H1Transport) -> None:
    body = b'{"id":"chatcmpl-1","choices":[{"message":{"content":"hello, chunks"}}]}'
    pieces = [body[i : i + 3] for i in range(0, len(body), 3)]

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for index, piece in enumerate(pieces):
                extension = b';name="value";flag' if index % 2 else b";ext=1"
                await peer.write(chunk(piece, extension))
                if index % 5 == 0:
                    await asyncio.sleep(0.001)
            await peer.write(b"0\r\nX-Trailer: done\r\n\r\n")

    async with ScriptedServer(handler) as server:
        for _ in range(3):
            answer = await post(client, server.url())
            assert answer.body == body
        assert len(server.peers) == 1  # the chunked answer ended cleanly: kept alive


@pytest.mark.parametrize("stream", [False, True])
async def test_read_until_close_body(client: H1Transport, stream: bool) -> None:
    """No Content-Length, no chunking: the body is everything until the server closes."""
    events = sse_events(20)
    body = b"".join(events)

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        for index in range(0, len(body), 50):
            await peer.write(body[index : index + 50])
            await asyncio.sleep(0.001)
        # returning closes the connection

    async with ScriptedServer(handler) as server:
        answer = await post(client, server.url(), stream=stream)
        if stream:
            assert await collect(answer) == events
        else:
            assert answer.body == body
        await post(client, server.url(), stream=stream)
        assert len(server.peers) == 2


async def test_read_until_close_body_cut_by_a_reset_is_an_error(client: H1Transport) -> None:
    """A connection reset is not the end of a read-until-close body: it was cut short."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"cho')
        await asyncio.sleep(0.05)
        peer.reset()

    async with ScriptedServer(handler) as server:
        with pytest.raises(BackendError) as caught:
            await post(client, server.url())
    assert caught.value.kind is ErrorKind.CONNECT


@pytest.mark.parametrize(
    "answer",
    [
        response(headers=b"Connection: close\r\nContent-Type: application/json\r\n"),
        response(version=b"HTTP/1.0"),
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_an_answer_that_is_not_kept_alive_is_not_reused(
    client: H1Transport, answer: bytes
) -> None:
    # The server would answer more requests on the connection: only the client's choice counts.
    async with ScriptedServer(answer_each(answer)) as server:
        for _ in range(3):
            assert (await post(client, server.url())).body == b"{}"
        assert len(server.peers) == 3
        assert [len(peer.requests) for peer in server.peers] == [1, 1, 1]
        assert await server.peers[0].wait_closed(0.2)  # the client dropped it


async def test_keep_alive_answers_reuse_one_connection(client: H1Transport) -> None:
    sse = SSE_HEAD + chunk(b"data: 1\n\ndata: [DONE]\n\n") + LAST_CHUNK
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    async with ScriptedServer(answer_each(response(), sse, no_content, response())) as server:
        assert (await post(client, server.url())).body == b"{}"
        assert await collect(await post(client, server.url(), stream=True)) == [
            b"data: 1\n\n",
            b"data: [DONE]\n\n",
        ]
        assert (await post(client, server.url())).status == 204
        for _ in range(3):
            assert (await post(client, server.url())).body == b"{}"
        assert len(server.peers) == 1
        assert len(server.requests) == 6


@pytest.mark.parametrize("separately", [False, True], ids=["one-write", "two-writes"])
async def test_interim_answers_are_skipped(client: H1Transport, separately: bool) -> None:
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
    )
    final = response(b'{"final":true}', headers=b"Content-Type: application/json\r\nX-Real: 1\r\n")

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            if separately:
                await peer.write(interim)
                await asyncio.sleep(0.01)
                await peer.write(final)
            else:
                await peer.write(interim + final)

    async with ScriptedServer(handler) as server:
        for _ in range(2):
            answer = await post(client, server.url())
            assert (answer.status, answer.body) == (200, b'{"final":true}')
            assert answer.headers["x-real"] == "1"
            assert "link" not in answer.headers  # the interim answer's headers are not kept
        assert len(server.peers) == 1


async def test_an_error_status_is_classified_and_keeps_the_connection(client: H1Transport) -> None:
    error_body = b'{"error":{"message":"busy"}}'
    unavailable = response(
        error_body,
        status=b"503 Service Unavailable",
        headers=b"Content-Type: application/json\r\nrEtRy-AfTeR: 2\r\nX-Request-Id: abc\r\n",
    )
    async with ScriptedServer(answer_each(unavailable, response())) as server:
        with pytest.raises(BackendError) as caught:
            await post(client, server.url())
        error = caught.value
        assert (error.kind, error.status, error.retry_after) == (ErrorKind.SERVER_ERROR, 503, 2.0)
        assert error.retryable
        assert error.body == error_body
        assert error.headers["retry-after"] == "2"
        assert error.headers["x-request-id"] == "abc"
        assert (await post(client, server.url())).body == b"{}"
        assert len(server.peers) == 1
        assert len(server.requests) == 2


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "bad-status", "bad-length", "bad-chunk"],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_garbage_instead_of_http_is_malformed_at_once(
    client: H1Transport, garbage: bytes, stream: bool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(garbage)
        await peer.wait_closed(2.0)  # keep the connection open: the client must not wait on it

    async with ScriptedServer(handler) as server:
        started = time.monotonic()
        with pytest.raises(BackendError) as caught:
            await post(client, server.url(), stream=stream, timeouts=Timeouts(1.0, 2.0, 2.0))
        assert caught.value.kind is ErrorKind.MALFORMED
        assert time.monotonic() - started < 0.5
        assert await server.peers[0].wait_closed(0.2)


# -- streams --------------------------------------------------------------------------------

EVENTS = [
    b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"Gr\xc3\xbc\xc3\x9fe"}}]}\n\n',
    b"event: message\ndata: line one\ndata: line two\n\n",
    b"id: 7\nretry: 1000\ndata: {}\n\n",
    b'data: {"choices":[{"delta":{"content":"' + b"long " * 200 + b'"}}]}\n\n',
    b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_stream_events_split_anywhere_come_out_whole_and_in_order(
    client: H1Transport, seed: int
) -> None:
    raw = b"".join(EVENTS)
    rng = random.Random(seed)
    pieces: list[bytes] = []
    index = 0
    while index < len(raw):
        size = rng.choice([1, 1, 2, 3, 5, 8, 13, 40])
        pieces.append(raw[index : index + size])
        index += size

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                b"Transfer-Encoding: chunked\r\nX-Foo: bar\r\n\r\n"
            )
            batch = b""
            for piece in pieces:
                batch += chunk(piece, b";e=1" if rng.random() < 0.2 else b"")
                if rng.random() < 0.3:
                    await peer.write(batch)
                    batch = b""
                    await asyncio.sleep(0.0005)
            await peer.write(batch + LAST_CHUNK)

    async with ScriptedServer(handler) as server:
        answer = await post(client, server.url(), stream=True)
        assert answer.status == 200
        assert answer.content_type == "text/event-stream; charset=utf-8"
        assert answer.body is None
        assert answer.headers["X-Foo"] == "bar"
        assert answer.headers.get("x-foo") == "bar"
        assert "X-FOO" in answer.headers
        assert await collect(answer) == EVENTS
        await answer.aclose()
        assert await collect(await post(client, server.url(), stream=True)) == EVENTS
        assert len(server.peers) == 1


async def test_a_stream_answer_requested_whole_is_read_whole(client: H1Transport) -> None:
    raw = b"".join(EVENTS)
    answer_bytes = SSE_HEAD + chunk(raw[:100]) + chunk(raw[100:]) + LAST_CHUNK
    async with ScriptedServer(answer_each(answer_bytes)) as server:
        answer = await post(client, server.url(), stream=False)
    assert answer.status == 200
    assert answer.content_type == "text/event-stream"
    assert (answer.body, answer.events) == (raw, None)


async def test_a_json_answer_to_a_stream_request_is_a_body(client: H1Transport) -> None:
    async with ScriptedServer(answer_each(response(b'{"whole":1}'))) as server:
        answer = await post(client, server.url(), stream=True)
    assert (answer.body, answer.events) == (b'{"whole":1}', None)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (b"500 Internal Server Error", ErrorKind.SERVER_ERROR),
        (b"429 Too Many Requests", ErrorKind.OVERLOADED),
        (b"400 Bad Request", ErrorKind.CLIENT_ERROR),
        (b"302 Found", ErrorKind.REDIRECT),
    ],
)
async def test_an_event_stream_with_an_error_status_raises(
    client: H1Transport, status: bytes, kind: ErrorKind
) -> None:
    error_event = b'data: {"error":{"message":"no"}}\n\n'
    answer_bytes = (
        b"HTTP/1.1 %s\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        % status
        + chunk(error_event)
        + LAST_CHUNK
    )
    async with ScriptedServer(answer_each(answer_bytes)) as server:
        with pytest.raises(BackendError) as caught:
            await post(client, server.url(), stream=True)
    assert caught.value.kind is kind
    assert caught.value.status == int(status[:3])
    assert caught.value.body == error_event


async def test_backpressure_pauses_the_server_until_the_stream_is_read(
    client: H1Transport,
) -> None:
    events = sse_events(6000, pad=1000)  # about 6 MB
    total = sum(len(event) for event in events)
    finished = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        # A small send buffer, so what the server could write shows what the client took.
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        await peer.write(SSE_HEAD)
        peer.sent = 0
        for index in range(0, len(events), 32):
            await peer.write(chunk(b"".join(events[index : index + 32])))
        await peer.write(LAST_CHUNK)
        finished.set()

    async with ScriptedServer(handler) as server:
        answer = await post(client, server.url(), stream=True)
        assert answer.events is not None
        received = []
        for _ in range(3):  # a slow reader at first
            received.append(await anext(answer.events))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.15)
        stalled = server.peers[0].sent
        assert stalled < total // 2, f"the server wrote {stalled} of {total} bytes: no backpressure"
        await asyncio.sleep(0.05)
        assert server.peers[0].sent == stalled
        assert not finished.is_set()
        received += [event async for event in answer.events]
        assert finished.is_set()
    assert len(received) == len(events)
    assert received == events


@pytest.mark.parametrize("first_stream", ["abandoned", "still-being-read"])
async def test_a_connection_paused_by_a_finished_stream_is_still_usable(
    client: H1Transport, first_stream: str
) -> None:
    # First answer: a little under HIGH_WATER of events, then (once the client holds them,
    # unread) a few more events and the end in one small write.
    first_part = sse_events(250, pad=1020)[:-1]
    assert sum(map(len, first_part)) < HIGH_WATER
    last_part = sse_events(2, pad=1000)
    done = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(SSE_HEAD + chunk(b"".join(first_part)))
        await asyncio.sleep(0.05)
        await peer.write(chunk(b"".join(last_part)) + LAST_CHUNK)
        done.set()
        while await peer.read_request() is not None:
            await peer.write(response())

    async with ScriptedServer(handler) as server:
        first = await post(client, server.url(), stream=True)
        assert first.events is not None
        await done.wait()
        await asyncio.sleep(0.05)  # the client has received the whole answer, none of it read
        if first_stream == "abandoned":  # (the client went away)
            await first.aclose()
        second = await post(client, server.url(), timeouts=Timeouts(1.0, 0.3, 1.0))
        assert second.body == b"{}"
        if first_stream == "still-being-read":  # (a slow client)
            assert await collect(first) == first_part + last_part


# -- the pool and closed connections --------------------------------------------------------


async def test_a_pooled_connection_the_server_closed_while_idle(client: H1Transport) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(response())
        # and close it, keep-alive or not (returning closes)

    async with ScriptedServer(handler) as server:
        assert (await post(client, server.url())).status == 200
        await until(lambda: len(server.peers) == 1 and not server._tasks)
        await asyncio.sleep(0.01)
        assert (await post(client, server.url())).status == 200
        assert len(server.peers) == 2
        assert [len(peer.requests) for peer in server.peers] == [1, 1]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_pooled_connection_closed_as_the_request_arrives_is_retried_once(
    client: H1Transport, how: str
) -> None:
    """The close raced the request: nothing came back, so one fresh attempt is safe."""

    async def handler(peer: Peer) -> None:
        first_connection = not any(p.requests for p in server.peers if p is not peer)
        await peer.read_request()
        await peer.write(response(b'{"n":1}'))
        if first_connection:
            await peer.read_request()  # the second request arrives ... and is not answered
            if how == "rst":
                peer.reset()
            return
        while await peer.read_request() is not None:
            await peer.write(response(b'{"n":2}'))

    async with ScriptedServer(handler) as server:
        assert (await post(client, server.url())).body == b'{"n":1}'
        assert (await post(client, server.url())).body == b'{"n":1}'
        assert len(server.peers) == 2
        assert [len(peer.requests) for peer in server.peers] == [2, 1]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_fresh_connection_closed_before_the_answer_is_not_retried(
    client: H1Transport, how: str
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        if how == "rst":
            peer.reset()

    async with ScriptedServer(handler) as server:
        with pytest.raises(BackendError) as caught:
            await post(client, server.url())
        assert caught.value.kind is ErrorKind.CONNECT
        await asyncio.sleep(0.05)
        assert len(server.peers) == 1
        assert len(server.requests) == 1


@pytest.mark.parametrize("when", ["later", "with-the-answer"])
async def test_unsolicited_bytes_drop_the_pooled_connection(client: H1Transport, when: str) -> None:
    stray = response(b'{"stray":true}')

    async def handler(peer: Peer) -> None:
        first_connection = len(server.peers) == 1
        while await peer.read_request() is not None:
            if not first_connection:
                await peer.write(response(b'{"fresh":true}'))
            elif when == "later":
                await peer.write(response(b'{"first":true}'))
                await asyncio.sleep(0.01)
                await peer.write(stray)
                peer.mark.set()
            else:
                await peer.write(response(b'{"first":true}') + stray)
                peer.mark.set()

    async with ScriptedServer(handler) as server:
        assert (await post(client, server.url())).body == b'{"first":true}'
        await server.peers[0].mark.wait()
        await asyncio.sleep(0.02)
        assert (await post(client, server.url())).body == b'{"fresh":true}'
        assert len(server.peers) == 2
        assert len(server.peers[0].requests) == 1
        assert await server.peers[0].wait_closed(0.2)


async def test_aclose_closes_the_pooled_connections(client: H1Transport) -> None:
    async with ScriptedServer(answer_each(response())) as server:
        await asyncio.gather(*(post(client, server.url()) for _ in range(3)))
        assert len(server.peers) == 3
        await client.aclose()
        for peer in server.peers:
            assert await peer.wait_closed(0.2)
        # the transport still works afterwards, on a new connection
        assert (await post(client, server.url())).status == 200
        assert len(server.peers) == 4


async def test_cancelled_while_reading_the_body_closes_the_connection(
    client: H1Transport,
) -> None:
    closed = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
        peer.mark.set()
        if await peer.wait_closed(2.0):
            closed.set()

    async with ScriptedServer(handler) as server:
        task = asyncio.create_task(post(client, server.url(), timeouts=Timeouts(1.0, 5.0, 5.0)))
        await until(lambda: bool(server.peers) and server.peers[0].mark.is_set())
        await asyncio.sleep(0.02)  # the half body has reached the client
        assert not task.done()
        task.cancel()
        cancelled = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(0.5):
            await closed.wait()
        peer_closed = server.peers[0].closed_at
        assert peer_closed is not None
        assert peer_closed - cancelled < 0.2


# -- https ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for localhost and 127.0.0.1."""
    assert shutil.which("openssl"), "the openssl command is needed (.ci/run installs it)"
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


async def test_https_with_a_trusted_certificate(
    anyio_backend: str, certificate: tuple[Path, Path]
) -> None:
    stream_answer = SSE_HEAD + chunk(b"".join(EVENTS)) + LAST_CHUNK
    handler = answer_each(response(b'{"tls":true}'), stream_answer, response(b'{"tls":true}'))
    client = H1Transport(ssl_context=ssl.create_default_context(cafile=str(certificate[0])))
    try:
        async with ScriptedServer(handler, tls=server_tls(certificate)) as server:
            assert (await post(client, server.url())).body == b'{"tls":true}'
            assert await collect(await post(client, server.url(), stream=True)) == EVENTS
            assert (await post(client, server.url())).body == b'{"tls":true}'
            assert len(server.peers) == 1
            assert [request.values("Host") for request in server.requests] == [
                [f"127.0.0.1:{server.port}"]
            ] * 3
            await client.aclose()
            assert await server.peers[0].wait_closed(0.5)
    finally:
        await client.aclose()


async def test_https_refuses_an_untrusted_certificate_by_default(
    client: H1Transport, certificate: tuple[Path, Path]
) -> None:
    async with ScriptedServer(answer_each(response()), tls=server_tls(certificate)) as server:
        with pytest.raises(BackendError) as caught:
            await post(client, server.url())
        assert caught.value.kind is ErrorKind.CONNECT
        assert "certificate" in caught.value.message.lower()
        assert server.requests == []


# -- the answer's headers -------------------------------------------------------------------


async def test_response_headers_mapping_is_consistent_with_repeated_headers(
    client: H1Transport,
) -> None:
    headers = (
        b"Content-Type: application/json\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-One: 1\r\n"
    )
    async with ScriptedServer(answer_each(response(headers=headers))) as server:
        answer = await post(client, server.url())
    assert answer.headers["Set-Cookie"] == "b=2"  # the last value wins
    assert sorted(answer.headers) == ["content-length", "content-type", "set-cookie", "x-one"]
    assert len(answer.headers) == len(list(answer.headers)) == len(dict(answer.headers))


# -- bounds: what a backend can make the client read ----------------------------------------

LIMITS = ResponseLimits(body=64 * 1024, headers=4 * 1024, event=16 * 1024)


@pytest.fixture
async def bounded(anyio_backend: str) -> AsyncIterator[H1Transport]:
    transport = H1Transport(limits=LIMITS)
    yield transport
    await transport.aclose()


def padded_head(size: int, body: bytes = b"{}") -> bytes:
    """An answer whose header lines take exactly ``size`` bytes on the wire (with CRLFs)."""
    fixed = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    pad = size - len(fixed) - len(b"X-Pad: \r\n")
    return b"HTTP/1.1 200 OK\r\n" + fixed + b"X-Pad: " + b"p" * pad + b"\r\n\r\n" + body


@pytest.mark.parametrize("pieces", [1, 8])
async def test_headers_up_to_the_limit_pass_and_one_byte_more_fails(
    bounded: H1Transport, pieces: int
) -> None:
    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            over = int(request.values("X-Over")[0])
            answer = padded_head(LIMITS.headers + over)
            step = -(-len(answer) // pieces)
            for start in range(0, len(answer), step):
                await peer.write(answer[start : start + step])
                await asyncio.sleep(0.001)

    async with ScriptedServer(handler) as server:
        answer = await post(bounded, server.url(), headers={**JSON, "X-Over": "0"})
        assert answer.body == b"{}"
        with pytest.raises(BackendError) as caught:
            await post(bounded, server.url(), headers={**JSON, "X-Over": "1"})
    assert caught.value.kind is ErrorKind.TOO_LARGE
    assert "limit of 4096 bytes (server.max_response_header_bytes)" in caught.value.message


@pytest.mark.parametrize(
    "opening",
    [b"HTTP/1.1 200 OK\r\nX-Endless: ", b"HTTP/1.1 200 OK\r\n", b""],
    ids=["one-endless-value", "endless-header-lines", "endless-interim-answers"],
)
async def test_a_head_that_never_ends_is_cut_at_the_limit_while_parsing(
    bounded: H1Transport, opening: bytes
) -> None:
    """Counted as the bytes arrive: the parser is never left to buffer a header without end."""
    piece = {
        b"HTTP/1.1 200 OK\r\nX-Endless: ": b"v" * 512,
        b"HTTP/1.1 200 OK\r\n": b"X-Line: " + b"v" * 500 + b"\r\n",
        b"": b"HTTP/1.1 100 Continue\r\nX-Interim: " + b"v" * 480 + b"\r\n\r\n",
    }[opening]

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(opening)
        while True:
            await peer.write(piece)
            await asyncio.sleep(0.001)

    async with ScriptedServer(handler) as server:
        with pytest.raises(BackendError) as caught:
            await post(bounded, server.url(), timeouts=Timeouts(1.0, 5.0, 5.0))
        assert caught.value.kind is ErrorKind.TOO_LARGE
        assert "server.max_response_header_bytes" in caught.value.message
        assert await server.peers[0].wait_closed(1.0)
        # Cut near the limit (what the kernel's buffers held aside), not after megabytes.
        assert server.peers[0].sent < 16 * LIMITS.headers


async def test_a_body_announced_past_the_limit_is_refused_before_it_is_read(
    bounded: H1Transport,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (LIMITS.body + 1)
        )
        await peer.wait_closed(5.0)  # and no byte of it

    async with ScriptedServer(handler) as server:
        with pytest.raises(BackendError) as caught:
            # Refused at the headers: not the (long) first-byte timeout for the missing body.
            await post(bounded, server.url(), timeouts=Timeouts(1.0, 5.0, 5.0))
        assert caught.value.kind is ErrorKind.TOO_LARGE
        assert "limit of 65536 bytes (server.max_response_body_bytes)" in caught.value.message
        assert await server.peers[0].wait_closed(1.0)


@pytest.mark.parametrize("status", [b"200 OK", b"500 Internal Server Error"])
async def test_a_body_read_past_the_limit_fails_whatever_its_status(
    bounded: H1Transport, status: bytes
) -> None:
    """An error body is bounded like any other (it would be the client's error message)."""

    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            size = int(request.values("X-Size")[0])
            await peer.write(
                b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" % status
            )
            for start in range(0, size, 4096):
                await peer.write(chunk(b"b" * min(4096, size - start)))
            await peer.write(LAST_CHUNK)

    async with ScriptedServer(handler) as server:
        whole = {**JSON, "X-Size": str(LIMITS.body)}
        if status.startswith(b"200"):
            assert len((await post(bounded, server.url(), headers=whole)).body or b"") == (
                LIMITS.body
            )
        else:
            with pytest.raises(BackendError) as caught:
                await post(bounded, server.url(), headers=whole)
            assert caught.value.kind is ErrorKind.SERVER_ERROR
            assert len(caught.value.body) == LIMITS.body
        with pytest.raises(BackendError) as caught:
            await post(bounded, server.url(), headers={**JSON, "X-Size": str(LIMITS.body + 1)})
        assert caught.value.kind is ErrorKind.TOO_LARGE
        assert caught.value.body == b""


@pytest.mark.parametrize(
    "status",
    [b"101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade", b"099 Odd"],
    ids=["101", "099"],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_101_or_a_status_below_100_is_one_clean_error(
    client: H1Transport, status: bytes, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(b"HTTP/1.1 %s\r\n\r\n\x81\x05hello" % status)
        await peer.wait_closed(2.0)

    async with ScriptedServer(handler) as server:
        with pytest.raises(BackendError) as caught:
            await post(client, server.url(), stream=stream, timeouts=Timeouts(1.0, 5.0, 5.0))
        assert caught.value.kind is ErrorKind.MALFORMED
        assert f"status {int(status[:3])}" in caught.value.message or "101" in (
            caught.value.message
        )
        assert await server.peers[0].wait_closed(1.0)
    # No exception escaped the protocol (asyncio would log it with its traceback).
    assert [record for record in caplog.records if record.name == "asyncio"] == []


@pytest.mark.parametrize(
    "filler",
    [b": keep-alive\n\n", b"x"],
    ids=["comments", "an-event-that-never-ends"],
)
async def test_only_events_keep_a_stream_alive(client: H1Transport, filler: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        partial = chunk(b"data: {") if filler == b"x" else b""
        await peer.write(SSE_HEAD + chunk(EVENTS[0]) + partial)
        for _ in range(500):
            await asyncio.sleep(0.02)
            await peer.write(chunk(filler))

    async with ScriptedServer(handler) as server:
        answer = await post(client, server.url(), stream=True, timeouts=Timeouts(1.0, 1.0, 0.2))
        assert answer.events is not None
        received: list[bytes] = []
        with pytest.raises(BackendError) as caught:
            await read_into(answer, received)
        assert caught.value.kind is ErrorKind.TIMEOUT
        assert caught.value.message == "stream stalled: no event for 0.2 s"
        assert received == [EVENTS[0]]
        assert await server.peers[0].wait_closed(1.0)


async def test_steady_events_outlive_the_idle_timeout_and_silence_after_them_does_not(
    client: H1Transport,
) -> None:
    """The idle timeout counts from the last event: one timer serves many waits (re-armed)."""
    paced = [b'data: {"n":%d}\n\n' % index for index in range(12)]

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(SSE_HEAD)
        for event in paced:  # 12 events 50 ms apart: 0.55 s, well past the 0.2 s idle timeout
            await peer.write(chunk(event))
            await asyncio.sleep(0.05)
        await asyncio.sleep(5)

    async with ScriptedServer(handler) as server:
        answer = await post(client, server.url(), stream=True, timeouts=Timeouts(1.0, 1.0, 0.2))
        received: list[bytes] = []
        with pytest.raises(BackendError) as caught:
            await read_into(answer, received)
        assert caught.value.message == "stream stalled: no event for 0.2 s"
        assert received == paced


async def test_comments_before_the_first_event_end_at_the_first_byte_timeout(
    client: H1Transport,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(SSE_HEAD)
        for _ in range(500):
            await peer.write(chunk(b": still thinking\n\n"))
            await asyncio.sleep(0.02)

    async with ScriptedServer(handler) as server:
        answer = await post(client, server.url(), stream=True, timeouts=Timeouts(1.0, 0.3, 5.0))
        with pytest.raises(BackendError) as caught:
            await collect(answer)
        assert caught.value.kind is ErrorKind.TIMEOUT
        assert caught.value.message == "no first event within 0.3 s"


async def test_a_giant_event_fails_the_stream_and_drops_the_connection(
    bounded: H1Transport,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(SSE_HEAD + chunk(EVENTS[0]) + chunk(b"data: "))
        while True:
            await peer.write(chunk(b"g" * 4096))

    async with ScriptedServer(handler) as server:
        answer = await post(bounded, server.url(), stream=True)
        assert answer.events is not None
        received: list[bytes] = []
        with pytest.raises(BackendError) as caught:
            await read_into(answer, received)
        assert caught.value.kind is ErrorKind.TOO_LARGE
        assert "limit of 16384 bytes (server.max_stream_event_bytes)" in caught.value.message
        assert received == [EVENTS[0]]
        assert await server.peers[0].wait_closed(1.0)


@pytest.mark.parametrize("after", ["same-write", "20-ms-later"])
async def test_after_done_the_answer_end_keeps_the_connection(
    client: H1Transport, after: str
) -> None:
    """The reader stops at [DONE]; the end that follows at once puts the connection back."""
    events = sse_events(3)

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            if after == "same-write":
                await peer.write(SSE_HEAD + chunk(b"".join(events)) + LAST_CHUNK)
            else:
                await peer.write(SSE_HEAD + chunk(b"".join(events)))
                await asyncio.sleep(0.02)
                await peer.write(LAST_CHUNK)

    async with ScriptedServer(handler) as server:
        for _ in range(3):
            answer = await post(client, server.url(), stream=True)
            assert await collect(answer) == events
            await answer.aclose()
            await asyncio.sleep(0.05)
        assert len(server.peers) == 1
        assert len(server.requests) == 3


@pytest.mark.parametrize("then", ["silence", "endless-events"])
async def test_after_done_a_backend_that_goes_on_loses_the_connection(
    client: H1Transport, then: str
) -> None:
    events = sse_events(2)
    more = b'data: {"after":"done"}\n\n' * 100

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.write(SSE_HEAD + chunk(b"".join(events) + more))
            if then == "silence":
                await peer.wait_closed(5.0)
                return
            while True:
                await peer.write(chunk(more))
                await asyncio.sleep(0.001)

    async with ScriptedServer(handler) as server:
        answer = await post(client, server.url(), stream=True)
        assert await collect(answer) == events  # nothing after [DONE] is handed over
        await answer.aclose()
        assert await server.peers[0].wait_closed(LINGER_SECONDS + 1.0)
        # The next request goes out on a new connection.
        assert await collect(await post(client, server.url(), stream=True)) == events
        assert len(server.peers) == 2
