"""The ollama adapter against FakeOllama: contract, model facts, loaded models, embeddings, busy."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from nexus_backend_ollama import OllamaAdapter
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    LifecycleError,
    LifecycleFailure,
    ModelInfo,
    ModelState,
    ProbeResult,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.testing import Behaviour, FakeBackend, FakeOllama, closed_port_url
from nexus_core.testing import openai_shapes as shapes
from nexus_core.testing.contract import FAST, AdapterContract, LifecycleContract

pytestmark = pytest.mark.anyio

QWEN: dict[str, Any] = {
    "id": "qwen2.5:7b",
    "capabilities": ["completion", "tools"],
    "context_length": 32768,
    "architecture": "qwen2",
}
LLAVA: dict[str, Any] = {
    "id": "llava:latest",
    "capabilities": ["completion", "vision"],
    "context_length": 4096,
}
NOMIC: dict[str, Any] = {
    "id": "nomic-embed-text:latest",
    "capabilities": ["embedding"],
    "context_length": 2048,
    "architecture": "nomic-bert",
    "embedding_length": 16,
}


class TestOllamaContract(AdapterContract):
    adapter_class = OllamaAdapter
    fake_class = FakeOllama


@pytest.fixture
async def clients() -> AsyncIterator[HttpClients]:
    shared = HttpClients()
    yield shared
    await shared.aclose()


def make_adapter(fake: FakeBackend, clients: HttpClients) -> OllamaAdapter:
    return OllamaAdapter(BackendConfig(name="o", url=fake.url, type="ollama"), clients)


def show_requests(fake: FakeOllama) -> list[str]:
    return [r.json["model"] for r in fake.requests if r.path == "/api/show"]


def by_id(models: Sequence[ModelInfo]) -> dict[str, ModelInfo]:
    return {model.id: model for model in models}


# -- models, capabilities, context length --------------------------------------------------------


async def test_capabilities_and_context_length_from_show(clients: HttpClients) -> None:
    async with FakeOllama("o", [QWEN, LLAVA, NOMIC], legacy_tags=True) as fake:
        adapter = make_adapter(fake, clients)
        result = await adapter.probe()
        await adapter.close()
    assert result.status is BackendStatus.HEALTHY
    assert result.version == "0.33.0"
    assert by_id(result.models) == {
        "qwen2.5:7b": ModelInfo(
            "qwen2.5:7b",
            context_length=32768,  # model_info["qwen2.context_length"]
            vision=False,
            tools=True,
            json_mode=True,
            embeddings=False,
            owned_by="library",
            loaded=False,
        ),
        "llava:latest": ModelInfo(
            "llava:latest",
            context_length=4096,
            vision=True,
            tools=False,
            json_mode=True,
            embeddings=False,
            owned_by="library",
            loaded=False,
        ),
        "nomic-embed-text:latest": ModelInfo(
            "nomic-embed-text:latest",
            context_length=2048,
            vision=False,
            tools=False,
            json_mode=False,
            embeddings=True,
            owned_by="library",
            loaded=False,
        ),
    }
    assert sorted(show_requests(fake)) == sorted(["qwen2.5:7b", "llava:latest", NOMIC["id"]])


async def test_tags_of_a_new_server_spare_the_show_calls(clients: HttpClients) -> None:
    async with FakeOllama("o", [QWEN, NOMIC]) as fake:
        adapter = make_adapter(fake, clients)
        result = await adapter.probe()
    models = by_id(result.models)
    assert models["qwen2.5:7b"].context_length == 32768
    assert models["qwen2.5:7b"].tools is True
    assert models[NOMIC["id"]].embeddings is True
    assert show_requests(fake) == []


async def test_server_without_capabilities_leaves_them_unknown(clients: HttpClients) -> None:
    old = {"id": "mistral:7b", "capabilities": None, "context_length": 32768}
    async with FakeOllama("o", [old], version="0.5.1", legacy_tags=True) as fake:
        result = await make_adapter(fake, clients).probe()
    assert result.models == (
        ModelInfo("mistral:7b", context_length=32768, owned_by="library", loaded=False),
    )


async def test_show_is_not_repeated_while_nothing_changes(clients: HttpClients) -> None:
    async with FakeOllama("o", [QWEN, LLAVA], legacy_tags=True) as fake:
        adapter = make_adapter(fake, clients)
        for _ in range(3):
            first = await adapter.probe()
        assert len(show_requests(fake)) == 2

        # A re-pulled model has a new digest: only it is asked about again.
        fake.set_model("llava:latest", digest="e" * 64, context_length=8192)
        result = await adapter.probe()
        assert show_requests(fake)[2:] == ["llava:latest"]
        assert by_id(result.models)["llava:latest"].context_length == 8192
        assert by_id(result.models)["qwen2.5:7b"] == by_id(first.models)["qwen2.5:7b"]

        # ...and so is one whose modified_at moved (ollama create over the same name).
        fake.set_model("qwen2.5:7b", modified_at="2026-09-01T10:00:00+02:00")
        await adapter.probe()
        assert show_requests(fake)[3:] == ["qwen2.5:7b"]


async def test_show_calls_run_a_few_at_a_time(clients: HttpClients) -> None:
    models = [{**QWEN, "id": f"model-{index}:latest"} for index in range(12)]
    async with FakeOllama("o", models, legacy_tags=True) as fake:
        fake.show_delay = 0.05
        result = await make_adapter(fake, clients).probe()
    assert 1 < fake.show_peak <= 4
    assert all(model.context_length == 32768 for model in result.models)


async def test_a_slow_show_does_not_hold_the_probe(clients: HttpClients) -> None:
    async with FakeOllama("o", [QWEN], legacy_tags=True) as fake:
        fake.show_delay = 2.0
        adapter = make_adapter(fake, clients)
        adapter.show_budget_seconds = 0.1
        started = time.monotonic()
        early = await adapter.probe()
        assert time.monotonic() - started < 1.5  # did not wait for /api/show
        assert early.status is BackendStatus.HEALTHY
        assert early.models == (ModelInfo("qwen2.5:7b", owned_by="library", loaded=False),)
        # The answer still arrives, and the next probe uses it without asking again.
        again = await adapter.probe()
        late = await _probe_until(
            adapter, lambda r: r.models[0].context_length is not None, within=6.0
        )
        await adapter.close()
    assert again.models[0].context_length is None
    assert late.models[0].context_length == 32768
    assert show_requests(fake) == ["qwen2.5:7b"]


async def _probe_until(
    adapter: OllamaAdapter, done: Callable[[ProbeResult], bool], within: float = 3.0
) -> ProbeResult:
    deadline = time.monotonic() + within
    while True:
        result = await adapter.probe()
        if done(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


async def test_show_cache_forgets_removed_models(clients: HttpClients) -> None:
    async with FakeOllama("o", [QWEN, LLAVA], legacy_tags=True) as fake:
        adapter = make_adapter(fake, clients)
        await adapter.probe()
        fake.models = [QWEN]
        result = await adapter.probe()
        fake.models = [QWEN, LLAVA]  # pulled again: new to us, so asked about again
        await adapter.probe()
    assert [m.id for m in result.models] == ["qwen2.5:7b"]
    assert show_requests(fake).count("llava:latest") == 2


async def test_a_server_older_than_api_version(clients: HttpClients) -> None:
    async with FakeOllama("o", [QWEN], version=None) as fake:
        result = await make_adapter(fake, clients).probe()
        detected = await OllamaAdapter.detect(fake.url, clients)
    assert result.status is BackendStatus.HEALTHY
    assert result.version is None
    assert [m.id for m in result.models] == ["qwen2.5:7b"]
    assert detected is True


async def test_unhealthy_when_api_version_fails(clients: HttpClients) -> None:
    async with FakeOllama("o", [QWEN]) as fake:
        fake.push(Behaviour(status=500, probes=True, times=3))  # version, tags and ps
        result = await make_adapter(fake, clients).probe()
    assert result.status is BackendStatus.UNHEALTHY
    assert result.detail == "/api/version answered HTTP 500"


# -- loaded models ---------------------------------------------------------------------------------


async def test_loaded_models_and_their_runtime_context(clients: HttpClients) -> None:
    warm = {**QWEN, "loaded": True, "runtime_context_length": 8192}
    async with FakeOllama("o", [warm, LLAVA]) as fake:
        adapter = make_adapter(fake, clients)
        assert adapter.loaded_models is None  # nothing known before a probe
        models = by_id((await adapter.probe()).models)
        assert models["qwen2.5:7b"].loaded is True
        assert models["llava:latest"].loaded is False
        loaded = adapter.loaded_models
        assert loaded is not None
        assert list(loaded) == ["qwen2.5:7b"]
        assert loaded["qwen2.5:7b"].context_length == 8192
        # The model's own context stays what it was trained for; 8192 is today's num_ctx.
        assert models["qwen2.5:7b"].context_length == 32768

        # A request loads a model, and the next probe sees it in memory.
        body = {"model": "llava:latest", "messages": [{"role": "user", "content": "hi"}]}
        response = await adapter.send(
            Endpoint.CHAT, json.dumps(body).encode(), stream=False, timeouts=FAST
        )
        assert response.status == 200
        models = by_id((await adapter.probe()).models)
        assert models["llava:latest"].loaded is True


# -- embeddings ------------------------------------------------------------------------------------


def embed_body(**fields: Any) -> bytes:
    return json.dumps({"model": NOMIC["id"], **fields}).encode()


@pytest.fixture
async def ollama(clients: HttpClients) -> AsyncIterator[tuple[FakeOllama, OllamaAdapter]]:
    async with FakeOllama("o", [QWEN, NOMIC]) as fake:
        adapter = make_adapter(fake, clients)
        yield fake, adapter
        await adapter.close()


async def test_embeddings_of_one_string(ollama: tuple[FakeOllama, OllamaAdapter]) -> None:
    fake, adapter = ollama
    response = await adapter.send(
        Endpoint.EMBEDDINGS, embed_body(input="hello world"), stream=False, timeouts=FAST
    )
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.body is not None
    answer = json.loads(response.body)
    assert answer == {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": 0,
                "embedding": shapes.embedding_vector("hello world", 16),
            }
        ],
        "model": NOMIC["id"],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    (sent,) = fake.inference_requests
    assert sent.path == "/api/embed"
    assert sent.json == {"model": NOMIC["id"], "input": ["hello world"]}


async def test_embeddings_of_a_batch_with_native_options(
    ollama: tuple[FakeOllama, OllamaAdapter],
) -> None:
    fake, adapter = ollama
    body = embed_body(
        input=["one", "two words", "three more words"],
        dimensions=4,
        truncate=False,
        keep_alive="10m",
        user="someone",
    )
    response = await adapter.send(Endpoint.EMBEDDINGS, body, stream=False, timeouts=FAST)
    assert response.body is not None
    answer = json.loads(response.body)
    assert [item["index"] for item in answer["data"]] == [0, 1, 2]
    assert all(len(item["embedding"]) == 4 for item in answer["data"])
    assert answer["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    # One upstream request for the whole batch, with what /api/embed understands.
    (sent,) = fake.inference_requests
    assert sent.json == {
        "model": NOMIC["id"],
        "input": ["one", "two words", "three more words"],
        "dimensions": 4,
        "truncate": False,
        "keep_alive": "10m",
    }


async def test_embeddings_in_base64(ollama: tuple[FakeOllama, OllamaAdapter]) -> None:
    _, adapter = ollama
    floats_response = await adapter.send(
        Endpoint.EMBEDDINGS, embed_body(input=["a", "b"]), stream=False, timeouts=FAST
    )
    packed_response = await adapter.send(
        Endpoint.EMBEDDINGS,
        embed_body(input=["a", "b"], encoding_format="base64"),
        stream=False,
        timeouts=FAST,
    )
    assert floats_response.body is not None
    assert packed_response.body is not None
    floats = json.loads(floats_response.body)["data"]
    packed = json.loads(packed_response.body)["data"]
    for plain, encoded in zip(floats, packed, strict=True):
        raw = base64.b64decode(encoded["embedding"])
        assert len(raw) == 4 * 16
        unpacked = struct.unpack("<16f", raw)  # little-endian float32, as OpenAI sends
        assert unpacked == pytest.approx(plain["embedding"], rel=1e-6)


async def test_embeddings_of_an_unknown_model_is_a_client_error(
    ollama: tuple[FakeOllama, OllamaAdapter],
) -> None:
    _, adapter = ollama
    body = json.dumps({"model": "nope:latest", "input": "x"}).encode()
    with pytest.raises(BackendError) as info:
        await adapter.send(Endpoint.EMBEDDINGS, body, stream=False, timeouts=FAST)
    assert info.value.kind is ErrorKind.CLIENT_ERROR
    assert info.value.status == 404
    assert not info.value.retryable
    # Ollama's {"error": "text"} becomes the OpenAI envelope Ollama's own /v1 would send.
    assert json.loads(info.value.body) == {
        "error": {
            "message": "model 'nope:latest' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input": "x", "encoding_format": "int8"}, "Invalid value for 'encoding_format'"),
        ({"input": []}, "invalid input"),
        ({}, "invalid input"),
    ],
)
async def test_embeddings_refused_before_the_server(
    ollama: tuple[FakeOllama, OllamaAdapter], fields: dict[str, Any], message: str
) -> None:
    fake, adapter = ollama
    with pytest.raises(BackendError) as info:
        await adapter.send(Endpoint.EMBEDDINGS, embed_body(**fields), stream=False, timeouts=FAST)
    assert info.value.kind is ErrorKind.CLIENT_ERROR
    assert info.value.status == 400
    assert json.loads(info.value.body)["error"]["message"].startswith(message)
    assert fake.inference_requests == []


async def test_embeddings_of_token_arrays_are_refused_by_ollama(
    ollama: tuple[FakeOllama, OllamaAdapter],
) -> None:
    _, adapter = ollama
    with pytest.raises(BackendError) as info:
        await adapter.send(
            Endpoint.EMBEDDINGS, embed_body(input=[[1, 2, 3]]), stream=False, timeouts=FAST
        )
    assert info.value.status == 400
    assert json.loads(info.value.body)["error"]["message"] == "invalid input type"


async def test_embeddings_malformed_answer(ollama: tuple[FakeOllama, OllamaAdapter]) -> None:
    fake, adapter = ollama
    fake.push(Behaviour(malformed=True))
    with pytest.raises(BackendError) as info:
        await adapter.send(Endpoint.EMBEDDINGS, embed_body(input="x"), stream=False, timeouts=FAST)
    assert info.value.kind is ErrorKind.MALFORMED
    assert info.value.retryable is False


@pytest.mark.parametrize(
    ("status", "kind"), [(500, ErrorKind.SERVER_ERROR), (503, ErrorKind.SERVER_ERROR)]
)
async def test_embeddings_server_errors_keep_their_kind(
    ollama: tuple[FakeOllama, OllamaAdapter], status: int, kind: ErrorKind
) -> None:
    fake, adapter = ollama
    fake.push(Behaviour(status=status))
    with pytest.raises(BackendError) as info:
        await adapter.send(Endpoint.EMBEDDINGS, embed_body(input="x"), stream=False, timeouts=FAST)
    assert info.value.kind is kind
    assert info.value.status == status
    assert json.loads(info.value.body)["error"]["type"] == "api_error"


# -- a busy server ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS])
async def test_server_busy_is_overloaded(
    ollama: tuple[FakeOllama, OllamaAdapter], endpoint: Endpoint
) -> None:
    fake, adapter = ollama
    fake.busy = True
    payloads: dict[Endpoint, dict[str, Any]] = {
        Endpoint.CHAT: {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}]},
        Endpoint.COMPLETIONS: {"model": "qwen2.5:7b", "prompt": "hi"},
        Endpoint.EMBEDDINGS: {"model": NOMIC["id"], "input": "x"},
    }
    body = json.dumps(payloads[endpoint]).encode()
    with pytest.raises(BackendError) as info:
        await adapter.send(endpoint, body, stream=False, timeouts=FAST)
    assert info.value.kind is ErrorKind.OVERLOADED
    assert info.value.status == 503
    assert info.value.retryable
    assert b"server busy" in info.value.body


async def test_busy_stream_is_overloaded_too(ollama: tuple[FakeOllama, OllamaAdapter]) -> None:
    fake, adapter = ollama
    fake.busy = True
    body = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with pytest.raises(BackendError) as info:
        await adapter.send(Endpoint.CHAT, json.dumps(body).encode(), stream=True, timeouts=FAST)
    assert info.value.kind is ErrorKind.OVERLOADED


async def test_unknown_chat_model_stays_a_client_error(
    ollama: tuple[FakeOllama, OllamaAdapter],
) -> None:
    _, adapter = ollama
    body = {"model": "nope:latest", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BackendError) as info:
        await adapter.send(Endpoint.CHAT, json.dumps(body).encode(), stream=False, timeouts=FAST)
    assert info.value.kind is ErrorKind.CLIENT_ERROR
    assert info.value.status == 404
    assert json.loads(info.value.body)["error"]["type"] == "not_found_error"


# -- detection -------------------------------------------------------------------------------------


async def test_detect_claims_ollama_only(clients: HttpClients) -> None:
    async with FakeOllama("o") as ollama, FakeBackend("openai-only") as generic:
        assert await OllamaAdapter.detect(ollama.url, clients) is True
        assert await OllamaAdapter.detect(ollama.url + "/v1", clients) is True
        assert await OllamaAdapter.detect(generic.url, clients) is False
    assert await OllamaAdapter.detect(closed_port_url(), clients) is False


# -- model lifecycle ------------------------------------------------------------------------------


class TestOllamaLifecycle(LifecycleContract):
    adapter_class = OllamaAdapter
    models = ("alpha:latest", "beta:latest")

    def make_fake(self) -> FakeBackend:
        return FakeOllama("o", self.models)

    def slow_loads(self, fake: FakeBackend, seconds: float) -> None:
        assert isinstance(fake, FakeOllama)
        fake.load_seconds = seconds


def lifecycle_adapter(fake: FakeOllama, clients: HttpClients) -> OllamaAdapter:
    return OllamaAdapter(BackendConfig(name="o", url=fake.url, type="ollama"), clients)


async def test_available_models_with_sizes_and_memory(clients: HttpClients) -> None:
    warm = {**QWEN, "loaded": True, "size": 4_000_000_000, "size_vram": 3_000_000_000}
    cold = {**LLAVA, "size": 5_000_000_000}
    async with FakeOllama("o", [warm, cold]) as fake:
        adapter = lifecycle_adapter(fake, clients)
        support = await adapter.lifecycle_support()
        assert (support.load, support.unload, support.autoload) == (True, True, True)
        inventory = await adapter.available_models()
        qwen, llava = inventory.get("qwen2.5:7b"), inventory.get("llava:latest")
        assert qwen is not None
        assert llava is not None
        assert (qwen.state, qwen.size_bytes) == (ModelState.LOADED, 4_000_000_000)
        # /api/ps: memory taken, of which in GPU memory, the runtime context, the keep-alive.
        assert (qwen.memory_bytes, qwen.gpu_memory_bytes) == (4_000_000_000, 3_000_000_000)
        assert qwen.context_length == 4096
        assert qwen.detail is not None
        assert qwen.detail.startswith("in memory until ")
        assert (llava.state, llava.size_bytes, llava.memory_bytes) == (
            ModelState.UNLOADED,
            5_000_000_000,
            None,
        )
        # Used: what the loaded models take; Ollama reports no total, so nothing is free.
        assert inventory.memory_used_bytes == 4_000_000_000
        assert inventory.memory_free_bytes is None


async def test_load_and_unload_go_through_api_generate(clients: HttpClients) -> None:
    async with FakeOllama("o", [QWEN], unload_seconds=0.3) as fake:
        adapter = lifecycle_adapter(fake, clients)
        entry = await adapter.load_model("qwen2.5:7b", timeout=10)
        assert (entry.state, entry.memory_bytes) == (ModelState.LOADED, 2_019_393_189)
        await adapter.unload_model("qwen2.5:7b", timeout=10)
        # Ollama answers the unload before its runner stops: the adapter waited for /api/ps.
        assert fake.loaded == {}
        calls = [r.json for r in fake.requests if r.path == "/api/generate"]
        assert calls == [{"model": "qwen2.5:7b"}, {"model": "qwen2.5:7b", "keep_alive": 0}]


async def test_a_load_ollama_cannot_do_is_a_load_failure(clients: HttpClients) -> None:
    async with FakeOllama("o", [QWEN]) as fake:
        fake.fail_loads.add("qwen2.5:7b")
        adapter = lifecycle_adapter(fake, clients)
        with pytest.raises(LifecycleError) as info:
            await adapter.load_model("qwen2.5:7b", timeout=10)
        assert info.value.reason is LifecycleFailure.LOAD_FAILED
        assert info.value.status == 500
        assert "requires more system memory" in info.value.message


async def test_ollama_evicts_beyond_its_maximum_and_requests_load(clients: HttpClients) -> None:
    async with FakeOllama("o", [QWEN, LLAVA], max_loaded=1) as fake:
        adapter = lifecycle_adapter(fake, clients)
        await adapter.load_model("qwen2.5:7b", timeout=10)
        await adapter.load_model("llava:latest", timeout=10)
        inventory = await adapter.available_models()
        assert inventory.in_state(ModelState.LOADED) == ("llava:latest",)
        # A request for a model out of memory loads it, as Ollama does.
        body = json.dumps({"model": "qwen2.5:7b", "messages": [], "max_tokens": 2}).encode()
        await adapter.send(Endpoint.CHAT, body, stream=False, timeouts=FAST)
        assert (await adapter.available_models()).in_state(ModelState.LOADED) == ("qwen2.5:7b",)
