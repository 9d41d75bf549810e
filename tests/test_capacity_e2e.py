"""Capacity end to end: max_concurrent and the bounded priority queue, through the real SDK."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

SLOW = 0.5


def config(fake: FakeBackend, limit: int, **queue: Any) -> dict[str, Any]:
    cfg = gateway_config({"name": fake.name, "url": fake.url, "max_concurrent": limit})
    cfg["queue"] = queue
    return cfg


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def ask(server: RunningServer, text: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        server.base_url + "/chat/completions",
        json={
            "model": kwargs.pop("model", "fake-model"),
            "messages": [{"role": "user", "content": text}],
        },
        timeout=kwargs.pop("timeout", 10.0),
        **kwargs,
    )


def wait_until(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return False


def depth(server: RunningServer) -> int:
    return server.gateway.queue.queue_depth


def in_flight(server: RunningServer) -> int:
    return sum(b.pending for b in server.gateway.registry)


def texts(fake: FakeBackend) -> list[str]:
    return [r.json["messages"][0]["content"] for r in fake.inference_requests]


def test_five_requests_two_slots(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(delay_before_headers=SLOW))
    with running_server(config(a, 2)) as server, ThreadPoolExecutor(5) as pool:
        sdk = client(server)
        futures = [
            pool.submit(
                sdk.chat.completions.create,
                model="fake-model",
                messages=[{"role": "user", "content": f"q{i}"}],
            )
            for i in range(5)
        ]
        assert wait_until(lambda: depth(server) == 3)
        assert in_flight(server) == 2
        answers = [f.result(timeout=10) for f in futures]
        assert depth(server) == 0
        assert wait_until(lambda: in_flight(server) == 0)
    assert all(c.choices[0].message.content == "Hello from a" for c in answers)
    starts = [r.received_at for r in a.inference_requests]
    assert len(starts) == 5
    # Each answer takes at least SLOW seconds: never more than two overlap on the backend.
    for t in starts:
        assert sum(1 for s in starts if s <= t < s + SLOW) <= 2


def test_high_priority_is_served_first(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(delay_before_headers=0.3))
    with running_server(config(a, 1)) as server, ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, server, "first")]
        assert wait_until(lambda: in_flight(server) == 1)
        for index, (text, high) in enumerate([("n1", False), ("n2", False), ("h1", True)]):
            headers = {"X-Nexus-Priority": "high"} if high else {}
            futures.append(pool.submit(ask, server, text, headers=headers))
            assert wait_until(lambda i=index: depth(server) == i + 1)
        statuses = [f.result(timeout=10).status_code for f in futures]
    assert statuses == [200, 200, 200, 200]
    assert texts(a) == ["first", "h1", "n1", "n2"]


def test_queue_full_is_503_with_retry_after(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(delay_before_headers=SLOW))
    with running_server(config(a, 1, max_size=1)) as server, ThreadPoolExecutor(2) as pool:
        running = pool.submit(ask, server, "running")
        assert wait_until(lambda: in_flight(server) == 1)
        waiting = pool.submit(ask, server, "waiting")
        assert wait_until(lambda: depth(server) == 1)
        refused = ask(server, "refused")
        assert running.result(timeout=10).status_code == 200
        assert waiting.result(timeout=10).status_code == 200
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert "refused" not in texts(a)


def test_wait_timeout_is_503_with_retry_after(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(delay_before_headers=0.8))
    with (
        running_server(config(a, 1, max_wait_seconds=0.1)) as server,
        ThreadPoolExecutor(1) as pool,
    ):
        running = pool.submit(ask, server, "running")
        assert wait_until(lambda: in_flight(server) == 1)
        started = time.monotonic()
        late = ask(server, "late")
        waited = time.monotonic() - started
        assert running.result(timeout=10).status_code == 200
        assert depth(server) == 0
    assert late.status_code == 503
    assert late.json()["error"]["code"] == "queue_timeout"
    assert int(late.headers["retry-after"]) >= 1
    assert waited < 0.6


def test_unknown_model_never_queues(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(delay_before_headers=SLOW))
    with running_server(config(a, 1)) as server, ThreadPoolExecutor(1) as pool:
        running = pool.submit(ask, server, "running")
        assert wait_until(lambda: in_flight(server) == 1)
        started = time.monotonic()
        missing = ask(server, "x", model="no-such-model")
        elapsed = time.monotonic() - started
        assert running.result(timeout=10).status_code == 200
    assert missing.status_code == 404
    assert elapsed < SLOW / 2


def test_streaming_request_queues_too(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(delay_before_headers=SLOW))
    with running_server(config(a, 1)) as server, ThreadPoolExecutor(2) as pool:
        running = pool.submit(ask, server, "running")
        assert wait_until(lambda: in_flight(server) == 1)

        def stream() -> str:
            chunks = client(server).chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "s"}], stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        streamed = pool.submit(stream)
        assert wait_until(lambda: depth(server) == 1)
        assert running.result(timeout=10).status_code == 200
        assert streamed.result(timeout=10) == "Hello from a"
        assert wait_until(lambda: in_flight(server) == 0)
    assert texts(a) == ["running", "s"]


def test_client_leaving_the_queue(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(delay_before_headers=0.8))
    with running_server(config(a, 1)) as server, ThreadPoolExecutor(1) as pool:
        running = pool.submit(ask, server, "running")
        assert wait_until(lambda: in_flight(server) == 1)
        with pytest.raises(httpx.ReadTimeout):
            ask(server, "impatient", timeout=0.2)
        assert wait_until(lambda: depth(server) == 0, timeout=0.3)
        assert running.result(timeout=10).status_code == 200
        assert wait_until(lambda: in_flight(server) == 0)
    assert texts(a) == ["running"]
