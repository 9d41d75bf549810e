"""The Anthropic adapter read by the ``openai`` SDK, and through a real Nexus (moved from
packages/nexus-backend-anthropic/tests, whose tests need only that package and nexusgw-core)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from nexus_backend_anthropic import AnthropicAdapter
from nexus_core.adapters import Endpoint
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.sse import event_data
from nexus_core.testing import Behaviour, FakeAnthropic
from nexus_core.testing.anthropic import AnthropicBehaviour
from nexus_core.testing.contract import FAST
from nexus_server.testing import running_server

KEY_ENV = "NEXUS_TEST_ANTHROPIC_KEY"
KEY = "sk-ant-configured"
MODEL = "claude-haiku-4-5-20251001"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
WEATHER_CALL = {
    "id": "toolu_01A09q90qw90lq917835lq9",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


# -- the adapter's answers, read by the openai SDK's models and accumulators ---------------------


@pytest.fixture
async def fake(anyio_backend: str) -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture
async def adapter(fake: FakeAnthropic) -> AsyncIterator[AnthropicAdapter]:
    clients = HttpClients()
    config = BackendConfig(name="claude", url=fake.url, type="anthropic", api_key_env=KEY_ENV)
    yield AnthropicAdapter(config, clients)
    await clients.aclose()


def chat(**extra: Any) -> bytes:
    return json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **extra}
    ).encode()


async def stream_chunks(adapter: AnthropicAdapter, body: bytes) -> list[Any]:
    response = await adapter.send(Endpoint.CHAT, body, stream=True, timeouts=FAST)
    assert response.events is not None
    try:
        events = [event async for event in response.events]
    finally:
        await response.aclose()
    assert events[-1] == b"data: [DONE]\n\n"
    return [json.loads(event_data(event)) for event in events[:-1]]


@pytest.mark.anyio
async def test_a_whole_answer_is_an_sdk_chat_completion(adapter: AnthropicAdapter) -> None:
    response = await adapter.send(Endpoint.CHAT, chat(), stream=False, timeouts=FAST)
    assert response.body is not None
    completion = ChatCompletion.model_validate(json.loads(response.body))
    assert completion.choices[0].message.content == "Hello from anthropic"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3


@pytest.mark.anyio
@pytest.mark.parametrize("include_usage", [True, False])
async def test_a_stream_is_accumulated_by_the_openai_sdk(
    adapter: AnthropicAdapter, fake: FakeAnthropic, include_usage: bool
) -> None:
    fake.push(Behaviour(split_events=True))
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = await stream_chunks(adapter, chat(stream=True, **options))
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    assert final.choices[0].message.content == "Hello from anthropic"
    assert final.choices[0].finish_reason == "stop"
    assert (final.usage is not None) is include_usage


@pytest.mark.anyio
async def test_streamed_tool_calls_accumulate_in_the_openai_sdk(
    adapter: AnthropicAdapter, fake: FakeAnthropic
) -> None:
    fake.push(Behaviour(content="Let me check.", tool_calls=[WEATHER_CALL]))
    chunks = await stream_chunks(adapter, chat(stream=True, tools=[WEATHER_TOOL]))
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content == "Let me check."
    [call] = message.tool_calls or []
    assert call.id == WEATHER_CALL["id"]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


# -- end to end: the openai SDK -> Nexus -> fake Anthropic ----------------------------------------


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY).running() as server:
        yield server


def nexus_config(url: str) -> dict[str, Any]:
    return {
        "server": {"first_byte_timeout_seconds": 2.0, "request_timeout_seconds": 10.0},
        "discovery": {"enabled": False},
        "state": {"backend": "memory"},
        "health_check": {"interval_seconds": 3600},
        "backends": [{"name": "claude", "url": url, "type": "anthropic", "api_key_env": KEY_ENV}],
    }


def test_nexus_serves_openai_clients_from_anthropic(fake_anthropic: FakeAnthropic) -> None:
    with running_server(nexus_config(fake_anthropic.url)) as nexus:
        client = openai.OpenAI(base_url=nexus.base_url, api_key="client-key", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}]
        )
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        fake_anthropic.push(Behaviour(tool_calls=[WEATHER_CALL]))
        with client.chat.completions.stream(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
        ) as tool_stream:
            tool_answer = tool_stream.get_final_completion()
        listed = {model.id: model for model in client.models.list()}
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from anthropic"
    assert raw.headers["x-nexus-backend"] == "claude"
    assert raw.headers["x-nexus-backend-type"] == "cloud"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from anthropic"
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    [call] = tool_answer.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert tool_answer.choices[0].finish_reason == "tool_calls"
    assert MODEL in listed
    inference = fake_anthropic.inference_requests
    assert len(inference) == 3
    # The client's Authorization never reaches Anthropic: only the configured key does.
    assert {r.headers.get("x-api-key") for r in fake_anthropic.requests} == {KEY}
    assert all("authorization" not in r.headers for r in fake_anthropic.requests)


def test_a_broken_anthropic_stream_ends_with_an_error_not_done(
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.push(AnthropicBehaviour(stream_error="overloaded_error", stream_error_after=4))
    with running_server(nexus_config(fake_anthropic.url)) as nexus:
        client = openai.OpenAI(base_url=nexus.base_url, api_key="client-key", max_retries=0)
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        with pytest.raises(openai.APIError, match="overloaded_error"):
            for _ in stream:
                pass
