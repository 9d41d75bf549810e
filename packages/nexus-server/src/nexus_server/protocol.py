"""uvicorn's httptools protocol, adapted: one write per answer, and a callback on disconnect.

**One write.** uvicorn writes a response's status line and headers the moment
``http.response.start`` is sent, then the body in a second write. On loopback and in VMs a write
(a ``send`` system call that also runs the receiver's TCP processing) is the single dearest step
of proxying a small answer, so two writes per answer cost measurably more than one
(docs/performance.md).

``CorkedTransport`` holds a write until either a second write comes in the same turn of the
event loop (both go out as one) or the turn ends (it goes out alone). Nothing waits for later
data: a held write is flushed by a ``call_soon`` callback, which runs before the loop next waits
for I/O. Only an answer's first write is held: once it is out, the answer's later writes (a
stream's events, each in a turn of its own) go straight to the socket, until the next request
on the connection corks it again.

**Disconnect.** Each request's scope carries a ``Disconnect`` (under ``DISCONNECT_KEY``) whose
callback runs the moment the connection is lost before the answer is complete. The proxy
endpoints set it to cancel their work, so the upstream request is dropped at once without a task
per request watching ``receive()`` (under another ASGI server they fall back to such a task).

**Bounded reads.** Every read from a client is bounded in size and time (``ClientLimits``, from
``[server]``), as nginx bounds them, because uvicorn bounds neither: a request's line and headers
are counted as they arrive (httptools would otherwise buffer a header value of any length) and
answered 431 past ``max_header_bytes``; a connection has ``header_timeout_seconds`` to send its
headers, counted from its opening or its previous answer (uvicorn never times out a connection
that has not sent a byte, nor one that drips one now and then); a body must arrive within
``body_timeout_seconds`` plus a second per 16 KiB. ``ConnectionGuard`` keeps the open connections
under ``max_connections``: at the cap a new connection closes the oldest idle one (between requests
or still sending headers), and only when none is idle is the newcomer refused with 503, so
thousands of idle or half-sent connections never keep ``/health`` or inference from answering.
Errors are JSON in the shape of the door the request was for; floods of them are logged as one
summary line every ``REPORT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from nexus_core.config import ServerConfig
from nexus_core.errors import GatewayError
from nexus_server.doors import error_body

log = logging.getLogger("nexus.server")

#: The scope key of a request's ``Disconnect``.
DISCONNECT_KEY = "nexus.disconnect"


class Disconnect:
    """Whether a request's client has gone, and what to run when it goes."""

    __slots__ = ("callback", "gone")

    def __init__(self) -> None:
        self.gone = False
        #: Run (once) when the client goes; set and cleared by whoever serves the request.
        self.callback: Callable[[], object] | None = None

    def left(self) -> bool:
        """Whether the client has gone (read afresh, e.g. after an ``await``)."""
        return self.gone

    def fire(self) -> None:
        """The client has gone."""
        if not self.gone:
            self.gone = True
            callback = self.callback
            if callback is not None:
                callback()


