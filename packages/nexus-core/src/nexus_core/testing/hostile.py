"""A hostile backend: a raw TCP server on 127.0.0.1 that lies, floods and stalls on cue.

``FakeBackend`` misbehaves the way a real server does (5xx, resets, hangs); this one misbehaves the
way an attacker (anyone answering mDNS on the LAN) or a badly broken proxy does, byte by byte,
which no HTTP framework would let it do: endless bodies, lying ``Content-Length``, headers that
never end, a single SSE event that never ends, events after ``[DONE]``, comments only, HTML pages,
redirects, drip-fed bytes, ``101 Switching Protocols``, garbage. Until told otherwise it answers
correctly (an OpenAI model list on ``GET /v1/models``, ``{"status": "ok"}`` on ``GET /health``, a
chat completion or its SSE stream), so a gateway configured with it as a ``generic`` backend marks
it healthy. The attack applies to the inference requests (``POST``); with ``probes=True`` also to
the ``GET`` probes.

    with HostileBackend(Attack.ENDLESS_BODY) as hostile:   # or: async with
        ...  # point a gateway at hostile.url
        hostile.attack = Attack.GIANT_EVENT                 # may change at any time
        assert hostile.wait_peer_closed(1, timeout=5)      # the gateway dropped the connection

It runs in a daemon thread with its own event loop, so it serves synchronous tests, async tests
and a gateway in another process alike. ``bytes_sent`` counts what it managed to send: an attack
that stops early shows the gateway cut it off.
"""

from __future__ import annotations

import asyncio
import enum
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from nexus_core.testing import openai_shapes as shapes

__all__ = ["Attack", "HostileBackend", "HostileRequest"]

#: A piece of an endless body (and of a giant event or header).
PIECE = b"x" * 65536
#: The biggest request head and body the server reads (it is an attacker, not a target).
_MAX_REQUEST = 1024 * 1024
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
#: HTML with what would be active content on the gateway's origin if it were relayed as such,
#: and characters that would break a log line or a header.
HTML_PAGE = (
    b"<!doctype html><html><head><title>Oops</title></head><body>"
    b"<script>fetch('/admin/backends').then(r => r.text()).then(alert)</script>"
    b"\x1b[31mSomething\r\nX-Injected: 1\r\n went wrong</body></html>"
)
#: Where ``REDIRECT`` points: a loopback port nothing listens on (a client that followed it
#: would get a refused connection, never leave the machine), with an 8-bit CSI (a terminal
#: escape that HTTP parsers let through as an obsolete text byte).
REDIRECT_TARGET = "http://127.0.0.1:1/steal?key=\x9b2J"


class Attack(enum.StrEnum):
    """What the hostile backend does to a request."""

    #: A correct answer (the default).
    NONE = "none"
    #: 200 ``application/json``, chunked, a body that never ends.
    ENDLESS_BODY = "endless_body"
    #: ``Content-Length`` of a terabyte, then bytes without end.
    LENGTH_TOO_BIG = "length_too_big"
    #: ``Content-Length: 1000``, ten bytes, then silence with the connection open.
    LENGTH_SHORT = "length_short"
    #: A status line, then header lines without end (never the blank line).
    GIANT_HEADERS = "giant_headers"
    #: A status line, then one header whose value never ends.
    GIANT_HEADER_VALUE = "giant_header_value"
    #: An SSE stream whose first event is one ``data:`` line that never ends.
    GIANT_EVENT = "giant_event"
    #: A correct SSE stream, then events without end after ``[DONE]``.
    EVENTS_AFTER_DONE = "events_after_done"
    #: An SSE stream of ``: keep-alive`` comments only, one per ``drip_seconds``, forever.
    COMMENTS_ONLY = "comments_only"
    #: An SSE stream whose (first) event is drip-fed, a byte per ``drip_seconds``, never complete.
    PARTIAL_EVENT = "partial_event"
    #: A ``text/html`` error page with a script (status ``error_status``, default 400).
    HTML_ERROR = "html_error"
    #: 200 with a ``text/html`` page instead of JSON.
    HTML_OK = "html_ok"
    #: ``302 Found`` to ``REDIRECT_TARGET``.
    REDIRECT = "redirect"
    #: A correct answer with its ``Content-Length``, a byte per ``drip_seconds``.
    DRIP = "drip"
    #: ``101 Switching Protocols`` (to a WebSocket), then frames of nothing.
    SWITCHING_PROTOCOLS = "switching_protocols"
    #: Bytes that are not HTTP at all, and the connection held open.
    GARBAGE = "garbage"


