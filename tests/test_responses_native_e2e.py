"""The Responses door's pass-through: backends that speak the Responses API natively get the
client's request as it is and their answer reaches the client unchanged; the others get chat.

The real ``openai`` SDK talks to a real Nexus in front of a ``FakeOpenAI`` that serves
``POST /v1/responses`` (whole and streamed, typed events, usage) and a plain ``FakeBackend``
that speaks only chat completions. One route list mixes the two, so every attempt picks its
body: failover crosses between them both ways, and a conversation continues across them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import openai
import pytest

from nexus_core import hookimpl, plugins
from nexus_core.openai_wire import OpenAIWireAdapter
from nexus_core.testing import Behaviour, FakeBackend, FakeOpenAI
from nexus_server.responses import ResponsesEndpoint
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

KEY_ENV = "NEXUS_TEST_NATIVE_KEY"
PRICING = [{"model": "fake-model", "input_per_million": 3.0, "output_per_million": 12.0}]


@pytest.fixture(autouse=True)
def cloud_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-native")


@pytest.fixture
def fleet() -> Iterator[tuple[FakeOpenAI, FakeBackend]]:
    """A fake OpenAI (speaks the Responses API) and a chat-only fake, both serving fake-model."""
    native = FakeOpenAI("native", ["fake-model"], api_key="sk-native")
    local = FakeBackend("local", ["fake-model"])
    with native.running(), local.running():
        yield native, local


def native_entry(native: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    entry = {"name": "native", "url": native.url, "type": "openai", "api_key_env": KEY_ENV}
    return {**entry, "native_responses": True, **extra}


def local_entry(local: FakeBackend, **extra: Any) -> dict[str, Any]:
    return {"name": "local", "url": local.url, **extra}


def config(*entries: dict[str, Any], pricing: bool = False) -> dict[str, Any]:
    """The backends in priority order (unless an entry sets its own)."""
    ordered = [{"priority": 10 * (index + 1), **entry} for index, entry in enumerate(entries)]
    out = gateway_config(*ordered, strategy="priority_only")
    if pricing:
        out["pricing"] = PRICING
    return out


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-client", max_retries=0)


def responses_sent(fake: FakeBackend) -> list[dict[str, Any]]:
    return [r.json for r in fake.inference_requests if r.path == "/v1/responses"]


def chats_sent(fake: FakeBackend) -> list[dict[str, Any]]:
    return [r.json for r in fake.inference_requests if r.path == "/v1/chat/completions"]


def sse_events(body: str) -> list[dict[str, Any]]:
    """Every event's data, parsed, with its ``event:`` name checked against its ``type``."""
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


def native_answer(native: FakeOpenAI, body: dict[str, Any]) -> Any:
    """What the fake itself answers ``body`` with, asked directly (no Nexus in between)."""
    answer = httpx.post(
        native.url + "/v1/responses", json=body, headers={"Authorization": "Bearer sk-native"}
    )
    assert answer.status_code == 200
    return answer


def test_whole_answer_passes_through_with_only_model_and_store_changed(
    fleet: tuple[FakeOpenAI, FakeBackend],
) -> None:
    native, local = fleet
    body: dict[str, Any] = {
        "model": "fake-model",
        "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}],
        "temperature": 0.2,
        "max_output_tokens": 64,
        "metadata": {"ticket": "42"},
        # Fields a chat backend cannot honour reach a native one as they are.
        "reasoning": {"effort": "low"},
        "include": ["message.output_text.logprobs"],
    }
    with running_server(config(native_entry(native), local_entry(local))) as server:
        raw = client(server).responses.with_raw_response.create(**body)
        response = raw.parse()
        assert raw.headers["x-nexus-backend"] == "native"
        assert raw.headers["x-nexus-backend-type"] == "cloud"
        assert raw.headers["x-nexus-route-reason"]
        # Upstream: the client's body, store false, nothing else changed; no chat anywhere.
        assert responses_sent(native) == [{**body, "store": False}]
        assert chats_sent(native) == []
        assert local.inference_requests == []
        # Downstream: the upstream's object as it is (its ids, its fields), not a translation.
        relayed = raw.http_response.json()
        direct = native_answer(native, {**body, "store": False}).json()
        assert set(relayed) == set(direct)
        assert relayed["id"] != direct["id"]
        assert relayed["id"].startswith("resp_")
        assert relayed["output"][0]["id"] == "msg_" + relayed["id"][5:]  # the fake's own ids
        assert relayed["usage"] == direct["usage"]
        assert relayed["store"] is False  # what the upstream was asked
        assert response.output_text == "Hello from native"
        # Nexus kept it all the same (store defaults to true): retrieve and continue work.
        kept = client(server).responses.retrieve(response.id)
        assert kept.output_text == "Hello from native"


