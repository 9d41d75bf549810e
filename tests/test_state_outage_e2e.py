"""A failing state store: the door's own 503 with ``Retry-After``, in bounded time, then recovery.

A real ``nexus serve`` keeps its state in a real ``redis-server`` (started here on a free loopback
port, then paused with SIGSTOP and killed) or in a SQLite file that another process holds locked
with an open exclusive transaction. Requests that need the store (a gateway key with a rate limit,
a priced cloud route reserving its spend, admin writes) are refused with 503
``state_unavailable`` in the shape of their front door; requests that do not need it are served.
Every client call has a timeout, so a request that hung would fail the test. When the store is
back, the same requests succeed and their spend is recorded; the spend of a stream that ended
while the store was down stays counted once, at its reservation. The server's log has one line
per failure burst and no traceback.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from nexus_core.state.redis import REDIS_TIMEOUT_SECONDS
from nexus_core.testing import Behaviour, FakeBackend, FakeOpenAI, free_port
from nexus_core.testing.net import closed_port_url
from nexus_core.testing.redis import redis_server_binary
from tests.conftest import nexus_serve

METERED = "nxk-test-metered-0123456789"  # a key with a rate limit: needs the store
FREE = "nxk-test-free-9876543210"  # a key without limits or budget
CLOUD_KEY = "sk-cloud-outage-test"
HELLO: list[Any] = [{"role": "user", "content": "Hi"}]
# Generous: a request that waited on the store without a bound would hit it and fail the test.
CLIENT_TIMEOUT = 30.0
FAILED_LINE = "state store failed"
RECOVERED_LINE = "state store answers again"

CONFIG = """
[discovery]
enabled = false

[health_check]
interval_seconds = 3600

[state]
{state}

[auth]
enabled = true

[[auth.keys]]
name = "metered"
key_env = "OUTAGE_TEST_METERED_KEY"
requests_per_minute = 100000

[[auth.keys]]
name = "free"
key_env = "OUTAGE_TEST_FREE_KEY"

[routing.budget]
monthly_limit_usd = 100

[[backends]]
name = "box"
url = "{box}"
type = "generic"

[[backends]]
name = "cloud"
url = "{cloud}"
type = "openai"
api_key_env = "OUTAGE_TEST_CLOUD_KEY"
"""


def need_redis_server() -> None:
    """Skip without ``redis-server``, except in CI, which must run these tests."""
    if redis_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not on PATH, and CI must run the Redis tests")
        pytest.skip("redis-server is not on PATH (Debian: apt-get install redis-server)")


class RedisProcess:
    """A ``redis-server`` on one loopback port that a test can pause, kill and start again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = redis_server_binary()
        assert binary is not None
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                assert self.process.poll() is None, (self.directory / "redis.log").read_text()
                assert time.monotonic() < deadline, "redis-server did not answer PING"
                time.sleep(0.02)
        client.close()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.kill()


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fleet() -> Iterator[tuple[FakeBackend, FakeOpenAI]]:
    """A local box serving ``llama`` (free) and a cloud serving ``gpt-4o`` (priced)."""
    box = FakeBackend("box", ["llama"])
    cloud = FakeOpenAI("cloud", ["gpt-4o"], api_key=CLOUD_KEY)
    with box.running(), cloud.running():
        yield box, cloud


def serve_env(**extra: str) -> dict[str, str]:
    return {
        "OUTAGE_TEST_METERED_KEY": METERED,
        "OUTAGE_TEST_FREE_KEY": FREE,
        "OUTAGE_TEST_CLOUD_KEY": CLOUD_KEY,
        **extra,
    }


def write_config(tmp_path: Path, state: str, fleet: tuple[FakeBackend, FakeOpenAI]) -> Path:
    box, cloud = fleet
    path = tmp_path / "nexus.toml"
    path.write_text(CONFIG.format(state=state, box=box.url, cloud=cloud.url))
    return path


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT)


def chat(url: str, key: str, model: str) -> Any:
    """An OpenAI-SDK chat call: the answer, or the ``APIStatusError`` it raised."""
    try:
        return sdk(url, key).chat.completions.with_raw_response.create(model=model, messages=HELLO)
    except openai.APIStatusError as exc:
        return exc


def post(url: str, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=CLIENT_TIMEOUT)


