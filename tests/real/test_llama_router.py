"""Model lifecycle against a real ``llama-server`` in router mode (``--models-dir``).

Two copies of the tiny model under two names, ``--models-max 1``: both listed with their state,
a load, a second load that unloads the first (least recently used), an unload, and a chat through
Nexus for a model that is not loaded, which the router loads. Marked ``slow``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from nexus_backend_llamacpp import LlamaCppAdapter
from nexus_core.adapters import (
    LifecycleError,
    LifecycleFailure,
    ModelLifecycle,
    ModelState,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.testing import free_port
from nexus_server.testing import running_server
from tests.real.llama_server import LlamaServer

pytestmark = pytest.mark.slow

MODELS = ("alpha", "beta")


@pytest.fixture
def router(llama_server_binary: Path, tiny_model: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    """``llama-server --models-dir DIR --models-max 1`` over two copies of the tiny model."""
    models = tmp_path / "models"
    models.mkdir()
    for name in MODELS:
        shutil.copy(tiny_model, models / f"{name}.gguf")
    port = free_port()
    log = tmp_path / "llama-router.log"
    log_file = log.open("wb")
    command = [
        str(llama_server_binary),
        *("--models-dir", str(models), "--models-max", "1"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("-c", "1024", "--threads", "1", "--no-webui"),
    ]
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    server = LlamaServer(name="router", port=port, process=process, log=log, _log_file=log_file)
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def adapter(router: LlamaServer) -> AsyncIterator[ModelLifecycle]:
    """The llamacpp adapter pointed at the router, as a ``ModelLifecycle``."""
    clients = HttpClients()
    adapter = LlamaCppAdapter(
        BackendConfig(name="router", url=router.url, type="llamacpp"), clients
    )
    try:
        yield adapter
    finally:
        await clients.aclose()


async def states(adapter: ModelLifecycle) -> dict[str, ModelState]:
    return {entry.id: entry.state for entry in (await adapter.available_models()).models}


@pytest.mark.anyio
async def test_router_lists_loads_evicts_and_unloads(
    adapter: ModelLifecycle, router: LlamaServer
) -> None:
    support = await adapter.lifecycle_support()
    assert (support.available_models, support.load, support.unload) == (True, True, True)
    assert support.autoload is True
    assert await states(adapter) == {"alpha": ModelState.UNLOADED, "beta": ModelState.UNLOADED}

    alpha = await adapter.load_model("alpha", timeout=60)
    assert alpha.state is ModelState.LOADED, router.log_tail()
    # From the loaded model's meta: the weights' size and the context it runs with.
    assert alpha.size_bytes is not None
    assert alpha.size_bytes > 1_000_000
    assert alpha.context_length == 1024
    assert await states(adapter) == {"alpha": ModelState.LOADED, "beta": ModelState.UNLOADED}

    # --models-max 1: loading beta unloads alpha, the least recently used.
    beta = await adapter.load_model("beta", timeout=60)
    assert beta.state is ModelState.LOADED, router.log_tail()
    assert await states(adapter) == {"alpha": ModelState.UNLOADED, "beta": ModelState.LOADED}

    # Loading what is loaded changes nothing (the router itself would answer 400).
    assert (await adapter.load_model("beta", timeout=60)).state is ModelState.LOADED

    await adapter.unload_model("beta", timeout=60)
    assert await states(adapter) == {"alpha": ModelState.UNLOADED, "beta": ModelState.UNLOADED}
    await adapter.unload_model("beta", timeout=60)  # already out: nothing to do

    for call in (adapter.load_model("gamma", timeout=60), adapter.unload_model("gamma")):
        with pytest.raises(LifecycleError) as info:
            await call
        assert info.value.reason is LifecycleFailure.UNKNOWN_MODEL


def nexus_config(router: LlamaServer) -> dict[str, Any]:
    return {
        "server": {"first_byte_timeout_seconds": 30.0, "request_timeout_seconds": 60.0},
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600, "load_interval_seconds": 3600},
        "backends": [router.backend()],
    }


@pytest.mark.anyio
async def test_a_chat_for_an_unloaded_model_loads_it(
    adapter: ModelLifecycle, router: LlamaServer
) -> None:
    await adapter.load_model("alpha", timeout=60)
    with running_server(nexus_config(router)) as nexus:
        client = openai.OpenAI(base_url=nexus.base_url, api_key="unused", max_retries=0)
        listed = sorted(model.id for model in client.models.list().data)
        assert listed == ["alpha", "beta"]
        answer = client.chat.completions.create(
            model="beta", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 4
    # The router loaded beta for the request and, with --models-max 1, unloaded alpha.
    assert await states(adapter) == {"alpha": ModelState.UNLOADED, "beta": ModelState.LOADED}
