"""The exo adapter against a fake exo: the contract, cards and instances, SSE comments, errors."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from nexus_backend_exo import ExoAdapter
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    ModelInfo,
    Timeouts,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.sse import event_data
from nexus_core.testing import (
    Behaviour,
    FakeBackend,
    FakeExo,
    FakeLMStudio,
    FakeLocalAI,
    FakeOllama,
    FakeOpenAI,
)
from nexus_core.testing.contract import FAST, AdapterContract

pytestmark = pytest.mark.anyio

LLAMA = "mlx-community/Llama-3.2-1B-Instruct-4bit"
QWEN_VL = "mlx-community/Qwen2.5-VL-7B-Instruct-4bit"
CUSTOM = "someone/custom-model"
FLUX = "exolabs/FLUX.1-schnell"
IDLE = "mlx-community/DeepSeek-V3.1-4bit"
CARDS: list[dict[str, Any]] = [
    {"id": LLAMA, "context_length": 131072, "capabilities": ["text"]},
    {"id": QWEN_VL, "context_length": 32768, "capabilities": ["text", "vision"]},
    # A custom card: exo fills context_length with 0 and capabilities with [].
    {"id": CUSTOM, "context_length": 0, "capabilities": [], "is_custom": True},
    {"id": FLUX, "capabilities": ["image_gen"], "tasks": ["TextToImage"]},
    {"id": IDLE, "capabilities": ["text", "thinking"], "running": False},
]


class TestExoContract(AdapterContract):
    adapter_class = ExoAdapter
    fake_class = FakeExo


def exo(url: str, clients: HttpClients) -> ExoAdapter:
    return ExoAdapter(BackendConfig(name="exo", url=url, type="exo"), clients)


def chat(model: str, **extra: Any) -> bytes:
    payload = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}
    return json.dumps(payload).encode()


async def stream_events(adapter: ExoAdapter, body: bytes, timeouts: Timeouts = FAST) -> list[bytes]:
    response = await adapter.send(Endpoint.CHAT, body, stream=True, timeouts=timeouts)
    assert response.events is not None
    try:
        return [event async for event in response.events]
    finally:
        await response.aclose()


async def test_probe_lists_text_models_with_a_running_instance(clients: HttpClients) -> None:
    async with FakeExo("exo", CARDS) as fake:
        result = await exo(fake.url, clients).probe()
    assert result.status is BackendStatus.HEALTHY
    assert result.models == (
        ModelInfo(id=LLAMA, context_length=131072, vision=False, embeddings=False, owned_by="exo"),
        ModelInfo(id=QWEN_VL, context_length=32768, vision=True, embeddings=False, owned_by="exo"),
        # context_length 0 and no capabilities: unknown, not zero and not "no vision".
        ModelInfo(id=CUSTOM, embeddings=False, owned_by="exo"),
    )


async def test_instances_come_and_go_between_probes(clients: HttpClients) -> None:
    async with FakeExo("exo", CARDS) as fake:
        adapter = exo(fake.url, clients)
        fake.place(IDLE)
        fake.delete_instance(LLAMA)
        ids = [m.id for m in (await adapter.probe()).models]
    assert IDLE in ids
    assert LLAMA not in ids


async def test_comment_lines_are_dropped_and_do_not_keep_a_stalled_stream_alive(
    clients: HttpClients,
) -> None:
    """The idle timeout is between events: exo's keep-alive comments do not reset it."""
    async with FakeExo("exo", CARDS) as fake:
        fake.keepalive_interval = 0.05
        fake.behave(Behaviour(delay_between_events=0.3))
        # Idle timeout longer than the pause between tokens: the stream is whole.
        timeouts = Timeouts(connect=2.0, first_byte=5.0, idle=1.0)
        events = await stream_events(exo(fake.url, clients), chat(LLAMA, stream=True), timeouts)
        # Shorter than the pause: comments keep coming every 50 ms, the stream is cut anyway.
        stalled = Timeouts(connect=2.0, first_byte=5.0, idle=0.2)
        with pytest.raises(BackendError) as caught:
            await stream_events(exo(fake.url, clients), chat(LLAMA, stream=True), stalled)
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert "no event for 0.2 s" in caught.value.message
    assert events
    assert all(event.startswith(b"data: ") and b"\n:" not in event for event in events)
    datas = [event_data(event) for event in events]
    assert datas[-1] == b"[DONE]"
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in datas[:-1])
    assert text == "Hello from exo"


