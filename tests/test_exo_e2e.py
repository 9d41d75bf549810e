"""The exo adapter through a real Nexus (moved from packages/nexus-backend-exo/tests,
whose tests need only that package and nexusgw-core)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from nexus_core.testing import (
    FakeBackend,
    FakeExo,
)
from nexus_server.testing import running_server

LLAMA = "mlx-community/Llama-3.2-1B-Instruct-4bit"
QWEN_VL = "mlx-community/Qwen2.5-VL-7B-Instruct-4bit"
CUSTOM = "someone/custom-model"
FLUX = "exolabs/FLUX.1-schnell"
IDLE = "mlx-community/DeepSeek-V3.1-4bit"
CARDS: list[dict[str, Any]] = [
    {"id": LLAMA, "context_length": 131072, "capabilities": ["text"]},
    {"id": QWEN_VL, "context_length": 32768, "capabilities": ["text", "vision"]},
    # A custom card: exo fills context_length with 0 and capabilities with [].
    {"id": CUSTOM, "context_length": 0, "capabilities": [], "is_custom": True},
    {"id": FLUX, "capabilities": ["image_gen"], "tasks": ["TextToImage"]},
    {"id": IDLE, "capabilities": ["text", "thinking"], "running": False},
]


# -- end to end: the openai SDK -> Nexus -> fake exo ----------------------------------------------


@pytest.fixture
def fakes() -> Iterator[tuple[FakeExo, FakeBackend]]:
    with (
        FakeExo("exo", CARDS).running() as exo_fake,
        FakeBackend("spare", [LLAMA]).running() as spare,
    ):
        yield exo_fake, spare


def nexus_config(exo_fake: FakeExo, spare: FakeBackend) -> dict[str, Any]:
    return {
        "server": {"first_byte_timeout_seconds": 2.0, "request_timeout_seconds": 10.0},
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600},
        "backends": [
            {"name": "exo", "url": exo_fake.url, "type": "exo", "priority": 10},
            {"name": "spare", "url": spare.url, "priority": 90},
        ],
    }


def test_sdk_streams_through_nexus_and_fails_over_when_the_instance_is_gone(
    fakes: tuple[FakeExo, FakeBackend],
) -> None:
    exo_fake, spare = fakes
    with running_server(nexus_config(exo_fake, spare)) as nexus:
        client = openai.OpenAI(base_url=nexus.base_url, api_key="sk-test", max_retries=0)
        messages: Any = [{"role": "user", "content": "Hi"}]
        stream = client.chat.completions.create(model=LLAMA, messages=messages, stream=True)
        chunks = list(stream)
        exo_fake.delete_instance(LLAMA)  # gone since the last probe
        raw = client.chat.completions.with_raw_response.create(model=LLAMA, messages=messages)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from exo"
    assert chunks[-1].usage is not None
    assert raw.headers["x-nexus-backend"] == "spare"
    assert raw.headers["x-nexus-route-reason"] == "failover"
    assert raw.parse().choices[0].message.content == "Hello from spare"
