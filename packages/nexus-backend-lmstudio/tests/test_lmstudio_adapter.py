"""The lmstudio adapter against a fake LM Studio: the contract, model states and types, streams."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from nexus_backend_lmstudio import LMStudioAdapter
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    LifecycleError,
    LifecycleFailure,
    ModelInfo,
    ModelState,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.sse import event_data
from nexus_core.testing import (
    Behaviour,
    FakeBackend,
    FakeExo,
    FakeLMStudio,
    FakeLocalAI,
    FakeOllama,
    FakeOpenAI,
)
from nexus_core.testing.contract import FAST, AdapterContract, LifecycleContract

pytestmark = pytest.mark.anyio

VLM = "qwen2-vl-7b-instruct"
LLM = "meta-llama-3.1-8b-instruct"
EMBED = "text-embedding-nomic-embed-text-v1.5"
MODELS: list[dict[str, Any]] = [
    {"id": VLM, "type": "vlm", "state": "not-loaded", "max_context_length": 32768},
    {
        "id": LLM,
        "type": "llm",
        "state": "loaded",
        "max_context_length": 131072,
        "loaded_context_length": 8192,
    },
    {"id": EMBED, "type": "embeddings", "state": "not-loaded", "max_context_length": 2048},
]


class TestLMStudioContract(AdapterContract):
    adapter_class = LMStudioAdapter
    fake_class = FakeLMStudio


class TestLMStudioContractWithToken(AdapterContract):
    """LM Studio's optional API token (``Authorization: Bearer``)."""

    adapter_class = LMStudioAdapter
    fake_class = FakeLMStudio
    api_key = "lms-token"


def lmstudio(url: str, clients: HttpClients) -> LMStudioAdapter:
    return LMStudioAdapter(BackendConfig(name="lms", url=url, type="lmstudio"), clients)


def chat(model: str, **extra: Any) -> bytes:
    payload = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}
    return json.dumps(payload).encode()


async def test_probe_maps_type_state_and_context(clients: HttpClients) -> None:
    async with FakeLMStudio("lms", MODELS) as fake:
        adapter = lmstudio(fake.url, clients)
        assert adapter.model_loaded(LLM) is None  # nothing known before the first probe
        result = await adapter.probe()
    assert result.status is BackendStatus.HEALTHY
    assert result.models == (
        ModelInfo(
            id=VLM,
            context_length=32768,
            vision=True,
            embeddings=False,
            owned_by="organization_owner",
        ),
        # Loaded: the window it was loaded with, not the model's maximum.
        ModelInfo(
            id=LLM,
            context_length=8192,
            vision=False,
            embeddings=False,
            owned_by="organization_owner",
        ),
        ModelInfo(
            id=EMBED,
            context_length=2048,
            vision=False,
            tools=False,
            json_mode=False,
            embeddings=True,
            owned_by="organization_owner",
        ),
    )
    assert adapter.loaded_models == {LLM}
    assert (adapter.model_loaded(LLM), adapter.model_loaded(VLM)) == (True, False)


async def test_loaded_model_without_loaded_context_reports_its_maximum(
    clients: HttpClients,
) -> None:
    model = {"id": LLM, "state": "loaded", "max_context_length": 131072}
    async with FakeLMStudio("lms", [{**model, "loaded_context_length": None}]) as fake:
        result = await lmstudio(fake.url, clients).probe()
    assert [m.context_length for m in result.models] == [131072]


async def test_without_jit_only_loaded_models_are_listed(clients: HttpClients) -> None:
    async with FakeLMStudio("lms", MODELS, jit=False) as fake:
        result = await lmstudio(fake.url, clients).probe()
    # A not-loaded model cannot be served without just-in-time loading: not listed at all.
    assert [m.id for m in result.models] == [LLM]


