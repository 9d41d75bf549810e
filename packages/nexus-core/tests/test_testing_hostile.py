"""The hostile backend of the test kit sends what it says, byte for byte, and answers probes."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from nexus_core.testing import Attack, HostileBackend
from nexus_core.testing.hostile import HTML_PAGE

CHAT = b'{"model":"hostile-model","messages":[{"role":"user","content":"hi"}]%s}'


def raw(backend: HostileBackend, request: bytes, size: int, seconds: float = 2.0) -> bytes:
    """Send ``request`` on a raw socket; what came back once ``size`` bytes (or the time) are in."""
    received = b""
    with socket.create_connection(("127.0.0.1", backend.port), timeout=seconds) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + seconds
        while len(received) < size and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            received += data
    return received


def post(stream: bool = False) -> bytes:
    body = CHAT % (b',"stream":true' if stream else b"")
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def test_it_answers_correctly_until_told_otherwise() -> None:
    with HostileBackend(models=["a", "b"]) as backend, httpx.Client() as client:
        models = client.get(backend.url + "/v1/models").json()
        assert [entry["id"] for entry in models["data"]] == ["a", "b"]
        assert client.get(backend.url + "/health").json() == {"status": "ok"}
        answer = client.post(backend.url + "/v1/chat/completions", content=CHAT % b"")
        assert answer.json()["choices"][0]["message"]["content"] == "Hello from hostile"
        stream = client.post(backend.url + "/v1/chat/completions", content=CHAT % b',"stream":true')
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.text.endswith("data: [DONE]\n\n")
        assert [r.attack for r in backend.requests] == [Attack.NONE] * 4


def test_probes_stay_correct_unless_asked() -> None:
    with HostileBackend(Attack.GARBAGE) as backend, httpx.Client() as client:
        assert client.get(backend.url + "/v1/models").status_code == 200
        backend.probes = True
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(backend.url + "/v1/models")


@pytest.mark.parametrize(
    ("attack", "stream", "starts"),
    [
        (Attack.ENDLESS_BODY, False, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"),
        (Attack.LENGTH_TOO_BIG, False, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"),
        (Attack.GIANT_HEADERS, False, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"),
        (Attack.GIANT_HEADER_VALUE, False, b"HTTP/1.1 200 OK\r\nX-Pad: xxxx"),
        (Attack.GIANT_EVENT, True, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"),
        (Attack.EVENTS_AFTER_DONE, True, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream"),
    ],
)
def test_floods_never_end(attack: Attack, stream: bool, starts: bytes) -> None:
    with HostileBackend(attack) as backend:
        received = raw(backend, post(stream), 2_000_000)
        assert received.startswith(starts)
        assert len(received) >= 2_000_000  # and it would go on
        if attack is Attack.GIANT_HEADERS:
            assert b"\r\n\r\n" not in received  # the headers never end
        if attack is Attack.GIANT_EVENT:
            assert b"\n\n" not in received.partition(b"\r\n\r\n")[2]  # nor does the event
        if attack is Attack.EVENTS_AFTER_DONE:
            done = received.index(b"data: [DONE]\n\n")
            assert received.count(b'"content":"more"', done) > 1000
        assert backend.wait_peer_closed(1, 5.0)  # our socket closed under it


@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        (Attack.HTML_ERROR, b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html"),
        (Attack.HTML_OK, b"HTTP/1.1 200 OK\r\nContent-Type: text/html"),
        (Attack.REDIRECT, b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/steal?key=\x9b2J"),
        (Attack.SWITCHING_PROTOCOLS, b"HTTP/1.1 101 Switching Protocols\r\n"),
        (Attack.GARBAGE, b"\x00\xff\xfeSSH-2.0"),
    ],
)
def test_one_shot_attacks(attack: Attack, expected: bytes) -> None:
    with HostileBackend(attack) as backend:
        received = raw(backend, post(), 10_000, seconds=0.5)
        assert received.startswith(expected)
        if attack in (Attack.HTML_ERROR, Attack.HTML_OK):
            assert received.endswith(HTML_PAGE)


def test_slow_attacks_send_a_byte_at_a_time() -> None:
    with HostileBackend(Attack.DRIP, drip_seconds=0.05) as backend:
        head = raw(backend, post(), 10_000, seconds=0.3)
        body = head.partition(b"\r\n\r\n")[2]
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert len(body) < length  # the answer (of more than 100 bytes) trickles
        assert length > 100
    with HostileBackend(Attack.COMMENTS_ONLY, drip_seconds=0.05) as backend:
        received = raw(backend, post(stream=True), 10_000, seconds=0.4)
        assert received.count(b": keep-alive\n\n") >= 1
        assert b"data:" not in received
    with HostileBackend(Attack.PARTIAL_EVENT, drip_seconds=0.05, opening_event=True) as backend:
        received = raw(backend, post(stream=True), 10_000, seconds=0.4)
        body = received.partition(b"\r\n\r\n")[2]
        assert body.count(b"\n\n") == 1  # the opening event, then one that never ends
        opening = body.split(b"\r\n")[1]
        assert json.loads(opening.removeprefix(b"data: "))["choices"][0]["delta"]["role"]


def test_async_use_and_a_changed_attack() -> None:
    async def scenario() -> tuple[int, int]:
        async with HostileBackend() as backend, httpx.AsyncClient() as client:
            good = await client.post(backend.url + "/v1/chat/completions", content=CHAT % b"")
            backend.attack = Attack.HTML_OK
            bad = await client.post(backend.url + "/v1/chat/completions", content=CHAT % b"")
            return good.status_code, len(bad.content)

    assert asyncio.run(scenario()) == (200, len(HTML_PAGE))
