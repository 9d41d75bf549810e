"""The fake OpenAI-wire backend, observed over real HTTP the way a client sees it."""

from __future__ import annotations

import base64
import itertools
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from nexus_core.testing import (
    Behaviour,
    FakeBackend,
    FakeLlamaCpp,
    blackhole_url,
    closed_port_url,
    free_port,
)

pytestmark = pytest.mark.anyio
# One TLS context for every client: building one per client costs ~70 ms (certificates).
TLS = ssl.create_default_context()

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "say hi"}]}
STREAM = {**CHAT, "stream": True}
PINNED = {"id": "chatcmpl-pinned", "created": 1700000000}


@pytest.fixture
async def fake(anyio_backend: str) -> AsyncIterator[FakeBackend]:
    async with FakeBackend("alpha", ["fake-model", {"id": "big", "max_model_len": 32768}]) as fb:
        yield fb


@pytest.fixture
async def client(fake: FakeBackend) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=TLS, base_url=fake.url, timeout=2.0) as http:
        yield http


def payloads(raw: bytes) -> list[str]:
    """The ``data`` of each SSE event in a body framed with LF line ends."""
    events = [block for block in raw.split(b"\n\n") if block]
    return [block.removeprefix(b"data: ").decode() for block in events]


def chunks_of(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(data) for data in payloads(raw) if data != "[DONE]"]


# -- endpoints and shapes -------------------------------------------------------------------


async def test_models_list_has_the_openai_shape_and_passes_extra_keys(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    first, second = body["data"]
    assert first == {
        "id": "fake-model",
        "object": "model",
        "created": first["created"],
        "owned_by": "alpha",
    }
    assert isinstance(first["created"], int)
    assert second["id"] == "big"
    assert second["max_model_len"] == 32768
    assert second["object"] == "model"


async def test_one_model_by_id(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/models/big")).json()["max_model_len"] == 32768
    missing = await client.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_models_can_change_at_run_time(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    fake.models.append("late")
    ids = [card["id"] for card in (await client.get("/v1/models")).json()["data"]]
    assert ids == ["fake-model", "big", "late"]
    assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "late"})).is_success


async def test_health_and_loading(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    ok = await client.get("/health")
    assert (ok.status_code, ok.json()) == (200, {"status": "ok"})
    fake.loading = True
    for response in (
        await client.get("/health"),
        await client.get("/v1/models"),
        await client.post("/v1/chat/completions", json=CHAT),
    ):
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "unavailable_error"


async def test_chat_completion(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "big"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "big"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hello from alpha"
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_chat_stream_frames_role_content_finish_then_done(
    client: httpx.AsyncClient,
) -> None:
    async with client.stream("POST", "/v1/chat/completions", json=STREAM) as response:
        assert response.headers["content-type"] == "text/event-stream"
        raw = await response.aread()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert payloads(raw)[-1] == "[DONE]"
    chunks = chunks_of(raw)
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["model"] == "fake-model" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [chunk["choices"][0]["delta"].get("content") for chunk in chunks[1:-1]]
    assert len(pieces) >= 2
    assert "".join(pieces) == "Hello from alpha"
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all("usage" not in chunk for chunk in chunks)


async def test_include_usage_adds_a_usage_chunk_with_no_choices(
    client: httpx.AsyncClient,
) -> None:
    body = {**STREAM, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body)
    chunks = chunks_of(response.content)
    *others, last = chunks
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] > 0
    assert all(chunk["usage"] is None for chunk in others)
    assert others[-1]["choices"][0]["finish_reason"] == "stop"


TOOL_CALLS = [
    {
        "id": "call_weather",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"C"}'},
    },
    {"id": "call_time", "type": "function", "function": {"name": "now", "arguments": "{}"}},
]


