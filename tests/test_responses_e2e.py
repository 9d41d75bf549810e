"""The OpenAI Responses door (``/v1/responses``), driven by the real ``openai`` SDK against a real
Nexus in front of fake OpenAI-wire backends: translation both ways, streaming with the SDK's own
accumulator, failover, keys, headers, history and metrics."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.responses import ResponsesEndpoint
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
WEATHER_CALL = [
    {
        "id": "call_w1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
]
# A 1x1 PNG.
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000105e2f4a10000000049454e44ae426082"
    )
).decode()


@pytest.fixture
def server(fakes: list[FakeBackend]) -> Iterator[RunningServer]:
    a, b, _ = fakes
    with running_server(gateway_config(a, b, strategy="priority_only")) as running:
        yield running


def client(server: RunningServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def test_create_with_text_and_instructions(server: RunningServer, fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    raw = client(server).responses.with_raw_response.create(
        model="fake-model",
        instructions="Be brief.",
        input="Hi",
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=64,
        metadata={"ticket": "42"},
        user="someone",
    )
    response = raw.parse()
    assert raw.headers["x-nexus-backend"] == "a"
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Hello from a"
    message = response.output[0]
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.content[0].type == "output_text"
    assert message.content[0].annotations == []
    assert response.instructions == "Be brief."
    assert response.metadata == {"ticket": "42"}
    assert response.temperature == 0.2
    assert response.max_output_tokens == 64
    assert response.store is True
    assert response.usage is not None
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens == 3
    assert response.usage.total_tokens == response.usage.input_tokens + 3
    sent = a.inference_requests[-1].json
    assert a.inference_requests[-1].path == "/v1/chat/completions"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert sent["max_tokens"] == 64
    assert (sent["temperature"], sent["top_p"], sent["user"]) == (0.2, 0.9, "someone")
    assert "metadata" not in sent


def test_image_input_as_a_data_url(server: RunningServer, fakes: list[FakeBackend]) -> None:
    url = f"data:image/png;base64,{PIXEL}"
    response = client(server).responses.create(
        model="fake-model",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": url, "detail": "low"},
                ],
            }
        ],
    )
    assert response.output_text == "Hello from a"
    assert fakes[0].inference_requests[-1].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
            ],
        }
    ]


def test_function_call_round_trip(server: RunningServer, fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.push(Behaviour(tool_calls=WEATHER_CALL, times=1))
    sdk = client(server)
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    first = sdk.responses.create(
        model="fake-model", input=[question], tools=[WEATHER_TOOL], tool_choice="auto"
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert (call.call_id, call.name, call.arguments) == (
        "call_w1",
        "get_weather",
        '{"city":"Paris"}',
    )
    assert call.id is not None
    assert call.id.startswith("fc_")
    assert first.tools[0].name == "get_weather"  # type: ignore[union-attr]
    assert first.tool_choice == "auto"
    sent = a.inference_requests[-1].json
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_TOOL["parameters"],
                "strict": True,
            },
        }
    ]
    assert sent["tool_choice"] == "auto"

    # The second turn hands the call and its output back, as the SDK's docs show.
    second = sdk.responses.create(
        model="fake-model",
        input=[
            question,
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C, sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == "Hello from a"
    assert a.inference_requests[-1].json["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "18C, sunny"},
    ]


class Weather(BaseModel):
    city: str
    celsius: int


def test_parse_with_a_json_schema(server: RunningServer, fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.push(Behaviour(content='{"city": "Paris", "celsius": 18}', times=1))
    response = client(server).responses.parse(
        model="fake-model", input="Weather in Paris as JSON", text_format=Weather
    )
    assert response.output_parsed == Weather(city="Paris", celsius=18)
    format_sent = a.inference_requests[-1].json["response_format"]
    assert format_sent["type"] == "json_schema"
    assert format_sent["json_schema"]["name"] == "Weather"
    assert format_sent["json_schema"]["strict"] is True
    assert format_sent["json_schema"]["schema"]["properties"]["celsius"] == {
        "title": "Celsius",
        "type": "integer",
    }


def test_json_object_format(server: RunningServer, fakes: list[FakeBackend]) -> None:
    fakes[0].push(Behaviour(content='{"ok": true}', times=1))
    response = client(server).responses.create(
        model="fake-model", input="JSON please", text={"format": {"type": "json_object"}}
    )
    assert json.loads(response.output_text) == {"ok": True}
    assert fakes[0].inference_requests[-1].json["response_format"] == {"type": "json_object"}


def test_stream_with_the_sdks_helpers(server: RunningServer, fakes: list[FakeBackend]) -> None:
    with client(server).responses.stream(
        model="fake-model", input="Hi", instructions="Be brief."
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert deltas[-1].snapshot == "Hello from a"  # the SDK's accumulator, not ours
    assert final.output_text == "Hello from a"
    assert final.status == "completed"
    assert final.usage is not None
    assert final.usage.output_tokens == 3
    assert final.instructions == "Be brief."
    assert len({event.response.id for event in events if hasattr(event, "response")}) == 1
    sent = fakes[0].inference_requests[-1].json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_stream_of_a_function_call(server: RunningServer, fakes: list[FakeBackend]) -> None:
    fakes[0].push(Behaviour(tool_calls=WEATHER_CALL, times=1))
    with client(server).responses.stream(
        model="fake-model", input="Weather in Paris?", tools=[WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types.count("response.function_call_arguments.delta") == 2
    assert types[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    arguments = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert arguments[-1].snapshot == '{"city":"Paris"}'
    call = final.output[0]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == (
        "call_w1",
        "get_weather",
        '{"city":"Paris"}',
    )


def test_reasoning_text_is_a_reasoning_item(
    server: RunningServer, fakes: list[FakeBackend]
) -> None:
    fakes[0].push(Behaviour(reasoning="Think first", times=2))
    sdk = client(server)
    whole = sdk.responses.create(model="fake-model", input="Hi")
    assert [item.type for item in whole.output] == ["reasoning", "message"]
    with sdk.responses.stream(model="fake-model", input="Hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert types[2:4] == ["response.output_item.added", "response.reasoning_text.delta"]
    assert "response.reasoning_text.done" in types
    for response in (whole, final):
        reasoning = response.output[0]
        assert reasoning.type == "reasoning"
        assert reasoning.id.startswith("rs_")
        assert reasoning.content is not None
        assert reasoning.content[0].text == "Think first"
        assert response.output_text == "Hello from a"


def test_a_stream_broken_mid_way_ends_in_response_failed(
    server: RunningServer, fakes: list[FakeBackend]
) -> None:
    fakes[0].push(Behaviour(cut_after_events=3, times=1))
    with client(server).responses.stream(model="fake-model", input="Hi") as stream:
        events = list(stream)
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()
    types = [event.type for event in events]
    assert "response.output_text.delta" in types
    assert types[-2:] == ["error", "response.failed"]
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed"
    assert failed.response.error is not None
    assert failed.response.error.code == "server_error"
    assert "response.completed" not in types


def test_failover_before_the_first_byte(server: RunningServer, fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.push(Behaviour(status=503, times=1))
    raw = client(server).responses.with_raw_response.create(model="fake-model", input="Hi")
    assert raw.parse().output_text == "Hello from b"
    assert raw.headers["x-nexus-backend"] == "b"
    a.push(Behaviour(status=503, times=1))
    streamed = client(server).responses.with_raw_response.create(
        model="fake-model", input="Hi", stream=True
    )
    assert streamed.headers["x-nexus-backend"] == "b"
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = list(streamed.parse())
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Hello from b"


def test_max_output_tokens_cut_is_incomplete(
    server: RunningServer, fakes: list[FakeBackend]
) -> None:
    fakes[0].push(Behaviour(finish_reason="length", times=2))
    sdk = client(server)
    response = sdk.responses.create(model="fake-model", input="Hi", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]
    with sdk.responses.stream(model="fake-model", input="Hi", max_output_tokens=3) as stream:
        events = list(stream)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output[0].content[0].text == "Hello from a"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "Hi"}, "model", "missing_model"),
        ({"model": "fake-model"}, "input", "missing_required_parameter"),
        ({"model": "fake-model", "input": 3}, "input", "invalid_type"),
        ({"model": "fake-model", "input": "Hi", "background": True}, "background", None),
        (
            {"model": "fake-model", "input": "Hi", "tools": [{"type": "web_search"}]},
            "tools.0.type",
            None,
        ),
        (
            {"model": "fake-model", "input": "Hi", "previous_response_id": "resp_none"},
            "previous_response_id",
            "previous_response_not_found",
        ),
    ],
)
def test_refused_requests_get_openais_envelope(
    server: RunningServer,
    fakes: list[FakeBackend],
    body: dict[str, Any],
    param: str,
    code: str | None,
) -> None:
    before = len(fakes[0].inference_requests)
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).responses.create(**body)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert len(fakes[0].inference_requests) == before
    if param == "tools.0.type":
        assert "'web_search'" in error["message"]
    if param == "previous_response_id":
        assert error["message"] == "Previous response with id 'resp_none' not found."


def test_unknown_model_is_a_404_like_the_chat_door(server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).responses.create(model="no-such-model", input="Hi")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_found"


def test_accepted_and_ignored_fields_reach_no_backend(
    server: RunningServer, fakes: list[FakeBackend]
) -> None:
    response = client(server).responses.create(
        model="fake-model",
        input="Hi",
        reasoning={"effort": "low"},
        truncation="auto",
        include=["message.output_text.logprobs"],
        service_tier="auto",
        store=False,
        parallel_tool_calls=False,
    )
    assert response.status == "completed"
    assert response.store is False
    assert response.parallel_tool_calls is False
    assert response.reasoning is not None
    assert response.reasoning.effort == "low"
    sent = fakes[0].inference_requests[-1].json
    assert set(sent) == {"model", "messages"}  # parallel_tool_calls only goes with tools


def test_history_and_metrics_name_the_door(server: RunningServer) -> None:
    client(server).responses.create(model="fake-model", input="Hi")
    history = httpx.get(server.url + "/v1/history").json()["data"]
    assert history[0]["front_door"] == "responses"
    assert history[0]["backend"] == "a"
    assert history[0]["status"] == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert any(
        line.startswith("nexus_requests_total{") and 'front_door="responses"' in line
        for line in metrics.splitlines()
    )


def test_gateway_keys_apply(fakes: list[FakeBackend], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_KEY_TEAM", "nx-team-secret-key-0001")
    config = gateway_config(fakes[0])
    config["auth"] = {"enabled": True, "keys": [{"name": "team", "key_env": "NEXUS_KEY_TEAM"}]}
    with running_server(config) as server:
        with pytest.raises(openai.AuthenticationError) as caught:
            client(server, key="wrong").responses.create(model="fake-model", input="Hi")
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == "invalid_api_key"
        response = client(server, key="nx-team-secret-key-0001").responses.create(
            model="fake-model", input="Hi"
        )
        assert response.output_text == "Hello from a"
        assert "authorization" not in fakes[0].inference_requests[-1].headers


def test_on_complete_seam_gets_the_items_and_the_final_response(
    server: RunningServer,
) -> None:
    seen: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []

    async def keep(items: list[dict[str, Any]], response: dict[str, Any]) -> None:
        seen.append((items, response))

    endpoint = server.server.config.app.proxies["/v1/responses"]
    assert isinstance(endpoint, ResponsesEndpoint)
    assert endpoint.on_complete is None  # nothing is kept unless a store plugs in
    endpoint.on_complete = keep
    sdk = client(server)
    whole = sdk.responses.create(model="fake-model", input="Hi")
    with sdk.responses.stream(model="fake-model", input=[{"role": "user", "content": "Yo"}]) as s:
        streamed = s.get_final_response()
    assert [response["id"] for _, response in seen] == [whole.id, streamed.id]
    assert seen[0][0] == [{"type": "message", "role": "user", "content": "Hi"}]
    assert seen[1][0] == [{"role": "user", "content": "Yo"}]
    assert seen[1][1]["output"][0]["content"][0]["text"] == streamed.output_text
