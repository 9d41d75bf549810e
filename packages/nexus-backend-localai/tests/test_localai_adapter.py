"""The localai adapter against a fake LocalAI: contract, readiness, capabilities, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nexus_backend_localai import LocalAIAdapter
from nexus_core.adapters import BackendError, BackendStatus, Endpoint, ErrorKind, ModelInfo
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.testing import (
    Behaviour,
    FakeBackend,
    FakeExo,
    FakeLMStudio,
    FakeLocalAI,
    FakeOllama,
    FakeOpenAI,
)
from nexus_core.testing.contract import FAST, AdapterContract
from nexus_core.testing.localai import model_loading_error

pytestmark = pytest.mark.anyio

CHAT = "llama-3.2-3b-instruct"
VISION = "gemma-3-4b-it"
EMBED = "nomic-embed-text-v1.5"
TTS = "kokoro"
LOOSE = "loose-file.gguf"
MODELS: list[dict[str, Any]] = [
    {"id": CHAT, "capabilities": ["chat", "completion", "tools"]},
    {"id": VISION, "capabilities": ["chat", "vision"], "input_modalities": ["text", "image"]},
    {"id": EMBED, "capabilities": ["embeddings"]},
    {"id": TTS, "capabilities": ["tts"], "output_modalities": ["audio"]},
    {"id": LOOSE, "capabilities": None},  # a model file without a configuration
]


class TestLocalAIContract(AdapterContract):
    adapter_class = LocalAIAdapter
    fake_class = FakeLocalAI


class TestLocalAIContractWithKey(AdapterContract):
    adapter_class = LocalAIAdapter
    fake_class = FakeLocalAI
    api_key = "localai-key"


def localai(url: str, clients: HttpClients, **extra: Any) -> LocalAIAdapter:
    return LocalAIAdapter(BackendConfig(name="lai", url=url, type="localai", **extra), clients)


def chat(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}]}).encode()


async def send_error(adapter: LocalAIAdapter, model: str = CHAT) -> BackendError:
    with pytest.raises(BackendError) as info:
        await adapter.send(Endpoint.CHAT, chat(model), stream=False, timeouts=FAST)
    return info.value


async def test_probe_reads_capabilities_and_version(clients: HttpClients) -> None:
    async with FakeLocalAI("lai", MODELS, version="v3.9.0") as fake:
        result = await localai(fake.url, clients).probe()
    assert result.status is BackendStatus.HEALTHY
    assert result.version == "v3.9.0"
    assert result.models == (
        ModelInfo(CHAT, tools=True, embeddings=False),
        ModelInfo(VISION, vision=True, embeddings=False),
        ModelInfo(EMBED, embeddings=True),
        # The speech model is left out; the unconfigured one is listed, capabilities unknown.
        ModelInfo(LOOSE),
    )


async def test_older_server_is_read_from_v1_models(clients: HttpClients) -> None:
    async with FakeLocalAI("lai", MODELS, capabilities_endpoint=False) as fake:
        result = await localai(fake.url, clients).probe()
        paths = [request.path for request in fake.requests]
    assert result.status is BackendStatus.HEALTHY
    assert result.models == tuple(ModelInfo(m["id"]) for m in MODELS)
    assert sorted(paths[:2]) == ["/readyz", "/v1/models/capabilities"]  # asked at once
    assert paths[2:] == ["/v1/models", "/version"]


async def test_starting_server_is_loading(clients: HttpClients) -> None:
    async with FakeLocalAI("lai", MODELS) as fake:
        fake.starting = True
        adapter = localai(fake.url, clients)
        starting = await adapter.probe()
        detected_while_starting = await LocalAIAdapter.detect(fake.url, clients)
        fake.starting = False
        ready = await adapter.probe()
    assert starting.status is BackendStatus.LOADING
    assert starting.detail == "LocalAI: startup preload in progress"
    assert detected_while_starting
    assert ready.status is BackendStatus.HEALTHY


async def test_readiness_is_public_when_a_key_is_required(
    clients: HttpClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeLocalAI("lai", MODELS, api_key="k") as fake:
        without_key = await localai(fake.url, clients).probe()
        monkeypatch.setenv("LAI_KEY", "k")
        with_key = await localai(fake.url, clients, api_key_env="LAI_KEY").probe()
        detected = await LocalAIAdapter.detect(fake.url, clients, api_key="k")
    assert without_key.status is BackendStatus.UNHEALTHY  # /readyz passes, the models need the key
    assert without_key.detail is not None
    assert without_key.detail.startswith("HTTP 401")
    assert with_key.status is BackendStatus.HEALTHY
    assert detected


async def test_unknown_model_error_becomes_an_openai_envelope(clients: HttpClients) -> None:
    async with FakeLocalAI("lai", MODELS) as fake:
        error = await send_error(localai(fake.url, clients), model="nope")
    assert error.kind is ErrorKind.CLIENT_ERROR
    assert error.status == 404
    assert error.headers["content-type"] == "application/json"
    assert json.loads(error.body) == {
        "error": {
            "message": 'model "nope" not found. To see available models, call GET /v1/models',
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }


async def test_empty_type_and_integer_code_are_normalised(clients: HttpClients) -> None:
    async with FakeLocalAI("lai", MODELS) as fake:
        fake.push(Behaviour(status=500))
        error = await send_error(localai(fake.url, clients))
    assert error.kind is ErrorKind.SERVER_ERROR
    assert json.loads(error.body)["error"] == {
        "message": "rpc error: code = Unknown desc = HTTP 500",
        "type": "server_error",
        "param": None,
        "code": None,
    }


async def test_a_loading_model_fails_over_after_retry_after(clients: HttpClients) -> None:
    async with FakeLocalAI("lai", MODELS) as fake:
        fake.push(Behaviour(status=503, error_body=model_loading_error(CHAT), retry_after=3))
        error = await send_error(localai(fake.url, clients))
    assert error.kind is ErrorKind.SERVER_ERROR
    assert error.retryable
    assert error.retry_after == 3
    assert json.loads(error.body)["error"]["code"] == "model_loading"


async def test_opaque_errors_get_a_body(clients: HttpClients) -> None:
    async with FakeLocalAI("lai", MODELS) as fake:
        fake.opaque_errors = True  # LocalAI --opaque-errors: the status and nothing else
        fake.push(Behaviour(status=403))
        error = await send_error(localai(fake.url, clients))
    assert error.kind is ErrorKind.CLIENT_ERROR
    assert json.loads(error.body) == {
        "error": {
            "message": "LocalAI answered HTTP 403 (Forbidden)",
            "type": "permission_error",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize(
    "fake_class",
    [FakeBackend, FakeExo, FakeLMStudio, FakeOllama, FakeOpenAI],
    ids=lambda c: c.__name__,
)
async def test_detect_claims_no_other_server(
    fake_class: type[FakeBackend], clients: HttpClients
) -> None:
    async with fake_class("other", ["m"]) as fake:
        assert not await LocalAIAdapter.detect(fake.url, clients, api_key="sk-x")