class CorkedTransport:
    """A stream transport whose writes within one loop turn are joined (see the module)."""

    __slots__ = ("_corked", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        #: Whether the next write is held (an answer's first); cleared by the flush.
        self._corked = True

    def cork(self) -> None:
        """Hold the next write again (a new request: its answer's head and body go as one)."""
        self._corked = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._corked:
            self._transport.write(data)
            return
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        """Write what is held now; later writes go straight out until ``cork``."""
        self._corked = False
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        held = self._held
        return self._transport.get_write_buffer_size() + (len(held) if held else 0)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


#: Bytes of a request's line beyond ``max_header_bytes`` that are still read before a 431 (the
#: headers' limit counts names and values; the request line and framing come on top).
LINE_ALLOWANCE = 8192
#: A body earns one more second to arrive per this many bytes received.
BODY_BYTES_PER_SECOND = 16 * 1024
#: How often deadlines are checked.
SWEEP_SECONDS = 0.5
#: Refusals and timeouts are logged as one summary line at most this often.
REPORT_SECONDS = 10.0
#: At the connection cap with no connection idle, how long new ones are refused before the open
#: ones are looked through again (so a flood of new connections costs no scan each).
SCAN_PAUSE_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """How much and how long a client may take (``[server]``; see the module)."""

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 10_000

    @classmethod
    def from_config(cls, server: ServerConfig, max_connections: int | None = None) -> ClientLimits:
        """The limits ``server`` sets; ``max_connections`` overrides the configured cap."""
        return cls(
            max_header_bytes=server.max_header_bytes,
            header_timeout=server.header_timeout_seconds,
            body_timeout=server.body_timeout_seconds,
            max_connections=max_connections or server.max_connections,
        )


def _answer(status: int, path: str, message: str, code: str) -> bytes:
    """A whole ``connection: close`` answer, its body in the shape of ``path``'s door."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = error_body(path, GatewayError(status, message, type=kind, code=code))
    return b"".join(
        (
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"x-content-type-options: nosniff\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


class ConnectionGuard:
    """The open client connections of one server, their deadlines, and the cap on them.

    Kept cheap per request: a coarse clock (``now``, set by the sweep) instead of reading the
    time, one dict entry while a connection waits for a request's head, one set entry per
    request whose body may still be arriving (dropped by the sweep once it has). A connection
    idle between two requests is closed by uvicorn's keep-alive timeout; it is looked for only
    when the cap is reached and no connection is waiting for a head.
    """

    def __init__(self, limits: ClientLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.loop = loop
        #: The time at the last sweep (or connection): a deadline may be this much late.
        self.now = loop.time()
        self.connections: set[NexusHttpProtocol] = set()
        #: Connections waiting for a request's head, oldest first, with their deadlines. All
        #: deadlines are a time from ``now`` + the same timeout, so the order is theirs too.
        self.idle: dict[NexusHttpProtocol, float] = {}
        #: Connections whose request body may still be arriving.
        self.receiving: set[NexusHttpProtocol] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._tally: dict[str, int] = {}
        self._reported = self.now
        #: No look for an idle connection before this: when none was found, the next new
        #: connections are refused without scanning them all again.
        self._next_scan = self.now

    def opened(self, connection: NexusHttpProtocol) -> bool:
        """Count a new connection; False when it must be refused (every other one is busy)."""
        now = self.now = self.loop.time()
        if len(self.connections) >= self.limits.max_connections:
            victim = next(iter(self.idle), None)
            if victim is None and now >= self._next_scan:
                victim = next((c for c in self.connections if c.between_requests()), None)
                if victim is None:
                    self._next_scan = now + SCAN_PAUSE_SECONDS
            if victim is None:
                self.note("refused: every connection busy")
                return False
            self.note("idle closed for a new one")
            victim.drop()
        self.connections.add(connection)
        self.idle[connection] = now + self.limits.header_timeout
        if self._timer is None:
            self._timer = self.loop.call_later(SWEEP_SECONDS, self.sweep)
        return True

    def closed(self, connection: NexusHttpProtocol) -> None:
        """Forget a connection that is gone (or handed to the WebSocket protocol)."""
        if connection.counted:
            connection.counted = False
            self.connections.discard(connection)
            self.idle.pop(connection, None)
            self.receiving.discard(connection)

    def note(self, what: str) -> None:
        """Count one refusal or timeout for the next summary line."""
        self._tally[what] = self._tally.get(what, 0) + 1

    def sweep(self) -> None:
        """Close the connections past their deadlines; log a summary now and then."""
        self._timer = None
        now = self.now = self.loop.time()
        expired = []
        for connection, deadline in self.idle.items():
            if deadline > now:
                break
            expired.append(connection)
        for connection in expired:
            self.note("header timeout")
            connection.header_timed_out()
        timeout = self.limits.body_timeout
        for connection in list(self.receiving):
            cycle = connection.cycle
            if not connection.counted or cycle is None or not cycle.more_body:
                self.receiving.discard(connection)  # the body is in (or there is none)
            elif connection.body_deadline(timeout) <= now:
                self.note("body timeout")
                connection.body_timed_out()
        if self._tally and now - self._reported >= REPORT_SECONDS:
            summary = ", ".join(f"{count} {what}" for what, count in sorted(self._tally.items()))
            log.warning(
                "client connections in the last %.0f s: %s (%d open)",
                now - self._reported,
                summary,
                len(self.connections),
            )
            self._tally.clear()
            self._reported = now
        if self.connections or self._tally:
            self._timer = self.loop.call_later(SWEEP_SECONDS, self.sweep)


#: One guard per running server (its ``ServerState``).
_GUARDS: weakref.WeakKeyDictionary[ServerState, ConnectionGuard] = weakref.WeakKeyDictionary()


class NexusHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol: a ``CorkedTransport``, a ``Disconnect`` per request, and
    every read bounded (see the module). ``protocol_for`` makes one with a server's limits."""

    limits: ClassVar[ClientLimits] = ClientLimits()

    corked: CorkedTransport
    counted = False
    #: A request's line and headers are being read (from its first byte, or the connection's).
    in_head = True
    head_bytes = 0
    body_started = 0.0
    body_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked = self.corked = CorkedTransport(transport, self.loop)
        super().connection_made(corked)  # type: ignore[arg-type]
        guard = _GUARDS.get(self.server_state)
        if guard is None:
            guard = _GUARDS[self.server_state] = ConnectionGuard(self.limits, self.loop)
        self.guard = guard
        if guard.opened(self):
            self.counted = True
        else:
            transport.write(_answer(503, "/", "Nexus has no free connection slot", "overloaded"))
            transport.close()

    def data_received(self, data: bytes) -> None:
        # uvicorn's, but a parse error or an unknown upgrade is counted, not logged each time
        # (a client could flood the log), and the head is measured as it arrives.
        self._unset_keepalive_if_required()
        if self.in_head:
            self.head_bytes += len(data)
        else:
            self.body_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self.guard.note("unsupported upgrades ignored")
            return
        except httptools.HttpParserError:
            self.guard.note("invalid requests")
            self._refuse(400, "The request is not valid HTTP/1.1", "invalid_http")
            return
        if self.in_head and self.head_bytes > self.limits.max_header_bytes + LINE_ALLOWANCE:
            # Counted as they arrive: httptools holds a header's value until its line ends.
            self.guard.note("headers too large")
            self.in_head = False
            self._refuse(
                431,
                f"The request's line and headers are larger than "
                f"{self.limits.max_header_bytes} bytes (server.max_header_bytes)",
                "request_header_fields_too_large",
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.corked.cork()
        self.scope[DISCONNECT_KEY] = Disconnect()  # type: ignore[literal-required]
        # A request's first byte: its head is due within the header timeout (a new connection's
        # first request keeps the deadline of the connection's opening).
        self.in_head = True
        guard = self.guard
        if self.counted and self not in guard.idle:
            guard.idle[self] = guard.now + self.limits.header_timeout

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        self.body_bytes = 0
        guard = self.guard
        self.body_started = guard.now
        guard.idle.pop(self, None)
        guard.receiving.add(self)
        HttpToolsProtocol.on_headers_complete(self)

    def handle_websocket_upgrade(self) -> None:
        self.guard.closed(self)  # the WebSocket protocol has limits of its own
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed(self)
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            disconnect = cycle.scope.get(DISCONNECT_KEY)
            if isinstance(disconnect, Disconnect):
                disconnect.fire()

    # -- called by the guard -------------------------------------------------------------------

    def between_requests(self) -> bool:
        """Whether the connection is idle between two requests (a keep-alive client)."""
        cycle = self.cycle
        return not self.in_head and not self.pipeline and (cycle is None or cycle.response_complete)

    def body_deadline(self, timeout: float) -> float:
        """When the body must be complete: its start, the timeout, a second per 16 KiB."""
        return self.body_started + timeout + self.body_bytes / BODY_BYTES_PER_SECOND

    def drop(self) -> None:
        """Close an idle connection at once (room is needed for a new one)."""
        self.guard.closed(self)
        self.transport.close()

    def header_timed_out(self) -> None:
        """The headers did not come in time: 408 if part of a request came, else just close."""
        if self.head_bytes:
            self._refuse(
                408,
                f"The request's headers did not arrive within "
                f"{self.limits.header_timeout:g} s (server.header_timeout_seconds)",
                "request_timeout",
            )
        else:
            self.drop()

    def body_timed_out(self) -> None:
        """The body did not come in time: 408 unless an answer has begun, then close."""
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self.drop()
            return
        self._refuse(
            408,
            f"The request body did not arrive in time (server.body_timeout_seconds: "
            f"{self.limits.body_timeout:g} s plus one per 16 KiB)",
            "request_timeout",
        )

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer ``status`` in the door's shape and close; the request (if any) is dropped."""
        self.guard.closed(self)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application must not write after this answer: it sees the client gone.
            cycle.disconnected = True
            cycle.message_event.set()
        path = self.url.decode("latin-1", "replace") if getattr(self, "url", None) else "/"
        if not self.transport.is_closing():
            self.transport.write(_answer(status, path, message, code))
            self.transport.close()


def protocol_for(limits: ClientLimits) -> type[NexusHttpProtocol]:
    """``NexusHttpProtocol`` with ``limits`` (uvicorn's ``http=`` takes a class)."""
    return type("NexusHttpProtocol", (NexusHttpProtocol,), {"limits": limits})
