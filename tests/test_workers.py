"""``nexus serve --workers N``: several processes on one port, sharing state through the store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from nexus_core.testing import FakeBackend, closed_port_url, free_port
from nexus_core.testing.redis import redis_server, redis_server_binary
from tests.conftest import NEXUS, nexus_serve

TEAM_KEY = "nxk-workers-team-key-0123456789"
ENV = {"NEXUS_KEY_TEAM": TEAM_KEY}


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(part) for part in text.split()]


def fresh_get(url: str, **kwargs: object) -> httpx.Response:
    """One request on a new connection: the kernel hands it to either worker."""
    with httpx.Client(timeout=10) as client:
        return client.request(url=url, **kwargs)  # type: ignore[arg-type]


def write_config(path: Path, backend: FakeBackend, extra: str = "", state: str = "") -> Path:
    state = state or f'backend = "sqlite"\npath = "{path.parent / "state.sqlite3"}"'
    path.write_text(
        f"""
[discovery]
enabled = false

[state]
{state}

[auth]
enabled = true

[[auth.keys]]
name = "team"
key_env = "NEXUS_KEY_TEAM"
requests_per_minute = 4

[[backends]]
name = "a"
url = "{backend.url}"
{extra}
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_two_workers_share_keys_rate_limits_and_backends(tmp_path: Path) -> None:
    backend = FakeBackend("a", models=["llama3"])
    extra = FakeBackend("extra", models=["phi3"])
    with backend.running(), extra.running():
        config = write_config(tmp_path / "nexus.toml", backend)
        with nexus_serve(config, "--workers", "2", env=ENV) as (process, url):
            assert len(children(process.pid)) == 2
            body = {"model": "llama3", "messages": [{"role": "user", "content": "Hi"}]}
            auth = {"authorization": f"Bearer {TEAM_KEY}"}
            statuses = [
                fresh_get(
                    url + "/v1/chat/completions", method="POST", json=body, headers=auth
                ).status_code
                for _ in range(7)
            ]
            # requests_per_minute = 4 across both workers: one bucket in the shared store.
            assert sorted(statuses) == [200] * 4 + [429] * 3
            # A backend added through one worker reaches the other within the sync period.
            added = fresh_get(
                url + "/admin/backends", method="POST", json={"url": extra.url, "name": "extra"}
            )
            assert added.status_code == 201, added.text
            time.sleep(2.5)
            names = {
                tuple(
                    sorted(
                        b["name"]
                        for b in fresh_get(url + "/admin/backends", method="GET").json()["data"]
                    )
                )
                for _ in range(8)
            }
            assert names == {("a", "extra")}
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0


def test_workers_need_a_shared_state_store(tmp_path: Path) -> None:
    config = tmp_path / "nexus.toml"
    config.write_text('[discovery]\nenabled = false\n[state]\nbackend = "memory"\n', "utf-8")
    result = subprocess.run(
        [NEXUS, "serve", "--config", str(config), "--port", str(free_port()), "--workers", "2"],
        env={**os.environ, "NEXUS_DISCOVERY": "false"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "needs [state]" in result.stderr


def test_two_server_processes_share_a_rate_limit_through_redis(tmp_path: Path) -> None:
    """Two separate nexus serve processes (replicas) on one real redis-server: one bucket."""
    if redis_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it")
        pytest.skip("redis-server is not installed")
    backend = FakeBackend("a", models=["llama3"])
    with backend.running(), redis_server(tmp_path) as redis_url:
        state = 'backend = "redis"\nredis_url_env = "NEXUS_TEST_REDIS"'
        one = write_config(tmp_path / "one.toml", backend, state=state)
        two = write_config(tmp_path / "two.toml", backend, state=state)
        env = {**ENV, "NEXUS_TEST_REDIS": redis_url}
        with (
            nexus_serve(one, env=env) as (_, url_one),
            nexus_serve(two, env=env) as (_, url_two),
        ):
            body = {"model": "llama3", "messages": [{"role": "user", "content": "Hi"}]}
            auth = {"authorization": f"Bearer {TEAM_KEY}"}
            statuses = [
                fresh_get(
                    url + "/v1/chat/completions", method="POST", json=body, headers=auth
                ).status_code
                for url in (url_one, url_two) * 3
            ]
    # requests_per_minute = 4 for the key, wherever its requests land.
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert len(backend.inference_requests) == 4


def worker_config(path: Path, backend_url: str) -> Path:
    path.write_text(
        f"""
[discovery]
enabled = false

[state]
backend = "sqlite"
path = "{path.parent / "state.sqlite3"}"

[[backends]]
name = "a"
url = "{backend_url}"
""",
        encoding="utf-8",
    )
    return path


def ask(url: str, retries: int) -> str:
    """One chat completion through the OpenAI SDK on a connection of its own."""
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=retries) as sdk:
        reply = sdk.chat.completions.create(
            model="llama3", messages=[{"role": "user", "content": "Hi"}]
        )
    return reply.choices[0].message.content or ""


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_a_worker_killed_under_load_is_replaced(tmp_path: Path) -> None:
    backend = FakeBackend("a", models=["llama3"])
    with backend.running():
        config = worker_config(tmp_path / "nexus.toml", backend.url)
        with nexus_serve(config, "--workers", "2") as (process, url):
            workers = children(process.pid)
            assert len(workers) == 2
            failures: list[Exception] = []
            answers: list[str] = []
            stop = threading.Event()

            def load() -> None:
                # The SDK's default retries: a request in flight on the killed worker loses its
                # connection, and the client sends it again, to a worker that is alive.
                while not stop.is_set():
                    try:
                        answers.append(ask(url, retries=2))
                    except Exception as exc:  # every failure is reported below
                        failures.append(exc)

            threads = [threading.Thread(target=load) for _ in range(4)]
            for thread in threads:
                thread.start()
            try:
                wait_for(lambda: len(answers) >= 20)
                os.kill(workers[0], signal.SIGKILL)
                # New connections never fail: the other worker accepts on the same socket
                # while the dead one is replaced (no retries here).
                for _ in range(10):
                    assert ask(url, retries=0)
                wait_for(lambda: len(children(process.pid)) == 2)
                replacement = set(children(process.pid)) - set(workers)
                assert len(replacement) == 1
                # The new worker has started (a third "startup complete" in the log).
                log_file = config.with_suffix(".log")
                wait_for(lambda: log_file.read_text().count("Application startup complete") == 3)
                before = len(answers)
                wait_for(lambda: len(answers) >= before + 40)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(30)
            assert failures == []
            assert all(answers)
            assert workers[1] in children(process.pid)
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
        log = config.with_suffix(".log").read_text()
        assert re.search(
            rf"worker [01] \(pid {workers[0]}\) was killed by SIGKILL: starting a new one", log
        )


def test_workers_that_keep_dying_stop_the_server(tmp_path: Path) -> None:
    config = worker_config(tmp_path / "nexus.toml", closed_port_url())
    result = subprocess.run(
        [NEXUS, "serve", "--config", str(config), "--port", str(free_port()), "--workers", "2"],
        # Every worker fails as it starts: an upstream client that does not exist.
        env={**os.environ, "NEXUS_DISCOVERY": "false", "NEXUS_UPSTREAM_CLIENT": "bogus"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("exited with status 1: starting a new one") >= 4
    assert "5 deaths within 60 s: giving up, stopping the server" in result.stderr
