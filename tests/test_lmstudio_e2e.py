"""The LM Studio adapter through a real Nexus (moved from packages/nexus-backend-lmstudio/tests,
whose tests need only that package and nexusgw-core)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from nexus_core.testing import (
    FakeLMStudio,
)
from nexus_server.testing import running_server

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


# -- end to end: the openai SDK -> Nexus -> fake LM Studio ----------------------------------------


@pytest.fixture
def fake_lmstudio() -> Iterator[FakeLMStudio]:
    with FakeLMStudio("lms", MODELS).running() as fake:
        yield fake


def nexus_config(fake: FakeLMStudio) -> dict[str, Any]:
    return {
        "server": {"first_byte_timeout_seconds": 2.0, "request_timeout_seconds": 10.0},
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600},
        "backends": [{"name": "lms", "url": fake.url, "type": "lmstudio"}],
    }


def test_streaming_through_nexus_without_usage(fake_lmstudio: FakeLMStudio) -> None:
    with running_server(nexus_config(fake_lmstudio)) as nexus:
        client = openai.OpenAI(base_url=nexus.base_url, api_key="sk-test", max_retries=0)
        stream = client.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        listed = {m["id"]: m for m in httpx.get(nexus.base_url + "/models").json()["data"]}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from lms"
    )
    assert all(chunk.usage is None for chunk in chunks)
    assert listed[LLM]["context_length"] == 8192
    assert listed[EMBED]["context_length"] == 2048
