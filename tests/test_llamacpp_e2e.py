"""The llama.cpp adapter through a real Nexus: loading, load-aware routing; and the vLLM adapter
does not claim a llama-server. Moved from packages/nexus-backend-llamacpp/tests, whose tests need
only that package and nexusgw-core."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from nexus_backend_vllm import VLLMAdapter
from nexus_core.adapters import BackendStatus
from nexus_core.http import HttpClients
from nexus_core.testing import FakeLlamaCpp
from nexus_server.testing import running_server

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_the_gateway_shows_loading_then_healthy() -> None:
    with FakeLlamaCpp().running() as fake:
        fake.loading = True
        config = {
            "discovery": {"enabled": False},
            "health_check": {"interval_seconds": 0.1},
            "backends": [{"name": "box", "url": fake.url, "type": "llamacpp"}],
        }
        with running_server(config) as nexus:
            backend = nexus.gateway.registry.get("box")
            assert backend is not None
            assert backend.status is BackendStatus.LOADING
            assert backend.last_error == "llama-server: Loading model"
            fake.loading = False
            wait_until(lambda: backend.status is BackendStatus.HEALTHY)


@pytest.mark.anyio
async def test_the_vllm_adapter_does_not_claim_a_llama_server() -> None:
    clients = HttpClients()
    try:
        async with FakeLlamaCpp() as llama:
            assert await VLLMAdapter.detect(llama.url, clients) is False
    finally:
        await clients.aclose()


# -- load-aware routing end to end ----------------------------------------------------------------


def gateway_config(*fakes: FakeLlamaCpp, strategy: str) -> dict[str, Any]:
    return {
        "server": {"first_byte_timeout_seconds": 2.0, "request_timeout_seconds": 10.0},
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600, "load_interval_seconds": 0.1},
        "routing": {"strategy": strategy},
        "backends": [
            {"name": fake.name, "url": fake.url, "type": "llamacpp", "priority": 10 * (i + 1)}
            for i, fake in enumerate(fakes)
        ],
    }


@pytest.mark.parametrize("strategy", ["least_loaded", "smart"])
def test_requests_avoid_the_saturated_llama_server(strategy: str) -> None:
    with (
        FakeLlamaCpp("a", ["tiny"]).running() as a,
        FakeLlamaCpp("b", ["tiny"]).running() as b,
        running_server(gateway_config(a, b, strategy=strategy)) as nexus,
    ):
        backend_a = nexus.gateway.registry.get("a")
        backend_b = nexus.gateway.registry.get("b")
        assert backend_a is not None
        assert backend_b is not None

        def served_by() -> list[str]:
            return [
                httpx.post(
                    nexus.base_url + "/chat/completions", json={"model": "tiny", **CHAT}
                ).headers["x-nexus-backend"]
                for _ in range(4)
            ]

        a.set_load(processing=2, deferred=4)  # both slots busy, four waiting
        wait_until(lambda: backend_a.load_busy == 1.0)
        assert served_by() == ["b"] * 4

        a.set_load()
        b.set_load(processing=2)
        wait_until(lambda: backend_a.load_busy == 0.0 and backend_b.load_busy == 1.0)
        assert served_by() == ["a"] * 4
