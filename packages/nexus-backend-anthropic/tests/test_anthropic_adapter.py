"""The anthropic adapter against ``FakeAnthropic``: the contract, the translated requests,
OpenAI answers, errors, probing and detection.

Only this package and ``nexusgw-core[testing]`` are needed here; the answers read by the
``openai`` SDK's accumulators and Nexus end to end are in ``tests/test_anthropic_e2e.py``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nexus_backend_anthropic import (
    ANTHROPIC_VERSION,
    AnthropicAdapter,
    api_root,
    model_info,
    models_table,
)
from nexus_core.adapters import BackendError, BackendStatus, Endpoint, ErrorKind, ModelInfo
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.plugins import backend_types
from nexus_core.sse import event_data
from nexus_core.testing import (
    Behaviour,
    FakeAnthropic,
    FakeBackend,
    FakeExo,
    FakeLlamaCpp,
    FakeLMStudio,
    FakeLocalAI,
    FakeOllama,
    FakeOpenAI,
    FakeVLLM,
    closed_port_url,
)
from nexus_core.testing.anthropic import AnthropicBehaviour
from nexus_core.testing.contract import FAST, AdapterContract

pytestmark = pytest.mark.anyio

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


class TestAnthropicContract(AdapterContract):
    adapter_class = AnthropicAdapter
    fake_class = FakeAnthropic
    # A cloud type: the key is required, and detection away from api.anthropic.com needs it.
    api_key = "sk-ant-contract"


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
async def fake(anyio_backend: str) -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture
def adapter(fake: FakeAnthropic, clients: HttpClients) -> AnthropicAdapter:
    return AnthropicAdapter(config(fake.url), clients)


def config(url: str) -> BackendConfig:
    return BackendConfig(name="claude", url=url, type="anthropic", api_key_env=KEY_ENV)


def chat(messages: list[dict[str, Any]] | None = None, **extra: Any) -> bytes:
    messages = messages or [{"role": "user", "content": "Hi"}]
    return json.dumps({"model": MODEL, "messages": messages, **extra}).encode()


async def complete(adapter: AnthropicAdapter, body: bytes) -> dict[str, Any]:
    response = await adapter.send(Endpoint.CHAT, body, stream=False, timeouts=FAST)
    assert response.body is not None
    assert response.content_type == "application/json"
    answer: dict[str, Any] = json.loads(response.body)
    return answer


async def stream_chunks(adapter: AnthropicAdapter, body: bytes) -> tuple[list[bytes], list[Any]]:
    response = await adapter.send(Endpoint.CHAT, body, stream=True, timeouts=FAST)
    assert response.events is not None
    try:
        events = [event async for event in response.events]
    finally:
        await response.aclose()
    assert all(event.startswith(b"data: ") and event.endswith(b"\n\n") for event in events)
    assert events[-1] == b"data: [DONE]\n\n"
    return events, [json.loads(event_data(event)) for event in events[:-1]]


# -- what reaches Anthropic ----------------------------------------------------------------------


async def test_the_request_is_translated_with_anthropics_headers(
    adapter: AnthropicAdapter, fake: FakeAnthropic
) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use metric units."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is here?"},
                {"type": "image_url", "image_url": {"url": image}},
            ],
        },
    ]
    await complete(adapter, chat(messages, stop="END", temperature=1.5, user="u-1"))
    [request] = fake.inference_requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert "authorization" not in request.headers
    assert request.json == {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is here?"},
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                ],
            }
        ],
        "max_tokens": 4096,  # Anthropic requires one; OpenAI clients often send none
        "system": "Be brief.\n\nUse metric units.",
        "temperature": 1.0,  # OpenAI allows up to 2, Anthropic 1
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }


async def test_tools_and_a_tool_result_round_trip(
    adapter: AnthropicAdapter, fake: FakeAnthropic
) -> None:
    fake.push(Behaviour(tool_calls=[WEATHER_CALL]))
    first = await complete(
        adapter, chat(tools=[WEATHER_TOOL], tool_choice="required", max_tokens=100)
    )
    [choice] = first["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call == WEATHER_CALL
    sent = fake.inference_requests[0].json
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["max_tokens"] == 100

    history = [
        {"role": "user", "content": "Weather in Paris?"},
        choice["message"],
        {"role": "tool", "tool_call_id": call["id"], "content": "18 C"},
    ]
    second = await complete(adapter, chat(history, tools=[WEATHER_TOOL]))
    assert second["choices"][0]["message"]["content"] == "Hello from anthropic"
    # The fake refuses a tool_result without its tool_use, as the API does: it was accepted.
    assert fake.inference_requests[1].json["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": call["id"],
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "18 C"}],
        },
    ]


# -- what comes back -----------------------------------------------------------------------------


async def test_a_whole_answer_is_an_openai_chat_completion(adapter: AnthropicAdapter) -> None:
    completion = await complete(adapter, chat())
    assert completion["object"] == "chat.completion"
    assert completion["id"].startswith("chatcmpl-")
    assert completion["model"] == MODEL
    [choice] = completion["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello from anthropic"}
    assert choice["finish_reason"] == "stop"
    usage = completion["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3

    short = await complete(adapter, chat(max_tokens=1))
    assert short["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("include_usage", [True, False])
async def test_a_stream_is_openai_chunks_with_usage_only_when_asked(
    adapter: AnthropicAdapter, fake: FakeAnthropic, include_usage: bool
) -> None:
    fake.push(Behaviour(split_events=True))
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    _, chunks = await stream_chunks(adapter, chat(stream=True, **options))
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    choices = [choice for chunk in chunks for choice in chunk["choices"]]
    assert "".join(c["delta"].get("content") or "" for c in choices) == "Hello from anthropic"
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
    assert fake.inference_requests[0].json["stream"] is True
    with_usage = [chunk for chunk in chunks if chunk.get("usage")]
    if include_usage:
        assert len(with_usage) == 1
        assert with_usage[0] is chunks[-1]
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == 3
    else:
        assert with_usage == []


async def drain(events: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for event in events:
        into.append(event)


# -- errors --------------------------------------------------------------------------------------


def envelope(exc: BackendError) -> dict[str, Any]:
    assert exc.headers["content-type"] == "application/json"
    error: dict[str, Any] = json.loads(exc.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("behaviour", "status", "kind", "retry_after", "error"),
    [
        (Behaviour(status=429, retry_after=7), 429, ErrorKind.OVERLOADED, 7.0, "rate_limit_error"),
        (Behaviour(status=529), 529, ErrorKind.OVERLOADED, None, "overloaded_error"),
        (Behaviour(status=500), 500, ErrorKind.SERVER_ERROR, None, "api_error"),
        (Behaviour(status=403), 403, ErrorKind.CLIENT_ERROR, None, "permission_error"),
        (Behaviour(status=413), 413, ErrorKind.CLIENT_ERROR, None, "request_too_large"),
    ],
)
async def test_upstream_errors_are_classified_in_openai_shape(
    adapter: AnthropicAdapter,
    fake: FakeAnthropic,
    behaviour: Behaviour,
    status: int,
    kind: ErrorKind,
    retry_after: float | None,
    error: str,
) -> None:
    fake.push(behaviour)
    with pytest.raises(BackendError) as info:
        await adapter.send(Endpoint.CHAT, chat(), stream=False, timeouts=FAST)
    assert (info.value.status, info.value.kind, info.value.retry_after) == (
        status,
        kind,
        retry_after,
    )
    assert info.value.retryable is (kind is not ErrorKind.CLIENT_ERROR)
    assert envelope(info.value)["code"] == error
    assert error in info.value.message


async def test_a_refused_key_and_an_unknown_model_go_to_the_client(
    fake: FakeAnthropic, clients: HttpClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-ant-wrong")
    with pytest.raises(BackendError) as info:
        await AnthropicAdapter(config(fake.url), clients).send(
            Endpoint.CHAT, chat(), stream=False, timeouts=FAST
        )
    assert (info.value.status, info.value.kind) == (401, ErrorKind.CLIENT_ERROR)
    assert envelope(info.value) == {
        "message": "invalid x-api-key",
        "type": "authentication_error",
        "param": None,
        "code": "authentication_error",
    }
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(BackendError) as missing:
        await AnthropicAdapter(config(fake.url), clients).send(
            Endpoint.CHAT, chat(model="claude-none"), stream=False, timeouts=FAST
        )
    assert (missing.value.status, missing.value.kind) == (404, ErrorKind.CLIENT_ERROR)
    assert envelope(missing.value)["message"] == "model: claude-none"


async def test_an_untranslatable_request_is_a_400_that_never_leaves(
    adapter: AnthropicAdapter, fake: FakeAnthropic
) -> None:
    for body in (chat(n=2), chat([{"role": "robot", "content": "x"}]), b"{not json"):
        with pytest.raises(BackendError) as info:
            await adapter.send(Endpoint.CHAT, body, stream=False, timeouts=FAST)
        assert (info.value.status, info.value.kind) == (400, ErrorKind.CLIENT_ERROR)
        assert envelope(info.value)["type"] == "invalid_request_error"
    assert envelope(info.value)["message"] == "the body is not JSON"
    assert fake.inference_requests == []


@pytest.mark.parametrize("endpoint", [Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS])
async def test_only_chat_is_served(
    adapter: AnthropicAdapter, fake: FakeAnthropic, endpoint: Endpoint
) -> None:
    with pytest.raises(BackendError) as info:
        await adapter.send(endpoint, chat(), stream=False, timeouts=FAST)
    assert (info.value.status, info.value.kind) == (404, ErrorKind.CLIENT_ERROR)
    assert "chat only" in envelope(info.value)["message"]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [("overloaded_error", ErrorKind.OVERLOADED), ("api_error", ErrorKind.SERVER_ERROR)],
)
async def test_an_error_event_mid_stream_breaks_the_stream(
    adapter: AnthropicAdapter, fake: FakeAnthropic, error_type: str, kind: ErrorKind
) -> None:
    fake.push(AnthropicBehaviour(stream_error=error_type, stream_error_after=4))
    response = await adapter.send(Endpoint.CHAT, chat(stream=True), stream=True, timeouts=FAST)
    assert response.events is not None
    received: list[bytes] = []
    with pytest.raises(BackendError) as info:
        await drain(response.events, received)
    await response.aclose()
    assert info.value.kind is kind
    assert error_type in info.value.message
    assert received  # the answer had begun: the gateway ends it with its error event
    assert b"data: [DONE]\n\n" not in received


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        (Behaviour(cut_after_events=4), ErrorKind.CONNECT),  # the connection broke
        (Behaviour(omit_done=True), ErrorKind.MALFORMED),
        (Behaviour(malformed=True), ErrorKind.MALFORMED),
    ],
)
async def test_a_stream_that_ends_early_is_never_complete(
    adapter: AnthropicAdapter, fake: FakeAnthropic, behaviour: Behaviour, kind: ErrorKind
) -> None:
    fake.push(behaviour)
    response = await adapter.send(Endpoint.CHAT, chat(stream=True), stream=True, timeouts=FAST)
    assert response.events is not None
    received: list[bytes] = []
    with pytest.raises(BackendError) as info:
        await drain(response.events, received)
    await response.aclose()
    assert info.value.kind is kind
    assert b"data: [DONE]\n\n" not in received


async def test_a_malformed_whole_answer_is_malformed(
    adapter: AnthropicAdapter, fake: FakeAnthropic
) -> None:
    fake.push(Behaviour(malformed=True))
    with pytest.raises(BackendError) as info:
        await adapter.send(Endpoint.CHAT, chat(), stream=False, timeouts=FAST)
    assert info.value.kind is ErrorKind.MALFORMED


# -- probe ---------------------------------------------------------------------------------------


async def test_probe_pages_through_the_model_list(
    adapter: AnthropicAdapter, fake: FakeAnthropic
) -> None:
    fake.models = [
        "claude-sonnet-4-5-20250929",
        "claude-3-5-haiku-latest",
        "claude-opus-4-0",
        {"id": "claude-opus-4-8", "max_input_tokens": 1_000_000, "capabilities": _images(True)},
        "claude-nova-1",
    ]
    fake.page_limit = 2
    result = await adapter.probe()
    assert result.status is BackendStatus.HEALTHY, result.detail
    assert [r.query.get("after_id") for r in fake.requests] == [
        None,
        "claude-3-5-haiku-latest",
        "claude-opus-4-8",
    ]
    models = {model.id: model for model in result.models}
    assert list(models) == [
        entry if isinstance(entry, str) else entry["id"] for entry in fake.models
    ]
    assert models["claude-sonnet-4-5-20250929"] == ModelInfo(
        "claude-sonnet-4-5-20250929",
        context_length=200_000,
        vision=True,
        tools=True,
        json_mode=None,
        embeddings=False,
        owned_by="anthropic",
    )
    assert models["claude-3-5-haiku-latest"].context_length == 200_000
    assert models["claude-3-5-haiku-latest"].vision is None
    assert models["claude-opus-4-0"].context_length == 200_000
    # What the list states wins over the table.
    assert (models["claude-opus-4-8"].context_length, models["claude-opus-4-8"].vision) == (
        1_000_000,
        True,
    )
    # A family the table lacks stays unknown.
    nova = models["claude-nova-1"]
    assert (nova.context_length, nova.vision, nova.tools) == (None, None, None)


def _images(supported: bool) -> dict[str, Any]:
    return {"image_input": {"supported": supported}}


def test_the_table_matches_snapshots_and_aliases_only() -> None:
    assert (
        models_table.lookup("claude-sonnet-4-5-20250929")
        is models_table.MODELS["claude-sonnet-4-5"]
    )
    assert models_table.lookup("claude-sonnet-4@20250514") is models_table.MODELS["claude-sonnet-4"]
    assert models_table.lookup("claude-opus-5-5") is models_table.MODELS["claude-opus-5"]
    assert models_table.lookup("claude-sonnet-4-5-preview") is None
    assert model_info({"id": "claude-haiku-4-5", "capabilities": _images(False)}).vision is False


async def test_probe_says_why_the_key_is_refused(
    fake: FakeAnthropic, clients: HttpClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-ant-wrong")
    refused = await AnthropicAdapter(config(fake.url), clients).probe()
    assert refused.status is BackendStatus.UNHEALTHY
    assert refused.detail == "HTTP 401: the API key was refused: invalid x-api-key"
    monkeypatch.delenv(KEY_ENV)
    unset = await AnthropicAdapter(config(fake.url), clients).probe()
    assert unset.detail == (f"HTTP 401: no API key (the environment variable {KEY_ENV} is not set)")
    fake.push(Behaviour(status=529, probes=True))
    monkeypatch.setenv(KEY_ENV, KEY)
    busy = await AnthropicAdapter(config(fake.url), clients).probe()
    assert busy.detail == "HTTP 529: Overloaded"


def test_the_url_may_name_v1() -> None:
    assert api_root("https://api.anthropic.com") == "https://api.anthropic.com"
    assert api_root("https://api.anthropic.com/v1/") == "https://api.anthropic.com"
    assert api_root("https://proxy.example/anthropic/v1") == "https://proxy.example/anthropic"


async def test_load_is_unknown(adapter: AnthropicAdapter) -> None:
    assert await adapter.load() is None


# -- detection -----------------------------------------------------------------------------------


async def test_detect_claims_anthropic_and_nothing_else(
    fake: FakeAnthropic, clients: HttpClients
) -> None:
    assert await AnthropicAdapter.detect("https://api.anthropic.com", clients)
    assert await AnthropicAdapter.detect(fake.url + "/v1", clients, api_key=KEY)
    assert not await AnthropicAdapter.detect(fake.url, clients)  # no key: no request
    assert not await AnthropicAdapter.detect(fake.url, clients, api_key="sk-ant-wrong")
    assert not await AnthropicAdapter.detect(closed_port_url(), clients, api_key=KEY)
    assert not await AnthropicAdapter.detect("http://[::1", clients, api_key=KEY)
    assert fake.requests[0].headers["anthropic-version"] == ANTHROPIC_VERSION


@pytest.mark.parametrize(
    "fake_class",
    [
        FakeBackend,
        FakeOpenAI,
        FakeVLLM,
        FakeLlamaCpp,
        FakeLMStudio,
        FakeExo,
        FakeLocalAI,
        FakeOllama,
    ],
    ids=lambda c: c.__name__,
)
async def test_detect_claims_no_other_server(
    fake_class: type[FakeBackend], clients: HttpClients
) -> None:
    async with fake_class("other", ["m"]) as other:
        assert not await AnthropicAdapter.detect(other.url, clients, api_key=KEY)


def test_installed_entry_point_registers_the_type() -> None:
    assert backend_types()["anthropic"] is AnthropicAdapter
