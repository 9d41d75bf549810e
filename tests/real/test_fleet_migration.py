"""Fleet control against two real ``llama-server`` routers (``--models-dir``, ``--models-max 1``):
a model moved from one to the other through Nexus's admin API while 20 streams run, every stream
completing; explicit load and unload through the ``nexus`` command. Marked ``slow``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from nexus_core.testing import free_port
from nexus_server.testing import RunningServer, running_server
from tests.conftest import NEXUS
from tests.real.llama_server import LlamaServer

pytestmark = pytest.mark.slow

STREAMS = 20
#: Long enough that the streams are still running while the target loads the model.
TOKENS = 384


def start_router(binary: Path, model: Path, name: str, tmp_path: Path) -> LlamaServer:
    """``llama-server --models-dir DIR --models-max 1`` with the tiny model as ``alpha``."""
    models = tmp_path / f"models-{name}"
    models.mkdir()
    shutil.copy(model, models / "alpha.gguf")
    port = free_port()
    log = tmp_path / f"llama-router-{name}.log"
    log_file = log.open("wb")
    command = [
        str(binary),
        *("--models-dir", str(models), "--models-max", "1"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("-c", "4096", "-np", "4", "--threads", "1", "--no-webui"),
    ]
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    return LlamaServer(name=name, port=port, process=process, log=log, _log_file=log_file)


@pytest.fixture
def routers(
    llama_server_binary: Path, tiny_model: Path, tmp_path: Path
) -> Iterator[tuple[LlamaServer, LlamaServer]]:
    servers = [
        start_router(llama_server_binary, tiny_model, name, tmp_path)
        for name in ("source", "target")
    ]
    try:
        for server in servers:
            server.wait_healthy()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def nexus(routers: tuple[LlamaServer, LlamaServer]) -> Iterator[RunningServer]:
    source, target = routers
    config = {
        "server": {"first_byte_timeout_seconds": 60.0, "request_timeout_seconds": 300.0},
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600, "load_interval_seconds": 3600},
        # The target is preferred by priority: only the model's state keeps the streams on the
        # source until the migration.
        "backends": [target.backend(priority=10), source.backend(priority=20)],
        "fleet": {"drain_timeout_seconds": 120.0},
        "state": {"backend": "memory"},
    }
    with running_server(config) as server:
        deadline = time.monotonic() + 30
        while not all(
            entry["checked_at"] for entry in httpx.get(server.url + "/admin/fleet").json()["data"]
        ):
            assert time.monotonic() < deadline, "no fleet reading"
            time.sleep(0.05)
        yield server


def states(nexus: RunningServer) -> dict[str, dict[str, str]]:
    fleet = httpx.get(nexus.url + "/admin/fleet").json()["data"]
    return {entry["name"]: {m["id"]: m["state"] for m in entry["models"]} for entry in fleet}


def stream(client: openai.OpenAI, results: list[Any], index: int) -> None:
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="alpha",
            messages=[{"role": "user", "content": f"Tell me a story, number {index}"}],
            max_tokens=TOKENS,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        finish = None
        chunks = 0
        for chunk in raw.parse():
            if chunk.choices:
                chunks += 1
                finish = chunk.choices[0].finish_reason or finish
        results[index] = (raw.headers["X-Nexus-Backend"], chunks, finish, time.time())
    except Exception as exc:
        results[index] = exc


def test_a_model_moves_between_real_routers_while_20_streams_run(
    nexus: RunningServer, routers: tuple[LlamaServer, LlamaServer]
) -> None:
    source, target = routers
    admin = httpx.Client(base_url=nexus.url, timeout=300)
    loaded = admin.post(
        "/admin/models/load", json={"model": "alpha", "backend": "source"}, params={"wait": "true"}
    ).json()
    assert loaded["state"] == "succeeded", (loaded, source.log_tail())
    assert states(nexus) == {"target": {"alpha": "unloaded"}, "source": {"alpha": "loaded"}}

    client = openai.OpenAI(base_url=nexus.url + "/v1", api_key="unused", max_retries=0)
    results: list[Any] = [None] * STREAMS
    threads = [threading.Thread(target=stream, args=(client, results, i)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    backend = nexus.gateway.registry.get("source")
    assert backend is not None
    deadline = time.monotonic() + 30
    while backend.in_flight.get("alpha", 0) < STREAMS:
        assert time.monotonic() < deadline, "the streams did not start"
        time.sleep(0.01)

    moved = admin.post(
        "/admin/models/migrate",
        json={"model": "alpha", "from": "source", "to": "target"},
        params={"wait": "true"},
    ).json()
    for thread in threads:
        thread.join(300)
    assert moved["state"] == "succeeded", (moved, source.log_tail(), target.log_tail())
    failures = [result for result in results if not isinstance(result, tuple)]
    assert not failures, failures
    # Most streams were still running while the model moved: the source waited for them.
    running = sum(1 for result in results if result[3] > moved["started_at"])
    assert running >= STREAMS // 2, (running, moved)
    # Every stream ran to its end on the source, where it started.
    assert {result[0] for result in results} == {"source"}
    assert {result[2] for result in results} == {"length"}
    assert all(result[1] >= TOKENS // 2 for result in results), results
    assert states(nexus) == {"target": {"alpha": "loaded"}, "source": {"alpha": "unloaded"}}

    answer = client.chat.completions.with_raw_response.create(
        model="alpha", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert answer.headers["X-Nexus-Backend"] == "target"
    assert answer.headers["X-Nexus-Route-Reason"] != "cold-load"

    # Explicit unload and load with the command line.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    for args, line in (
        (("unload", "alpha", "--backend", "target"), "unloaded alpha on target"),
        (("load", "alpha", "--backend", "source"), "loaded alpha on source"),
    ):
        done = subprocess.run(
            [NEXUS, "models", *args, "--url", nexus.url],
            capture_output=True,
            text=True,
            timeout=120,
            env=environment,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(line)
    assert states(nexus) == {"target": {"alpha": "unloaded"}, "source": {"alpha": "loaded"}}
