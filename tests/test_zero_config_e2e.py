"""`nexus serve` without configured backends: a local Ollama is picked up if (and once) it answers.

Until it has answered it is no backend at all, so a machine without Ollama is not reported as
failing; once it has, it is an ordinary backend. Every test points the implicit Ollama at a port
of its own (``NEXUS_LOCAL_OLLAMA_URL``): whatever listens on this machine's 11434 plays no part.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_core.testing import FakeOllama, free_port
from nexus_core.testing.net import closed_port_url
from tests.conftest import NEXUS
from tests.test_serve import nexus_process

pytestmark = pytest.mark.slow


def nexus(*args: str) -> subprocess.CompletedProcess[str]:
    """The real ``nexus`` command line, without the developer's NEXUS_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_") and k != "NO_COLOR"}
    return subprocess.run(
        [NEXUS, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def backends(url: str) -> list[dict[str, Any]]:
    listed = nexus("backends", "list", "--json", "--url", url)
    assert listed.returncode == 0, listed.stderr
    data: list[dict[str, Any]] = json.loads(listed.stdout)
    return data


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_no_ollama_and_no_config_is_not_a_failure(tmp_path: Path) -> None:
    nowhere = closed_port_url()
    with nexus_process(tmp_path, env={"NEXUS_LOCAL_OLLAMA_URL": nowhere}) as (_, url):
        health = httpx.get(url + "/health").json()
        ready = httpx.get(url + "/health/ready")
        checked = nexus("health", "--url", url)
        listed = backends(url)
    assert health["status"] == "healthy"
    assert health["backends"]["total"] == health["backends"]["unhealthy"] == 0
    # Nothing can be served yet: readiness says so, not liveness.
    assert (ready.status_code, ready.json()["ready"]) == (503, False)
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout.startswith("healthy  Nexus ")
    assert checked.stdout.splitlines()[1] == (
        "backends: 0 (none yet: nothing can be served until one is added or found)"
    )
    assert listed == []


def test_a_local_ollama_that_answers_at_start_is_a_backend(tmp_path: Path) -> None:
    with FakeOllama("local", ["llama3.2:latest"]).running() as ollama:
        env = {"NEXUS_LOCAL_OLLAMA_URL": ollama.url}
        with nexus_process(tmp_path, env=env) as (_, url):
            listed = backends(url)
            models = httpx.get(url + "/v1/models").json()["data"]
            checked = nexus("health", "--url", url)
    assert [(b["name"], b["url"], b["type"], b["status"], b["source"]) for b in listed] == [
        ("local-ollama", ollama.url, "ollama", "healthy", "default")
    ]
    assert [m["id"] for m in models] == ["llama3.2:latest"]
    assert checked.returncode == 0


def test_a_local_ollama_that_starts_later_is_picked_up_and_then_counts(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "nexus.toml"
    # A configuration without backends gets the implicit Ollama too; short probe intervals.
    config.write_text(
        "[health_check]\ninterval_seconds = 0.3\ntimeout_seconds = 2\n"
        "failure_threshold = 1\nrecovery_threshold = 1\n"
        '[state]\nbackend = "memory"\n',
        encoding="utf-8",
    )
    env = {"NEXUS_LOCAL_OLLAMA_URL": f"http://127.0.0.1:{port}"}
    with nexus_process(tmp_path, "--config", str(config), env=env) as (process, url):
        assert backends(url) == []
        assert nexus("health", "--url", url).returncode == 0
        ollama = FakeOllama("local", ["llama3.2:latest"], port=port)
        with ollama.running():
            assert wait_until(lambda: [b["status"] for b in backends(url)] == ["healthy"])
            assert nexus("health", "--url", url).returncode == 0
            chat = httpx.post(
                url + "/v1/chat/completions",
                json={"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
            )
            assert chat.status_code == 200, chat.text
        # It answered once: from now on it is a backend like any other, and its failure counts.
        assert wait_until(lambda: [b["status"] for b in backends(url)] == ["unhealthy"])
        health = httpx.get(url + "/health").json()
        assert (health["status"], health["backends"]["unhealthy"]) == ("unhealthy", 1)
        assert nexus("health", "--url", url).returncode == 2
        process.terminate()
        process.wait(timeout=30)
        output = process.stdout.read() if process.stdout else ""
    assert f"no local Ollama at http://127.0.0.1:{port}" in output
    assert f"found a local Ollama at http://127.0.0.1:{port}" in output


def test_a_backend_added_at_that_address_ends_the_search(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "nexus.toml"
    config.write_text(
        "[health_check]\ninterval_seconds = 0.3\nrecovery_threshold = 1\n"
        '[state]\nbackend = "memory"\n',
        encoding="utf-8",
    )
    env = {"NEXUS_LOCAL_OLLAMA_URL": f"http://127.0.0.1:{port}"}
    with nexus_process(tmp_path, "--config", str(config), env=env) as (_, url):
        # Added by hand before anything answers there (the same server, written otherwise).
        where = f"http://localhost:{port}"
        added = nexus("backends", "add", where, "--name", "mine", "--type", "ollama", "--url", url)
        assert added.returncode == 0, added.stderr
        with FakeOllama("mine", ["llama3.2:latest"], port=port).running():
            assert wait_until(lambda: [b["status"] for b in backends(url)] == ["healthy"])
            time.sleep(1.0)  # a few more search intervals: the implicit one is not added
            assert [b["name"] for b in backends(url)] == ["mine"]
