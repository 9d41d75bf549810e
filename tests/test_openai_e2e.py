"""The OpenAI adapter through a real Nexus (moved from packages/nexus-backend-openai/tests,
whose tests need only that package and nexusgw-core)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from nexus_core.testing import FakeOpenAI
from nexus_server.testing import running_server

KEY_ENV = "NEXUS_TEST_OPENAI_KEY"
KEY = "sk-configured"


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


# -- end to end: the openai SDK -> Nexus -> fake OpenAI -------------------------------------------


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(
        "openai", ["gpt-4o-mini", "text-embedding-3-small", "tts-1"], api_key=KEY
    ).running() as fake:
        yield fake


def test_the_client_authorization_never_reaches_the_cloud(fake_openai: FakeOpenAI) -> None:
    nexus_config = {
        "server": {"first_byte_timeout_seconds": 2.0, "request_timeout_seconds": 10.0},
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600},
        "backends": [
            {"name": "cloud", "url": fake_openai.url, "type": "openai", "api_key_env": KEY_ENV}
        ],
    }
    messages: Any = [{"role": "user", "content": "Hi"}]
    with running_server(nexus_config) as nexus:
        client = openai.OpenAI(base_url=nexus.base_url, api_key="client-key", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages
        )
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        client.embeddings.create(model="text-embedding-3-small", input="hello")
        listed = {m["id"]: m for m in httpx.get(nexus.base_url + "/models").json()["data"]}
    inference = fake_openai.inference_requests
    assert [r.path for r in inference] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
    ]
    assert {r.headers["authorization"] for r in fake_openai.requests} == {f"Bearer {KEY}"}
    assert raw.parse().choices[0].message.content == "Hello from openai"
    assert raw.headers["x-nexus-backend-type"] == "cloud"
    assert raw.headers["x-nexus-privacy-zone"] == "open"
    assert chunks[-1].usage is not None
    assert set(listed) == {"gpt-4o-mini", "text-embedding-3-small"}
    assert listed["gpt-4o-mini"]["context_length"] == 128_000