async def test_stream_chunks_say_chunk_and_usage_rides_on_the_finish_chunk(
    clients: HttpClients,
) -> None:
    async with FakeExo("exo", CARDS) as fake:
        events = await stream_events(exo(fake.url, clients), chat(LLAMA, stream=True))
        async with httpx.AsyncClient() as client:
            raw = await client.post(
                fake.url + "/v1/chat/completions", content=chat(LLAMA, stream=True)
            )
    # What exo itself sends: comments, "object": "chat.completion" in every chunk.
    assert raw.text.startswith(": keep-alive\n\n: prefill_progress {")
    assert ": generation_stats {" in raw.text
    assert '"object":"chat.completion",' in raw.text
    chunks = [json.loads(event_data(event)) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    *middle, last = chunks
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 3
    assert all("usage" not in chunk for chunk in middle)


async def test_a_mid_stream_error_is_passed_on_as_exo_sends_it(clients: HttpClients) -> None:
    async with FakeExo("exo", CARDS) as fake:
        fake.stream_error = "Metal ran out of memory"
        events = await stream_events(exo(fake.url, clients), chat(LLAMA, stream=True))
    datas = [event_data(event) for event in events]
    assert json.loads(datas[-2]) == {
        "error": {"message": "Metal ran out of memory", "type": "InternalServerError", "code": 500}
    }
    assert datas[-1] == b"[DONE]"


async def test_no_instance_is_retryable(clients: HttpClients) -> None:
    async with FakeExo("exo", CARDS) as fake:
        with pytest.raises(BackendError) as info:
            await exo(fake.url, clients).send(
                Endpoint.CHAT, chat(IDLE), stream=False, timeouts=FAST
            )
    assert info.value.kind is ErrorKind.SERVER_ERROR
    assert info.value.retryable
    assert info.value.status == 404
    assert json.loads(info.value.body) == {
        "error": {
            "message": f"No instance found for model {IDLE}",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


async def test_error_bodies_become_openai_envelopes(clients: HttpClients) -> None:
    async with FakeExo("exo", CARDS) as fake:
        fake.push(Behaviour(status=400))
        with pytest.raises(BackendError) as info:
            await exo(fake.url, clients).send(
                Endpoint.CHAT, chat(LLAMA), stream=False, timeouts=FAST
            )
    assert info.value.kind is ErrorKind.CLIENT_ERROR
    assert json.loads(info.value.body)["error"] == {
        "message": "Bad Request",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_exo_serves_no_embeddings(clients: HttpClients) -> None:
    async with FakeExo("exo", CARDS) as fake:
        with pytest.raises(BackendError) as info:
            await exo(fake.url, clients).send(
                Endpoint.EMBEDDINGS,
                json.dumps({"model": LLAMA, "input": "x"}).encode(),
                stream=False,
                timeouts=FAST,
            )
    assert info.value.status == 404
    assert json.loads(info.value.body)["error"]["message"] == "Not Found"


def test_a_url_without_the_api_port_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nexus.backend.exo"):
        for name, url in (("mac", "http://mac-studio.local"), ("ok", "http://mac:52415")):
            ExoAdapter(BackendConfig(name=name, url=url, type="exo"), HttpClients())
    assert [record.getMessage() for record in caplog.records] == [
        "backend mac: exo listens on port 52415 by default, but http://mac-studio.local names "
        "no port"
    ]


@pytest.mark.parametrize(
    "fake_class",
    [FakeBackend, FakeLMStudio, FakeLocalAI, FakeOllama, FakeOpenAI],
    ids=lambda c: c.__name__,
)
async def test_detect_claims_no_other_server(
    fake_class: type[FakeBackend], clients: HttpClients
) -> None:
    async with fake_class("other", ["m"]) as fake:
        assert not await ExoAdapter.detect(fake.url, clients, api_key="sk-x")
