"""A relayed request leaves no reference cycles behind: its objects are freed when it ends.

Cyclic garbage is freed only by the garbage collector, whose pauses grow with it: a cycle per
streamed request once made 1 % of streams at one connection take ~10 ms (docs/performance.md).
Each scenario runs in a fresh interpreter, so nothing from other tests (or from pytest's log
capture) is counted.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.testing import running_server
from tests.conftest import gateway_config

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "Hi"}]
#: Where the request path's own objects come from.
OURS = ("nexus_core", "nexus_server")


def cyclic_garbage_of_ours() -> list[str]:
    """The types of Nexus objects that only the garbage collector would free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = sorted(
        {
            f"{type(o).__module__}.{type(o).__qualname__}"
            for o in gc.garbage
            if type(o).__module__.startswith(OURS)
        }
    )
    gc.garbage.clear()
    gc.set_debug(0)
    return found


def scenario() -> dict[str, list[str]]:
    """Requests of each kind through a running server; the cyclic garbage each kind left."""
    gc.collect()
    gc.disable()
    left: dict[str, list[str]] = {}
    with (
        FakeBackend("a").running() as fake,
        running_server(gateway_config(fake)) as server,
        httpx.Client() as http,
    ):
        url = server.url + "/v1/chat/completions"
        body = {"model": "fake-model", "messages": MESSAGES}
        # Warm up (connection pools, caches, lazily made objects), then start clean.
        http.post(url, json=body).raise_for_status()
        http.post(url, json={**body, "stream": True}).raise_for_status()
        cyclic_garbage_of_ours()
        for _ in range(20):
            assert http.post(url, json=body).status_code == 200
        left["plain"] = cyclic_garbage_of_ours()
        for _ in range(20):
            streamed = http.post(url, json={**body, "stream": True})
            assert streamed.text.endswith("data: [DONE]\n\n")
        left["stream"] = cyclic_garbage_of_ours()
        fake.push(Behaviour(status=500, times=5))
        for _ in range(5):
            assert http.post(url, json=body).status_code >= 500
        left["error status"] = cyclic_garbage_of_ours()
        fake.push(Behaviour(reset=True, times=10))
        for _ in range(5):
            assert http.post(url, json=body).status_code >= 500
        left["connection reset"] = cyclic_garbage_of_ours()
    return left


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
def test_requests_leave_no_cycles(client: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_garbage"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NEXUS_UPSTREAM_CLIENT": client},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    left = json.loads(result.stdout.splitlines()[-1])
    assert left == {"plain": [], "stream": [], "error status": [], "connection reset": []}


if __name__ == "__main__":
    print(json.dumps(scenario()))
