"""``FakeAnthropic`` driven by the real ``anthropic`` SDK, which proves the fake faithful."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest

from nexus_core.testing import Behaviour, FakeAnthropic
from nexus_core.testing.anthropic import AnthropicBehaviour

pytestmark = pytest.mark.anyio

KEY = "sk-ant-fake"
MODEL = "claude-haiku-4-5-20251001"


@pytest.fixture
async def fake(anyio_backend: str) -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=fake.url, api_key=KEY, max_retries=0)
    yield sdk
    await sdk.close()


HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]


async def test_create_answers_a_message(
    client: anthropic.AsyncAnthropic, fake: FakeAnthropic
) -> None:
    message = await client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
    assert message.id.startswith("msg_")
    assert message.type == "message"
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from anthropic"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens == 3
    [request] = fake.inference_requests
    # The SDK 2.x sends its key as a bearer token, which the API takes as well as x-api-key.
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["anthropic-version"]  # the SDK's own API version


async def test_max_tokens_and_stop_sequences_end_the_answer(
    client: anthropic.AsyncAnthropic,
) -> None:
    short = await client.messages.create(model=MODEL, max_tokens=2, messages=HELLO)
    assert short.stop_reason == "max_tokens"
    assert short.content[0].type == "text"
    assert short.content[0].text == "Hello from"
    stopped = await client.messages.create(
        model=MODEL, max_tokens=64, messages=HELLO, stop_sequences=[" from"]
    )
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", " from")


async def test_stream_is_accumulated_by_the_sdk(
    client: anthropic.AsyncAnthropic, fake: FakeAnthropic
) -> None:
    fake.push(Behaviour(split_events=True, crlf=True))
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == "Hello from anthropic"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3
    assert final.usage.input_tokens > 0


async def test_raw_stream_has_the_documented_events(
    client: anthropic.AsyncAnthropic,
) -> None:
    stream = await client.messages.create(model=MODEL, max_tokens=64, messages=HELLO, stream=True)
    types = [event.type async for event in stream]
    assert types[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]


async def test_tool_use_streamed_and_whole(
    client: anthropic.AsyncAnthropic, fake: FakeAnthropic
) -> None:
    calls = [{"name": "get_weather", "input": {"city": "Paris", "unit": "celsius"}}]
    tools: list[anthropic.types.ToolParam] = [
        {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
    ]
    fake.push(Behaviour(tool_calls=calls, content="Let me look."))
    async with client.messages.stream(
        model=MODEL, max_tokens=64, messages=HELLO, tools=tools
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    text, tool = final.content
    assert text.type == "text"
    assert text.text == "Let me look."
    assert tool.type == "tool_use"
    assert tool.id.startswith("toolu_")
    assert (tool.name, tool.input) == ("get_weather", {"city": "Paris", "unit": "celsius"})

    fake.push(Behaviour(tool_calls=calls))
    whole = await client.messages.create(model=MODEL, max_tokens=64, messages=HELLO, tools=tools)
    [block] = whole.content
    assert block.type == "tool_use"
    # The result goes back; a tool_result without its tool_use is refused, as the API does.
    history: list[anthropic.types.MessageParam] = [
        *HELLO,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True)]},  # type: ignore[list-item]
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "18"}],
        },
    ]
    answer = await client.messages.create(model=MODEL, max_tokens=64, messages=history)
    assert answer.stop_reason == "end_turn"
    with pytest.raises(anthropic.BadRequestError, match="tool_use_id"):
        await client.messages.create(model=MODEL, max_tokens=64, messages=[history[0], history[2]])


async def test_models_are_paged_as_the_sdk_expects(fake: FakeAnthropic) -> None:
    fake.models = [f"claude-test-{n}" for n in range(5)]
    fake.page_limit = 2
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key=KEY, max_retries=0) as sdk:
        ids = [model.id async for model in sdk.models.list(limit=2)]
        first = await sdk.models.list(limit=2)
    assert ids == [f"claude-test-{n}" for n in range(5)]
    assert first.has_more is True
    assert (first.first_id, first.last_id) == ("claude-test-0", "claude-test-1")
    assert first.data[0].type == "model"
    assert first.data[0].display_name == "Claude Test 0"
    assert [r.query.get("after_id") for r in fake.requests] == [
        None,
        "claude-test-1",
        "claude-test-3",
        None,
    ]


async def test_errors_are_the_sdk_exceptions(fake: FakeAnthropic) -> None:
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as auth:
            await bad.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert auth.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": auth.value.body["request_id"],  # type: ignore[index]
    }
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key=KEY, max_retries=0) as sdk:
        fake.push(Behaviour(status=429, retry_after=7))
        with pytest.raises(anthropic.RateLimitError) as limited:
            await sdk.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert limited.value.response.headers["retry-after"] == "7"
        fake.push(Behaviour(status=529))
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            await sdk.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert overloaded.value.status_code == 529
        assert overloaded.value.type == "overloaded_error"  # type: ignore[attr-defined]
        with pytest.raises(anthropic.NotFoundError):
            await sdk.messages.create(model="claude-none", max_tokens=8, messages=HELLO)
        fake.push(AnthropicBehaviour(stream_error="overloaded_error", stream_error_after=3))
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            await read_stream(sdk)
    async with httpx.AsyncClient() as plain:
        no_version = await plain.post(
            fake.url + "/v1/messages", headers={"x-api-key": KEY}, json={"model": MODEL}
        )
        no_key = await plain.get(
            fake.url + "/v1/models", headers={"anthropic-version": "2023-06-01"}
        )
    assert no_version.status_code == 400
    assert no_version.json()["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }
    assert no_key.status_code == 401
    assert no_key.json()["error"]["message"] == "x-api-key header is required"


async def read_stream(sdk: anthropic.AsyncAnthropic) -> None:
    async with sdk.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as stream:
        async for _ in stream:
            pass