def test_stream_events_reach_the_sdk_unchanged(fleet: tuple[FakeOpenAI, FakeBackend]) -> None:
    native, local = fleet
    body: dict[str, Any] = {"model": "fake-model", "input": "Say hello", "stream": True}
    with running_server(config(native_entry(native), local_entry(local))) as server:
        with httpx.stream("POST", server.base_url + "/responses", json=body) as answer:
            assert answer.headers["x-nexus-backend"] == "native"
            assert answer.headers["content-type"].startswith("text/event-stream")
            relayed = sse_events(answer.read().decode())
        direct = sse_events(native_answer(native, {**body, "store": False}).text)
        assert [e["type"] for e in relayed] == [e["type"] for e in direct]
        assert [e["sequence_number"] for e in relayed] == list(range(len(direct)))
        deltas = [e["delta"] for e in relayed if e["type"] == "response.output_text.delta"]
        assert deltas == [e["delta"] for e in direct if e["type"] == "response.output_text.delta"]
        assert relayed[-1]["type"] == "response.completed"
        # The SDK's own accumulator over the relayed events.
        with client(server).responses.stream(model="fake-model", input="Say hello") as stream:
            texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        assert "".join(texts) == final.output_text == "Hello from native"
        assert final.usage is not None
        assert final.usage.output_tokens == 3
        sent = responses_sent(native)
        assert sent[-1] == {
            "model": "fake-model",
            "input": "Say hello",
            "stream": True,
            "store": False,
        }
        # Kept from its response.completed event.
        assert client(server).responses.retrieve(final.id).output_text == "Hello from native"
        assert local.inference_requests == []


