"""The dashboard without a browser: escaping, origin check, queue bound, series, messages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from nexus_core.config import ServerConfig, validate_config
from nexus_core.gateway import Gateway
from nexus_core.observability import RequestRecord
from nexus_server.dashboard import Dashboard, origin_allowed, render_page
from nexus_server.dashboard.live import CLOSE_FORBIDDEN, CLOSE_TOO_SLOW, Client
from nexus_server.dashboard.series import STEP, Series
from nexus_server.trust import Trust

EVIL = "<img src=x onerror=alert(1)>"
#: The Host rules of a server that also answers to nexus.example.
TRUST = Trust(ServerConfig(allowed_hosts=["nexus.example"]), names=())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gateway() -> Gateway:
    return Gateway(
        validate_config({"discovery": {"enabled": False}, "state": {"backend": "memory"}})
    )


def test_page_escapes_every_value_from_backends_and_clients() -> None:
    backend = {
        "name": EVIL,
        "type": EVIL,
        "zone": EVIL,
        "status": EVIL,
        "last_error": EVIL,
        "models": [{"id": EVIL}],
    }
    history = [{"time": EVIL, "model": EVIL, "backend": EVIL, "status": 500, "error": EVIL}]
    html = render_page({"backends": [backend], "history": history, "series": {EVIL: []}})
    assert "<img" not in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 8
    # An unknown status never becomes a class name.
    assert "status-unknown" in html


def test_page_refreshes_itself_without_javascript() -> None:
    html = render_page({})
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in html


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, b"127.0.0.1:8000", True),
        (b"http://127.0.0.1:8000", b"127.0.0.1:8000", True),
        (b"https://Nexus.example", b"nexus.example", True),
        # DNS rebinding: the page's origin and the Host agree, but the name is not this server.
        (b"http://evil.example:8000", b"evil.example:8000", False),
        (b"http://evil.example", b"127.0.0.1:8000", False),
        (b"http://127.0.0.1:9999", b"127.0.0.1:8000", False),
        (b"null", b"127.0.0.1:8000", False),
        (b"http://127.0.0.1:8000", None, False),
    ],
)
def test_origin_check(origin: bytes | None, host: bytes | None, allowed: bool) -> None:
    headers = []
    if origin is not None:
        headers.append((b"origin", origin))
    if host is not None:
        headers.append((b"host", host))
    assert origin_allowed(headers, TRUST) is allowed


@pytest.mark.anyio
async def test_a_full_queue_marks_the_client_and_never_blocks() -> None:
    client = Client(size=3)
    for index in range(10):
        client.offer(str(index))
    assert client.overflowed
    assert client.queue.qsize() == 1
    assert client.queue.get_nowait() is None


def test_series_points_per_step_with_zeros_where_idle() -> None:
    now = [1000.0]
    series = Series(clock=lambda: now[0])
    for duration in (0.1, 0.2, 0.3):
        series.add("a", duration, failed=False)
    series.add("a", 1.0, failed=True)
    now[0] += STEP * 2
    points = series.points("a", 3)
    # The step in progress (t=1004) is left out.
    assert [p["t"] for p in points] == [998, 1000, 1002]
    assert points[1] == {"t": 1000, "rps": 2.0, "p95_ms": 1000.0, "errors": 1}
    assert points[0] == points[2] | {"t": 998}
    assert points[2] == {"t": 1002, "rps": 0.0, "p95_ms": None, "errors": 0}
    assert series.last_point("a")["t"] == 1002
    series.forget("a")
    assert series.points("a", 1)[0]["rps"] == 0.0


def test_finished_requests_feed_the_series_and_the_clients() -> None:
    dashboard = Dashboard(gateway())
    client = Client()
    dashboard.clients.add(client)
    record = RequestRecord(request_id="r1", model=EVIL, backend="a", status=502, error="upstream")
    dashboard.gateway.monitor.finish(record)
    message = json.loads(client.queue.get_nowait() or "")
    assert message["type"] == "request"
    assert message["request"]["request_id"] == "r1"
    assert message["request"]["model"] == EVIL
    assert dashboard.series._steps["a"][-1].errors == 1


def test_snapshot_shape() -> None:
    snapshot = Dashboard(gateway()).snapshot()
    assert snapshot["type"] == "snapshot"
    assert snapshot["version"] == 1
    assert set(snapshot) >= {"health", "backends", "history", "stats", "series", "step_seconds"}
    json.dumps(snapshot, allow_nan=False)


async def connected(dashboard: Dashboard) -> None:
    """Wait until a client is registered."""
    for _ in range(1000):
        if dashboard.clients:
            return
        await asyncio.sleep(0)
    raise AssertionError("no client connected")


class FakeSocket:
    """ASGI receive/send of one WebSocket client, with a send that can be held."""

    def __init__(self, origin: bytes | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.leave = asyncio.Event()
        self.connected = False
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "path": "/ws",
            "headers": [(b"host", b"127.0.0.1:8000")]
            + ([(b"origin", origin)] if origin is not None else []),
        }

    async def receive(self) -> dict[str, Any]:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        await self.leave.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            await self.release.wait()
        self.sent.append(message)


@pytest.mark.anyio
async def test_another_origin_is_closed_before_accept() -> None:
    dashboard = Dashboard(gateway())
    socket = FakeSocket(origin=b"http://evil.example")
    await dashboard.websocket(socket.scope, socket.receive, socket.send, TRUST)
    assert socket.sent == [{"type": "websocket.close", "code": CLOSE_FORBIDDEN}]
    assert not dashboard.clients


@pytest.mark.anyio
async def test_a_slow_client_is_disconnected_and_unsubscribed() -> None:
    dashboard = Dashboard(gateway(), queue_size=4)
    socket = FakeSocket()
    socket.release.clear()  # the client reads nothing: the snapshot send hangs
    task = asyncio.ensure_future(
        dashboard.websocket(socket.scope, socket.receive, socket.send, TRUST)
    )
    await connected(dashboard)
    for index in range(20):  # never blocks, whatever the client does
        dashboard.broadcast({"type": "request", "request": {"n": index}})
    socket.release.set()
    await asyncio.wait_for(task, 5)
    types = [m["type"] for m in socket.sent]
    assert types == ["websocket.accept", "websocket.send", "websocket.close"]
    assert json.loads(socket.sent[1]["text"])["type"] == "snapshot"
    assert socket.sent[2]["code"] == CLOSE_TOO_SLOW
    assert not dashboard.clients


@pytest.mark.anyio
async def test_a_client_that_leaves_is_unsubscribed() -> None:
    dashboard = Dashboard(gateway())
    socket = FakeSocket(origin=b"http://127.0.0.1:8000")
    task = asyncio.ensure_future(
        dashboard.websocket(socket.scope, socket.receive, socket.send, TRUST)
    )
    await connected(dashboard)
    dashboard.broadcast({"type": "request", "request": {}})
    await asyncio.sleep(0.05)
    socket.leave.set()
    await asyncio.wait_for(task, 5)
    assert not dashboard.clients
    assert [json.loads(m["text"])["type"] for m in socket.sent[1:]] == ["snapshot", "request"]
