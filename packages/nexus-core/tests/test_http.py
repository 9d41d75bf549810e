"""The hot-path clients (aiohttp, and httpx for comparison) against a real fake backend."""

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

from nexus_core.adapters import BackendError, ErrorKind, Timeouts, UpstreamResponse
from nexus_core.http import AiohttpTransport, make_transport
from nexus_core.testing import Behaviour, FakeBackend, blackhole_url, closed_port_url

pytestmark = pytest.mark.anyio
# One TLS context for every client: building one per client costs ~70 ms (certificates).
TLS = ssl.create_default_context()

HEADERS = {"Content-Type": "application/json"}
FAST = Timeouts(connect=1.0, first_byte=1.0, idle=1.0)
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
    assert await fake.wait_for_disconnect(0.5)
    assert fake.disconnects[0] - cancelled < 0.1


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
    assert await fake.wait_for_disconnect(0.5)
    assert fake.disconnects[0] - cancelled < 0.1


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
    assert await fake.wait_for_disconnect(0.5)
    assert fake.disconnects[0] - closed < 0.1


async def test_the_pool_reuses_connections_after_complete_answers(
    fake: FakeBackend, transport: AiohttpTransport
) -> None:
    for _ in range(3):
        assert (await post(transport, fake)).status == 200
        await collect(await post(transport, fake, stream=True))
    assert fake.disconnects == []
