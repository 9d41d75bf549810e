"""Nexus in front of fake Ollamas, driven by the real ``openai`` SDK: embeddings, busy servers."""

from __future__ import annotations

import base64
import contextlib
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from nexus_core.testing import FakeOllama
from nexus_core.testing import openai_shapes as shapes
from nexus_server.testing import RunningServer, running_server

EMBED = "nomic-embed-text:latest"
CHAT = "qwen2.5:7b"
MODELS: list[dict[str, Any]] = [
    {"id": CHAT, "capabilities": ["completion", "tools"], "context_length": 32768},
    {"id": EMBED, "capabilities": ["embedding"], "context_length": 2048, "embedding_length": 16},
]
MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]


def config(*fakes: FakeOllama) -> dict[str, Any]:
    # The first fake is the preferred backend: lower priority value, and latency (which varies
    # with the machine's load) left out of the score.
    return {
        "server": {"first_byte_timeout_seconds": 2.0, "request_timeout_seconds": 10.0},
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600},
        "routing": {"weights": {"latency": 0}},
        "backends": [
            {"name": fake.name, "url": fake.url, "type": "ollama", "priority": 10 * (index + 1)}
            for index, fake in enumerate(fakes)
        ],
    }


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama("o", MODELS).running() as fake:
        yield fake


@pytest.fixture
def nexus(ollama: FakeOllama) -> Iterator[RunningServer]:
    with running_server(config(ollama)) as server:
        yield server


def expected(text: str) -> list[float]:
    return shapes.embedding_vector(text, 16)


def test_models_carry_what_ollama_told(nexus: RunningServer) -> None:
    listed = httpx.get(nexus.base_url + "/models").json()["data"]
    models = {entry["id"]: entry for entry in listed}
    assert models[CHAT]["context_length"] == 32768
    assert models[EMBED]["context_length"] == 2048


def test_embeddings_of_one_string(nexus: RunningServer, ollama: FakeOllama) -> None:
    answer = client(nexus).embeddings.create(
        model=EMBED, input="hello world", encoding_format="float"
    )
    assert [item.embedding for item in answer.data] == [expected("hello world")]
    assert answer.model == EMBED
    assert answer.usage.prompt_tokens == 2
    assert answer.usage.total_tokens == 2
    (sent,) = ollama.inference_requests
    assert sent.path == "/api/embed"
    assert sent.json == {"model": EMBED, "input": ["hello world"]}


def test_embeddings_of_a_list(nexus: RunningServer, ollama: FakeOllama) -> None:
    texts = ["first text", "second", "the third one"]
    answer = client(nexus).embeddings.create(model=EMBED, input=texts, encoding_format="float")
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert [item.embedding for item in answer.data] == [expected(t) for t in texts]
    assert answer.usage.prompt_tokens == 6
    assert len(ollama.inference_requests) == 1  # one batched upstream call


def test_embeddings_in_base64_as_the_sdk_asks_by_default(
    nexus: RunningServer, ollama: FakeOllama
) -> None:
    # Without encoding_format the SDK asks for base64 and decodes the float32s itself.
    answer = client(nexus).embeddings.create(model=EMBED, input=["a", "b"])
    assert ollama.inference_requests[0].path == "/api/embed"
    for item, text in zip(answer.data, ["a", "b"], strict=True):
        assert item.embedding == pytest.approx(expected(text), rel=1e-6)


def test_embeddings_in_base64_on_the_wire(nexus: RunningServer) -> None:
    response = httpx.post(
        nexus.base_url + "/embeddings",
        json={"model": EMBED, "input": "x", "encoding_format": "base64"},
    )
    assert response.status_code == 200
    packed = response.json()["data"][0]["embedding"]
    assert isinstance(packed, str)
    assert struct.unpack("<16f", base64.b64decode(packed)) == pytest.approx(expected("x"), rel=1e-6)


def test_embeddings_of_an_unknown_model_on_ollama(ollama: FakeOllama) -> None:
    # The model is listed (so Nexus routes it) but gone from the server by the time it is used.
    with running_server(config(ollama)) as server:
        ollama.models = [MODELS[0]]
        with pytest.raises(openai.NotFoundError) as info:
            client(server).embeddings.create(model=EMBED, input="x")
    assert info.value.status_code == 404
    body: Any = info.value.body
    assert body["message"] == f"model '{EMBED}' not found"
    assert body["type"] == "not_found_error"


@pytest.fixture
def pair() -> Iterator[list[FakeOllama]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(FakeOllama(name, MODELS).running()) for name in ("busy", "calm")]


def test_nexus_prefers_the_ollama_where_the_model_is_loaded() -> None:
    warm_models = [{**MODELS[0], "loaded": True}, MODELS[1]]
    with (
        FakeOllama("cold", MODELS).running() as cold,
        FakeOllama("warm", warm_models).running() as warm,
        running_server(config(cold, warm)) as server,  # cold has the better priority
    ):
        raw = client(server).chat.completions.with_raw_response.create(
            model=CHAT, messages=MESSAGES
        )
    assert raw.headers["x-nexus-backend"] == "warm"
    assert cold.inference_requests == []
    assert len(warm.inference_requests) == 1


def test_busy_ollama_fails_over_for_chat(pair: list[FakeOllama]) -> None:
    busy, calm = pair
    with running_server(config(busy, calm)) as server:
        busy.busy = True
        raw = client(server).chat.completions.with_raw_response.create(
            model=CHAT, messages=MESSAGES
        )
        completion = raw.parse()
    assert raw.headers["x-nexus-backend"] == "calm"
    assert completion.choices[0].message.content == "Hello from calm"
    assert len(busy.inference_requests) == 1  # tried first, answered "server busy"
    assert len(calm.inference_requests) == 1


def test_busy_ollama_fails_over_for_streams(pair: list[FakeOllama]) -> None:
    busy, calm = pair
    with running_server(config(busy, calm)) as server:
        busy.busy = True
        with client(server).chat.completions.with_streaming_response.create(
            model=CHAT, messages=MESSAGES, stream=True
        ) as response:
            backend = response.headers["x-nexus-backend"]
            chunks = list(response.parse())
    assert backend == "calm"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from calm"
    )
    assert len(busy.inference_requests) == 1


def test_busy_ollama_fails_over_for_embeddings(pair: list[FakeOllama]) -> None:
    busy, calm = pair
    with running_server(config(busy, calm)) as server:
        busy.busy = True
        raw = client(server).embeddings.with_raw_response.create(model=EMBED, input=["a", "b"])
        answer = raw.parse()
    assert raw.headers["x-nexus-backend"] == "calm"
    assert len(answer.data) == 2
    assert [r.path for r in busy.inference_requests] == ["/api/embed"]
    assert [r.path for r in calm.inference_requests] == ["/api/embed"]


def test_every_ollama_busy_is_a_rate_limit(ollama: FakeOllama) -> None:
    with running_server(config(ollama)) as server:
        ollama.busy = True
        with pytest.raises(openai.RateLimitError) as info:
            client(server).chat.completions.create(model=CHAT, messages=MESSAGES)
    assert info.value.status_code == 429
    assert "busy" in info.value.message