def test_native_usage_is_charged_like_chat_usage(fleet: tuple[FakeOpenAI, FakeBackend]) -> None:
    native, local = fleet
    with running_server(config(native_entry(native), pricing=True)) as server:
        sdk = client(server)
        whole = sdk.responses.create(model="fake-model", input="What does a budget do?")
        with sdk.responses.stream(model="fake-model", input="And a gateway?") as stream:
            streamed = stream.get_final_response()
        usages = [whole.usage, streamed.usage]
        assert all(u is not None and u.input_tokens > 0 and u.output_tokens > 0 for u in usages)
        gateway = server.gateway
        server.call(gateway.accountant.drain())
        expected = sum(
            round(u.input_tokens * 3.0 * 1000) + round(u.output_tokens * 12.0 * 1000)
            for u in usages
            if u is not None
        )
        assert gateway.accountant.spent == expected
        history = httpx.get(server.url + "/v1/history").json()["data"]
        newest_first = [(h["prompt_tokens"], h["completion_tokens"]) for h in history[:2]]
        assert newest_first == [
            (u.input_tokens, u.output_tokens) for u in reversed(usages) if u is not None
        ]
        assert all(h["front_door"] == "responses" and h["backend"] == "native" for h in history)
        metrics = httpx.get(server.url + "/metrics").text
        tokens = {
            line.split('type="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("nexus_tokens_total{") and 'backend="native"' in line
        }
        assert tokens == {
            "prompt": sum(u.input_tokens for u in usages if u is not None),
            "completion": sum(u.output_tokens for u in usages if u is not None),
        }
        assert local.inference_requests == []


def test_a_native_5xx_fails_over_to_a_translating_backend(
    fleet: tuple[FakeOpenAI, FakeBackend],
) -> None:
    native, local = fleet
    with running_server(config(native_entry(native), local_entry(local))) as server:
        native.push(Behaviour(status=503, times=2))
        raw = client(server).responses.with_raw_response.create(model="fake-model", input="Hi")
        assert raw.headers["x-nexus-backend"] == "local"
        assert raw.headers["x-nexus-route-reason"] == "failover"
        assert raw.parse().output_text == "Hello from local"
        with client(server).responses.stream(model="fake-model", input="Hi") as stream:
            assert stream.get_final_response().output_text == "Hello from local"
        assert len(responses_sent(native)) == 2
        assert [c["messages"] for c in chats_sent(local)] == [
            [{"role": "user", "content": "Hi"}]
        ] * 2


def test_a_translating_5xx_fails_over_to_a_native_backend(
    fleet: tuple[FakeOpenAI, FakeBackend],
) -> None:
    native, local = fleet
    with running_server(config(local_entry(local), native_entry(native))) as server:
        local.push(Behaviour(status=500, times=2))
        raw = client(server).responses.with_raw_response.create(model="fake-model", input="Hi")
        assert raw.headers["x-nexus-backend"] == "native"
        assert raw.parse().output_text == "Hello from native"
        with client(server).responses.stream(model="fake-model", input="Hi") as stream:
            assert stream.get_final_response().output_text == "Hello from native"
        assert len(chats_sent(local)) == 2
        assert [r["input"] for r in responses_sent(native)] == ["Hi", "Hi"]


def test_a_conversation_continues_across_native_and_translating_backends(
    fleet: tuple[FakeOpenAI, FakeBackend],
) -> None:
    native, local = fleet
    with running_server(config(native_entry(native), local_entry(local))) as server:
        sdk = client(server)
        first = sdk.responses.create(model="fake-model", input="Turn one", instructions="Be kind.")
        assert first.output_text == "Hello from native"
        # Turn two: the native backend fails, the translating one gets the whole conversation.
        native.push(Behaviour(status=502, times=1))
        second = sdk.responses.create(
            model="fake-model", input="Turn two", previous_response_id=first.id
        )
        assert second.output_text == "Hello from local"
        assert chats_sent(local)[-1]["messages"] == [
            {"role": "user", "content": "Turn one"},
            {"role": "assistant", "content": "Hello from native"},
            {"role": "user", "content": "Turn two"},
        ]
        # Turn three, native again: the stored conversation in input, no previous_response_id.
        with sdk.responses.stream(
            model="fake-model", input="Turn three", previous_response_id=second.id
        ) as stream:
            third = stream.get_final_response()
        assert third.output_text == "Hello from native"
        sent = responses_sent(native)[-1]
        assert "previous_response_id" not in sent
        # Replayed without ids: the upstream keeps nothing, and refuses ids it did not store.
        assert all("id" not in item for item in sent["input"])
        assert sent["store"] is False
        assert sent["stream"] is True
        said = [
            (
                item.get("role"),
                item["content"] if isinstance(item["content"], str) else item["content"][0]["text"],
            )
            for item in sent["input"]
        ]
        assert said == [
            ("user", "Turn one"),
            ("assistant", "Hello from native"),
            ("user", "Turn two"),
            ("assistant", "Hello from local"),
            ("user", "Turn three"),
        ]


def test_a_native_stream_cut_mid_way_ends_in_response_failed(
    fleet: tuple[FakeOpenAI, FakeBackend],
) -> None:
    native, local = fleet
    with running_server(config(native_entry(native), local_entry(local))) as server:
        native.push(Behaviour(cut_after_events=5, times=1))
        with client(server).responses.stream(model="fake-model", input="Hi there") as stream:
            events = list(stream)
            with pytest.raises(RuntimeError, match=r"response\.completed"):
                stream.get_final_response()
        types = [event.type for event in events]
        assert "response.output_text.delta" in types
        assert types[-2:] == ["error", "response.failed"]
        assert "response.completed" not in types
        assert [e.sequence_number for e in events] == list(range(len(events)))
        failed = events[-1]
        assert failed.type == "response.failed"
        assert failed.response.status == "failed"
        assert failed.response.id == events[0].response.id  # type: ignore[union-attr]
        assert failed.response.error is not None
        assert failed.response.error.code == "server_error"
        # Not kept, and the history says the stream broke; nothing went to the other backend.
        with pytest.raises(openai.NotFoundError):
            client(server).responses.retrieve(failed.response.id)
        history = httpx.get(server.url + "/v1/history").json()["data"]
        assert [(h["backend"], h["error"]) for h in history] == [("native", "stream_broken")]
        assert local.inference_requests == []


def test_a_native_4xx_reaches_the_client_in_openais_envelope(
    fleet: tuple[FakeOpenAI, FakeBackend],
) -> None:
    native, local = fleet
    refusal = {
        "error": {
            "message": "Unsupported parameter: 'foo'.",
            "type": "invalid_request_error",
            "param": "foo",
            "code": "unsupported_parameter",
        }
    }
    with running_server(config(native_entry(native), local_entry(local))) as server:
        native.push(Behaviour(status=400, error_body=refusal, times=1))
        with pytest.raises(openai.BadRequestError) as caught:
            client(server).responses.create(model="fake-model", input="Hi")
        assert caught.value.body == refusal["error"]
        assert caught.value.response.headers["x-nexus-backend"] == "native"
        assert local.inference_requests == []  # a client's mistake is not failed over


def test_a_restricted_request_never_reaches_a_native_cloud_backend(
    fleet: tuple[FakeOpenAI, FakeBackend],
) -> None:
    native, local = fleet
    native.models.append("secret-model")
    local.models.append("secret-model")
    settings = config(native_entry(native, priority=1), local_entry(local, priority=90))
    settings["routing"]["policies"] = [{"model_pattern": "secret-*", "privacy": "restricted"}]
    with running_server(settings) as server:
        raw = client(server).responses.with_raw_response.create(model="secret-model", input="Hi")
        assert raw.headers["x-nexus-backend"] == "local"
        assert raw.headers["x-nexus-route-reason"] == "privacy-restricted"
        assert native.inference_requests == []


def test_the_openai_type_translates_unless_it_fronts_openai_or_is_told(
    fleet: tuple[FakeOpenAI, FakeBackend],
) -> None:
    native, _ = fleet
    entry = native_entry(native)
    del entry["native_responses"]  # an OpenAI-wire cloud that is not api.openai.com
    with running_server(config(entry)) as server:
        assert client(server).responses.create(model="fake-model", input="Hi").output_text == (
            "Hello from native"
        )
        assert responses_sent(native) == []
        assert len(chats_sent(native)) == 1


class _NativeAdapter(OpenAIWireAdapter):
    """A third-party adapter that declares its server speaks the Responses API."""

    type_name: ClassVar[str] = "nativefake"
    is_cloud: ClassVar[bool] = False
    speaks_responses = True


class _Plugin:
    @hookimpl
    def register_backends(self, register: Any) -> None:
        register("nativefake", _NativeAdapter)


@pytest.fixture
def native_type() -> Iterator[None]:
    plugins.register_plugin(_Plugin(), "native-responses-test")
    try:
        yield
    finally:
        plugins.unregister_plugin("native-responses-test")


@pytest.mark.usefixtures("native_type")
def test_an_adapter_declares_it_and_native_responses_false_turns_it_off(
    fleet: tuple[FakeOpenAI, FakeBackend],
) -> None:
    native, _ = fleet
    entry = {"name": "native", "url": native.url, "type": "nativefake"}
    entry["api_key_env"] = KEY_ENV  # the fake checks a key; the adapter sends it
    with running_server(config(entry)) as server:
        client(server).responses.create(model="fake-model", input="Hi")
        assert len(responses_sent(native)) == 1
        assert chats_sent(native) == []
    with running_server(config({**entry, "native_responses": False})) as server:
        client(server).responses.create(model="fake-model", input="Hi")
        assert len(responses_sent(native)) == 1
        assert len(chats_sent(native)) == 1


def test_what_only_the_responses_api_has_goes_to_a_native_backend_only(
    fleet: tuple[FakeOpenAI, FakeBackend],
) -> None:
    native, local = fleet
    tools: Any = [{"type": "web_search"}]
    # The translating backend comes first; it cannot be sent a built-in tool, so it is passed
    # over without a request, and the native backend gets the tool as the client sent it.
    with running_server(config(local_entry(local), native_entry(native))) as server:
        raw = client(server).responses.with_raw_response.create(
            model="fake-model", input="News?", tools=tools
        )
        assert raw.headers["x-nexus-backend"] == "native"
        assert raw.parse().output_text == "Hello from native"
        assert responses_sent(native)[-1]["tools"] == tools
        assert local.inference_requests == []
    # No native backend on the routes: the translation's own 400, and no backend was asked.
    with running_server(config(local_entry(local))) as server:
        with pytest.raises(openai.BadRequestError) as caught:
            client(server).responses.create(model="fake-model", input="News?", tools=tools)
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["param"] == "tools.0.type"
        assert "'web_search'" in caught.value.body["message"]
        history = httpx.get(server.url + "/v1/history").json()["data"]
        assert [h["status"] for h in history] == [400]
        assert local.inference_requests == []


def test_on_complete_gets_the_native_answers(fleet: tuple[FakeOpenAI, FakeBackend]) -> None:
    native, _ = fleet
    seen: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []

    async def keep(items: list[dict[str, Any]], response: dict[str, Any]) -> None:
        seen.append((items, response))

    with running_server(config(native_entry(native))) as server:
        endpoint = server.server.config.app.proxies["/v1/responses"]
        assert isinstance(endpoint, ResponsesEndpoint)
        endpoint.on_complete = keep
        sdk = client(server)
        whole = sdk.responses.create(model="fake-model", input="Hi")
        with sdk.responses.stream(model="fake-model", input="Yo") as stream:
            streamed = stream.get_final_response()
        native.push(Behaviour(cut_after_events=4, times=1))
        with sdk.responses.stream(model="fake-model", input="Cut") as stream:
            list(stream)
    assert [response["id"] for _, response in seen] == [whole.id, streamed.id]
    assert seen[0][0] == [{"type": "message", "role": "user", "content": "Hi"}]
    assert seen[1][1]["status"] == "completed"
    assert seen[1][1]["usage"]["output_tokens"] == 3


def test_the_fake_speaks_the_sdks_shapes(fleet: tuple[FakeOpenAI, FakeBackend]) -> None:
    # The fake itself, straight from the SDK (no Nexus): its objects and events are the SDK's.
    native, _ = fleet
    sdk = openai.OpenAI(base_url=native.url + "/v1", api_key="sk-native", max_retries=0)
    whole = sdk.responses.create(model="fake-model", input="Hi there", instructions="Be brief.")
    assert whole.status == "completed"
    assert whole.output_text == "Hello from native"
    assert whole.usage is not None
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (4, 3)
    call = [{"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    native.push(Behaviour(tool_calls=call, times=1))
    with sdk.responses.stream(model="fake-model", input="Weather?") as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types[:2] == ["response.created", "response.in_progress"]
    assert "response.function_call_arguments.delta" in types
    assert types[-1] == "response.completed"
    item = final.output[0]
    assert item.type == "function_call"
    assert (item.call_id, item.name, item.arguments) == ("call_1", "get_weather", '{"city":"Oslo"}')
    native.push(Behaviour(finish_reason="length", times=1))
    cut = sdk.responses.create(model="fake-model", input="Long", max_output_tokens=1)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
