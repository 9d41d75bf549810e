"""The vLLM adapter through a real Nexus: loading, errors clients see, load-aware routing.

Moved from packages/nexus-backend-vllm/tests (which need only that package and nexusgw-core):
these need the server, the OpenAI SDK and, for detection, the llama.cpp adapter as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from nexus_backend_llamacpp import LlamaCppAdapter
from nexus_core.adapters import BackendStatus
from nexus_core.http import HttpClients
from nexus_core.testing import Behaviour, FakeVLLM, free_port
from nexus_server.testing import running_server

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_the_gateway_shows_a_starting_vllm_as_loading() -> None:
    port = free_port()
    config = {
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 0.1},
        "backends": [{"name": "gpu", "url": f"http://127.0.0.1:{port}", "type": "vllm"}],
    }
    with running_server(config) as nexus:
        backend = nexus.gateway.registry.get("gpu")
        assert backend is not None
        assert backend.status is BackendStatus.LOADING
        with FakeVLLM(port=port).running():
            wait_until(lambda: backend.status is BackendStatus.HEALTHY)
            models = httpx.get(nexus.url + "/v1/models").json()["data"]
        assert [model["id"] for model in models] == ["fake-model"]


def test_clients_see_vllm_errors_with_string_codes_through_nexus() -> None:
    with (
        FakeVLLM("a").running() as a,
        FakeVLLM("b").running() as b,
        running_server(gateway_config(a, b, strategy="priority_only")) as nexus,
    ):
        sdk = openai.OpenAI(base_url=nexus.base_url, api_key="unused", max_retries=0)
        a.push(Behaviour(status=500))
        raw = sdk.chat.completions.with_raw_response.create(model="fake-model", **CHAT)
        assert raw.headers["x-nexus-backend"] == "b"  # a's 500 failed over
        a.fail_next_stream(status=503, message="engine restarting")
        stream = sdk.chat.completions.create(model="fake-model", stream=True, **CHAT)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert b.inference_requests[-1].json["stream"] is True  # the stream failed over too
        a.push(Behaviour(status=400, error_body=a.error_body(400)))
        with pytest.raises(openai.BadRequestError) as info:
            sdk.chat.completions.create(model="fake-model", **CHAT)
    assert info.value.code == "400"
    assert info.value.type == "BadRequestError"


@pytest.mark.anyio
async def test_the_llamacpp_adapter_does_not_claim_a_vllm_server() -> None:
    clients = HttpClients()
    try:
        async with FakeVLLM() as vllm:
            assert await LlamaCppAdapter.detect(vllm.url, clients) is False
    finally:
        await clients.aclose()


# -- load-aware routing end to end ----------------------------------------------------------------


def gateway_config(*fakes: FakeVLLM, strategy: str = "least_loaded") -> dict[str, Any]:
    return {
        "server": {"first_byte_timeout_seconds": 2.0, "request_timeout_seconds": 10.0},
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600, "load_interval_seconds": 0.1},
        "routing": {"strategy": strategy},
        "backends": [
            {"name": fake.name, "url": fake.url, "type": "vllm", "priority": 10 * (i + 1)}
            for i, fake in enumerate(fakes)
        ],
    }


@pytest.mark.parametrize("strategy", ["least_loaded", "smart"])
def test_requests_avoid_the_saturated_vllm(strategy: str) -> None:
    with (
        FakeVLLM("a").running() as a,
        FakeVLLM("b").running() as b,
        running_server(gateway_config(a, b, strategy=strategy)) as nexus,
    ):
        backend_a = nexus.gateway.registry.get("a")
        backend_b = nexus.gateway.registry.get("b")
        assert backend_a is not None
        assert backend_b is not None

        def served_by() -> list[str]:
            return [
                httpx.post(
                    nexus.base_url + "/chat/completions",
                    json={"model": "fake-model", **CHAT},
                ).headers["x-nexus-backend"]
                for _ in range(4)
            ]

        a.set_load(running=200, waiting=30, kv_cache_usage=0.99)
        wait_until(lambda: backend_a.load_busy == 1.0)
        assert served_by() == ["b"] * 4

        a.set_load()
        b.set_load(running=180, waiting=12, kv_cache_usage=1.0)
        wait_until(lambda: backend_a.load_busy == 0.0 and backend_b.load_busy == 1.0)
        assert served_by() == ["a"] * 4