async def test_tool_calls_non_stream(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    fake.behave(Behaviour(tool_calls=TOOL_CALLS))
    choice = (await client.post("/v1/chat/completions", json=CHAT)).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == TOOL_CALLS


async def test_finish_reason_can_be_set_whole_and_streamed(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    fake.behave(Behaviour(finish_reason="length"))
    choice = (await client.post("/v1/chat/completions", json=CHAT)).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "Hello from alpha"
    chunks = chunks_of((await client.post("/v1/chat/completions", json=STREAM)).content)
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert reasons[-1] == "length"
    assert set(reasons[:-1]) == {None}


async def test_tool_calls_stream_reassemble_to_the_same_calls(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    fake.behave(Behaviour(tool_calls=TOOL_CALLS))
    chunks = chunks_of((await client.post("/v1/chat/completions", json=STREAM)).content)
    calls: dict[int, dict[str, Any]] = {}
    fragments = 0
    for chunk in chunks:
        for delta_call in chunk["choices"][0]["delta"].get("tool_calls", []):
            call = calls.setdefault(
                delta_call["index"],
                {"id": None, "type": None, "function": {"name": None, "arguments": ""}},
            )
            call["id"] = delta_call.get("id", call["id"])
            call["type"] = delta_call.get("type", call["type"])
            function = delta_call.get("function", {})
            call["function"]["name"] = function.get("name", call["function"]["name"])
            call["function"]["arguments"] += function.get("arguments", "")
            fragments += 1
    assert [calls[index] for index in sorted(calls)] == TOOL_CALLS
    assert fragments > len(TOOL_CALLS)  # arguments arrive in pieces, as OpenAI sends them
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_legacy_completions(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    body = {"model": "fake-model", "prompt": "Once upon a time"}
    completion = (await client.post("/v1/completions", json=body)).json()
    assert completion["object"] == "text_completion"
    assert completion["choices"][0]["text"] == "Hello from alpha"
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["prompt_tokens"] == 4

    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    raw = (await client.post("/v1/completions", json=streamed)).content
    assert raw.endswith(b"data: [DONE]\n\n")
    chunks = chunks_of(raw)
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    text = "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"])
    assert text == "Hello from alpha"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 4


async def test_embeddings_are_deterministic_vectors(client: httpx.AsyncClient) -> None:
    one = (await client.post("/v1/embeddings", json={"model": "fake-model", "input": "a b"})).json()
    assert one["object"] == "list"
    assert one["model"] == "fake-model"
    (item,) = one["data"]
    assert item["object"] == "embedding"
    assert item["index"] == 0
    assert len(item["embedding"]) == 8
    assert all(isinstance(value, float) for value in item["embedding"])
    assert one["usage"] == {"prompt_tokens": 2, "total_tokens": 2}

    many = await client.post("/v1/embeddings", json={"model": "fake-model", "input": ["x", "a b"]})
    data = many.json()["data"]
    assert [entry["index"] for entry in data] == [0, 1]
    assert data[1]["embedding"] == item["embedding"]
    assert data[0]["embedding"] != item["embedding"]


async def test_embeddings_base64_as_the_openai_sdk_asks(client: httpx.AsyncClient) -> None:
    plain = await client.post("/v1/embeddings", json={"model": "fake-model", "input": "hi"})
    packed = await client.post(
        "/v1/embeddings", json={"model": "fake-model", "input": "hi", "encoding_format": "base64"}
    )
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    floats = struct.unpack("<8f", raw)
    assert floats == pytest.approx(plain.json()["data"][0]["embedding"], abs=1e-6)


async def test_embeddings_dim_is_configurable() -> None:
    async with (
        FakeBackend(embeddings_dim=3) as fb,
        httpx.AsyncClient(verify=TLS, base_url=fb.url) as http,
    ):
        body = {"model": "fake-model", "input": "x"}
        response = await http.post("/v1/embeddings", json=body)
        assert len(response.json()["data"][0]["embedding"]) == 3


async def test_request_errors_use_the_openai_envelope(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["code"] == "model_not_found"
    assert "gpt-9" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}

    garbage = await client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert garbage.status_code == 400
    assert garbage.json()["error"]["type"] == "invalid_request_error"

    no_model = await client.post("/v1/chat/completions", json={"messages": []})
    assert no_model.status_code == 400
    assert no_model.json()["error"]["param"] == "model"

    lost = await client.get("/v1/nowhere")
    assert lost.status_code == 404
    assert "error" in lost.json()


async def test_api_key_is_required_when_set() -> None:
    async with (
        FakeBackend(api_key="sk-test") as fb,
        httpx.AsyncClient(verify=TLS, base_url=fb.url) as http,
    ):
        denied = await http.post("/v1/chat/completions", json=CHAT)
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "invalid_api_key"
        assert (await http.get("/health")).status_code == 200
        headers = {"Authorization": "Bearer sk-test"}
        assert (await http.get("/v1/models", headers=headers)).status_code == 200


# -- recording ------------------------------------------------------------------------------


async def test_requests_are_recorded(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    await client.get("/health")
    await client.post("/v1/chat/completions?x=1", json=CHAT, headers={"X-Trace": "t1"})
    health, chat = fake.requests
    assert (health.method, health.path, health.body) == ("GET", "/health", b"")
    assert (chat.method, chat.path) == ("POST", "/v1/chat/completions")
    assert chat.headers["x-trace"] == "t1"
    assert chat.query == {"x": "1"}
    assert chat.json == CHAT
    assert chat.received_at <= time.monotonic()
    assert fake.inference_requests == [chat]


async def test_reset_forgets_everything(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    fake.behave(Behaviour(status=500))
    fake.push(Behaviour(status=429))
    fake.loading = True
    await client.get("/health")
    fake.reset()
    assert fake.requests == []
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


# -- misbehaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_error_status_with_default_envelope_and_retry_after(
    fake: FakeBackend, client: httpx.AsyncClient, status: int
) -> None:
    fake.behave(Behaviour(status=status, retry_after=2.5))
    response = await client.post("/v1/chat/completions", json=STREAM)
    assert response.status_code == status
    assert response.headers["retry-after"] == "2.5"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_custom_error_body_is_sent_as_given(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    body = {"error": {"message": "bad temperature", "type": "BadRequestError", "code": 400}}
    fake.behave(Behaviour(status=400, error_body=body))
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert (response.status_code, response.json()) == (400, body)
    assert "retry-after" not in response.headers


async def test_pushed_behaviour_applies_times_then_reverts(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    fake.behave(Behaviour(content="default answer"))
    fake.push(Behaviour(status=503, times=2))
    fake.push(Behaviour(content="third"))
    statuses = []
    contents = []
    for _ in range(5):
        response = await client.post("/v1/chat/completions", json=CHAT)
        statuses.append(response.status_code)
        if response.is_success:
            contents.append(response.json()["choices"][0]["message"]["content"])
    assert statuses == [503, 503, 200, 200, 200]
    assert contents == ["third", "default answer", "default answer"]


async def test_behaviour_with_times_given_at_construction() -> None:
    async with (
        FakeBackend(behaviour=Behaviour(status=500, times=1)) as fb,
        httpx.AsyncClient(verify=TLS, base_url=fb.url) as http,
    ):
        first = await http.post("/v1/chat/completions", json=CHAT)
        second = await http.post("/v1/chat/completions", json=CHAT)
        assert (first.status_code, second.status_code) == (500, 200)


async def test_behaviours_spare_probes_unless_asked(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    fake.behave(Behaviour(status=500))
    fake.push(Behaviour(status=503))
    assert (await client.get("/v1/models")).status_code == 200
    assert (await client.get("/health")).status_code == 200
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 503
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 500

    fake.behave(Behaviour(status=500, probes=True))
    assert (await client.get("/v1/models")).status_code == 500
    assert (await client.get("/health")).status_code == 500


async def test_lifecycle_behaviours_apply_to_the_lifecycle_paths_only() -> None:
    async with (
        FakeLlamaCpp(models=["alpha"], router=True) as fake,
        httpx.AsyncClient(base_url=fake.url, trust_env=False) as client,
    ):
        chat = {**CHAT, "model": "alpha"}
        fake.push(Behaviour(status=500, lifecycle=True, times=2))
        # Not inference, not a probe: the chat and /v1/models are answered as usual.
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
        assert (await client.get("/v1/models")).status_code == 200
        assert (await client.get("/models")).status_code == 500
        load = await client.post("/models/load", json={"model": "alpha"})
        assert load.status_code == 500
        assert (await client.get("/models")).status_code == 200  # both turns used


async def test_delay_before_headers(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    fake.push(Behaviour(delay_before_headers=0.15))
    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.15


async def test_delay_between_events(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    fake.push(Behaviour(delay_between_events=0.05))
    arrivals: list[float] = []
    async with client.stream("POST", "/v1/chat/completions", json=STREAM) as response:
        buffer = b""
        async for data in response.aiter_raw():
            buffer += data
            while b"\n\n" in buffer:
                _, buffer = buffer.split(b"\n\n", 1)
                arrivals.append(time.monotonic())
    assert len(arrivals) == 6  # role, 3 content, finish, [DONE]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.03


async def test_reset_closes_the_connection_without_a_response(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    fake.push(Behaviour(reset=True))
    with pytest.raises(httpx.TransportError):
        await client.post("/v1/chat/completions", json=CHAT)
    assert len(fake.inference_requests) == 1
    assert fake.disconnects == []  # the fake hung up, not the client
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_hang_never_answers_and_notes_the_client_leaving(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    fake.push(Behaviour(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/chat/completions", json=CHAT, timeout=0.1)
    gave_up = time.monotonic()
    assert await fake.wait_for_disconnect(1.0)
    assert fake.disconnects[0] - gave_up < 0.1


async def test_cut_after_events_drops_the_connection_without_done(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    fake.push(Behaviour(cut_after_events=3))
    received = bytearray()

    async def read_all() -> None:
        async with client.stream("POST", "/v1/chat/completions", json=STREAM) as response:
            async for data in response.aiter_raw():
                received.extend(data)

    with pytest.raises(httpx.RemoteProtocolError):
        await read_all()
    assert len(payloads(bytes(received))) == 3
    assert b"[DONE]" not in received
    assert fake.disconnects == []


async def test_malformed_json_body_and_event(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    fake.push(Behaviour(malformed=True))
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()

    fake.push(Behaviour(malformed=True))
    data = payloads((await client.post("/v1/chat/completions", json=STREAM)).content)
    assert data[-1] == "[DONE]"
    broken = []
    for item in data[:-1]:
        try:
            json.loads(item)
        except json.JSONDecodeError:
            broken.append(item)
    assert len(broken) == 1


async def test_omit_done_ends_cleanly_after_the_finish_chunk(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    fake.push(Behaviour(omit_done=True))
    raw = (await client.post("/v1/chat/completions", json=STREAM)).content
    assert b"[DONE]" not in raw
    assert chunks_of(raw)[-1]["choices"][0]["finish_reason"] == "stop"


async def test_split_events_cross_event_boundaries_in_separate_writes(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    fake.behave(Behaviour(extra_response_fields=PINNED))
    whole = (await client.post("/v1/chat/completions", json=STREAM)).content
    fake.behave(Behaviour(split_events=True, extra_response_fields=PINNED))
    pieces = []
    async with client.stream("POST", "/v1/chat/completions", json=STREAM) as response:
        async for data in response.aiter_raw():
            pieces.append(data)
    assert b"".join(pieces) == whole
    assert len(pieces) > len(payloads(whole))
    assert any(piece.endswith(b"}\n") for piece in pieces)  # cut between the two line ends


async def test_crlf_line_ends(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    fake.push(Behaviour(crlf=True))
    raw = (await client.post("/v1/chat/completions", json=STREAM)).content
    assert raw.endswith(b"data: [DONE]\r\n\r\n")
    assert raw.count(b"\n") == 2 * raw.count(b"\r\n\r\n") == raw.count(b"\r\n")


async def test_content_and_extra_fields(fake: FakeBackend, client: httpx.AsyncClient) -> None:
    extra = {"timings": {"predicted_ms": 1.5}, "x_vendor": [1, 2]}
    fake.behave(Behaviour(content='Zürich, 東京 and "quotes"', extra_response_fields=extra))
    body = (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert body["choices"][0]["message"]["content"] == 'Zürich, 東京 and "quotes"'
    assert body["timings"] == extra["timings"]
    assert body["x_vendor"] == [1, 2]
    chunks = chunks_of((await client.post("/v1/chat/completions", json=STREAM)).content)
    assert all(chunk["x_vendor"] == [1, 2] for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == 'Zürich, 東京 and "quotes"'


async def test_client_closing_a_stream_is_recorded_as_a_disconnect(
    fake: FakeBackend, client: httpx.AsyncClient
) -> None:
    fake.push(Behaviour(delay_between_events=0.2))
    async with client.stream("POST", "/v1/chat/completions", json=STREAM) as response:
        async for _ in response.aiter_raw():
            break
    closed = time.monotonic()
    assert await fake.wait_for_disconnect(1.0)
    assert fake.disconnects[0] - closed < 0.1


# -- life cycle and helpers -----------------------------------------------------------------


async def test_stop_refuses_connections_and_start_comes_back_on_the_same_port() -> None:
    fb = FakeBackend()
    await fb.start()
    url = fb.url
    async with httpx.AsyncClient(verify=TLS) as http:
        assert (await http.get(url + "/health")).status_code == 200
        await fb.stop()
        with pytest.raises(httpx.ConnectError):
            await http.get(url + "/health")
        await fb.start()
        try:
            assert fb.url == url
            assert (await http.get(url + "/health")).status_code == 200
        finally:
            await fb.stop()


async def test_stop_ends_hanging_requests_without_counting_disconnects() -> None:
    async with httpx.AsyncClient(verify=TLS) as http:
        fb = FakeBackend(behaviour=Behaviour(hang=True))
        await fb.start()
        async with anyio.create_task_group() as group:

            async def call() -> None:
                with pytest.raises(httpx.TransportError):
                    await http.post(fb.url + "/v1/chat/completions", json=CHAT)

            group.start_soon(call)
            with anyio.fail_after(1):
                while not fb.requests:  # noqa: ASYNC110 - the fake records from its own handler
                    await anyio.sleep(0.005)
            started = time.monotonic()
            await fb.stop()
            assert time.monotonic() - started < 0.5
        assert fb.disconnects == []


def test_thread_mode_serves_sync_clients() -> None:
    with FakeBackend("threaded").running() as fb, httpx.Client(verify=TLS, base_url=fb.url) as http:
        response = http.post("/v1/chat/completions", json=CHAT)
        assert response.json()["choices"][0]["message"]["content"] == "Hello from threaded"
        fb.push(Behaviour(hang=True))
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=CHAT, timeout=0.1)
        assert fb.wait_disconnect(1.0)
        assert not fb.wait_disconnect(0.01, count=2)
        fb.stop()
        with pytest.raises(httpx.ConnectError):
            http.get("/health")
        fb.start()
        assert http.get("/health").status_code == 200


def test_leaving_thread_mode_ends_hanging_requests() -> None:
    outcome: list[BaseException] = []

    def call(url: str) -> None:
        try:
            httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=5, verify=TLS)
        except httpx.TransportError as exc:
            outcome.append(exc)

    with FakeBackend(behaviour=Behaviour(hang=True)).running() as fb:
        caller = threading.Thread(target=call, args=(fb.url,), daemon=True)
        caller.start()
        deadline = time.monotonic() + 2
        while not fb.requests and time.monotonic() < deadline:
            time.sleep(0.005)
        assert fb.requests
        leaving = time.monotonic()
    assert time.monotonic() - leaving < 0.5
    caller.join(timeout=2)
    assert len(outcome) == 1
    assert fb.disconnects == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(fb.url + "/health", verify=TLS)


async def test_thread_mode_from_an_async_test() -> None:
    with FakeBackend().running() as fb:
        async with httpx.AsyncClient(verify=TLS, base_url=fb.url) as http:
            fb.push(Behaviour(delay_between_events=0.2))
            async with http.stream("POST", "/v1/chat/completions", json=STREAM) as response:
                async for _ in response.aiter_raw():
                    break
            assert await fb.wait_for_disconnect(1.0)
            await fb.stop()  # awaiting is allowed in thread mode too
            with pytest.raises(httpx.ConnectError):
                await http.get("/health")


def test_closed_port_url_refuses_connections() -> None:
    url = closed_port_url()
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/v1/models", timeout=1.0, verify=TLS)


def test_blackhole_url_hangs_on_connect() -> None:
    started = time.monotonic()
    with pytest.raises(httpx.ConnectTimeout):
        httpx.get(blackhole_url() + "/v1/models", timeout=0.1, verify=TLS)
    assert time.monotonic() - started < 0.5


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_fixed_port() -> None:
    port = free_port()
    async with FakeBackend(port=port) as fb, httpx.AsyncClient(verify=TLS) as http:
        assert fb.url == f"http://127.0.0.1:{port}"
        assert (await http.get(fb.url + "/health")).status_code == 200


# -- the real OpenAI SDK reads the fake as it reads OpenAI ----------------------------------


async def test_the_openai_sdk_understands_the_fake(fake: FakeBackend) -> None:
    import openai

    async with openai.AsyncOpenAI(
        base_url=fake.url + "/v1", api_key="unused", max_retries=0
    ) as sdk:
        assert [model.id async for model in sdk.models.list()] == ["fake-model", "big"]

        reply = await sdk.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "Hello from alpha"

        stream = await sdk.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello from alpha"
        assert chunks[-1].usage is not None

        fake.push(Behaviour(tool_calls=TOOL_CALLS))
        called = await sdk.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "weather?"}]
        )
        calls = called.choices[0].message.tool_calls or []
        assert [call.model_dump() for call in calls] == TOOL_CALLS

        embedded = await sdk.embeddings.create(model="fake-model", input=["a b", "c"])
        assert [len(item.embedding) for item in embedded.data] == [8, 8]

        completion = await sdk.completions.create(model="fake-model", prompt="x")
        assert completion.choices[0].text == "Hello from alpha"

        with pytest.raises(openai.NotFoundError):
            await sdk.chat.completions.create(model="nope", messages=[])

        fake.push(Behaviour(cut_after_events=2))
        cut = await sdk.chat.completions.create(model="fake-model", messages=[], stream=True)
        received = []

        async def read_all() -> None:
            async for chunk in cut:
                received.append(chunk)

        with pytest.raises(openai.APIError):
            await read_all()
        assert len(received) == 2