async def test_a_request_loads_the_model_and_the_next_probe_sees_it(
    clients: HttpClients,
) -> None:
    async with FakeLMStudio("lms", MODELS) as fake:
        adapter = lmstudio(fake.url, clients)
        await adapter.probe()
        before = adapter.model_loaded(VLM)
        response = await adapter.send(Endpoint.CHAT, chat(VLM), stream=False, timeouts=FAST)
        await adapter.probe()
        after = adapter.model_loaded(VLM)
    assert response.status == 200
    assert (before, after) == (False, True)


async def test_older_server_falls_back_to_v1_models(clients: HttpClients) -> None:
    async with FakeLMStudio("lms", MODELS, rest_api=False) as fake:
        # LM Studio before 0.3.6: /api/v0 is an "unexpected endpoint", answered with 200.
        async with httpx.AsyncClient() as client:
            quirk = await client.get(fake.url + "/api/v0/models")
        adapter = lmstudio(fake.url, clients)
        result = await adapter.probe()
        detected = await LMStudioAdapter.detect(fake.url, clients)
    assert adapter.model_loaded(LLM) is None
    assert quirk.status_code == 200
    assert quirk.json() == {"error": "Unexpected endpoint or method. (GET /api/v0/models)"}
    assert result.status is BackendStatus.HEALTHY
    assert result.models == tuple(
        ModelInfo(id=m["id"], owned_by="organization_owner") for m in MODELS
    )
    assert detected


