"""The hot-path clients (h1, aiohttp, httpx) against a real fake backend and a hostile one.

Each behaviour holds for all three: the same answers, errors, timeouts, and the same bounds on
what a backend can make them read (``ResponseLimits``)."""

from __future__ import annotations

import dataclasses
import json
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    ErrorKind,
    ResponseLimits,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.config import BackendConfig
from nexus_core.http import AiohttpTransport, HttpClients, ResponseTooLarge, make_transport
from nexus_core.openai_wire import OpenAIWireAdapter
from nexus_core.testing import (
    Attack,
    Behaviour,
    FakeBackend,
    HostileBackend,
    blackhole_url,
    closed_port_url,
)
from nexus_core.testing.hostile import REDIRECT_TARGET

pytestmark = pytest.mark.anyio
# One TLS context for every client: building one per client costs ~70 ms (certificates).
TLS = ssl.create_default_context()

HEADERS = {"Content-Type": "application/json"}
FAST = Timeouts(connect=1.0, first_byte=1.0, idle=1.0)
#: How soon the fake must see the close of a connection the client gave up: a connection left
#: open instead stays so until the pool's keep-alive expiry (httpx: 5 s, aiohttp: 15 s) or its
#: ``aclose`` (h1), after the test; the margin is for a test process sharing 2 cores with
#: another test worker.
PROMPTLY = 1.0
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
PINNED = {"id": "chatcmpl-pinned", "created": 1700000000}


def body(**fields: object) -> bytes:
    return json.dumps({**CHAT, **fields}).encode()


@pytest.fixture
async def fake(anyio_backend: str) -> AsyncIterator[FakeBackend]:
    async with FakeBackend("a") as fb:
        yield fb


