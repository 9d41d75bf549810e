"""The Anthropic and Ollama front doors, driven by the real ``anthropic`` and ``ollama`` clients.

Nexus fronts fake OpenAI-wire backends (and a fake Ollama); routing, failover and headers apply
exactly as on ``/v1/chat/completions``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import pytest

from nexus_core.testing import Behaviour, FakeBackend, FakeOllama
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
OPENAI_CALL = [
    {
        "id": "call_w1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
]


@pytest.fixture
def server(fakes: list[FakeBackend]) -> Iterator[RunningServer]:
    a, b, _ = fakes
    with running_server(gateway_config(a, b, strategy="priority_only")) as running:
        yield running


def claude(server: RunningServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="sk-ant-client", max_retries=0)


# -- Anthropic Messages ---------------------------------------------------------------------------


def test_messages_create_is_translated_both_ways(
    server: RunningServer, fakes: list[FakeBackend]
) -> None:
    a = fakes[0]
    raw = claude(server).messages.with_raw_response.create(
        model="fake-model",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hi"}],
        stop_sequences=["END"],
        extra_body={"temperature": 0.2},
    )
    message = raw.parse()
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "fake-model"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello from a"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    assert raw.headers["x-nexus-backend"] == "a"
    sent = a.inference_requests[-1].json
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert sent["max_tokens"] == 64
    assert sent["stop"] == ["END"]
    assert sent["temperature"] == 0.2


def test_messages_stream_emits_anthropics_event_sequence(server: RunningServer) -> None:
    with claude(server).messages.stream(
        model="fake-model", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start"
    assert "content_block_start" in events
    assert "content_block_delta" in events
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].text == "Hello from a"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    assert final.id.startswith("msg_")


def test_raw_stream_has_one_message_id_and_a_ping(server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        server.url + "/v1/messages",
        json={
            "model": "fake-model",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "Hi"}],
        },
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-nexus-backend"] == "a"
        body = response.read().decode()
    names = [line[7:] for line in body.splitlines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"]
    assert names[-1] == "message_stop"
    assert body.count('"type":"message_start"') == 1


def test_tool_use_round_trip(server: RunningServer, fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.push(Behaviour(tool_calls=OPENAI_CALL, times=1))
    client = claude(server)
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model="fake-model", max_tokens=64, tools=[WEATHER_TOOL], messages=[question]
    )
    assert first.stop_reason == "tool_use"
    tool_use = next(block for block in first.content if block.type == "tool_use")
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"city": "Paris"}
    assert tool_use.id == "call_w1"
    sent = a.inference_requests[-1].json
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    second = client.messages.create(
        model="fake-model",
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "18C"}],
            },
        ],
    )
    assert second.content[0].text == "Hello from a"  # type: ignore[union-attr]
    history = a.inference_requests[-1].json["messages"]
    assert history[1]["role"] == "assistant"
    assert history[1]["tool_calls"][0]["id"] == "call_w1"
    assert json.loads(history[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert history[2] == {"role": "tool", "tool_call_id": "call_w1", "content": "18C"}


def test_streamed_tool_use_arrives_as_input_json_deltas(
    server: RunningServer, fakes: list[FakeBackend]
) -> None:
    fakes[0].push(Behaviour(tool_calls=OPENAI_CALL, times=1))
    with claude(server).messages.stream(
        model="fake-model",
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather?"}],
    ) as stream:
        deltas = [
            event.delta.type  # type: ignore[union-attr]
            for event in stream
            if event.type == "content_block_delta"
        ]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    assert final.stop_reason == "tool_use"
    block = final.content[-1]
    assert block.type == "tool_use"
    assert block.input == {"city": "Paris"}


def test_errors_use_anthropics_shape_and_sdk_classes(server: RunningServer) -> None:
    client = claude(server)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(
            model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    body = missing.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "no-such-model" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="fake-model",
            max_tokens=8,
            messages=[{"role": "robot", "content": "Hi"}],  # type: ignore[typeddict-item]
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    response = httpx.post(
        server.url + "/v1/messages",
        content=b"{not json",
        headers={"x-api-key": "k", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"


def test_a_stream_that_breaks_raises_in_the_sdk(
    server: RunningServer, fakes: list[FakeBackend]
) -> None:
    fakes[0].behave(Behaviour(cut_after_events=2))
    with (
        pytest.raises(anthropic.APIStatusError, match="broke"),
        claude(server).messages.stream(
            model="fake-model", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        for _ in stream:
            pass


def test_failover_applies_to_the_messages_door(
    server: RunningServer, fakes: list[FakeBackend]
) -> None:
    fakes[0].behave(Behaviour(status=503))
    raw = claude(server).messages.with_raw_response.create(
        model="fake-model", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
    )
    assert raw.parse().content[0].text == "Hello from b"  # type: ignore[union-attr]
    assert raw.headers["x-nexus-route-reason"] == "failover"


def test_count_tokens(server: RunningServer) -> None:
    count = claude(server).messages.count_tokens(
        model="fake-model",
        system="You are terse.",
        messages=[{"role": "user", "content": "Hello there, how are you today?"}],
    )
    assert 5 <= count.input_tokens <= 40


# -- Ollama ---------------------------------------------------------------------------------------


def llama(server: RunningServer) -> ollama.Client:
    return ollama.Client(host=server.url)


def test_ollama_chat_whole_and_streamed(server: RunningServer, fakes: list[FakeBackend]) -> None:
    client = llama(server)
    answer = client.chat(
        model="fake-model",
        messages=[{"role": "user", "content": "Hi"}],
        stream=False,
        options={"temperature": 0.1, "num_predict": 20, "seed": 7},
    )
    assert answer.message.content == "Hello from a"
    assert answer.done is True
    assert answer.done_reason == "stop"
    assert (answer.eval_count or 0) > 0
    sent = fakes[0].inference_requests[-1].json
    assert sent["temperature"] == 0.1
    assert sent["max_tokens"] == 20
    assert sent["seed"] == 7
    parts = list(
        client.chat(model="fake-model", messages=[{"role": "user", "content": "Hi"}], stream=True)
    )
    assert "".join(p.message.content or "" for p in parts) == "Hello from a"
    assert parts[-1].done is True
    assert all(not p.done for p in parts[:-1])


def test_ollama_generate_and_json_format(server: RunningServer, fakes: list[FakeBackend]) -> None:
    client = llama(server)
    answer = client.generate(
        model="fake-model", prompt="Say hi", system="Be brief", stream=False, format="json"
    )
    assert answer.response == "Hello from a"
    sent = fakes[0].inference_requests[-1].json
    assert sent["messages"][0] == {"role": "system", "content": "Be brief"}
    assert sent["response_format"] == {"type": "json_object"}
    streamed = list(client.generate(model="fake-model", prompt="Say hi", stream=True))
    assert "".join(p.response for p in streamed) == "Hello from a"
    assert streamed[-1].done is True
    loaded = client.generate(model="fake-model", prompt="")
    assert loaded.done_reason == "load"


def test_ollama_embed_list_show_ps_version(server: RunningServer) -> None:
    client = llama(server)
    embedded = client.embed(model="fake-model", input=["one", "two"])
    assert len(embedded.embeddings) == 2
    assert len(embedded.embeddings[0]) > 0
    legacy = client.embeddings(model="fake-model", prompt="one")
    assert len(legacy.embedding) > 0
    listed = client.list()
    assert [m.model for m in listed.models] == ["fake-model"]
    shown = client.show("fake-model")
    assert shown.capabilities is not None
    assert "completion" in shown.capabilities
    assert client.ps().models is not None
    version = httpx.get(server.url + "/api/version").json()
    assert version["version"]


def test_ollama_errors_are_ollama_errors(server: RunningServer) -> None:
    client = llama(server)
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.status_code == 404
    assert "no-such-model" in missing.value.error
    with pytest.raises(ollama.ResponseError) as unknown:
        client.show("no-such-model")
    assert unknown.value.status_code == 404


def test_ollama_stream_break_raises_in_the_client(
    server: RunningServer, fakes: list[FakeBackend]
) -> None:
    fakes[0].behave(Behaviour(cut_after_events=2))
    with pytest.raises(ollama.ResponseError, match="broke"):
        list(
            llama(server).chat(
                model="fake-model", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
        )


def test_ollama_door_in_front_of_an_ollama_backend() -> None:
    box = FakeOllama("box", models=["llama3.2:latest"])
    with box.running():
        config = gateway_config({"name": "box", "url": box.url, "type": "ollama"})
        with running_server(config) as server:
            client = llama(server)
            answer = client.chat(
                model="llama3.2", messages=[{"role": "user", "content": "Hi"}], stream=False
            )
            assert answer.message.content
            assert [m.model for m in client.list().models] == ["llama3.2:latest"]