def assert_state_unavailable_openai(error: Any) -> None:
    """The OpenAI door's envelope, 503, ``state_unavailable`` and ``Retry-After``."""
    assert isinstance(error, openai.InternalServerError), error
    assert error.status_code == 503
    assert error.response.headers["content-type"] == "application/json"
    assert error.response.headers["retry-after"] == "5"
    body = error.response.json()
    assert body["error"]["code"] == "state_unavailable"
    assert body["error"]["type"] == "service_unavailable"
    assert "state store" in body["error"]["message"]


def store_outage_requests(url: str) -> dict[str, Callable[[], Any]]:
    """Every kind of request, named, to be sent at once while the store fails."""
    return {
        "metered_openai": lambda: chat(url, METERED, "llama"),
        "free_local": lambda: chat(url, FREE, "llama"),
        "free_cloud": lambda: chat(url, FREE, "gpt-4o"),
        "metered_anthropic": lambda: post(
            url,
            "/v1/messages",
            {"model": "llama", "max_tokens": 16, "messages": HELLO},
            METERED,
        ),
        "metered_ollama": lambda: post(
            url, "/api/chat", {"model": "llama", "messages": HELLO, "stream": False}, METERED
        ),
        "admin_key": lambda: post(url, "/admin/keys", {"name": "made-during-outage"}),
        "health": lambda: httpx.get(url + "/health", timeout=CLIENT_TIMEOUT),
    }