@pytest.fixture(params=["h1", "aiohttp", "httpx"])
async def transport(anyio_backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Every hot-path client must behave the same; h1 is the default."""
    client = make_transport(request.param)
    yield client
    await client.aclose()


def chat_url(fake: FakeBackend) -> str:
    return fake.url + "/v1/chat/completions"


async def post(
    transport: AiohttpTransport,
    fake: FakeBackend,
    *,
    stream: bool = False,
    timeouts: Timeouts = FAST,
    fields: dict[str, object] | None = None,
) -> UpstreamResponse:
    """POST a chat request (with ``"stream": true`` in the body when ``stream``)."""
    payload = body(**(fields or {}), **({"stream": True} if stream else {}))
    return await transport.post(chat_url(fake), payload, HEADERS, stream=stream, timeouts=timeouts)


async def collect(response: UpstreamResponse) -> list[bytes]:
    received: list[bytes] = []
    await read_into(response, received)
    return received


async def read_into(response: UpstreamResponse, received: list[bytes]) -> None:
    """Append each event as it comes (so a test sees what arrived before an error)."""
    assert response.events is not None
    async for event in response.events:
        received.append(event)


# -- non-streaming --------------------------------------------------------------------------


async def test_non_stream_body_is_byte_identical(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    fake.behave(Behaviour(content='Grüße ✓ "q"', extra_response_fields=PINNED))
    async with httpx.AsyncClient(verify=TLS) as http:
        direct = await http.post(chat_url(fake), content=body(), headers=HEADERS)
    response = await post(transport, fake)
    assert response.status == 200
    assert response.content_type.startswith("application/json")
    assert response.body == direct.content
    assert response.events is None
    assert fake.inference_requests[-1].body == body()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, ErrorKind.SERVER_ERROR),
        (502, ErrorKind.SERVER_ERROR),
        (503, ErrorKind.SERVER_ERROR),
        (429, ErrorKind.OVERLOADED),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_retryable_statuses(
    fake: FakeBackend,
    transport: AiohttpTransport,
    status: int,
    kind: ErrorKind,
    stream: bool,
) -> None:
    fake.push(Behaviour(status=status, retry_after=3))
    with pytest.raises(BackendError) as caught:
        await post(transport, fake, stream=stream)
    error = caught.value
    assert (error.kind, error.status, error.retry_after) == (kind, status, 3.0)
    assert error.retryable
    assert json.loads(error.body)["error"]["message"]
    assert error.headers["retry-after"] == "3"


async def test_retry_after_absent_or_fractional(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    fake.push(Behaviour(status=503))
    with pytest.raises(BackendError) as caught:
        await post(transport, fake)
    assert caught.value.retry_after is None
    fake.push(Behaviour(status=429, retry_after=0.5))
    with pytest.raises(BackendError) as caught:
        await post(transport, fake)
    assert caught.value.retry_after == 0.5


async def test_client_error_keeps_status_and_body(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    envelope = {"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}}
    fake.push(Behaviour(status=400, error_body=envelope))
    with pytest.raises(BackendError) as caught:
        await post(transport, fake, stream=True)
    error = caught.value
    assert (error.kind, error.status) == (ErrorKind.CLIENT_ERROR, 400)
    assert not error.retryable
    assert json.loads(error.body) == envelope


async def test_unknown_model_is_a_client_error(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    with pytest.raises(BackendError) as caught:
        await post(transport, fake, fields={"model": "nope"})
    assert (caught.value.kind, caught.value.status) == (ErrorKind.CLIENT_ERROR, 404)


async def test_connection_refused(transport: AiohttpTransport) -> None:
    with pytest.raises(BackendError) as caught:
        await transport.post(
            closed_port_url() + "/v1/chat/completions", body(), HEADERS, stream=False, timeouts=FAST
        )
    assert caught.value.kind is ErrorKind.CONNECT
    assert caught.value.retryable


async def test_connect_timeout(transport: AiohttpTransport) -> None:
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await transport.post(
            blackhole_url() + "/v1/chat/completions",
            body(),
            HEADERS,
            stream=False,
            timeouts=Timeouts(connect=0.1, first_byte=1.0, idle=1.0),
        )
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert "connect" in caught.value.message
    assert time.monotonic() - started < 0.5


async def test_connection_reset_before_any_response(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    # aiohttp's transport retries once on a fresh connection (see the next test): reset both.
    fake.push(Behaviour(reset=True, times=2 if isinstance(transport, AiohttpTransport) else 1))
    with pytest.raises(BackendError) as caught:
        await post(transport, fake)
    assert caught.value.kind is ErrorKind.CONNECT
    # The pool recovers: the next request gets a fresh connection.
    assert (await post(transport, fake)).status == 200


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
async def test_a_dropped_connection_is_retried_once_afresh(fake: FakeBackend, client: str) -> None:
    """A pooled connection the server closed without saying so costs one quiet retry."""
    transport = make_transport(client)
    try:
        assert (await post(transport, fake)).status == 200
        fake.push(Behaviour(reset=True))
        assert (await post(transport, fake)).status == 200
        assert len(fake.inference_requests) == 3
    finally:
        await transport.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_hang_times_out_at_first_byte_and_closes_the_connection(
    fake: FakeBackend, transport: AiohttpTransport, stream: bool
) -> None:
    fake.push(Behaviour(hang=True))
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await post(transport, fake, stream=stream, timeouts=Timeouts(1.0, 0.15, 1.0))
    elapsed = time.monotonic() - started
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert 0.15 <= elapsed < 0.4
    assert await fake.wait_for_disconnect(0.1)


async def test_slow_headers_within_the_first_byte_timeout(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    fake.push(Behaviour(delay_before_headers=0.1))
    assert (await post(transport, fake, timeouts=Timeouts(1.0, 0.5, 1.0))).status == 200


async def test_cancelled_request_closes_the_upstream_connection(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    fake.push(Behaviour(hang=True))
    async with anyio.create_task_group() as group:
        group.start_soon(post, transport, fake)
        with anyio.fail_after(1):
            while not fake.requests:  # noqa: ASYNC110 - recorded by the fake's handler
                await anyio.sleep(0.002)
        group.cancel_scope.cancel()
    cancelled = time.monotonic()
    assert await fake.wait_for_disconnect(PROMPTLY)
    assert fake.disconnects[0] - cancelled < PROMPTLY


async def test_cancelled_while_reading_a_body_closes_the_upstream_connection(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    # A stream answer read whole (stream=False): cancelled half way through the body.
    fake.push(Behaviour(delay_between_events=0.1))
    with anyio.move_on_after(0.15):
        await transport.post(
            chat_url(fake), body(stream=True), HEADERS, stream=False, timeouts=FAST
        )
    cancelled = time.monotonic()
    assert await fake.wait_for_disconnect(PROMPTLY)
    assert fake.disconnects[0] - cancelled < PROMPTLY


# -- streaming ------------------------------------------------------------------------------


async def test_stream_events_are_the_upstream_events(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    fake.behave(Behaviour(extra_response_fields=PINNED))
    async with httpx.AsyncClient(verify=TLS) as http:
        direct = await http.post(chat_url(fake), content=body(stream=True), headers=HEADERS)
    response = await post(transport, fake, stream=True)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert response.body is None
    events = await collect(response)
    assert b"".join(events) == direct.content
    assert all(event.endswith(b"\n\n") and event.count(b"\n\n") == 1 for event in events)
    assert events[-1] == b"data: [DONE]\n\n"
    await response.aclose()


@pytest.mark.parametrize(
    "behaviour",
    [
        Behaviour(split_events=True),
        Behaviour(split_events=True, crlf=True),
        Behaviour(crlf=True),
    ],
    ids=["split", "split-crlf", "crlf"],
)
async def test_stream_framing_variants_give_the_same_events(
    fake: FakeBackend, transport: AiohttpTransport, behaviour: Behaviour
) -> None:
    fake.behave(Behaviour(extra_response_fields=PINNED))
    plain = await collect(await post(transport, fake, stream=True))
    fake.behave(dataclasses.replace(behaviour, extra_response_fields=PINNED))
    assert await collect(await post(transport, fake, stream=True)) == plain


async def test_stream_events_arrive_one_by_one(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    fake.push(Behaviour(delay_between_events=0.05))
    response = await post(transport, fake, stream=True)
    assert response.events is not None
    arrivals = []
    async for event in response.events:
        arrivals.append((time.monotonic(), event))
    finished = time.monotonic()
    assert len(arrivals) == 6
    assert finished - arrivals[0][0] >= 0.2  # the first event did not wait for the rest
    assert arrivals[0][1].startswith(b"data: {")
    assert arrivals[-1][1] == b"data: [DONE]\n\n"


async def test_stream_cut_after_events_raises_after_them(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    fake.push(Behaviour(cut_after_events=3))
    response = await post(transport, fake, stream=True)
    assert response.events is not None
    received: list[bytes] = []
    with pytest.raises(BackendError) as caught:
        await read_into(response, received)
    assert len(received) == 3
    assert caught.value.kind is ErrorKind.CONNECT
    assert caught.value.retryable


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_without_done_after_a_finish_reason_is_complete(
    fake: FakeBackend, transport: AiohttpTransport, include_usage: bool
) -> None:
    fake.push(Behaviour(omit_done=True))
    fields: dict[str, object] = {"stream_options": {"include_usage": include_usage}}
    events = await collect(await post(transport, fake, stream=True, fields=fields))
    assert b"[DONE]" not in b"".join(events)
    assert b'"finish_reason":"stop"' in b"".join(events)


async def test_stream_cut_before_any_finish_reason_without_done_is_an_error(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    fake.push(Behaviour(cut_after_events=1, content=""))
    with pytest.raises(BackendError):
        await collect(await post(transport, fake, stream=True))


async def test_stream_idle_timeout(fake: FakeBackend, transport: AiohttpTransport) -> None:
    fake.push(Behaviour(delay_between_events=0.5))
    response = await post(transport, fake, stream=True, timeouts=Timeouts(1.0, 1.0, 0.1))
    assert response.events is not None
    received: list[bytes] = []
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await read_into(response, received)
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert len(received) == 1
    assert time.monotonic() - started < 0.4
    assert await fake.wait_for_disconnect(0.1)


async def test_closing_mid_stream_makes_the_backend_see_the_disconnect(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    fake.push(Behaviour(delay_between_events=0.2))
    response = await post(transport, fake, stream=True)
    assert response.events is not None
    async for _ in response.events:
        break
    await response.aclose()
    closed = time.monotonic()
    assert await fake.wait_for_disconnect(PROMPTLY)
    assert fake.disconnects[0] - closed < PROMPTLY


async def test_the_pool_reuses_connections_after_complete_answers(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    for _ in range(3):
        assert (await post(transport, fake)).status == 200
        await collect(await post(transport, fake, stream=True))
    assert fake.disconnects == []


# -- a hostile backend: every read is bounded, every oddity a clean failure ----------------------

LIMITS = ResponseLimits(body=256 * 1024, headers=8 * 1024, event=64 * 1024)
HOSTILE_TIMEOUTS = Timeouts(connect=1.0, first_byte=0.6, idle=0.3)


@pytest.fixture
async def hostile(anyio_backend: str) -> AsyncIterator[HostileBackend]:
    async with HostileBackend(drip_seconds=0.05) as backend:
        yield backend


@pytest.fixture(params=["h1", "aiohttp", "httpx"])
async def bounded(anyio_backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Every hot-path client, with small limits."""
    client = make_transport(request.param, limits=LIMITS)
    yield client
    await client.aclose()


async def hostile_post(
    transport: Any, hostile: HostileBackend, *, stream: bool = False
) -> UpstreamResponse:
    payload = body(**({"stream": True} if stream else {}))
    return await transport.post(
        hostile.url + "/v1/chat/completions",
        payload,
        HEADERS,
        stream=stream,
        timeouts=HOSTILE_TIMEOUTS,
    )


async def failure(transport: Any, hostile: HostileBackend, *, stream: bool) -> BackendError:
    """The error a request (and, for a stream, reading it) ends with."""
    try:
        response = await hostile_post(transport, hostile, stream=stream)
        await collect(response)
    except BackendError as error:
        return error
    pytest.fail("the request succeeded")


@pytest.mark.parametrize(
    ("attack", "setting"),
    [
        (Attack.ENDLESS_BODY, "server.max_response_body_bytes"),
        (Attack.LENGTH_TOO_BIG, "server.max_response_body_bytes"),
        (Attack.GIANT_HEADERS, "server.max_response_header_bytes"),
        (Attack.GIANT_HEADER_VALUE, "server.max_response_header_bytes"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_past_a_limit_fails_and_drops_the_connection(
    hostile: HostileBackend, bounded: Any, attack: Attack, setting: str, stream: bool
) -> None:
    hostile.attack = attack
    error = await failure(bounded, hostile, stream=stream)
    assert error.kind is ErrorKind.TOO_LARGE
    assert error.retryable  # another backend may be tried
    assert setting in error.message
    assert await anyio.to_thread.run_sync(hostile.wait_peer_closed, 1, 2.0)
    # The attack was cut short: what it sent stops growing once the connection is dropped.
    sent = hostile.bytes_sent
    await anyio.sleep(0.1)
    assert hostile.bytes_sent == sent


async def test_a_giant_stream_event_fails_the_stream(hostile: HostileBackend, bounded: Any) -> None:
    hostile.attack = Attack.GIANT_EVENT
    hostile.opening_event = True
    response = await hostile_post(bounded, hostile, stream=True)
    received: list[bytes] = []
    with pytest.raises(BackendError) as caught:
        await read_into(response, received)
    assert caught.value.kind is ErrorKind.TOO_LARGE
    assert "server.max_stream_event_bytes" in caught.value.message
    assert len(received) == 1  # the opening event came through; the giant one never did
    await response.aclose()
    assert await anyio.to_thread.run_sync(hostile.wait_peer_closed, 1, 2.0)


async def test_a_giant_first_event_fails_before_any_event(
    hostile: HostileBackend, bounded: Any
) -> None:
    hostile.attack = Attack.GIANT_EVENT
    error = await failure(bounded, hostile, stream=True)
    assert error.kind is ErrorKind.TOO_LARGE


@pytest.mark.parametrize("attack", [Attack.COMMENTS_ONLY, Attack.PARTIAL_EVENT])
async def test_bytes_that_are_no_event_do_not_keep_a_stream_alive(
    hostile: HostileBackend, bounded: Any, attack: Attack
) -> None:
    """Idle is measured between events: comments or an event that never ends do not count."""
    hostile.attack = attack
    hostile.opening_event = True
    response = await hostile_post(bounded, hostile, stream=True)
    received: list[bytes] = []
    with pytest.raises(BackendError) as caught:
        await read_into(response, received)
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert "stream stalled: no event for 0.3 s" in caught.value.message
    assert len(received) == 1
    await response.aclose()
    assert await anyio.to_thread.run_sync(hostile.wait_peer_closed, 1, 2.0)
    assert len(hostile.requests) == 1


@pytest.mark.parametrize("attack", [Attack.COMMENTS_ONLY, Attack.PARTIAL_EVENT])
async def test_a_first_event_that_never_comes_is_the_first_byte_timeout(
    hostile: HostileBackend, bounded: Any, attack: Attack
) -> None:
    hostile.attack = attack
    error = await failure(bounded, hostile, stream=True)
    assert error.kind is ErrorKind.TIMEOUT
    assert "no first event within 0.6 s" in error.message


@pytest.mark.parametrize("attack", [Attack.DRIP, Attack.LENGTH_SHORT])
async def test_a_drip_fed_or_short_body_times_out(
    hostile: HostileBackend, bounded: Any, attack: Attack
) -> None:
    hostile.attack = attack
    error = await failure(bounded, hostile, stream=False)
    assert error.kind is ErrorKind.TIMEOUT
    assert await anyio.to_thread.run_sync(hostile.wait_peer_closed, 1, 2.0)


async def test_nothing_after_done_is_read(hostile: HostileBackend, bounded: Any) -> None:
    hostile.attack = Attack.EVENTS_AFTER_DONE
    response = await hostile_post(bounded, hostile, stream=True)
    events = await collect(response)
    assert events[-1] == b"data: [DONE]\n\n"
    assert b'"content":"more"' not in b"".join(events)
    await response.aclose()
    # The endless tail is not read: the connection is let go.
    assert await anyio.to_thread.run_sync(hostile.wait_peer_closed, 1, 2.0)


async def test_a_redirect_is_a_failure_never_followed(
    hostile: HostileBackend, bounded: Any
) -> None:
    hostile.attack = Attack.REDIRECT
    hostile.location = "http://127.0.0.1:1/elsewhere"
    for stream in (False, True):
        error = await failure(bounded, hostile, stream=stream)
        assert (error.kind, error.status) == (ErrorKind.REDIRECT, 302)
        assert error.retryable
        assert "'http://127.0.0.1:1/elsewhere'" in error.message
        assert "does not follow redirects" in error.message
    # The default location carries a terminal escape (an 8-bit CSI): it is not in the message.
    hostile.location = REDIRECT_TARGET
    error = await failure(bounded, hostile, stream=False)
    assert error.kind is ErrorKind.REDIRECT
    assert "'http://127.0.0.1:1/steal?key= 2J'" in error.message
    assert len(hostile.requests) == 3  # nothing else was asked, of anyone


async def test_an_html_error_page_is_a_client_error_with_its_body(
    hostile: HostileBackend, bounded: Any
) -> None:
    hostile.attack = Attack.HTML_ERROR
    error = await failure(bounded, hostile, stream=False)
    assert (error.kind, error.status) == (ErrorKind.CLIENT_ERROR, 400)
    assert error.body.startswith(b"<!doctype html>")
    assert error.headers["content-type"].startswith("text/html")


async def test_an_html_answer_comes_back_with_its_type(
    hostile: HostileBackend, bounded: Any
) -> None:
    """The transport hands it over; failover refuses a whole answer that is not JSON."""
    hostile.attack = Attack.HTML_OK
    response = await hostile_post(bounded, hostile, stream=True)
    assert response.content_type.startswith("text/html")
    assert response.events is None


@pytest.mark.parametrize("attack", [Attack.SWITCHING_PROTOCOLS, Attack.GARBAGE])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_101_or_garbage_is_malformed_in_one_clean_error(
    hostile: HostileBackend,
    bounded: Any,
    attack: Attack,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hostile.attack = attack
    error = await failure(bounded, hostile, stream=stream)
    assert error.kind is ErrorKind.MALFORMED
    assert not error.retryable
    assert await anyio.to_thread.run_sync(hostile.wait_peer_closed, 1, 2.0)
    # No traceback from the event loop ("protocol.data_received() call failed" and the like).
    assert [r for r in caplog.records if r.name == "asyncio"] == []


async def test_limits_at_their_value_are_fine(fake: FakeBackend) -> None:
    """A normal answer is far below the limits; limits are what the transport is made with."""
    for name in ("h1", "aiohttp", "httpx"):
        transport = make_transport(name, limits=LIMITS)
        try:
            assert (await post(transport, fake)).status == 200
            assert (await collect(await post(transport, fake, stream=True)))[-1] == (
                b"data: [DONE]\n\n"
            )
        finally:
            await transport.aclose()


# -- the probe client: each answer bounded in size and in total time ---------------------------


@pytest.fixture
async def probe_clients(anyio_backend: str) -> AsyncIterator[HttpClients]:
    clients = HttpClients(limits=LIMITS, probe_deadline=0.5)
    yield clients
    await clients.aclose()


async def test_a_drip_fed_probe_answer_hits_the_probe_deadline(
    hostile: HostileBackend, probe_clients: HttpClients
) -> None:
    """httpx's timeouts are per read: a byte every 50 ms never trips them, the deadline does."""
    hostile.attack = Attack.DRIP
    hostile.probes = True
    with pytest.raises(httpx.ReadTimeout) as caught:
        await probe_clients.probe.get(hostile.url + "/v1/models")
    assert "0.5 s" in str(caught.value)
    assert await anyio.to_thread.run_sync(hostile.wait_peer_closed, 1, 2.0)


@pytest.mark.parametrize(
    ("attack", "setting"),
    [
        (Attack.ENDLESS_BODY, "server.max_response_body_bytes"),
        (Attack.LENGTH_TOO_BIG, "server.max_response_body_bytes"),
        (Attack.GIANT_HEADER_VALUE, "server.max_response_header_bytes"),
    ],
)
async def test_a_probe_answer_past_a_limit_is_refused(
    hostile: HostileBackend, probe_clients: HttpClients, attack: Attack, setting: str
) -> None:
    hostile.attack = attack
    hostile.probes = True
    with pytest.raises(httpx.HTTPError) as caught:
        await probe_clients.probe.get(hostile.url + "/v1/models")
    if attack is Attack.GIANT_HEADER_VALUE:
        # h11 refuses a head past 100 KiB while parsing (before Nexus's limit can be checked).
        assert isinstance(caught.value, httpx.RemoteProtocolError)
    else:
        assert isinstance(caught.value, ResponseTooLarge)
        assert setting in str(caught.value)
    assert await anyio.to_thread.run_sync(hostile.wait_peer_closed, 1, 2.0)


async def test_the_probe_client_does_not_follow_redirects(
    hostile: HostileBackend, probe_clients: HttpClients
) -> None:
    hostile.attack = Attack.REDIRECT
    hostile.probes = True
    hostile.location = "http://127.0.0.1:1/elsewhere"
    response = await probe_clients.probe.get(hostile.url + "/v1/models")
    assert response.status_code == 302
    # A Location with control characters is refused by httpx itself: a clean HTTP error.
    hostile.location = "http://127.0.0.1:1/\x1b[2J"
    with pytest.raises(httpx.RemoteProtocolError):
        await probe_clients.probe.get(hostile.url + "/v1/models")
    assert len(hostile.requests) == 2


async def test_a_generic_backend_flooding_its_probe_is_unhealthy_and_says_why(
    hostile: HostileBackend, probe_clients: HttpClients
) -> None:
    adapter = OpenAIWireAdapter(
        BackendConfig(name="hostile", url=hostile.url, type="generic"), probe_clients
    )
    assert (await adapter.probe()).status is BackendStatus.HEALTHY
    hostile.attack = Attack.ENDLESS_BODY
    hostile.probes = True
    result = await adapter.probe()
    assert result.status is BackendStatus.UNHEALTHY
    assert result.detail is not None
    assert "server.max_response_body_bytes" in result.detail