async def test_probe_reads_the_rest_api_with_the_token(
    clients: HttpClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMS_TOKEN", "lms-token")
    async with FakeLMStudio("lms", MODELS, api_key="lms-token") as fake:
        config = BackendConfig(name="lms", url=fake.url, type="lmstudio", api_key_env="LMS_TOKEN")
        adapter = LMStudioAdapter(config, clients)
        result = await adapter.probe()
    assert [m.context_length for m in result.models] == [32768, 8192, 2048]
    assert adapter.loaded_models == {LLM}


async def test_stream_without_usage_is_complete(clients: HttpClients) -> None:
    async with FakeLMStudio("lms", MODELS) as fake:
        body = chat(LLM, stream=True, stream_options={"include_usage": True})
        response = await lmstudio(fake.url, clients).send(
            Endpoint.CHAT, body, stream=True, timeouts=FAST
        )
        assert response.events is not None
        events = [event async for event in response.events]
        await response.aclose()
    datas = [event_data(event) for event in events]
    assert datas[-1] == b"[DONE]"
    chunks = [json.loads(data) for data in datas[:-1]]
    # LM Studio ignores include_usage; the stream still counts as complete (no error raised).
    assert not any(chunk.get("usage") for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_string_error_bodies_become_envelopes(clients: HttpClients) -> None:
    async with FakeLMStudio("lms", MODELS) as fake:
        fake.push(Behaviour(status=400, error_body={"error": "Invalid 'messages' field"}))
        with pytest.raises(BackendError) as info:
            await lmstudio(fake.url, clients).send(
                Endpoint.CHAT, chat(LLM), stream=False, timeouts=FAST
            )
    assert info.value.kind is ErrorKind.CLIENT_ERROR
    assert json.loads(info.value.body) == {
        "error": {
            "message": "Invalid 'messages' field",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


async def test_unknown_model_is_lm_studios_404(clients: HttpClients) -> None:
    async with FakeLMStudio("lms", MODELS, jit=False) as fake:
        with pytest.raises(BackendError) as info:
            await lmstudio(fake.url, clients).send(
                Endpoint.CHAT, chat(VLM), stream=False, timeouts=FAST
            )
    assert info.value.status == 404
    assert json.loads(info.value.body)["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    "fake_class",
    [FakeBackend, FakeExo, FakeLocalAI, FakeOllama, FakeOpenAI],
    ids=lambda c: c.__name__,
)
async def test_detect_claims_no_other_server(
    fake_class: type[FakeBackend], clients: HttpClients
) -> None:
    async with fake_class("other", ["m"]) as fake:
        assert not await LMStudioAdapter.detect(fake.url, clients, api_key="sk-x")


# -- model lifecycle ------------------------------------------------------------------------------


class TestLMStudioLifecycle(LifecycleContract):
    adapter_class = LMStudioAdapter

    def make_fake(self) -> FakeBackend:
        # Without just-in-time loading: only a load makes a model servable.
        return FakeLMStudio(
            "lms", [{"id": model, "state": "not-loaded"} for model in self.models], jit=False
        )

    def slow_loads(self, fake: FakeBackend, seconds: float) -> None:
        assert isinstance(fake, FakeLMStudio)
        fake.load_delay = seconds


def lms_adapter(fake: FakeLMStudio, clients: HttpClients) -> LMStudioAdapter:
    return LMStudioAdapter(BackendConfig(name="lms", url=fake.url, type="lmstudio"), clients)


async def test_v1_listing_load_and_unload(clients: HttpClients) -> None:
    async with FakeLMStudio("lms", MODELS) as fake:
        adapter = lms_adapter(fake, clients)
        support = await adapter.lifecycle_support()
        assert (support.load, support.unload, support.autoload) == (True, True, None)
        inventory = await adapter.available_models()
        assert [(e.id, e.state, e.context_length) for e in inventory.models] == [
            (VLM, ModelState.UNLOADED, None),
            (LLM, ModelState.LOADED, 8192),
            (EMBED, ModelState.UNLOADED, None),
        ]
        assert {e.size_bytes for e in inventory.models} == {4_920_000_000}
        entry = await adapter.load_model(VLM, timeout=10)
        assert (entry.state, entry.context_length) == (ModelState.LOADED, 4096)
        assert fake.instances(VLM) == [VLM]
        await adapter.unload_model(LLM, timeout=10)
        assert fake.state(LLM) == "not-loaded"
        calls = [(r.path, r.json) for r in fake.requests if r.method == "POST"]
        assert calls == [
            ("/api/v1/models/load", {"model": VLM}),
            ("/api/v1/models/unload", {"instance_id": LLM}),
        ]


async def test_unload_unloads_every_instance(clients: HttpClients) -> None:
    async with FakeLMStudio("lms", MODELS) as fake:
        adapter = lms_adapter(fake, clients)
        # A load of a loaded model made elsewhere (lms, the SDK) adds a second instance.
        async with httpx.AsyncClient(trust_env=False) as client:
            await client.post(f"{fake.url}/api/v1/models/load", json={"model": LLM})
        assert fake.instances(LLM) == [LLM, f"{LLM}:2"]
        entry = (await adapter.available_models()).get(LLM)
        assert entry is not None
        assert entry.detail == "2 instances loaded"
        await adapter.unload_model(LLM, timeout=10)
        assert fake.instances(LLM) == []


async def test_a_failed_load_is_a_load_failure(clients: HttpClients) -> None:
    async with FakeLMStudio("lms", MODELS) as fake:
        fake.fail_loads.add(VLM)
        with pytest.raises(LifecycleError) as info:
            await lms_adapter(fake, clients).load_model(VLM, timeout=10)
        assert info.value.reason is LifecycleFailure.LOAD_FAILED
        assert "not enough memory" in info.value.message


async def test_before_0_4_it_lists_but_cannot_load(clients: HttpClients) -> None:
    async with FakeLMStudio("lms", MODELS, v1_api=False) as fake:
        adapter = lms_adapter(fake, clients)
        support = await adapter.lifecycle_support()
        assert (support.available_models, support.load, support.unload) == (True, False, False)
        assert support.detail is not None
        assert "lms" in support.detail
        inventory = await adapter.available_models()
        assert inventory.in_state(ModelState.LOADED) == (LLM,)
        with pytest.raises(LifecycleError) as info:
            await adapter.load_model(VLM, timeout=10)
        assert info.value.reason is LifecycleFailure.NOT_SUPPORTED
        assert not [r for r in fake.requests if r.method == "POST"]
