"""The openai adapter against a fake OpenAI: the contract, the model filter and table, the key,
rate-limit headers as load, and the client's ``Authorization`` never reaching the cloud."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from nexus_backend_openai import (
    OpenAIAdapter,
    RateLimits,
    cloud_api_base,
    models_table,
    parse_duration,
    serves,
)
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    LoadSignal,
    ModelInfo,
    Timeouts,
    UpstreamResponse,
    speaks_responses,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.registry import busy_fraction
from nexus_core.testing import (
    FakeBackend,
    FakeExo,
    FakeLMStudio,
    FakeLocalAI,
    FakeOllama,
    FakeOpenAI,
)
from nexus_core.testing.contract import FAST, AdapterContract

pytestmark = pytest.mark.anyio

KEY_ENV = "NEXUS_TEST_OPENAI_KEY"
KEY = "sk-configured"
# What api.openai.com lists (abridged), chat and embedding models among the rest.
LISTED = [
    "gpt-4o",
    "gpt-4o-2024-05-13",
    "gpt-4o-2024-08-06",
    "gpt-4o-mini",
    "gpt-4o-mini-tts",
    "gpt-4o-transcribe",
    "gpt-4o-realtime-preview",
    "gpt-4o-audio-preview",
    "gpt-4o-search-preview",
    "gpt-4.1-nano-2025-04-14",
    "o1-pro",
    "o3-mini",
    "o4-mini-deep-research",
    "codex-mini-latest",
    "computer-use-preview",
    "dall-e-3",
    "gpt-image-1",
    "tts-1-hd",
    "whisper-1",
    "omni-moderation-latest",
    "text-embedding-3-small",
    "babbage-002",
    {"id": "ft:gpt-4o-mini-2024-07-18:acme::Bx1", "owned_by": "org-acme"},
]
SERVED = [
    "gpt-4o",
    "gpt-4o-2024-05-13",
    "gpt-4o-2024-08-06",
    "gpt-4o-mini",
    "gpt-4o-search-preview",
    "gpt-4.1-nano-2025-04-14",
    "o3-mini",
    "text-embedding-3-small",
    "babbage-002",
    "ft:gpt-4o-mini-2024-07-18:acme::Bx1",
]


class TestOpenAIContract(AdapterContract):
    adapter_class = OpenAIAdapter
    fake_class = FakeOpenAI
    api_key = "sk-contract"


def config(url: str, **extra: Any) -> BackendConfig:
    return BackendConfig(name="openai", url=url, type="openai", api_key_env=KEY_ENV, **extra)


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def chat(model: str = "gpt-4o-mini") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}]}).encode()


# -- models: the filter and the table -------------------------------------------------------------


async def test_probe_lists_served_models_completed_from_the_table(clients: HttpClients) -> None:
    async with FakeOpenAI("openai", LISTED, api_key=KEY) as fake:
        result = await OpenAIAdapter(config(fake.url), clients).probe()
    assert result.status is BackendStatus.HEALTHY
    models = {model.id: model for model in result.models}
    assert list(models) == SERVED
    assert models["gpt-4o-2024-08-06"] == ModelInfo(
        "gpt-4o-2024-08-06",
        context_length=128_000,
        vision=True,
        tools=True,
        json_mode=True,
        embeddings=False,
        owned_by="system",
    )
    assert models["o3-mini"].vision is False
    assert models["text-embedding-3-small"].embeddings is True
    assert models["text-embedding-3-small"].context_length == 8191
    assert models["gpt-4.1-nano-2025-04-14"].context_length == 1_047_576
    # Not in the table: everything unknown, nothing excluded.
    assert models["gpt-4o-search-preview"] == ModelInfo("gpt-4o-search-preview", owned_by="system")
    assert models["ft:gpt-4o-mini-2024-07-18:acme::Bx1"].vision is True


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-5", "gpt-5"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("gpt-5.4-nano-2026-03-17", "gpt-5.4-nano"),
        ("gpt-5.6-luna-2026-07-30", "gpt-5.6-luna"),
        ("gpt-4o-2024-05-13", "gpt-4o"),
        ("o3-2025-04-16", "o3"),
        ("ft:gpt-4o-mini-2024-07-18:acme::Bx1", "gpt-4o-mini"),
        ("gpt-5-chat-latest", None),  # a smaller window than gpt-5: not a snapshot of it
        ("gpt-4o-search-preview", None),
        ("gpt-4", None),
        ("llama-3.1-8b-instant", None),
    ],
)
def test_snapshots_and_fine_tunes_take_their_family(model: str, family: str | None) -> None:
    assert models_table.lookup(model) == (models_table.MODELS[family] if family else None)


def test_current_models_are_in_the_table() -> None:
    assert models_table.lookup("gpt-5") == models_table.ModelSpec(
        400_000, vision=True, tools=True, json_mode=True, embeddings=False
    )
    assert models_table.MODELS["gpt-5.4"].context_length == 1_050_000


def test_prices_are_cores_not_the_adapters() -> None:
    # A price() hook would override core's table (nexus_core.pricing) for every OpenAI model.
    assert not hasattr(OpenAIAdapter(config("https://api.openai.com"), HttpClients()), "price")


def test_table_is_dated_and_complete_per_entry() -> None:
    year, month = models_table.CHECKED.split("-")
    assert len(year) == 4
    assert 1 <= int(month) <= 12
    for name, spec in models_table.MODELS.items():
        assert spec.context_length, name
        assert serves(name), name


@pytest.mark.parametrize(
    "model",
    [
        "tts-1",
        "whisper-1",
        "dall-e-2",
        "gpt-image-1",
        "omni-moderation-latest",
        "gpt-realtime",
        "gpt-4o-mini-transcribe",
        "gpt-audio",
        "o3-pro-2025-06-10",
        "sora-2",
        "playai-tts",
    ],
)
def test_models_of_other_endpoints_are_not_served(model: str) -> None:
    assert not serves(model)


@pytest.mark.parametrize(
    "model", ["gpt-4o", "o1", "gemini-1.5-pro", "gpt-4o-search-preview", "llama-3.3-70b"]
)
def test_chat_models_are_served(model: str) -> None:
    assert serves(model)


# -- the URL and the key --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://api.openai.com", "https://api.openai.com/v1"),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1"),
        ("https://api.groq.com/openai", "https://api.groq.com/openai/v1"),
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1"),
        (
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "https://generativelanguage.googleapis.com/v1beta/openai",
        ),
    ],
)
def test_api_base_from_the_configured_url(url: str, base: str) -> None:
    assert cloud_api_base(url) == base
    assert OpenAIAdapter(config(url), HttpClients()).api_base == base


async def test_requests_carry_the_configured_key(clients: HttpClients) -> None:
    async with FakeOpenAI("openai", api_key=KEY) as fake:
        adapter = OpenAIAdapter(config(fake.url + "/v1"), clients)
        await adapter.probe()
        await adapter.send(Endpoint.CHAT, chat(), stream=False, timeouts=FAST)
    assert [r.path for r in fake.requests] == ["/v1/models", "/v1/chat/completions"]
    assert {r.headers["authorization"] for r in fake.requests} == {f"Bearer {KEY}"}


async def test_a_missing_key_is_named_in_the_probe_detail(
    clients: HttpClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    async with FakeOpenAI("openai") as fake:
        result = await OpenAIAdapter(config(fake.url), clients).probe()
    assert result.status is BackendStatus.UNHEALTHY
    assert result.detail == f"HTTP 401: no API key (the environment variable {KEY_ENV} is not set)"
    assert "authorization" not in fake.requests[0].headers


# -- rate limits as load --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("", None), ("5x", None)],
)
def test_reset_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


async def test_reading_expires_when_the_window_resets() -> None:
    limits = RateLimits()
    limits.observe(
        {
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "75",
            "x-ratelimit-reset-requests": "50ms",
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "500",
            "x-ratelimit-reset-tokens": "80ms",
        }
    )
    # Tokens are the scarcer: half spent.
    assert limits.current() == LoadSignal(busy_slots=500, total_slots=1000)
    await asyncio.sleep(0.1)
    assert limits.current() is None


class HeaderPassingTransport:
    """The hot-path transport as the recommended core change makes it: 2xx headers passed on."""

    def __init__(self) -> None:
        self.client = httpx.AsyncClient()

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        stream: bool,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        response = await self.client.post(url, content=body, headers=dict(headers))
        lowered = {key.lower(): value for key, value in response.headers.items()}
        if response.status_code >= 300:
            raise BackendError.from_status(response.status_code, response.content, lowered)
        return UpstreamResponse(
            status=response.status_code,
            content_type=lowered.get("content-type", "application/json"),
            body=response.content,
            headers=lowered,
        )

    async def aclose(self) -> None:
        await self.client.aclose()


async def test_rate_limit_headers_feed_load() -> None:
    clients = HttpClients(transport=HeaderPassingTransport())
    try:
        async with FakeOpenAI("openai", api_key=KEY, limit_requests=100) as fake:
            fake.reset_requests = "1m0s"
            adapter = OpenAIAdapter(config(fake.url), clients)
            assert await adapter.load() is None
            for _ in range(3):
                await adapter.send(Endpoint.CHAT, chat(), stream=False, timeouts=FAST)
            signal = await adapter.load()
    finally:
        await clients.aclose()
    assert signal == LoadSignal(busy_slots=3, total_slots=100)
    assert busy_fraction(signal) == pytest.approx(0.03)


async def test_a_429_marks_the_limit_spent(clients: HttpClients) -> None:
    # Through the real hot-path transport, which passes headers on for errors already.
    async with FakeOpenAI("openai", api_key=KEY, limit_requests=2) as fake:
        fake.reset_requests = "1m0s"
        adapter = OpenAIAdapter(config(fake.url), clients)
        for _ in range(2):
            await adapter.send(Endpoint.CHAT, chat(), stream=False, timeouts=FAST)
        with pytest.raises(BackendError) as info:
            await adapter.send(Endpoint.CHAT, chat(), stream=False, timeouts=FAST)
        signal = await adapter.load()
    assert info.value.kind is ErrorKind.OVERLOADED
    assert json.loads(info.value.body)["error"]["code"] == "rate_limit_exceeded"
    assert signal == LoadSignal(busy_slots=2, total_slots=2)
    assert busy_fraction(signal) == 1.0


# -- detection ------------------------------------------------------------------------------------


async def test_detects_openai_by_host_or_by_its_headers(clients: HttpClients) -> None:
    assert await OpenAIAdapter.detect("https://api.openai.com/v1", clients)
    async with FakeOpenAI("openai", api_key=KEY) as fake:
        assert await OpenAIAdapter.detect(fake.url, clients, api_key=KEY)
        assert not await OpenAIAdapter.detect(fake.url, clients)  # no key: never claimed
        assert not await OpenAIAdapter.detect(fake.url, clients, api_key="sk-wrong")


async def test_detects_an_openai_model_list_behind_a_proxy(clients: HttpClients) -> None:
    # A proxy that drops OpenAI's headers still lists OpenAI's model owners.
    async with FakeBackend("proxy", [{"id": "gpt-4o", "owned_by": "openai"}]) as fake:
        assert await OpenAIAdapter.detect(fake.url, clients, api_key=KEY)


@pytest.mark.parametrize(
    "fake_class",
    [FakeBackend, FakeExo, FakeLMStudio, FakeLocalAI, FakeOllama],
    ids=lambda c: c.__name__,
)
async def test_detect_claims_no_local_server(
    fake_class: type[FakeBackend], clients: HttpClients
) -> None:
    async with fake_class("other", ["m"]) as fake:
        assert not await OpenAIAdapter.detect(fake.url, clients, api_key=KEY)


@pytest.mark.parametrize(
    ("url", "native"),
    [
        ("https://api.openai.com", True),
        ("https://api.openai.com/v1", True),
        ("https://api.groq.com/openai/v1", False),
        ("https://openrouter.ai/api/v1", False),
    ],
)
def test_only_openais_own_api_is_declared_to_speak_the_responses_api(
    url: str, native: bool
) -> None:
    # Other OpenAI-wire clouds often lack /v1/responses: they get it translated to chat unless
    # their backend's config says native_responses = true.
    adapter = OpenAIAdapter(config(url), HttpClients())
    assert speaks_responses(adapter) is native