@dataclass(frozen=True, slots=True)
class HostileRequest:
    """One request as the hostile backend read it."""

    method: str
    path: str
    body: bytes
    #: The attack it got (``NONE``: a correct answer).
    attack: Attack


class HostileBackend:
    """A raw-socket server on ``127.0.0.1`` answering with ``attack`` (see the module docstring).

    ``models``: what ``GET /v1/models`` lists. ``probes``: the attack also applies to ``GET``
    requests. ``drip_seconds``: the pace of the drip-fed attacks. ``error_status``: the status of
    ``HTML_ERROR``; ``location``: where ``REDIRECT`` points. ``opening_event``: the stream
    attacks begin with one correct event.
    """

    def __init__(
        self,
        attack: Attack = Attack.NONE,
        *,
        models: Sequence[str] = ("hostile-model",),
        probes: bool = False,
        drip_seconds: float = 0.2,
        error_status: int = 400,
        location: str = REDIRECT_TARGET,
        opening_event: bool = False,
        name: str = "hostile",
    ) -> None:
        self.attack = attack
        #: The stream attacks (giant event, comments only, partial event) open with one correct
        #: event, so the attack comes after the first byte reached the client.
        self.opening_event = opening_event
        #: Where ``REDIRECT`` points (by default a hostile value: a terminal escape included).
        self.location = location
        self.models = list(models)
        self.probes = probes
        self.drip_seconds = drip_seconds
        self.error_status = error_status
        self.name = name
        self.requests: list[HostileRequest] = []
        #: Bytes written and drained to clients, all connections together.
        self.bytes_sent = 0
        #: Connections accepted.
        self.connections = 0
        #: Connections the client closed while an attack was under way (or held open).
        self.peer_closed = 0
        self._port = 0
        self._lock = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what tests read ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        if not self._port:
            raise RuntimeError("the hostile backend has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def wait_peer_closed(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Whether ``count`` connections were closed by the client within ``timeout`` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: self.peer_closed >= count, timeout)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (in a daemon thread with its own event loop); returns once it accepts."""
        if self._thread is not None:
            raise RuntimeError("the hostile backend is already running")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"HostileBackend-{self.name}", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=10)

    def stop(self) -> None:
        """Close the server and every connection, and stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- one connection ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self.connections += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                method, path, body = request
                attack = self.attack if (method == "POST" or self.probes) else Attack.NONE
                with self._lock:
                    self.requests.append(HostileRequest(method, path, body, attack))
                if attack is Attack.NONE:
                    await self._send(writer, self._correct(method, path, body))
                    continue
                whole = _WHOLE.get(attack)
                if whole is not None:
                    # A complete (if hostile) answer: the connection stays open for more.
                    await self._send(writer, whole(self))
                    continue
                try:
                    await self._attack(attack, reader, writer, method, path, body)
                except ConnectionError:
                    # The client closed or reset the connection under the attack.
                    with self._lock:
                        self.peer_closed += 1
                        self._lock.notify_all()
                return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that went away between requests, or sent nonsense
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        with self._lock:
            self.bytes_sent += len(data)

    async def _hold(self, reader: asyncio.StreamReader) -> None:
        """Keep the connection open until the client closes it (then count that)."""
        while await reader.read(65536):
            pass
        raise ConnectionResetError("the client closed the connection")

    def _correct(self, method: str, path: str, body: bytes) -> bytes:
        """A correct answer for the request, with its framing (kept alive)."""
        if method == "GET":
            if path.split("?")[0].rstrip("/") in ("/v1/models", "/models"):
                created = int(time.time())
                cards = [
                    shapes.model_card(model, created=created, owned_by=self.name)
                    for model in self.models
                ]
                return _whole(200, shapes.dumps({"object": "list", "data": cards}))
            if path.split("?")[0] == "/health":
                return _whole(200, b'{"status":"ok"}')
            return _whole(404, shapes.dumps(shapes.default_error(404)))
        request = _json(body)
        if request.get("stream") is True:
            return _SSE_HEAD + b"".join(_chunk(event) for event in self._events(request)) + _LAST
        return _whole(200, self._completion(request))

    def _completion(self, request: dict[str, Any]) -> bytes:
        return shapes.dumps(
            shapes.chat_completion(
                completion_id="chatcmpl-hostile",
                model=str(request.get("model") or "hostile-model"),
                created=int(time.time()),
                content=f"Hello from {self.name}",
                tool_calls=None,
                prompt_tokens=shapes.count_tokens(request.get("messages")),
            )
        )

    def _events(self, request: dict[str, Any]) -> list[bytes]:
        chunks = shapes.chat_chunks(
            completion_id="chatcmpl-hostile",
            model=str(request.get("model") or "hostile-model"),
            created=int(time.time()),
            content=f"Hello from {self.name}",
            tool_calls=None,
            prompt_tokens=shapes.count_tokens(request.get("messages")),
            include_usage=False,
        )
        return [b"data: " + shapes.dumps(chunk) + b"\n\n" for chunk in chunks] + [
            b"data: [DONE]\n\n"
        ]

    async def _attack(
        self,
        attack: Attack,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: bytes,
    ) -> None:
        send = self._send
        drip = self.drip_seconds
        opening = _chunk(self._events(_json(body))[0]) if self.opening_event else b""
        if attack is Attack.ENDLESS_BODY:
            await send(
                writer,
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(b'{"pad":"'),
            )
            while True:
                await send(writer, _chunk(PIECE))
        elif attack is Attack.LENGTH_TOO_BIG:
            await send(
                writer,
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1099511627776\r\n\r\n",
            )
            while True:
                await send(writer, PIECE)
        elif attack is Attack.LENGTH_SHORT:
            await send(
                writer,
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
                b'\r\n{"id": "x"',
            )
            await self._hold(reader)
        elif attack is Attack.GIANT_HEADERS:
            await send(writer, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            for index in range(10**9):
                await send(writer, b"X-Pad-%d: %s\r\n" % (index, PIECE[:4000]))
        elif attack is Attack.GIANT_HEADER_VALUE:
            await send(writer, b"HTTP/1.1 200 OK\r\nX-Pad: ")
            while True:
                await send(writer, PIECE)
        elif attack is Attack.GIANT_EVENT:
            await send(writer, _SSE_HEAD + opening + _chunk(b'data: {"pad":"'))
            while True:
                await send(writer, _chunk(PIECE))
        elif attack is Attack.EVENTS_AFTER_DONE:
            events = self._events(_json(body))
            await send(writer, _SSE_HEAD + _chunk(b"".join(events)))
            more = b'data: {"choices":[{"index":0,"delta":{"content":"more"}}]}\n\n' * 1000
            while True:
                await send(writer, _chunk(more))
        elif attack is Attack.COMMENTS_ONLY:
            await send(writer, _SSE_HEAD + opening)
            while True:
                await send(writer, _chunk(b": keep-alive\n\n"))
                await asyncio.sleep(drip)
        elif attack is Attack.PARTIAL_EVENT:
            await send(
                writer, _SSE_HEAD + opening + _chunk(b'data: {"choices":[{"delta":{"content":"')
            )
            while True:
                await asyncio.sleep(drip)
                await send(writer, _chunk(b"x"))
        elif attack is Attack.DRIP:
            answer = self._correct(method, path, body) if method == "GET" else b""
            if not answer:
                request = _json(body)
                answer = _whole(200, self._completion(request))
            head, _, payload = answer.partition(b"\r\n\r\n")
            await send(writer, head + b"\r\n\r\n")
            for index in range(len(payload)):
                await asyncio.sleep(drip)
                await send(writer, payload[index : index + 1])
            await self._hold(reader)
        elif attack is Attack.SWITCHING_PROTOCOLS:
            await send(
                writer,
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\n\x81\x05hello\x89\x00",
            )
            await self._hold(reader)
        elif attack is Attack.GARBAGE:
            await send(writer, b"\x00\xff\xfeSSH-2.0-OpenSSH_9.6\r\n\x16\x03\x01garbage\r\n\r\n")
            await self._hold(reader)
        else:  # pragma: no cover - every member is handled above
            raise AssertionError(f"unknown attack {attack}")


_LAST = b"0\r\n\r\n"
_HTML = b"text/html; charset=utf-8"
#: The attacks that are complete answers (kept alive, like any server's).
_WHOLE: dict[Attack, Callable[[HostileBackend], bytes]] = {
    Attack.HTML_ERROR: lambda backend: _whole(backend.error_status, HTML_PAGE, _HTML),
    Attack.HTML_OK: lambda backend: _whole(200, HTML_PAGE, _HTML),
    Attack.REDIRECT: lambda backend: (
        b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Type: text/html\r\n"
        b"Content-Length: 5\r\n\r\nFound" % backend.location.encode("latin-1")
    ),
}


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _whole(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found"}
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        reason.get(status, b"Whatever"),
        content_type,
        len(body),
        body,
    )


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """The next request's method, path and body; None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    if len(head) > _MAX_REQUEST:
        raise ConnectionResetError("request head too large")
    first, *lines = head.decode("latin-1").split("\r\n")
    method, _, rest = first.partition(" ")
    path = rest.rpartition(" ")[0] or rest
    length = 0
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = min(int(value.strip() or 0), _MAX_REQUEST)
    body = await reader.readexactly(length) if length else b""
    return method, path, body
