"""The LocalAI adapter through a real Nexus (moved from packages/nexus-backend-localai/tests,
whose tests need only that package and nexusgw-core)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from nexus_core.testing import (
    Behaviour,
    FakeLocalAI,
)
from nexus_core.testing.localai import localai_error
from nexus_server.testing import running_server

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


# -- end to end: the openai SDK -> Nexus -> fake LocalAI ------------------------------------------


@pytest.fixture
def fake_localai() -> Iterator[FakeLocalAI]:
    with FakeLocalAI("lai", MODELS).running() as fake:
        yield fake


def test_client_sees_an_openai_error(fake_localai: FakeLocalAI) -> None:
    config = {
        "server": {"first_byte_timeout_seconds": 2.0, "request_timeout_seconds": 10.0},
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600},
        "backends": [{"name": "lai", "url": fake_localai.url, "type": "localai"}],
    }
    fake_localai.push(
        Behaviour(status=400, error_body=localai_error(400, "failed parsing request body"))
    )
    with running_server(config) as nexus:
        client = openai.OpenAI(base_url=nexus.base_url, api_key="sk-test", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}])
        answer = client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body == {
        "message": "failed parsing request body",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert answer.choices[0].message.content == "Hello from lai"
