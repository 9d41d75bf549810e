"""uvicorn's httptools protocol, adapted: one write per answer, and a callback on disconnect.

**One write.** uvicorn writes a response's status line and headers the moment
``http.response.start`` is sent, then the body in a second write. On loopback and in VMs a write
(a ``send`` system call that also runs the receiver's TCP processing) is the single dearest step
of proxying a small answer, so two writes per answer cost measurably more than one
(docs/performance.md).

``CorkedTransport`` holds a write until either a second write comes in the same turn of the
event loop (both go out as one) or the turn ends (it goes out alone). Nothing waits for later
data: a held write is flushed by a ``call_soon`` callback, which runs before the loop next waits
for I/O.

**Disconnect.** Each request's scope carries a ``Disconnect`` (under ``DISCONNECT_KEY``) whose
callback runs the moment the connection is lost before the answer is complete. The proxy
endpoints set it to cancel their work, so the upstream request is dropped at once without a task
per request watching ``receive()`` (under another ASGI server they fall back to such a task).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
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
        """Write what is held now."""
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


class NexusHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol: a ``CorkedTransport``, and a ``Disconnect`` per request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked = CorkedTransport(transport, self.loop)
        super().connection_made(corked)  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[DISCONNECT_KEY] = Disconnect()  # type: ignore[literal-required]

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            disconnect = cycle.scope.get(DISCONNECT_KEY)
            if isinstance(disconnect, Disconnect):
                disconnect.fire()
