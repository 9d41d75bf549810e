"""The seven bundled backend adapters: probing and type detection against canned servers.

Each canned server answers the paths and JSON shapes its real server documents (see
``/work/shared/reference/backend-apis.md``): enough to check what the adapters read, not a fake
of the whole server (that is ``nexus_core.testing``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from nexus_backend_exo import ExoAdapter
from nexus_backend_llamacpp import LlamaCppAdapter
from nexus_backend_lmstudio import LMStudioAdapter
from nexus_backend_localai import LocalAIAdapter
from nexus_backend_ollama import OllamaAdapter
from nexus_backend_openai import OpenAIAdapter
from nexus_backend_vllm import VLLMAdapter
from nexus_core.adapters import BackendStatus, ModelInfo
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter
from nexus_core.testing import closed_port_url

pytestmark = pytest.mark.anyio

Route = tuple[int, Any]  # status, JSON body (or str for a text body)

OLLAMA: dict[str, Route] = {
    "/": (200, "Ollama is running"),
    "/api/version": (200, {"version": "0.33.0"}),
    "/api/tags": (
        200,
        {
            "models": [
                {
                    "name": "llava:latest",
                    "model": "llava:latest",
                    "details": {"family": "llama", "context_length": 32768},
                    "capabilities": ["completion", "vision"],
                },
                {
                    "name": "llama3.2:latest",
                    "model": "llama3.2:latest",
                    "details": {"family": "llama", "parameter_size": "3.2B"},
                },
            ]
        },
    ),
    "/v1/models": (
        200,
        {"object": "list", "data": [{"id": "llava:latest", "owned_by": "library"}]},
    ),
}
VLLM: dict[str, Route] = {
    "/health": (200, ""),
    "/version": (200, {"version": "0.33.0"}),
    "/v1/models": (
        200,
        {
            "object": "list",
            "data": [
                {
                    "id": "meta-llama/Llama-3.1-8B-Instruct",
                    "object": "model",
                    "owned_by": "vllm",
                    "root": "/models/llama",
                    "parent": None,
                    "max_model_len": 8192,
                }
            ],
        },
    ),
}
LLAMACPP: dict[str, Route] = {
    "/health": (200, {"status": "ok"}),
    "/props": (200, {"default_generation_settings": {"n_ctx": 512}, "total_slots": 2}),
    "/v1/models": (
        200,
        {
            "object": "list",
            "data": [
                {
                    "id": "tiny",
                    "object": "model",
                    "owned_by": "llamacpp",
                    "architecture": {"input_modalities": ["text", "image"]},
                    "meta": {"n_ctx": 512, "n_ctx_train": 2048},
                }
            ],
        },
    ),
}
LMSTUDIO: dict[str, Route] = {
    "/v1/models": (
        200,
        {
            "object": "list",
            "data": [{"id": "qwen2.5-7b-instruct", "owned_by": "organization_owner"}],
        },
    ),
    "/api/v0/models": (
        200,
        {
            "object": "list",
            "data": [
                {
                    "id": "qwen2.5-7b-instruct",
                    "type": "llm",
                    "state": "loaded",
                    "max_context_length": 32768,
                }
            ],
        },
    ),
}
EXO: dict[str, Route] = {
    "/node_id": (200, "12D3KooW"),
    "/v1/models": (
        200,
        {
            "object": "list",
            "data": [
                {"id": "mlx-community/Llama-3.2-1B", "owned_by": "exo", "context_length": 131072}
            ],
        },
    ),
}
LOCALAI: dict[str, Route] = {
    "/readyz": (200, ""),
    "/healthz": (200, ""),
    "/v1/models": (200, {"object": "list", "data": [{"id": "phi-2", "object": "model"}]}),
}
SERVERS: dict[str, dict[str, Route]] = {
    "ollama": OLLAMA,
    "vllm": VLLM,
    "llamacpp": LLAMACPP,
    "lmstudio": LMSTUDIO,
    "exo": EXO,
    "localai": LOCALAI,
}
ADAPTERS: dict[str, type[OpenAIWireAdapter]] = {
    "ollama": OllamaAdapter,
    "vllm": VLLMAdapter,
    "llamacpp": LlamaCppAdapter,
    "lmstudio": LMStudioAdapter,
    "exo": ExoAdapter,
    "localai": LocalAIAdapter,
    "openai": OpenAIAdapter,
}


class Canned:
    """A real HTTP server on 127.0.0.1 answering fixed routes; 404 for anything else."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[web.Request] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        status, body = self.routes.get(request.path, (404, {"error": "not found"}))
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)


@pytest.fixture
async def canned() -> AsyncIterator[Canned]:
    server = Canned()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def clients() -> AsyncIterator[HttpClients]:
    clients = HttpClients()
    try:
        yield clients
    finally:
        await clients.aclose()


def adapter(
    cls: type[OpenAIWireAdapter], url: str, clients: HttpClients, **extra: Any
) -> OpenAIWireAdapter:
    return cls(BackendConfig(name="b", url=url, type=cls.type_name, **extra), clients)


@pytest.mark.parametrize("server", sorted(SERVERS))
async def test_each_type_detects_only_its_own_server(
    server: str, canned: Canned, clients: HttpClients
) -> None:
    canned.routes = SERVERS[server]
    detected = {name for name, cls in ADAPTERS.items() if await cls.detect(canned.url, clients)}
    assert detected == {server}


async def test_detect_is_false_when_nothing_listens(clients: HttpClients) -> None:
    url = closed_port_url()
    for cls in ADAPTERS.values():
        assert await cls.detect(url, clients) is False