def send_all(requests: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = {name: pool.submit(call) for name, call in requests.items()}
        return {name: future.result() for name, future in futures.items()}


def check_outage_answers(answers: dict[str, Any]) -> None:
    """What each request got while the store failed."""
    assert_state_unavailable_openai(answers["metered_openai"])
    assert_state_unavailable_openai(answers["free_cloud"])
    served = answers["free_local"]
    assert not isinstance(served, Exception), served
    assert served.parse().choices[0].message.content == "Hello from box"
    anthropic = answers["metered_anthropic"]
    assert anthropic.status_code == 503
    assert anthropic.headers["retry-after"] == "5"
    assert anthropic.json()["type"] == "error"
    assert anthropic.json()["error"]["type"] == "overloaded_error"
    assert "state store" in anthropic.json()["error"]["message"]
    ollama = answers["metered_ollama"]
    assert ollama.status_code == 503
    assert ollama.headers["retry-after"] == "5"
    assert list(ollama.json()) == ["error"]
    assert "state store" in ollama.json()["error"]
    admin = answers["admin_key"]
    assert admin.status_code == 503
    assert admin.headers["content-type"] == "application/json"
    assert admin.headers["retry-after"] == "5"
    assert admin.json()["error"]["code"] == "state_unavailable"
    assert answers["health"].status_code == 200


def check_served(url: str) -> None:
    """With the store back: the requests that were refused are served."""
    metered = chat(url, METERED, "llama")
    assert not isinstance(metered, Exception), metered
    cloud = chat(url, FREE, "gpt-4o")
    assert not isinstance(cloud, Exception), cloud
    assert cloud.headers["x-nexus-backend"] == "cloud"


def wait_for(predicate: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def log_lines(config: Path) -> list[str]:
    return config.with_suffix(".log").read_text(errors="replace").splitlines()


def count(lines: list[str], text: str) -> int:
    return sum(text in line for line in lines)


def month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


@pytest.mark.slow
def test_redis_paused_then_killed_gives_503_in_bounded_time_and_recovers(
    tmp_path: Path, fleet: tuple[FakeBackend, FakeOpenAI]
) -> None:
    need_redis_server()
    _, cloud = fleet
    with running_redis(tmp_path) as store:
        config = write_config(
            tmp_path, 'backend = "redis"\nredis_url_env = "OUTAGE_TEST_REDIS_URL"', fleet
        )
        env = serve_env(OUTAGE_TEST_REDIS_URL=store.url)
        spend_key = f"nexus:spend:global:{month()}"
        pending_key = f"nexus:pending:global:{month()}"
        check_redis = redis.Redis.from_url(store.url, socket_timeout=5)
        with nexus_serve(config, env=env) as (_, url):
            check_served(url)
            wait_for(lambda: int(check_redis.get(spend_key) or 0) > 0, "the first spend")
            spent_before = int(check_redis.get(spend_key) or 0)

            # A priced stream is under way (its reservation written) when Redis stops
            # answering; it ends while Redis is paused, so its settle fails.
            cloud.behave(Behaviour(content="one two three four five", delay_between_events=0.3))
            stream = sdk(url, FREE).chat.completions.create(
                model="gpt-4o", messages=HELLO, stream=True
            )
            first = next(iter(stream))
            store.signal(signal.SIGSTOP)
            text = first.choices[0].delta.content or ""
            text += "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            ended = time.monotonic()
            assert text.split() == ["one", "two", "three", "four", "five"]

            check_outage_answers(send_all(store_outage_requests(url)))
            # Not a timing assertion: Redis stays paused until the stream's settle has given
            # up (REDIS_TIMEOUT_SECONDS after the stream's end), so that it surely failed.
            time.sleep(max(0.0, ended + REDIS_TIMEOUT_SECONDS + 1.0 - time.monotonic()))
            store.signal(signal.SIGCONT)

            # Back: served again, and the new request's cost is recorded.
            check_served(url)
            wait_for(lambda: int(check_redis.get(spend_key) or 0) > spent_before, "the new spend")
            # The stream that ended during the pause is counted once. Its settle was not
            # retried: either Redis never ran it, so the store holds the reservation's estimate,
            # or Redis ran the command still in its socket buffer when it woke (a timed-out
            # client cannot take back bytes it wrote), so the stream's actual cost is in the
            # spend, on top of the two served requests (each costs `spent_before`).
            pending = [int(v) for v in check_redis.hvals(pending_key)]
            if pending:
                assert len(pending) == 1
                assert pending[0] > 0
            else:
                wait_for(
                    lambda: int(check_redis.get(spend_key) or 0) > 2 * spent_before,
                    "the stream's settle, run by Redis when it woke",
                )
            admin_keys = httpx.get(url + "/admin/keys", timeout=CLIENT_TIMEOUT).json()["data"]
            assert "made-during-outage" not in [k["name"] for k in admin_keys]

            # Killed: refused at once (connection refused), then started again on its port.
            store.kill()
            check_outage_answers(send_all(store_outage_requests(url)))
            # A server of its own: the URL of a backend already there would be a 409.
            late = {"name": "late", "url": closed_port_url(), "type": "generic"}
            added = post(url, "/admin/backends", late)
            assert added.status_code == 503
            assert added.json()["error"]["code"] == "state_unavailable"
            listed = httpx.get(url + "/admin/backends", timeout=CLIENT_TIMEOUT).json()["data"]
            assert "late" not in [b["name"] for b in listed]  # not kept, so not added
            store.start()
            check_served(url)
            # Redis came back empty (no persistence): the spend recorded is the new request's.
            wait_for(lambda: int(check_redis.get(spend_key) or 0) > 0, "spend after restart")
            made = post(url, "/admin/keys", {"name": "made-after"})
            assert made.status_code == 201
        check_redis.close()

    lines = log_lines(config)
    assert not [line for line in lines if "Traceback" in line], "\n".join(lines)
    # One line per failure burst (the pause, the kill), one when it answers again.
    assert count(lines, FAILED_LINE) == 2, "\n".join(lines)
    assert count(lines, RECOVERED_LINE) == 2, "\n".join(lines)


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
db.execute("ROLLBACK")
"""


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process holds the SQLite file's write lock (an open exclusive transaction)."""
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        yield
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(10)


def test_a_sqlite_file_locked_by_another_process_gives_503_then_recovers(
    tmp_path: Path, fleet: tuple[FakeBackend, FakeOpenAI]
) -> None:
    path = tmp_path / "state.sqlite3"
    config = write_config(tmp_path, f'backend = "sqlite"\npath = "{path}"', fleet)

    def spent() -> int:
        with sqlite3.connect(path) as db:
            row = db.execute(
                "SELECT COALESCE(SUM(settled), 0) FROM spend WHERE scope = 'global'"
            ).fetchone()
        return int(row[0])

    with nexus_serve(config, env=serve_env()) as (_, url):
        check_served(url)
        wait_for(lambda: spent() > 0, "the first spend")
        before = spent()
        with locked(path):
            check_outage_answers(send_all(store_outage_requests(url)))
        check_served(url)
        wait_for(lambda: spent() > before, "the spend after the lock")

    lines = log_lines(config)
    assert not [line for line in lines if "Traceback" in line], "\n".join(lines)
    assert count(lines, FAILED_LINE) == 1, "\n".join(lines)
    assert count(lines, RECOVERED_LINE) == 1, "\n".join(lines)
