"""The dashboard without a browser: escaping, origin check, queue bound, series, fragments."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from nexus_core.adapters import BackendStatus, ModelInfo
from nexus_core.config import BackendConfig, ServerConfig, validate_config
from nexus_core.gateway import Gateway
from nexus_core.observability import HISTORY, RequestRecord
from nexus_core.registry import Backend
from nexus_server.dashboard import Dashboard, origin_allowed, render_page
from nexus_server.dashboard.live import CLOSE_FORBIDDEN, CLOSE_TOO_SLOW, Client
from nexus_server.dashboard.render import CARD_MODELS, LIVE_REGIONS, MATRIX_MODELS
from nexus_server.dashboard.series import STEP, Series
from nexus_server.trust import Trust

EVIL = "<img src=x onerror=alert(1)>"
#: The Host rules of a server that also answers to nexus.example.
TRUST = Trust(ServerConfig(allowed_hosts=["nexus.example"]), names=())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gateway(**routing: Any) -> Gateway:
    return Gateway(
        validate_config(
            {"discovery": {"enabled": False}, "state": {"backend": "memory"}, "routing": routing}
        )
    )


def add(gateway: Gateway, name: str, models: list[str], status: str = "healthy") -> Backend:
    """Put a backend serving ``models`` in the gateway's registry, as a probe would."""
    config = BackendConfig(name=name, url="http://127.0.0.1:9")
    backend = Backend(
        name=name,
        config=config,
        adapter=None,  # type: ignore[arg-type]  # never called: nothing here sends a request
        zone=config.zone_for(False),
        is_cloud=False,
    )
    gateway.registry.add(backend)
    gateway.registry.set_models(backend, [ModelInfo(model) for model in models])
    gateway.registry.set_status(backend, BackendStatus(status))
    return backend


#: The fleet of the scale tests: 8 backends, 2,500 models of their own each and 20 that every
#: one of them serves (named to sort first, so the matrix's first rows span every backend).
BACKENDS = 8
OWN = 2_500
SHARED = [f"common-{index:02d}:latest" for index in range(20)]


def own_models(index: int) -> list[str]:
    return [f"model-{index}-{n:05d}" for n in range(OWN)]


@pytest.fixture(scope="module")
def big_fleet() -> Gateway:
    """20,020 distinct models across 8 backends."""
    fleet = gateway()
    for index in range(BACKENDS):
        add(fleet, f"box-{index}", own_models(index) + SHARED)
    return fleet


def test_page_escapes_every_value_from_backends_and_clients() -> None:
    backend = {
        "name": EVIL,
        "type": EVIL,
        "zone": EVIL,
        "status": EVIL,
        "last_error": EVIL,
        "models": [EVIL],
        "model_count": 2,
    }
    history = [{"time": EVIL, "model": EVIL, "backend": EVIL, "status": 500, "error": EVIL}]
    matrix = {"model_count": 2, "rows": [{"model": EVIL, "backends": [EVIL]}]}
    html = render_page(
        {"backends": [backend], "matrix": matrix, "history": history, "series": {EVIL: []}}
    )
    assert "<img" not in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 9
    # The matrix row of the model has the backend's (escaped) column marked.
    assert '<th scope="row">&lt;img src=x onerror=alert(1)&gt;</th><td class="cell status-' in html
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


def fragments_of(client: Client) -> list[dict[str, str]]:
    """The fragments of every message queued for ``client``, oldest first."""
    out = []
    while not client.queue.empty():
        message = json.loads(client.queue.get_nowait() or "")
        assert message["type"] == "fragments"
        out.append(message["fragments"])
    return out


