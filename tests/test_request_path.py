"""The request path end to end: the real openai SDK -> Nexus server -> fake backends."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]
#: What every client of the proxy doors says about its body.
JSON = {"Content-Type": "application/json"}


def client(server: RunningServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, **kwargs)


def wait_pending_zero(server: RunningServer, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(b.pending == 0 for b in server.gateway.registry):
            return True
        time.sleep(0.005)
    return False


# -- faithful chat ------------------------------------------------------------------------------


def test_chat_non_streaming_sync(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    with running_server(gateway_config(a)) as server:
        raw = client(server).chat.completions.with_raw_response.create(
            model="fake-model", messages=MESSAGES
        )
        completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from a"
    assert completion.usage is not None
    assert raw.headers["x-nexus-backend"] == "a"
    assert raw.headers["x-nexus-backend-type"] == "local"
    assert raw.headers["x-nexus-route-reason"] == "only-candidate"
    assert raw.headers["x-nexus-privacy-zone"] == "restricted"
    assert raw.headers["x-request-id"]
    assert a.inference_requests[0].json["messages"] == MESSAGES


def test_request_id_is_echoed(fakes: list[FakeBackend]) -> None:
    with running_server(gateway_config(fakes[0])) as server:
        response = httpx.post(
            server.base_url + "/chat/completions",
            json={"model": "fake-model", "messages": MESSAGES},
            headers={"X-Request-Id": "trace-123"},
        )
        missing = httpx.get(server.url + "/nowhere", headers={"X-Request-Id": "trace-404"})
    assert response.headers["x-request-id"] == "trace-123"
    assert missing.headers["x-request-id"] == "trace-404"


def test_chat_streaming_sync_with_usage(fakes: list[FakeBackend]) -> None:
    with running_server(gateway_config(fakes[0])) as server:
        stream = client(server).chat.completions.create(
            model="fake-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from a"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0


@pytest.mark.anyio
async def test_chat_async_client_both_modes(fakes: list[FakeBackend]) -> None:
    with running_server(gateway_config(fakes[1])) as server:
        async_client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        completion = await async_client.chat.completions.create(
            model="fake-model", messages=MESSAGES
        )
        stream = await async_client.chat.completions.create(
            model="fake-model", messages=MESSAGES, stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]
        await async_client.close()
    assert completion.choices[0].message.content == "Hello from b"
    assert "".join(pieces) == "Hello from b"


def test_stream_events_are_relayed_one_by_one(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(delay_between_events=0.2, split_events=True, crlf=True))
    with running_server(gateway_config(a)) as server:
        started = time.monotonic()
        stream = client(server).chat.completions.create(
            model="fake-model", messages=MESSAGES, stream=True
        )
        first = next(iter(stream))
        first_at = time.monotonic() - started
        rest = list(stream)
        total = time.monotonic() - started
    assert first.choices[0].delta.role == "assistant"
    # The first event is forwarded long before the stream ends (no batching).
    assert first_at < total / 2
    assert "".join(c.choices[0].delta.content or "" for c in [first, *rest]) == "Hello from a"


def test_raw_stream_has_no_double_prefix(fakes: list[FakeBackend]) -> None:
    with (
        running_server(gateway_config(fakes[0])) as server,
        httpx.stream(
            "POST",
            server.base_url + "/chat/completions",
            json={"model": "fake-model", "messages": MESSAGES, "stream": True},
        ) as response,
    ):
        body = response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"data: data:" not in body
    assert body.endswith(b"data: [DONE]\n\n")
    assert all(line.startswith(b"data: ") for line in body.split(b"\n") if line)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOL_CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
]


def test_tool_calls_round_trip(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(tool_calls=TOOL_CALLS))
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
    ]
    with running_server(gateway_config(a)) as server:
        sdk = client(server)
        completion = sdk.chat.completions.create(
            model="fake-model", messages=messages, tools=TOOLS, tool_choice="auto"
        )
        stream = sdk.chat.completions.create(
            model="fake-model", messages=messages, tools=TOOLS, stream=True
        )
        streamed = [c for c in stream if c.choices and c.choices[0].delta.tool_calls]
    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Oslo"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert streamed
    sent = a.inference_requests[0].json
    assert sent["messages"] == messages
    assert sent["tools"] == TOOLS
    assert sent["tool_choice"] == "auto"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
RESERVED = {"model", "messages", "stream", "tools", "functions", "response_format"}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: k not in RESERVED),
        JSON_VALUES,
        max_size=4,
    ),
    response_extra=st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: k not in {"id", "choices", "model"}),
        JSON_VALUES,
        max_size=3,
    ),
)
def test_extra_fields_survive_both_directions(
    fakes: list[FakeBackend], extra: dict[str, Any], response_extra: dict[str, Any]
) -> None:
    a = fakes[0]
    a.reset()
    a.behave(Behaviour(extra_response_fields=response_extra))
    body = json.dumps({"model": "fake-model", "messages": MESSAGES, **extra}).encode()
    with running_server(gateway_config(a)) as server:
        response = httpx.post(
            server.base_url + "/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 200
    # The request arrives byte for byte (model unchanged here, so nothing is rewritten).
    assert a.inference_requests[-1].body == body
    answer = response.json()
    for key, value in response_extra.items():
        assert answer[key] == value


def test_alias_rewrites_only_the_model(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    body = b'{"model":  "alias-1", "messages": [{"role":"user","content":"Hi"}],  "x": 1.50}'
    config = gateway_config(
        a, aliases={"alias-1": "alias-2", "alias-2": "alias-3", "alias-3": "fake-model"}
    )
    with running_server(config) as server:
        response = httpx.post(server.base_url + "/chat/completions", content=body, headers=JSON)
    assert response.status_code == 200
    assert a.inference_requests[0].body == body.replace(b'"alias-1"', b'"fake-model"')


# -- errors -------------------------------------------------------------------------------------


def test_unknown_model_is_not_found_listing_models(fakes: list[FakeBackend]) -> None:
    with (
        running_server(gateway_config(fakes[0])) as server,
        pytest.raises(openai.NotFoundError) as info,
    ):
        client(server).chat.completions.create(model="gpt-17", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert "fake-model" in info.value.message


def test_malformed_json_is_bad_request(fakes: list[FakeBackend]) -> None:
    with running_server(gateway_config(fakes[0])) as server:
        response = httpx.post(
            server.base_url + "/chat/completions", content=b'{"model": ', headers=JSON
        )
        missing_model = httpx.post(server.base_url + "/chat/completions", json={"messages": []})
        sdk_error = None
        try:
            client(server).chat.completions.create(model="", messages=MESSAGES)
        except openai.BadRequestError as exc:
            sdk_error = exc
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert missing_model.status_code == 400
    assert missing_model.json()["error"]["param"] == "model"
    assert sdk_error is not None
    assert fakes[0].inference_requests == []


def test_oversized_body_is_413_envelope(fakes: list[FakeBackend]) -> None:
    config = gateway_config(fakes[0])
    config["server"]["max_body_bytes"] = 2048
    with running_server(config) as server:
        big = {"model": "fake-model", "messages": [{"role": "user", "content": "x" * 5000}]}
        response = httpx.post(server.base_url + "/chat/completions", json=big)
        chunked = httpx.post(
            server.base_url + "/chat/completions",
            content=iter([b"{" + b" " * 3000, b"}"]),
            headers=JSON,
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert chunked.status_code == 413
    assert fakes[0].inference_requests == []


def test_framework_errors_are_envelopes(fakes: list[FakeBackend]) -> None:
    with running_server(gateway_config(fakes[0])) as server:
        not_found = httpx.get(server.url + "/v2/nothing")
        wrong_method = httpx.get(server.base_url + "/chat/completions")
        wrong_method_models = httpx.post(server.base_url + "/models")
    for response, status in ((not_found, 404), (wrong_method, 405), (wrong_method_models, 405)):
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}


def test_no_healthy_backend_is_503_with_reasons(fakes: list[FakeBackend]) -> None:
    a, b = fakes[0], fakes[1]
    with running_server(gateway_config(a, b)) as server:
        for backend in server.gateway.registry:
            backend.status = backend.status.UNHEALTHY
            backend.last_error = "probe timed out"
        response = httpx.post(
            server.base_url + "/chat/completions",
            json={"model": "fake-model", "messages": MESSAGES},
        )
        with pytest.raises(openai.InternalServerError):
            client(server).chat.completions.create(model="fake-model", messages=MESSAGES)
    assert response.status_code == 503
    details = response.json()["error"]["details"]
    assert {d["backend"] for d in details} == {"a", "b"}
    assert all(d["reason"] == "unhealthy" for d in details)
    assert all("probe timed out" in d["message"] for d in details)


# -- failover -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "behaviour",
    [
        Behaviour(status=500),
        Behaviour(status=503),
        Behaviour(status=429, retry_after=5),
        Behaviour(hang=True),
        Behaviour(reset=True),
        Behaviour(delay_before_headers=3.0),
    ],
    ids=["500", "503", "429", "hang", "reset", "slow-first-byte"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_failover_to_next_backend(
    fakes: list[FakeBackend], behaviour: Behaviour, stream: bool
) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(behaviour)
    with running_server(gateway_config(a, b)) as server:
        raw = client(server).chat.completions.with_raw_response.create(
            model="fake-model", messages=MESSAGES, stream=stream
        )
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            text = raw.parse().choices[0].message.content or ""
        assert wait_pending_zero(server)
    assert text == "Hello from b"
    assert raw.headers["x-nexus-backend"] == "b"
    assert raw.headers["x-nexus-route-reason"] == "failover"
    # A reset on a fresh connection is the backend's answer: no retry on the same backend (only a
    # pooled connection that was already dead gets one quiet retry), straight to failover.
    assert len(a.inference_requests) == 1
    assert len(b.inference_requests) == 1


def test_failover_when_backend_stops_listening(fakes: list[FakeBackend]) -> None:
    a, b = fakes[0], fakes[1]
    with running_server(gateway_config(a, b)) as server:
        a.stop()  # healthy at the last probe, refusing connections now
        raw = client(server).chat.completions.with_raw_response.create(
            model="fake-model", messages=MESSAGES
        )
    assert raw.headers["x-nexus-backend"] == "b"
    assert raw.headers["x-nexus-route-reason"] == "failover"


def test_client_error_is_passed_through_not_retried(fakes: list[FakeBackend]) -> None:
    a, b = fakes[0], fakes[1]
    upstream_error = {
        "error": {
            "message": "bad temperature",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": None,
        }
    }
    a.behave(Behaviour(status=400, error_body=upstream_error))
    with (
        running_server(gateway_config(a, b)) as server,
        pytest.raises(openai.BadRequestError) as info,
    ):
        client(server).chat.completions.create(model="fake-model", messages=MESSAGES)
    assert info.value.body == upstream_error["error"]
    assert b.inference_requests == []


def test_every_backend_failing_is_one_clean_error(fakes: list[FakeBackend]) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(status=500))
    b.behave(Behaviour(status=502))
    with running_server(gateway_config(a, b)) as server:
        response = httpx.post(
            server.base_url + "/chat/completions",
            json={"model": "fake-model", "messages": MESSAGES},
        )
    assert response.status_code == 502
    details = response.json()["error"]["details"]
    assert [d["backend"] for d in details] == ["a", "b"]


def test_stream_cut_midway_raises_and_has_no_done(fakes: list[FakeBackend]) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(cut_after_events=3))
    with running_server(gateway_config(a, b)) as server:
        stream = client(server).chat.completions.create(
            model="fake-model", messages=MESSAGES, stream=True
        )
        received: list[Any] = []
        with pytest.raises(openai.APIError):
            received.extend(stream)
        with httpx.stream(
            "POST",
            server.base_url + "/chat/completions",
            json={"model": "fake-model", "messages": MESSAGES, "stream": True},
        ) as response:
            raw = response.read()
        assert wait_pending_zero(server)
    assert len(received) == 3
    assert b"[DONE]" not in raw
    assert raw.rstrip().split(b"\n")[-1].startswith(b'data: {"error"')
    assert b.inference_requests == []  # after the first byte there is no failover


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_client_disconnect_cancels_upstream(fakes: list[FakeBackend], stream: bool) -> None:
    a = fakes[0]
    if stream:
        a.behave(Behaviour(delay_between_events=5.0))
    else:
        a.behave(Behaviour(delay_before_headers=30.0))
    with running_server(gateway_config(a)) as server:
        body = {"model": "fake-model", "messages": MESSAGES, "stream": stream}
        if stream:
            with httpx.stream("POST", server.base_url + "/chat/completions", json=body) as response:
                chunks = response.iter_raw()
                next(chunks)
                assert server.gateway.registry.get("a").pending == 1  # type: ignore[union-attr]
                closed_at = time.monotonic()
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(server.base_url + "/chat/completions", json=body, timeout=0.5)
            closed_at = time.monotonic()
        assert a.wait_disconnect(timeout=2.0)
        assert wait_pending_zero(server)
    assert a.disconnects[0] - closed_at < 0.1


# -- routing ------------------------------------------------------------------------------------


def test_round_robin_spreads_2_2_2(fakes: list[FakeBackend]) -> None:
    with running_server(gateway_config(*fakes, strategy="round_robin")) as server:
        sdk = client(server)
        served = [
            sdk.chat.completions.with_raw_response.create(
                model="fake-model", messages=MESSAGES
            ).headers["x-nexus-backend"]
            for _ in range(6)
        ]
    assert sorted(served) == ["a", "a", "b", "b", "c", "c"]
    assert [len(f.inference_requests) for f in fakes] == [2, 2, 2]


def test_fallback_model_with_header() -> None:
    with (
        FakeBackend("big", ["llama-70b"]).running() as big,
        FakeBackend("small", ["llama-8b"]).running() as small,
    ):
        config = gateway_config(
            big, small, fallbacks={"llama-70b": ["llama-8b"]}, aliases={"smart-model": "llama-70b"}
        )
        big.behave(Behaviour(status=503))
        with running_server(config) as server:
            raw = client(server).chat.completions.with_raw_response.create(
                model="smart-model", messages=MESSAGES
            )
        assert raw.headers["x-nexus-fallback-model"] == "llama-8b"
        assert raw.headers["x-nexus-route-reason"] == "fallback-model"
        assert small.inference_requests[0].json["model"] == "llama-8b"


def test_vision_request_reaches_only_vision_model() -> None:
    with FakeBackend("text", ["m"]).running() as text, FakeBackend("eyes", ["m"]).running() as eyes:
        config = gateway_config(
            {
                "name": "text",
                "url": text.url,
                "priority": 1,
                "models": [{"id": "m", "vision": False}],
            },
            {
                "name": "eyes",
                "url": eyes.url,
                "priority": 90,
                "models": [{"id": "m", "vision": True}],
            },
        )
        image = {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
        }
        with running_server(config) as server:
            sdk = client(server)
            for _ in range(3):
                sdk.chat.completions.create(
                    model="m",
                    messages=[
                        {"role": "user", "content": [{"type": "text", "text": "What?"}, image]}
                    ],
                )
            sdk.chat.completions.create(model="m", messages=MESSAGES)
        assert len(eyes.inference_requests) == 3
        assert len(text.inference_requests) == 1
        assert eyes.inference_requests[0].json["messages"][0]["content"][1] == image


# -- other endpoints ----------------------------------------------------------------------------


def test_models_health_completions_embeddings(fakes: list[FakeBackend]) -> None:
    a, b = fakes[0], fakes[1]
    with running_server(gateway_config(a, b)) as server:
        sdk = client(server)
        models = sdk.models.list()
        model = sdk.models.retrieve("fake-model")
        completion = sdk.completions.create(model="fake-model", prompt="Once", max_tokens=5)
        embedding = sdk.embeddings.create(model="fake-model", input=["one", "two"])
        health = httpx.get(server.url + "/health").json()
        ready = httpx.get(server.url + "/health/ready")
    assert [m.id for m in models.data] == ["fake-model"]
    assert model.id == "fake-model"
    assert sorted(model.model_extra["backends"]) == ["a", "b"]  # type: ignore[index]
    assert completion.choices[0].text
    assert len(embedding.data) == 2
    assert health["status"] == "healthy"
    assert health["backends"]["healthy"] == 2
    assert ready.status_code == 200
