"""The hot-path HTTP/1.1 client: asyncio protocols, httptools' parser, a keep-alive pool.

Chosen by measurement (docs/performance.md): a gateway sends one small POST and reads one answer
per attempt, and a general client's generality costs more than the gateway's own work. Here a
request is one ``write`` of prepared bytes; the answer is parsed by llhttp (via ``httptools``, which
uvicorn already uses) straight from ``data_received``; a whole body is joined once, a stream's
chunks are cut into SSE events by the reader without another task or queue.

What it does, and what it deliberately does not:

- ``http`` and ``https`` (the system's trust store), HTTP/1.1 keep-alive, Content-Length, chunked
  and read-until-close bodies. No proxies (the other clients run with ``trust_env=False`` too), no
  redirects (a backend that redirects a POST is misconfigured), no compression (the request says
  ``Accept-Encoding: identity``).
- Every read is bounded (``ResponseLimits``): the status line and headers while they are parsed
  (counted as bytes arrive, so a header that never ends is cut at the limit, not buffered), a
  whole body, one SSE event; past a limit the attempt fails with ``ErrorKind.TOO_LARGE`` and the
  connection is dropped with what it held. A stream must produce an *event* within the idle
  timeout: comments and an event that never ends do not keep it alive.
- A stream's reader stops at ``[DONE]``: nothing after it is read for the request. The connection
  may wait a moment (``LINGER_SECONDS``, ``LINGER_BYTES``) for the answer's end, to go back to the
  pool; anything else closes it.
- A connection goes back to the pool only after a complete answer the server will keep alive;
  anything else (a timeout, a cancelled or abandoned request, a parse error) closes it, so the
  backend sees the client go away at once.
- An answer that is not HTTP, a 101 Switching Protocols or a status below 100 is a clean
  ``malformed_response`` (never an exception escaping the protocol, which asyncio would log).
- A pooled connection that the server had closed while idle costs one quiet retry on a fresh one
  (only when nothing at all came back on it), as with any keep-alive client.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

from nexus_core.adapters import (
    BackendError,
    ErrorKind,
    ResponseLimits,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.buffers import gather, joined
from nexus_core.sse import DONE_PREFIXES, EventTooLarge, SSEParser, completes_answer

#: Extra headers (``traceparent``, ``tracestate``, a forwarded ``Authorization``) for the upstream
#: requests made in this context, overriding the adapter's; set around an attempt by
#: ``nexus_core.telemetry`` and the failover loop, ``None`` otherwise (so the plain path costs one
#: ``get()``). Every transport honours it; ``nexus_core.http`` re-exports it.
TRACE_HEADERS: contextvars.ContextVar[tuple[tuple[str, str], ...] | None] = contextvars.ContextVar(
    "nexus_trace_headers", default=None
)

#: Stop reading from a backend while this many bytes of a stream wait for the client.
HIGH_WATER: Final = 256 * 1024
#: Pieces of a whole body kept as they came; past this many they are gathered into one buffer.
BODY_PIECES: Final = 16
#: Idle connections kept per backend address; more are closed when they come back.
MAX_IDLE_PER_ORIGIN: Final = 512
#: The parsed-URL cache is cleared when it grows past this (URLs are per backend and model).
URL_CACHE_SIZE: Final = 1024
#: After ``[DONE]``, how long and how many more bytes a stream's connection may take to end the
#: answer (the last chunk usually follows at once) and so go back to the pool; past either it
#: is closed.
LINGER_SECONDS: Final = 0.5
LINGER_BYTES: Final = 16 * 1024

_SKIPPED = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "accept-encoding"}
)


class ResponseHeaders(Mapping[str, str]):
    """An answer's headers, decoded on first look-up; names are matched case-insensitively.

    A repeated header keeps its last value (the gateway reads single-valued headers only).
    """

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._decoded: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        decoded = self._decoded
        if decoded is None:
            decoded = {
                name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self._raw
            }
            self._decoded = decoded
        return decoded

    def __getitem__(self, name: str) -> str:
        return self._dict()[name.lower()]

    def get(self, name: str, default: object = None) -> object:  # type: ignore[override]
        return self._dict().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return f"ResponseHeaders({self._dict()!r})"


class _Origin:
    """Where one URL's requests go, and the request line and fixed headers for it."""

    __slots__ = ("head", "host", "key", "port", "ssl")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(ErrorKind.CONNECT, f"cannot send to {url!r}: not an http(s) URL")
        self.host = parts.hostname
        default_port = 443 if scheme == "https" else 80
        self.port = parts.port or default_port
        self.ssl = scheme == "https"
        self.key = (scheme, self.host, self.port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != default_port:
            host += f":{self.port}"
        self.head = (
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: identity\r\n"
        ).encode("latin-1")


#: What a closed connection holds instead of its parser (the parser refers back to it).
_SPENT_PARSER = httptools.HttpResponseParser(object())


class _Exchange:
    """One request's answer as it arrives: status, headers, then the body or a stream of chunks."""

    __slots__ = (
        "body",
        "buffered",
        "chunks",
        "content_type",
        "error",
        "finished",
        "head",
        "headers",
        "linger",
        "reading",
        "received",
        "size",
        "status",
        "stream",
        "waiter",
    )

    def __init__(self, stream: bool, waiter: asyncio.Future[None]) -> None:
        #: The caller wants a stream (SSE answers are then handed over at the headers).
        self.stream = stream
        #: Resolved at the headers (stream mode) or the end of the answer (whole mode); then, in
        #: stream mode, replaced by each wait for more chunks.
        self.waiter: asyncio.Future[None] | None = waiter
        self.status = 0
        self.content_type = "application/json"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes | bytearray] = []
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        #: Bytes received while the final answer's status line and headers were incomplete.
        self.head = 0
        #: Body bytes of a whole answer so far (or, lingering after [DONE], bytes discarded).
        self.size = 0
        #: The timer that ends a linger after [DONE] (None when not lingering).
        self.linger: asyncio.TimerHandle | None = None
        self.received = False
        #: The body goes to ``chunks`` (a stream being relayed), not ``body``.
        self.reading = False
        self.finished = False
        self.error: BackendError | None = None

    def take_error(self) -> BackendError:
        """The error, to be raised; the exchange lets go of it (so the traceback the raise adds,
        which holds the raising frame, is not also held by the frame's exchange: no cycle)."""
        error = self.error
        assert error is not None
        self.error = None
        return error

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an origin; at most one exchange at a time."""

    __slots__ = (
        "closed",
        "exchange",
        "key",
        "limits",
        "parser",
        "paused",
        "pool",
        "transport",
        "until_eof",
    )

    def __init__(self, pool: _Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.limits = pool.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self.paused = False
        self.until_eof = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an ``asyncio.Transport`` subclass, hence the cast).
        self.transport = cast("asyncio.Transport", transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        # The parser calls back into this object: let go of it, or the two would wait for the
        # garbage collector. Nothing is parsed after this.
        self.parser = _SPENT_PARSER
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        if exchange.linger is not None:
            exchange.linger.cancel()
            exchange.linger = None
        if self.until_eof and exchange.status and not exchange.finished and exc is None:
            # An answer without Content-Length or chunking ends when the connection closes
            # cleanly (a reset cuts it short: RFC 9112 section 8).
            exchange.finished = True
        elif not exchange.finished and exchange.error is None:
            reason = f": {exc}" if exc else ""
            if exchange.reading:
                message = f"stream broken: connection closed{reason}"
            elif exchange.status:
                message = f"connection lost: the body was cut short{reason}"
            else:
                message = f"connection lost before any answer{reason}"
            exchange.error = BackendError(ErrorKind.CONNECT, message)
        exchange.wake()

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Nothing was asked: a server talking out of turn. Drop the connection.
            self.close()
            return
        exchange.received = True
        if not exchange.status:
            exchange.head += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(exchange, _unexpected(101))
        except httptools.HttpParserError as exc:
            # A callback that refused the answer has set the error already.
            self.fail(
                exchange,
                BackendError(ErrorKind.MALFORMED, f"the backend's answer is not valid HTTP: {exc}"),
            )
        else:
            if not exchange.status and exchange.head > self.limits.headers:
                # The headers never end: cut them at the limit (the parser holds what it has).
                self.fail(exchange, self.limits.headers_error())

    def fail(self, exchange: _Exchange, error: BackendError) -> None:
        """End ``exchange`` with ``error`` (unless it has one, or is over) and drop the socket."""
        if self.exchange is exchange:
            self.exchange = None
            if exchange.error is None:
                exchange.error = error
            exchange.body = []  # a refused body is let go of now
            if exchange.linger is not None:
                exchange.linger.cancel()
                exchange.linger = None
        self.close()
        exchange.wake()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101 or status < 100:
                exchange.error = _unexpected(status)
                raise _Refused
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            exchange.headers = []
            return
        exchange.status = status
        chunked = False
        length = None
        size = 0
        for name, value in exchange.headers:
            size += len(name) + len(value) + 4  # as on the wire: ": " and CRLF
            lowered = name.lower()
            if lowered == b"content-type":
                exchange.content_type = value.decode("latin-1")
            elif lowered == b"content-length":
                length = value
            elif lowered == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        limits = self.limits
        if size > limits.headers:
            exchange.error = limits.headers_error()
            raise _Refused
        self.until_eof = not (chunked or length is not None) and status not in (204, 304)
        if (
            exchange.stream
            and status < 300
            and exchange.content_type.startswith("text/event-stream")
        ):
            exchange.reading = True
            exchange.wake()
        elif length is not None and int(length) > limits.body:
            # Announced too big: refused before a byte of it is read.
            exchange.error = limits.body_error()
            raise _Refused

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        if not exchange.reading:
            exchange.size += len(body)
            if exchange.size > self.limits.body:
                exchange.error = self.limits.body_error()
                raise _Refused
            parts = exchange.body
            if len(parts) < BODY_PIECES:
                parts.append(body)
            else:
                gather(parts, body)
            return
        if exchange.linger is not None:
            # After [DONE]: nobody reads this; only the answer's end is awaited.
            exchange.size += len(body)
            if exchange.size > LINGER_BYTES:
                raise _Refused
            return
        exchange.chunks.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        if exchange.status == 0:
            return  # the end of an interim answer
        exchange.finished = True
        self.exchange = None
        if exchange.linger is not None:
            exchange.linger.cancel()
            exchange.linger = None
        if self.paused:
            # The whole answer came while its reader was behind: nothing more is owed to it.
            self.resume()
        if self.parser.should_keep_alive() and not self.until_eof:
            self.pool.put(self)
        else:
            self.close()
        exchange.wake()

    # -- used by the transport ----------------------------------------------------------------

    def send(self, exchange: _Exchange, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.exchange = exchange
        self.until_eof = False
        transport.write(data)

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def linger(self, exchange: _Exchange) -> None:
        """The reader is done with ``exchange`` ([DONE]) before its end came: drop what it holds
        and wait briefly for the end, so the connection can go back to the pool."""
        if exchange.linger is not None:
            return
        if self.exchange is not exchange or self.closed:
            self.close()
            return
        exchange.chunks.clear()
        exchange.buffered = 0
        exchange.size = 0
        exchange.linger = asyncio.get_running_loop().call_later(
            LINGER_SECONDS, _end_linger, self, exchange
        )
        if self.paused:
            self.resume()

    def close(self) -> None:
        """Drop the connection now (the peer sees it at once)."""
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()


def _end_linger(connection: _Connection, exchange: _Exchange) -> None:
    """The answer did not end soon after [DONE]: close its connection."""
    exchange.linger = None
    if connection.exchange is exchange:
        connection.close()


class _Refused(Exception):
    """Raised in a parser callback to stop parsing an answer refused (its error is set)."""


def _unexpected(status: int) -> BackendError:
    if status == 101:
        reason = "101 Switching Protocols, which Nexus never asks for"
    else:
        reason = f"status {status}, which is not an HTTP status"
    return BackendError(ErrorKind.MALFORMED, f"the backend answered {reason}")


class _Pool:
    """Idle connections per origin, most recently used first out."""

    __slots__ = ("idle", "limits")

    def __init__(self, limits: ResponseLimits) -> None:
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.limits = limits

    def take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self.idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    def put(self, connection: _Connection) -> None:
        key = connection.key
        idle = self.idle.get(key)
        if idle is None:
            idle = self.idle[key] = []
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            connection.close()
            return
        idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        idle = self.idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def close_all(self) -> None:
        for idle in list(self.idle.values()):
            for connection in list(idle):
                connection.close()
        self.idle.clear()


class H1Transport:
    """``UpstreamTransport`` over ``_Connection``s: the default hot-path client."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, limits: ResponseLimits | None = None
    ) -> None:
        self.limits = limits or ResponseLimits()
        self._pool = _Pool(self.limits)
        self._origins: dict[str, _Origin] = {}
        self._ssl_context = ssl_context

    def _origin(self, url: str) -> _Origin:
        """The origin of ``url`` (parsed once)."""
        origin = self._origins.get(url)
        if origin is None:
            if len(self._origins) >= URL_CACHE_SIZE:
                self._origins.clear()
            origin = self._origins[url] = _Origin(url)
        return origin

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _connect(self, origin: _Origin, seconds: float) -> _Connection:
        loop = asyncio.get_running_loop()
        pool = self._pool
        key = origin.key
        try:
            async with asyncio.timeout(seconds):
                if origin.ssl:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(pool, key),
                        origin.host,
                        origin.port,
                        ssl=self._tls(),
                        server_hostname=origin.host,
                    )
                else:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(pool, key), origin.host, origin.port
                    )
        except TimeoutError:
            raise BackendError(
                ErrorKind.TIMEOUT, f"connect timed out after {seconds:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise BackendError(ErrorKind.CONNECT, f"cannot connect: {exc}") from None
        return connection

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        stream: bool,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        """POST and classify the answer; a stream comes back as an event iterator."""
        origin = self._origins.get(url) or self._origin(url)
        trace_headers = TRACE_HEADERS.get()
        if trace_headers is not None:
            merged = {name.lower(): (name, value) for name, value in headers.items()}
            merged.update((name.lower(), (name, value)) for name, value in trace_headers)
            headers = dict(merged.values())
        lines = [origin.head]
        for name, value in headers.items():
            if name.lower() in _SKIPPED:
                continue
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise BackendError(ErrorKind.CLIENT_ERROR, f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}\r\n".encode())
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
        request = b"".join(lines)

        loop = asyncio.get_running_loop()
        # One deadline for the connection, the headers and, for a whole answer, the body. A
        # timer that wakes the waiter is far cheaper per request than ``asyncio.timeout``.
        deadline = loop.time() + timeouts.first_byte
        connection = self._pool.take(origin.key)
        reused = connection is not None
        try:
            while True:
                if connection is None:
                    remaining = deadline - loop.time()
                    connection = await self._connect(origin, min(timeouts.connect, remaining))
                waiter = loop.create_future()
                exchange = _Exchange(stream, waiter)
                connection.send(exchange, request)
                timer = loop.call_at(deadline, _expire, exchange, timeouts.first_byte)
                try:
                    await waiter
                finally:
                    timer.cancel()
                if exchange.error is None:
                    break
                if reused and not exchange.received and connection.closed:
                    # A pooled connection the server had already closed: once more, afresh.
                    reused = False
                    connection = None
                    continue
                raise exchange.take_error()
        except BaseException:
            # Timed out, cancelled (the client went away) or failed: drop the socket so the
            # backend sees it at once.
            if connection is not None:
                connection.close()
            raise

        status = exchange.status
        if not exchange.reading:
            data = joined(exchange.body)
            if status >= 300:
                raise BackendError.from_status(
                    status, data, dict(ResponseHeaders(exchange.headers).items())
                )
            return UpstreamResponse(
                status=status,
                content_type=exchange.content_type,
                body=data,
                headers=ResponseHeaders(exchange.headers),
            )

        reader = _EventReader(connection, exchange, timeouts, deadline)
        return UpstreamResponse(
            status=status,
            content_type=exchange.content_type,
            events=aiter(reader),
            release=reader.aclose,
            headers=ResponseHeaders(exchange.headers),
            ready=reader.ready,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        self._pool.close_all()


def _expire(exchange: _Exchange, seconds: float) -> None:
    """The first-byte deadline passed before the answer (or, when whole, its body) came."""
    if exchange.error is None and exchange.waiter is not None:
        if exchange.status:
            message = f"response body stalled: not complete within {seconds:g} s"
        else:
            message = f"no response within {seconds:g} s"
        exchange.error = BackendError(ErrorKind.TIMEOUT, message)
        exchange.wake()


def _stall(reader: _EventReader, when: float) -> None:
    """A reader's timer is due: stalled if its wait's deadline is still ``when``, else re-armed.

    The reader keeps one timer for many waits (not one per event): each wait only moves
    ``reader.due``, and the timer, once due, looks whether the deadline moved on meanwhile.
    """
    reader.timer = None
    exchange = reader.exchange
    if exchange.error is not None or exchange.waiter is None:
        return  # not waiting: the next wait arms a timer
    if reader.due > when:
        reader.timer = asyncio.get_running_loop().call_at(reader.due, _stall, reader, reader.due)
        return
    # No stream event within the idle timeout (or the first one within the first-byte one).
    exchange.error = stalled(reader.started, reader.first_byte, reader.idle)
    exchange.wake()


def stalled(started: bool, first_byte: float, idle: float) -> BackendError:
    """The timeout of a stream whose (first, when not ``started``) event did not come in time."""
    if started:
        return BackendError(ErrorKind.TIMEOUT, f"stream stalled: no event for {idle:g} s")
    return BackendError(ErrorKind.TIMEOUT, f"no first event within {first_byte:g} s")


class _EventReader:
    """A relayed answer's SSE events, and whether the next one is already here.

    ``ready`` lets the relay write events that arrived together in one write (never holding one
    back to wait for another): it is true while a complete event is parsed and waiting, or when
    the answer has ended (what remains needs no more reading).

    Timeouts count from events, not bytes: the first event must come by the first-byte deadline,
    each next one within ``idle`` of the reader asking for it, whatever else (comments, part of an
    event) arrives meanwhile. The reader ends at ``[DONE]``.
    """

    __slots__ = (
        "complete",
        "connection",
        "deadline",
        "done",
        "due",
        "events",
        "exchange",
        "first_byte",
        "idle",
        "parser",
        "started",
        "timer",
    )

    def __init__(
        self, connection: _Connection, exchange: _Exchange, timeouts: Timeouts, deadline: float
    ) -> None:
        self.connection = connection
        self.exchange = exchange
        self.idle = timeouts.idle
        self.first_byte = timeouts.first_byte
        #: When the first event is due (the loop's clock): the request's first-byte deadline.
        self.deadline = deadline
        self.parser = SSEParser(connection.limits.event)
        self.events: collections.deque[bytes] = collections.deque()
        # Complete when [DONE] came or some event carried a finish_reason.
        self.complete = False
        #: [DONE] was handed over: nothing more is read.
        self.done = False
        #: An event was handed over (the idle timeout applies from then on).
        self.started = False
        #: The current wait's deadline, and the timer that checks it (see ``_stall``).
        self.due = deadline
        self.timer: asyncio.TimerHandle | None = None

    def _parse(self) -> None:
        exchange = self.exchange
        chunks = exchange.chunks
        try:
            while chunks:
                chunk = chunks.popleft()
                exchange.buffered -= len(chunk)
                self.events.extend(self.parser.feed(chunk))
        except EventTooLarge as exc:
            self.events.extend(exc.events)
            chunks.clear()
            exchange.buffered = 0
            error = self.connection.limits.event_error()
            if not exchange.finished:  # (else the connection may carry another answer now)
                self.connection.fail(exchange, error)
            exchange.error = error
            return
        connection = self.connection
        # Only while the connection still carries this answer (once it is whole, the connection
        # may be carrying the next one, whose pause is not ours to lift).
        if connection.paused and not exchange.finished and exchange.buffered <= HIGH_WATER // 2:
            connection.resume()

    def ready(self) -> bool:
        """Whether the next event (or the end) can be had without waiting for the backend."""
        if self.events:
            return True
        exchange = self.exchange
        if exchange.chunks:
            self._parse()
            if self.events:
                return True
        return exchange.finished or exchange.error is not None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange = self.exchange
        events = self.events
        loop = asyncio.get_running_loop()
        # When the next event is due; None: "idle from now", fixed at the first wait for it (so
        # chunks that bring no event do not move it).
        deadline: float | None = self.deadline
        try:
            while True:
                if events:
                    event = events.popleft()
                    # [DONE] is 13 or 14 bytes: the length spares longer events the comparison.
                    if len(event) < 16 and event.startswith(DONE_PREFIXES):
                        self.complete = self.done = True
                        events.clear()
                        yield event
                        return
                    if not self.complete:
                        self.complete = completes_answer(event)
                    yield event
                    deadline = None
                    continue
                if exchange.chunks:
                    self._parse()
                    continue
                if exchange.error is not None:
                    raise exchange.take_error()
                if exchange.finished:
                    break
                if deadline is None:
                    deadline = loop.time() + self.idle
                    self.started = True
                self.due = deadline
                timer = self.timer
                # One timer serves many waits: a new one only when this deadline comes sooner.
                if timer is None or timer.when() > deadline:
                    if timer is not None:
                        timer.cancel()
                    self.timer = loop.call_at(deadline, _stall, self, deadline)
                waiter = exchange.waiter = loop.create_future()
                await waiter
            tail = self.parser.flush()
            if tail is not None:
                if not self.complete:
                    self.complete = completes_answer(tail)
                yield tail
            if not self.complete:
                raise BackendError(
                    ErrorKind.MALFORMED, "stream ended before the answer was complete"
                )
        finally:
            self.release()

    def release(self) -> None:
        """Let the connection go: kept for reuse after a whole answer, else closed (idempotent).

        Stopped at [DONE] before the answer's end arrived, it may linger for that end.
        """
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        exchange = self.exchange
        if exchange.finished:
            return
        if self.done and exchange.error is None:
            self.connection.linger(exchange)
        else:
            self.connection.close()

    async def aclose(self) -> None:
        """``UpstreamResponse.release``: the relay is over, however it ended."""
        self.release()
