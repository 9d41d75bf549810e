"""A stream that completed is counted as completed, on every front door, with the real SDKs.

Each stream below runs to its end through the real ``openai``, ``anthropic`` and ``ollama``
clients; its ``/v1/history`` entry must have no ``error``, and neither ``nexus_errors_total`` nor
``/v1/stats``'s error count may move. The backend ends its streams with ``data: [DONE]``, or (as
some servers do) just closes them after the last chunk. A stream the client really abandons is
the control: it is counted as ``client_closed``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend("a", ["fake-model"])
    with fake.running():
        yield fake


@pytest.fixture(scope="module")
def server(backend: FakeBackend) -> Iterator[RunningServer]:
    with running_server(gateway_config(backend)) as running:
        yield running


@pytest.fixture(params=["done", "no-done"])
def ending(request: pytest.FixtureRequest, backend: FakeBackend) -> Iterator[str]:
    """How the backend ends its streams: with ``data: [DONE]``, or by closing without it."""
    backend.reset()
    if request.param == "no-done":
        backend.behave(Behaviour(omit_done=True))
    yield str(request.param)
    backend.reset()


def errors_total(server: RunningServer) -> float:
    """The sum of every ``nexus_errors_total`` series."""
    text = httpx.get(server.url + "/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "nexus_errors"
        for sample in family.samples
        if sample.name == "nexus_errors_total"
    )


def stats_errors(server: RunningServer) -> int:
    errors: int = httpx.get(server.url + "/v1/stats").json()["requests"]["errors"]
    return errors


def entry_of(server: RunningServer, request_id: str) -> dict[str, Any]:
    """The request's ``/v1/history`` entry, once its stream has ended (it is written then)."""
    deadline = time.monotonic() + 10
    while True:
        for entry in httpx.get(server.url + "/v1/history").json()["data"]:
            if entry["request_id"] == request_id:
                found: dict[str, Any] = entry
                return found
        assert time.monotonic() < deadline, f"no history entry for {request_id}"
        time.sleep(0.02)


def openai_chat(base: str, request_id: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    stream = client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        stream=True,
        extra_headers={"X-Request-Id": request_id},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from a"


def openai_chat_with_usage(base: str, request_id: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Request-Id": request_id},
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def openai_completions(base: str, request_id: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    stream = client.completions.create(
        model="fake-model", prompt="Hi", stream=True, extra_headers={"X-Request-Id": request_id}
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices)


def anthropic_stream_helper(base: str, request_id: str) -> None:
    client = anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
    with client.messages.stream(
        model="fake-model",
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"X-Request-Id": request_id},
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"


def anthropic_create_stream(base: str, request_id: str) -> None:
    client = anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
    events = client.messages.create(
        model="fake-model",
        max_tokens=64,
        messages=MESSAGES,
        stream=True,
        extra_headers={"X-Request-Id": request_id},
    )
    assert [event.type for event in events][-1] == "message_stop"


def ollama_chat(base: str, request_id: str) -> None:
    client = ollama.Client(host=base, headers={"X-Request-Id": request_id})
    parts = list(client.chat(model="fake-model", messages=MESSAGES, stream=True))
    assert parts[-1].done is True


def ollama_generate(base: str, request_id: str) -> None:
    client = ollama.Client(host=base, headers={"X-Request-Id": request_id})
    parts = list(client.generate(model="fake-model", prompt="Hi", stream=True))
    assert parts[-1].done is True


def ollama_generate_raw(base: str, request_id: str) -> None:
    """``raw`` generate goes to the backend's completions endpoint."""
    client = ollama.Client(host=base, headers={"X-Request-Id": request_id})
    parts = list(client.generate(model="fake-model", prompt="Hi", stream=True, raw=True))
    assert parts[-1].done is True


CLIENTS: dict[str, tuple[Callable[[str, str], None], str, str]] = {
    "openai-chat": (openai_chat, "openai", "chat"),
    "openai-chat-include-usage": (openai_chat_with_usage, "openai", "chat"),
    "openai-completions": (openai_completions, "openai", "completions"),
    "anthropic-messages-stream": (anthropic_stream_helper, "anthropic", "chat"),
    "anthropic-create-stream": (anthropic_create_stream, "anthropic", "chat"),
    "ollama-chat": (ollama_chat, "ollama", "chat"),
    "ollama-generate": (ollama_generate, "ollama", "chat"),
    "ollama-generate-raw": (ollama_generate_raw, "ollama", "completions"),
}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_completed_stream_is_not_an_error(
    server: RunningServer, ending: str, client: str
) -> None:
    run, door, endpoint = CLIENTS[client]
    before = (errors_total(server), stats_errors(server))
    request_id = f"{client}-{ending}-{uuid.uuid4().hex[:8]}"
    run(server.url, request_id)
    entry = entry_of(server, request_id)
    assert (entry["front_door"], entry["endpoint"], entry["stream"]) == (door, endpoint, True)
    assert (entry["status"], entry["error"], entry["backend"]) == (200, None, "a")
    assert (errors_total(server), stats_errors(server)) == before


def test_a_stream_the_client_abandons_is_client_closed(
    server: RunningServer, backend: FakeBackend
) -> None:
    """The control: the same count does move when the client really goes away mid-stream."""
    backend.reset()
    backend.behave(Behaviour(delay_between_events=0.2))
    try:
        before = (errors_total(server), stats_errors(server))
        client = anthropic.Anthropic(base_url=server.url, api_key="sk-ant-test", max_retries=0)
        with client.messages.stream(
            model="fake-model",
            max_tokens=64,
            messages=MESSAGES,
            extra_headers={"X-Request-Id": "abandoned"},
        ) as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    break  # leaving the block closes the connection
        entry = entry_of(server, "abandoned")
        assert entry["error"] == "client_closed"
        assert (errors_total(server), stats_errors(server)) == (before[0] + 1, before[1] + 1)
    finally:
        backend.reset()