async def test_openai_detected_by_host_without_a_request(clients: HttpClients) -> None:
    assert await OpenAIAdapter.detect("https://api.openai.com/v1", clients) is True
    assert await OpenAIAdapter.detect("https://api.example.com/v1", clients) is False


async def test_ollama_probe_reads_version_and_tags(canned: Canned, clients: HttpClients) -> None:
    canned.routes = OLLAMA
    # A URL written with /v1 reaches the same native API.
    result = await adapter(OllamaAdapter, canned.url + "/v1", clients).probe()
    assert result.status is BackendStatus.HEALTHY
    assert result.version == "0.33.0"
    assert result.models == (
        ModelInfo(
            id="llava:latest",
            context_length=32768,
            vision=True,
            tools=False,
            json_mode=True,  # Ollama constrains JSON output for any text-generating model
            embeddings=False,
            owned_by="library",
        ),
        # An older server whose /api/show and /api/ps do not answer either: all stays unknown.
        ModelInfo(id="llama3.2:latest", owned_by="library"),
    )


async def test_ollama_probe_unhealthy_when_tags_fail(canned: Canned, clients: HttpClients) -> None:
    canned.routes = {**OLLAMA, "/api/tags": (500, {"error": "boom"})}
    result = await adapter(OllamaAdapter, canned.url, clients).probe()
    assert result.status is BackendStatus.UNHEALTHY
    assert result.detail == "/api/tags answered HTTP 500"


# vLLM refuses connections while it loads: a server that never answered is `loading` for a while
# (packages/nexus-backend-vllm/tests cover it).
@pytest.mark.parametrize("name", sorted(set(ADAPTERS) - {"vllm"}))
async def test_probe_unhealthy_when_nothing_listens(name: str, clients: HttpClients) -> None:
    extra = {"api_key_env": "NEXUS_TEST_KEY"} if ADAPTERS[name].is_cloud else {}
    result = await adapter(ADAPTERS[name], closed_port_url(), clients, **extra).probe()
    assert result.status is BackendStatus.UNHEALTHY
    assert result.detail is not None
    assert result.detail.startswith("cannot connect")


async def test_vllm_probe_reads_max_model_len(canned: Canned, clients: HttpClients) -> None:
    canned.routes = VLLM
    result = await adapter(VLLMAdapter, canned.url, clients).probe()
    assert result.status is BackendStatus.HEALTHY
    assert [(m.id, m.context_length) for m in result.models] == [
        ("meta-llama/Llama-3.1-8B-Instruct", 8192)
    ]
    assert [r.path for r in canned.requests] == ["/health", "/v1/models", "/version"]
    assert result.version == "0.33.0"


async def test_vllm_probe_unhealthy_when_engine_dead(canned: Canned, clients: HttpClients) -> None:
    canned.routes = {**VLLM, "/health": (503, "")}
    result = await adapter(VLLMAdapter, canned.url, clients).probe()
    assert result.status is BackendStatus.UNHEALTHY
    assert result.detail == "/health answered HTTP 503"


async def test_llamacpp_probe_loading_on_503(canned: Canned, clients: HttpClients) -> None:
    loading = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
    canned.routes = {**LLAMACPP, "/health": (503, loading)}
    result = await adapter(LlamaCppAdapter, canned.url, clients).probe()
    assert result.status is BackendStatus.LOADING
    # ...and still recognisable as llama-server while it loads.
    assert await LlamaCppAdapter.detect(canned.url, clients) is True


async def test_llamacpp_probe_reads_slot_context_and_vision(
    canned: Canned, clients: HttpClients
) -> None:
    canned.routes = LLAMACPP
    result = await adapter(LlamaCppAdapter, canned.url, clients).probe()
    assert result.status is BackendStatus.HEALTHY
    assert result.models == (
        ModelInfo(id="tiny", context_length=512, vision=True, json_mode=True, owned_by="llamacpp"),
    )


async def test_localai_probe_needs_readyz(canned: Canned, clients: HttpClients) -> None:
    canned.routes = LOCALAI
    healthy = await adapter(LocalAIAdapter, canned.url, clients).probe()
    assert healthy.status is BackendStatus.HEALTHY
    assert [m.id for m in healthy.models] == ["phi-2"]
    canned.routes = {**LOCALAI, "/readyz": (503, "")}
    unready = await adapter(LocalAIAdapter, canned.url, clients).probe()
    assert unready.status is BackendStatus.UNHEALTHY


async def test_exo_and_lmstudio_probe_the_model_list(canned: Canned, clients: HttpClients) -> None:
    canned.routes = EXO
    exo = await adapter(ExoAdapter, canned.url, clients).probe()
    assert [(m.id, m.context_length) for m in exo.models] == [
        ("mlx-community/Llama-3.2-1B", 131072)
    ]
    canned.routes = LMSTUDIO
    lmstudio = await adapter(LMStudioAdapter, canned.url, clients).probe()
    assert [m.id for m in lmstudio.models] == ["qwen2.5-7b-instruct"]


async def test_openai_probe_sends_the_configured_key(
    canned: Canned, clients: HttpClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_TEST_OPENAI_KEY", "sk-test")
    canned.routes = {
        "/v1/models": (
            200,
            {"object": "list", "data": [{"id": "gpt-4o-mini", "owned_by": "system"}]},
        )
    }
    openai = adapter(OpenAIAdapter, canned.url, clients, api_key_env="NEXUS_TEST_OPENAI_KEY")
    result = await openai.probe()
    assert OpenAIAdapter.is_cloud is True
    assert result.status is BackendStatus.HEALTHY
    assert [m.id for m in result.models] == ["gpt-4o-mini"]
    assert canned.requests[0].headers["Authorization"] == "Bearer sk-test"
