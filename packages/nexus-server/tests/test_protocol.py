"""Nexus's uvicorn protocol: corked writes, and the client's leaving cancelling the upstream.

``CorkedTransport``: writes made in one turn of the event loop leave as one, none waits longer. A
real TCP connection on 127.0.0.1; the corked transport wraps the client's transport through a
shim that records each write it passes down (what the socket is asked to send).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.protocol import CorkedTransport, NexusHttpProtocol
from nexus_server.testing import running_server

pytestmark = pytest.mark.anyio


class Recording:
    """Passes everything to a real transport and records the writes."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class Peer:
    """The server side: everything it received, and whether the client closed."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.grew = asyncio.Event()
        self.closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            self.received += chunk
            self.grew.set()
        self.closed.set()
        writer.close()


@pytest.fixture
async def pair(anyio_backend: str) -> AsyncIterator[tuple[CorkedTransport, Recording, Peer]]:
    peer = Peer()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    recording = Recording(transport)
    corked = CorkedTransport(recording, loop)  # type: ignore[arg-type]
    yield corked, recording, peer
    transport.abort()
    server.close()
    await server.wait_closed()


async def wait_for(peer: Peer, size: int) -> None:
    async with asyncio.timeout(2):
        while len(peer.received) < size:
            await peer.grew.wait()
            peer.grew.clear()


async def test_writes_in_one_turn_leave_as_one(
    pair: tuple[CorkedTransport, Recording, Peer],
) -> None:
    corked, recording, peer = pair
    corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    corked.write(b"ok")
    assert recording.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    await wait_for(peer, 40)
    assert bytes(peer.received) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def test_a_lone_write_leaves_when_the_turn_ends(
    pair: tuple[CorkedTransport, Recording, Peer],
) -> None:
    corked, recording, peer = pair
    corked.write(b"head")
    assert recording.writes == []
    assert corked.get_write_buffer_size() >= 4
    await asyncio.sleep(0)  # one turn of the loop: the held write is flushed before any I/O wait
    assert recording.writes == [b"head"]
    await wait_for(peer, 4)
    assert bytes(peer.received) == b"head"


async def test_after_the_first_flush_writes_go_straight_out_until_corked_again(
    pair: tuple[CorkedTransport, Recording, Peer],
) -> None:
    """A stream's events (each in a turn of its own) are not held; a new request corks again."""
    corked, recording, peer = pair
    corked.write(b"head")
    await asyncio.sleep(0)
    corked.write(b"event1")
    assert recording.writes == [b"head", b"event1"]  # written at once: nothing held
    corked.write(memoryview(b"event2"))
    assert recording.writes == [b"head", b"event1", b"event2"]
    assert corked.get_write_buffer_size() >= 0
    corked.cork()  # the next request on the connection
    corked.write(b"HEAD2")
    corked.write(b"body2")
    corked.write(b"three")
    await asyncio.sleep(0)
    assert recording.writes == [b"head", b"event1", b"event2", b"HEAD2body2", b"three"]
    await wait_for(peer, 31)
    assert bytes(peer.received) == b"headevent1event2HEAD2body2three"


async def test_close_sends_what_is_held_first(
    pair: tuple[CorkedTransport, Recording, Peer],
) -> None:
    corked, recording, peer = pair
    corked.write(b"last words")
    corked.close()
    async with asyncio.timeout(2):
        await peer.closed.wait()
    assert bytes(peer.received) == b"last words"
    assert recording.writes == [b"last words"]


async def test_abort_drops_what_is_held(pair: tuple[CorkedTransport, Recording, Peer]) -> None:
    corked, recording, peer = pair
    corked.write(b"never")
    corked.abort()
    async with asyncio.timeout(2):
        await peer.closed.wait()
    await asyncio.sleep(0)
    assert recording.writes == []
    assert bytes(peer.received) == b""


def test_the_gateway_answers_through_corked_connections() -> None:
    """Keep-alive answers, a closing answer and an error all arrive whole through uvicorn."""
    config = {"discovery": {"enabled": False}, "state": {"backend": "memory"}, "backends": []}
    with running_server(config) as server, httpx.Client() as http:
        for _ in range(3):
            response = http.get(server.url + "/health")
            assert response.status_code == 200
        missing = http.post(
            server.url + "/v1/chat/completions",
            content=b"{",
            headers={"Content-Type": "application/json"},
        )
        assert missing.status_code == 400
        assert missing.json()["error"]["code"] == "invalid_json"
        closing = http.get(server.url + "/v1/models", headers={"Connection": "close"})
        assert closing.status_code == 200
        assert closing.json()["object"] == "list"


# -- a client leaving cancels the upstream request ------------------------------------------------


@pytest.mark.parametrize("http", [NexusHttpProtocol, "httptools"], ids=["nexus", "plain-uvicorn"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_client_leaving_drops_the_upstream_request(
    http: type[asyncio.Protocol] | str, stream: bool
) -> None:
    """Nexus's protocol cancels through the scope's Disconnect; another server's, by a watcher."""
    with FakeBackend("a").running() as fake:
        fake.behave(
            Behaviour(delay_between_events=5.0) if stream else Behaviour(delay_before_headers=5.0)
        )
        config = {
            "discovery": {"enabled": False},
            "state": {"backend": "memory"},
            "health_check": {"interval_seconds": 3600},
            "backends": [{"name": "a", "url": fake.url}],
        }
        with running_server(config, http=http) as server:
            body = json.dumps(
                {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
                | ({"stream": True} if stream else {})
            ).encode()
            host, port = server.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as client:
                client.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                deadline = time.monotonic() + 5
                while not fake.inference_requests and time.monotonic() < deadline:
                    time.sleep(0.002)
                assert fake.inference_requests
                if stream:
                    assert client.recv(65536).startswith(b"HTTP/1.1 200")
            left = time.monotonic()
            assert fake.wait_disconnect(timeout=2.0)
            assert fake.disconnects[0] - left < 0.1
            deadline = time.monotonic() + 2
            while any(b.pending for b in server.gateway.registry) and time.monotonic() < deadline:
                time.sleep(0.005)
            assert all(b.pending == 0 for b in server.gateway.registry)
