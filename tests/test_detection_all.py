"""Auto-detection with every installed adapter: each fake server is recognised as its own type."""

from __future__ import annotations

import pytest

from nexus_core.gateway import Gateway
from nexus_core.testing import (
    FakeBackend,
    FakeExo,
    FakeLlamaCpp,
    FakeLMStudio,
    FakeLocalAI,
    FakeOllama,
    FakeOpenAI,
    FakeVLLM,
)

pytestmark = pytest.mark.anyio

CASES = [
    (FakeOllama, "ollama"),
    (FakeVLLM, "vllm"),
    (FakeLlamaCpp, "llamacpp"),
    (FakeLMStudio, "lmstudio"),
    (FakeExo, "exo"),
    (FakeLocalAI, "localai"),
    (FakeBackend, "generic"),
]


def gateway() -> Gateway:
    return Gateway({"discovery": {"enabled": False}, "health_check": {"interval_seconds": 3600}})


@pytest.mark.parametrize(("fake_class", "expected"), CASES, ids=[c[1] for c in CASES])
async def test_auto_detection_picks_the_server_type(
    fake_class: type[FakeBackend], expected: str
) -> None:
    async with fake_class("srv", ["m"]) as fake, gateway() as gw:
        assert await gw.detect_type(fake.url) == expected
        backend = await gw.add_backend({"name": "srv", "url": fake.url})
        assert backend.type_name == expected
        assert "m" in backend.models


async def test_openai_compatible_cloud_needs_its_key_to_be_recognised() -> None:
    async with FakeOpenAI("cloud", ["gpt-4o"], api_key="sk-test") as fake, gateway() as gw:
        assert await gw.detect_type(fake.url) != "openai"
        assert await gw.detect_type(fake.url, api_key="sk-test") == "openai"