def test_a_finished_request_is_rendered_once_for_every_client_at_the_next_flush() -> None:
    dashboard = Dashboard(gateway())
    dashboard.everything()  # what the clients were sent on connect
    clients = [Client() for _ in range(3)]
    dashboard.clients.update(clients)
    record = RequestRecord(request_id="r1", model=EVIL, backend="a", status=502, error="upstream")
    dashboard.gateway.monitor.finish(record)
    # The listener renders and sends nothing: the request path only marks the history stale.
    assert all(client.queue.empty() for client in clients)
    assert dashboard.series._steps["a"][-1].errors == 1
    dashboard.flush()
    texts = {client.queue.get_nowait() for client in clients}
    assert len(texts) == 1  # one encoded message, the same object for every client
    (message,) = (json.loads(text or "") for text in texts)
    fragments = message["fragments"]
    # The history had no rows: the whole table (with its one row) is sent.
    assert set(fragments) == {"request-count", "history", "widgets"}
    assert fragments["request-count"] == "1"
    assert 'data-request-id="r1"' in fragments["history"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in fragments["history"]
    assert "<img" not in fragments["history"]
    # Nothing changed since: the next flush sends nothing.
    dashboard.flush()
    assert all(client.queue.empty() for client in clients)
    # Two more: only the new rows, to go on top (they flash once).
    for request_id in ("r2", "r3"):
        dashboard.gateway.monitor.finish(RequestRecord(request_id=request_id, status=200))
    dashboard.flush()
    (added,) = fragments_of(clients[0])
    assert set(added) == {"request-count", "history-rows", "widgets"}
    assert added["request-count"] == "3"
    assert re.findall(r'<tr class="([^"]*)" data-request-id="(r\d)"', added["history-rows"]) == [
        ("ok new", "r3"),
        ("ok new", "r2"),
    ]
    # A new client and the page get the whole table, rows not flashing.
    assert 'data-request-id="r1"' in dashboard.page()
    assert " new" not in json.loads(dashboard.everything())["fragments"]["history"]


def test_more_new_requests_than_the_table_keeps_send_the_whole_table() -> None:
    dashboard = Dashboard(gateway())
    monitor = dashboard.gateway.monitor
    monitor.finish(RequestRecord(request_id="first", status=200))
    dashboard.everything()
    client = Client()
    dashboard.clients.add(client)
    for index in range(HISTORY):
        monitor.finish(RequestRecord(request_id=f"r{index}", status=200))
    dashboard.flush()
    (sent,) = fragments_of(client)
    assert "history-rows" not in sent
    assert sent["history"].count("<tr class=") == HISTORY
    assert "first" not in sent["history"]
    monitor.finish(RequestRecord(request_id="last", status=200))
    dashboard.flush()
    (sent,) = fragments_of(client)
    assert sent["history-rows"].count("<tr ") == 1
    assert sent["request-count"] == str(HISTORY)


def test_every_fragment_is_a_live_region_of_the_page_and_the_page_holds_them() -> None:
    fleet = gateway()
    add(fleet, "box", ["m1", EVIL])
    dashboard = Dashboard(fleet)
    message = json.loads(dashboard.everything())
    fragments = message["fragments"]
    cards = [key for key in fragments if key.startswith("card-")]
    assert set(fragments) == set(LIVE_REGIONS)
    assert cards == []  # on connect, the cards are inside "backends"
    html = dashboard.page()
    for key in LIVE_REGIONS:
        assert f'id="{key}"' in html
        assert fragments[key] in html
    # The same text, rendered once: a poll and a new client get the cached message.
    assert dashboard.everything() is dashboard.everything()


def test_a_card_that_changed_is_sent_alone_and_a_new_backend_sends_all_cards() -> None:
    fleet = gateway()
    box = add(fleet, "box", ["m1"])
    add(fleet, "other", ["m2"])
    dashboard = Dashboard(fleet)
    dashboard.everything()
    client = Client()
    dashboard.clients.add(client)
    box.latency_ms = 42.0
    fleet.registry.set_status(box, BackendStatus.UNHEALTHY)
    dashboard.flush()
    (changed,) = fragments_of(client)
    # The matrix's dots and the health pill follow the status; one card's inside, alone.
    assert "backends" not in changed
    (slot,) = [key for key in changed if key.startswith("card-")]
    assert "42 ms" in changed[slot]
    assert "status-unhealthy" in changed[slot]
    assert f'id="{slot}" data-backend="box"' in dashboard.page()
    assert {"health", "matrix"} <= set(changed)
    add(fleet, "third", [EVIL])
    dashboard.flush()
    (added,) = fragments_of(client)
    assert not [key for key in added if key.startswith("card-")]
    assert added["backend-count"] == "3"
    assert added["backends"].count('<article class="card"') == 3
    assert "<li>&lt;img src=x onerror=alert(1)&gt;</li>" in added["backends"]
    assert "<img" not in json.dumps(added)


def test_snapshot_shape() -> None:
    snapshot = Dashboard(gateway()).snapshot()
    assert snapshot["type"] == "snapshot"
    assert snapshot["version"] == 2
    assert set(snapshot) >= {
        "health",
        "backends",
        "matrix",
        "history",
        "stats",
        "series",
        "step_seconds",
    }
    assert snapshot["matrix"] == {"model_count": 0, "rows": []}
    json.dumps(snapshot, allow_nan=False)


def test_the_page_is_the_same_rendered_from_the_snapshot_or_by_the_feed() -> None:
    fleet = gateway()
    add(fleet, "box", [EVIL, "m1"])
    dashboard = Dashboard(fleet)
    fed = dashboard.page()
    from_snapshot = render_page(dashboard.snapshot())
    # The same markup but for the time stamp and the cards' element ids.
    strip = re.compile(r'datetime="[^"]*"|\d\d:\d\d:\d\d UTC|id="card-\d+"')
    assert strip.sub("", fed) == strip.sub("", from_snapshot)


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
        dashboard.gateway.monitor.finish(RequestRecord(request_id=f"r{index}", status=200))
        dashboard.flush()
    socket.release.set()
    await asyncio.wait_for(task, 5)
    types = [m["type"] for m in socket.sent]
    assert types == ["websocket.accept", "websocket.send", "websocket.close"]
    first = json.loads(socket.sent[1]["text"])
    assert set(first["fragments"]) == set(LIVE_REGIONS)
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
    dashboard.gateway.monitor.finish(RequestRecord(request_id="r1", status=200))
    # The feed's own task flushes within FLUSH_SECONDS.
    for _ in range(100):
        if len(socket.sent) > 2:
            break
        await asyncio.sleep(0.05)
    assert dashboard._flusher is not None
    socket.leave.set()
    await asyncio.wait_for(task, 5)
    assert not dashboard.clients
    assert dashboard._flusher is None  # the last client took the feed's task with it
    messages = [json.loads(m["text"]) for m in socket.sent[1:]]
    assert set(messages[0]["fragments"]) == set(LIVE_REGIONS)
    assert 'data-request-id="r1"' in messages[1]["fragments"]["history"]


# -- scale: 20,000 models across backends ----------------------------------------------------


def test_snapshot_with_20000_models_carries_bounded_lists_and_true_counts(
    big_fleet: Gateway,
) -> None:
    dashboard = Dashboard(big_fleet)
    snapshot = dashboard.snapshot()
    assert snapshot["version"] == 2
    for index, backend in enumerate(snapshot["backends"]):
        listed = own_models(index) + SHARED
        assert backend["model_count"] == len(listed) == OWN + len(SHARED)
        assert backend["models"] == sorted(listed)[:CARD_MODELS]
    matrix = snapshot["matrix"]
    assert matrix["model_count"] == BACKENDS * OWN + len(SHARED) == 20_020
    every = sorted({m for i in range(BACKENDS) for m in own_models(i)} | set(SHARED))
    assert [row["model"] for row in matrix["rows"]] == every[:MATRIX_MODELS]
    names = [f"box-{index}" for index in range(BACKENDS)]
    rows = {row["model"]: row["backends"] for row in matrix["rows"]}
    assert rows["common-00:latest"] == names
    assert rows["model-0-00000"] == ["box-0"]
    # Bounded JSON: 20,020 ids would be 300 kB on their own (the charts' points, 300 per
    # backend, are the same with any number of models).
    encoded = json.dumps(snapshot)
    assert "model-0-02499" not in encoded
    assert len(encoded) - len(json.dumps(snapshot["series"])) < 30_000


def test_page_with_20000_models_is_bounded_with_counts_and_more_notes(
    big_fleet: Gateway,
) -> None:
    html = render_page(Dashboard(big_fleet).snapshot())
    # Every card lists its first models and says how many it leaves out.
    assert html.count('<p class="models-title">2,520 models</p>') == BACKENDS
    assert len(re.findall(r'<ul class="models">(?:<li>[^<]*</li>)*</ul>', html)) == BACKENDS
    assert html.count("<li>") == BACKENDS * CARD_MODELS
    assert html.count('<p class="more">and 2,500 more</p>') == BACKENDS
    # The matrix: its first rows, every backend a column, a note with the true total.
    assert html.count('<tr><th scope="row">') == MATRIX_MODELS
    assert html.count('<th scope="col">box-') == BACKENDS
    assert '<span id="model-count" class="count">20,020</span>' in html
    assert f"The first {MATRIX_MODELS} of 20,020 models, by name" in html
    assert '<a href="/v1/models">/v1/models</a>' in html
    # The shared models' rows have a dot in every column, the others in one.
    assert html.count('<td class="cell status-healthy">') == BACKENDS * len(SHARED) + (
        MATRIX_MODELS - len(SHARED)
    )
    assert "model-0-02499" not in html
    # About 90 KiB (7 MB when every card and the matrix listed every model).
    assert len(html.encode()) < 250_000


def test_page_size_does_not_grow_with_the_number_of_models(big_fleet: Gateway) -> None:
    small = gateway()
    for index in range(BACKENDS):
        add(small, f"box-{index}", own_models(index)[:200] + SHARED)
    big_page = render_page(Dashboard(big_fleet).snapshot())
    small_page = render_page(Dashboard(small).snapshot())
    # The same markup but for the counts in the notes ("2,520" against "220", ...).
    assert abs(len(big_page) - len(small_page)) < 100


@pytest.mark.parametrize(("count", "note"), [(CARD_MODELS, None), (CARD_MODELS + 1, "1")])
def test_a_card_says_and_n_more_only_past_its_limit(count: int, note: str | None) -> None:
    fleet = gateway()
    add(fleet, "box", [f"m{n:03d}" for n in range(count)])
    html = render_page(Dashboard(fleet).snapshot())
    assert html.count("<li>") == CARD_MODELS
    assert (f'<p class="more">and {note} more</p>' in html) is (note is not None)
    # Fewer models than matrix rows: all of them, and no note.
    assert html.count('<tr><th scope="row">') == count
    assert "The first" not in html


def test_the_card_view_is_the_backend_snapshot_with_its_first_models(big_fleet: Gateway) -> None:
    dashboard = Dashboard(big_fleet)
    for backend in big_fleet.registry:
        view = dashboard.backend(backend)
        full = backend.snapshot()
        ids = [model["id"] for model in full.pop("models")]
        assert view.pop("models") == sorted(ids)[:CARD_MODELS]
        assert view.pop("model_count") == len(ids)
        assert view.pop("cache_hit_ratio") is None  # no answer said what it cached
        assert view == full


def stepped(dashboard: Dashboard, client: Client) -> Callable[[], dict[str, str]]:
    """The fragments sent in each next step (the series' clock is moved one step)."""
    now = [1_000_000.0]
    dashboard.series.clock = lambda: now[0]
    dashboard.everything()
    dashboard.clients.add(client)

    def next_step() -> dict[str, str]:
        now[0] += STEP
        dashboard.flush()
        sent = fragments_of(client)
        return sent[0] if sent else {}

    return next_step


def test_each_step_sends_only_what_changed_and_the_matrix_only_after_a_change() -> None:
    fleet = gateway()
    boxes = [add(fleet, f"box-{index}", own_models(index) + SHARED) for index in range(3)]
    dashboard = Dashboard(fleet)
    next_step = stepped(dashboard, Client())
    # Idle backends, nothing new: a step renders nothing that differs, so nothing is sent.
    assert next_step() == {}
    # A request: the history, the widgets and its backend's card (the step it ended in is a
    # point of the charts now); then that card alone each step, as its charts move on.
    dashboard.gateway.monitor.finish(RequestRecord(request_id="r", backend="box-1", status=200))
    first = next_step()
    (slot,) = set(first) - {"request-count", "history", "widgets"}
    assert f'id="{slot}" data-backend="box-1"' in dashboard.page()
    assert "<b>0.5</b>" in first[slot]  # req/s peak: one request in a 2 s step
    charts = next_step()
    assert set(charts) == {slot}
    assert len(json.dumps(charts)) < 10_000
    # A probe finds a new model on box-1: its card and the matrix, once.
    fleet.registry.set_models(boxes[1], [ModelInfo(m) for m in [*own_models(1), *SHARED, "aaa"]])
    changed = next_step()
    assert changed["model-count"] == f"{3 * OWN + len(SHARED) + 1:,}"
    assert '<tr><th scope="row">aaa</th>' in changed["matrix"]
    assert "<li>aaa</li>" in changed[slot]
    assert "matrix" not in next_step()
    # A status change: the matrix's dots, the card and the health pill.
    fleet.registry.set_status(boxes[0], BackendStatus.UNHEALTHY)
    after = next_step()
    assert {"matrix", "health"} <= set(after)
    assert "status-unhealthy" in after["matrix"]
    # A removed backend: every card again (one fewer), and the matrix without it.
    fleet.registry.remove("box-2")
    removed = next_step()
    assert removed["backend-count"] == "2"
    assert "box-2" not in json.dumps(removed)
    assert removed["model-count"] == f"{2 * OWN + len(SHARED) + 1:,}"


def test_backend_events_only_mark_the_page_stale() -> None:
    fleet = gateway()
    dashboard = Dashboard(fleet)
    dashboard.everything()
    client = Client()
    dashboard.clients.add(client)
    add(fleet, "box", own_models(0))
    assert client.queue.empty()  # rendered and sent by the next flush, not by the listener
    dashboard.flush()
    (added,) = fragments_of(client)
    assert f'<p class="models-title">{OWN:,} models</p>' in added["backends"]
    assert added["backends"].count("<li>") == CARD_MODELS
    dashboard.series.add("box", 0.1, failed=False)
    fleet.registry.remove("box")
    dashboard.flush()
    (removed,) = fragments_of(client)
    assert "No backends configured" in removed["backends"]
    # Nothing is kept of a removed backend.
    assert dashboard._card_models == {}
    assert dashboard._cards == {}
    assert "box" not in dashboard.series._steps


def test_health_counts_models_as_the_model_list_does() -> None:
    fleet = gateway(aliases={"fast": "m1", "gone": "nowhere", "m2": "m1", "quick": "fast"})
    add(fleet, "a", ["m1", "m2", "shared"])
    add(fleet, "b", ["shared", "m3"])
    add(fleet, "down", ["only-here"], status="unhealthy")
    # m1 m2 m3 shared, and the aliases fast and quick ("m2" is a model already, "gone" leads
    # nowhere, only-here is on an unhealthy backend).
    assert len(fleet.list_models()) == 6
    assert fleet.health_summary()["models"] == 6


def test_controls_and_operations_escape_names_and_know_only_their_states() -> None:
    backend = {"name": "b", "status": "draining", "models": [EVIL], "model_count": 1}
    matrix = {
        "model_count": 3,
        "rows": [
            {"model": EVIL, "backends": ["b"], "states": {"b": "unloaded"}},
            {"model": "m2", "backends": ["b"], "states": {"b": "loaded"}},
            {"model": "m3", "backends": ["b"], "states": {"b": EVIL}},
        ],
    }
    operations = [
        {
            "id": EVIL,
            "kind": "migrate",
            "model": EVIL,
            "backend": "b",
            "target": EVIL,
            "state": EVIL,
            "step": EVIL,
            "progress": 0.5,
            "error": EVIL,
            "created_at": 1764180000.0,
        }
    ]
    html = render_page(
        {"backends": [backend], "matrix": matrix, "operations": operations, "series": {}}
    )
    assert "<img" not in html
    # A draining backend's card offers resume, not drain; the model's button carries its name.
    assert 'formaction="/dashboard/backends/b/resume"' in html
    assert 'formaction="/dashboard/backends/b/drain"' not in html
    assert 'formaction="/dashboard/backends/b/load" name="model" value="&lt;img' in html
    assert 'formaction="/dashboard/backends/b/unload" name="model" value="m2"' in html
    # A state nobody knows is drawn as unknown, with no button and no class of its own.
    assert html.count('formaction="/dashboard/backends/b/') == 4  # resume, remove, load, unload
    assert "model-unknown" in html
    assert 'class="pill status-unknown"' in html


def test_the_operations_panel_follows_the_operations() -> None:
    fleet = gateway()
    dashboard = Dashboard(fleet)
    assert "No operations yet" in dashboard.refresh()["operations"]
    dashboard.flush()
    # An operation that changes state is rendered again at the next flush, and only then.
    from nexus_core.fleet.operations import Operation, OperationKind, OperationState, Origin

    operation = Operation("op_1", OperationKind.LOAD, "m", "b", None, Origin.ADMIN)
    fleet.operations._active[operation.id] = operation
    assert 'data-operation="op_1"' in dashboard.refresh()["operations"]
    assert "pending" in dashboard.refresh()["operations"]
    operation.state = OperationState.SUCCEEDED
    assert "succeeded" in dashboard.refresh()["operations"]
    assert dashboard.snapshot()["operations"][0]["id"] == "op_1"


def test_a_card_shows_the_backends_cache_hits_once_an_answer_said() -> None:
    fleet = gateway()
    box = add(fleet, "box", ["m1"])
    dashboard = Dashboard(fleet)
    dashboard.everything()
    assert "Cache hits" not in dashboard.page()  # nothing said how much was cached yet
    client = Client()
    dashboard.clients.add(client)
    record = RequestRecord(request_id="r", model="m1", served_model="m1", backend=box.name)
    record.begin("chat")
    record.status = 200
    record.prompt_tokens = 400
    record.cached_tokens = 300
    fleet.monitor.finish(record)
    dashboard.flush()
    (changed,) = fragments_of(client)
    (slot,) = [key for key in changed if key.startswith("card-")]
    assert "<dt>Cache hits</dt><dd>75 %</dd>" in changed[slot]
