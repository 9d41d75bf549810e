"""The reliability catalogue (docs/reliability.md): one test per failure scenario, both modes.

Each test drives a real Nexus (in a thread, or ``nexus serve`` as a process for signals) in
front of fake backends told to misbehave, through the real ``openai`` SDK or raw ``httpx`` when
the bytes matter, and asserts exactly what the client sees and what Nexus counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from nexus_core.state import SqliteStore
from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config, nexus_serve

MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]
MODES = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
NEXUS = str(Path(sys.executable).parent / "nexus")


# -- helpers --------------------------------------------------------------------------------------


def sdk(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def ask(server: RunningServer, *, stream: bool, **extra: Any) -> tuple[httpx.Headers, str]:
    """One chat request through the SDK: the response headers and the assistant's whole text."""
    raw = sdk(server).chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, stream=stream, **extra
    )
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content or ""
    return raw.headers, text


def post(server: RunningServer, *, stream: bool, **extra: Any) -> tuple[httpx.Response, bytes]:
    """One chat request with raw httpx: the response and every byte of its body."""
    body = {"model": "fake-model", "messages": MESSAGES, "stream": stream, **extra}
    with httpx.stream(
        "POST", server.base_url + "/chat/completions", json=body, timeout=30
    ) as response:
        return response, response.read()


def data_lines(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def last_event_is_error(body: bytes) -> dict[str, Any]:
    """The final ``data:`` event, which must be Nexus's error event; returns its ``error``."""
    last = json.loads(data_lines(body)[-1])
    assert set(last) == {"error"}, last
    assert last["error"]["type"] == "upstream_error"
    error: dict[str, Any] = last["error"]
    return error


def wait_until(condition: Any, timeout: float = 5.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


def pending_zero(server: RunningServer) -> bool:
    return wait_until(lambda: all(b.pending == 0 for b in server.gateway.registry), 3.0)


def metrics(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    text = httpx.get(server.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    """The sum of every sample of ``name``."""
    return sum(v for (n, _), v in found.items() if n == name)


def history(server: RunningServer) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(server.url + "/v1/history").json()["data"]
    return data


def status_of(server: RunningServer, name: str) -> str:
    backend = server.gateway.registry.get(name)
    assert backend is not None
    return str(backend.status.value)


def probing(*fakes: FakeBackend, **health: Any) -> dict[str, Any]:
    """``gateway_config`` with a fast health loop."""
    config = gateway_config(*fakes, strategy="priority_only")
    config["health_check"] = {"interval_seconds": 0.05, "timeout_seconds": 0.5, **health}
    return config


# -- 1. 429 with Retry-After ----------------------------------------------------------------------


@MODES
def test_429_fails_over_to_another_backend(fakes: list[FakeBackend], stream: bool) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(status=429, retry_after=7))
    with running_server(gateway_config(a, b)) as server:
        headers, text = ask(server, stream=stream)
        assert pending_zero(server)
    assert text == "Hello from b"
    assert headers["x-nexus-route-reason"] == "failover"
    assert "retry-after" not in headers
    assert (len(a.inference_requests), len(b.inference_requests)) == (1, 1)


@MODES
def test_429_from_the_only_backend_is_passed_on_with_retry_after(
    fakes: list[FakeBackend], stream: bool
) -> None:
    a = fakes[0]
    a.behave(Behaviour(status=429, retry_after=7))
    with running_server(gateway_config(a)) as server:
        response, body = post(server, stream=stream)
        with pytest.raises(openai.RateLimitError) as info:
            ask(server, stream=stream)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "upstream_overloaded"
    assert [(d["backend"], d["status"]) for d in error["details"]] == [("a", 429)]
    assert info.value.response.headers["retry-after"] == "7"


# -- 2. 500 once ----------------------------------------------------------------------------------


@MODES
def test_500_once_fails_over_and_the_backend_keeps_its_place(
    fakes: list[FakeBackend], stream: bool
) -> None:
    a, b = fakes[0], fakes[1]
    a.push(Behaviour(status=500, times=1))
    with running_server(gateway_config(a, b, strategy="priority_only")) as server:
        first, first_text = ask(server, stream=stream)
        second, second_text = ask(server, stream=stream)
    assert (first["x-nexus-backend"], first["x-nexus-route-reason"]) == ("b", "failover")
    assert first_text == "Hello from b"
    # One 500 does not push a out of rotation.
    assert (second["x-nexus-backend"], second_text) == ("a", "Hello from a")


# -- 3. 503 persistently --------------------------------------------------------------------------


@MODES
def test_persistent_503_cools_the_backend_down_until_it_recovers(
    fakes: list[FakeBackend], stream: bool
) -> None:
    """Inference answers 503 (probes still fine): the quality thresholds take a out of rotation."""
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(status=503))
    config = gateway_config(a, b, strategy="priority_only")
    # A cooldown far longer than six loopback requests take, even on a loaded machine (at 0.5 s
    # it sometimes ran out before the sixth, and a was tried again, as it should be then).
    config["quality"] = {"min_requests": 3, "cooldown_seconds": 3.0, "window_seconds": 60}
    with running_server(config) as server:
        served = [ask(server, stream=stream)[0]["x-nexus-backend"] for _ in range(6)]
        assert served == ["b"] * 6
        assert len(a.inference_requests) == 3  # the threshold, then a is avoided
        a.behave(Behaviour())
        time.sleep(3.1)
        recovered = [ask(server, stream=stream) for _ in range(2)]
    assert [(h["x-nexus-backend"], t) for h, t in recovered] == [("a", "Hello from a")] * 2


@MODES
def test_failing_probes_mark_the_backend_unhealthy_after_the_threshold_then_healthy(
    fakes: list[FakeBackend], stream: bool
) -> None:
    a, b = fakes[0], fakes[1]
    with running_server(probing(a, b, failure_threshold=3, recovery_threshold=2)) as server:
        assert wait_until(lambda: status_of(server, "a") == "healthy")
        a.behave(Behaviour(status=500, probes=True))
        assert wait_until(lambda: status_of(server, "a") == "unhealthy")
        failed_probes = [r for r in a.requests if r.path == "/v1/models" and r.method == "GET"]
        assert failed_probes  # (the probe path of the generic adapter)
        backend = server.gateway.registry.get("a")
        assert backend is not None
        assert backend.consecutive_failures >= 3
        before = len(a.inference_requests)
        headers, text = ask(server, stream=stream)
        # Avoided: not tried and failed over from, simply not a candidate.
        assert (headers["x-nexus-backend"], text) == ("b", "Hello from b")
        assert headers["x-nexus-route-reason"] != "failover"
        assert len(a.inference_requests) == before
        a.behave(Behaviour())
        assert wait_until(lambda: status_of(server, "a") == "healthy")
        headers, text = ask(server, stream=stream)
    assert (headers["x-nexus-backend"], text) == ("a", "Hello from a")


def test_a_probe_answering_503_means_loading_not_routable(fakes: list[FakeBackend]) -> None:
    """Documented choice: a 503 probe is a server loading its model (not a failure count)."""
    a, b = fakes[0], fakes[1]
    with running_server(probing(a, b)) as server:
        a.behave(Behaviour(status=503, probes=True))
        assert wait_until(lambda: status_of(server, "a") == "loading")
        headers, _ = ask(server, stream=False)
        assert headers["x-nexus-backend"] == "b"
        a.behave(Behaviour())
        assert wait_until(lambda: status_of(server, "a") == "healthy")
        assert ask(server, stream=True)[0]["x-nexus-backend"] == "a"


# -- 4. connection refused / reset ----------------------------------------------------------------


@MODES
@pytest.mark.parametrize("failure", ["refused", "reset"])
def test_refused_or_reset_before_headers_fails_over(
    fakes: list[FakeBackend], stream: bool, failure: str
) -> None:
    a, b = fakes[0], fakes[1]
    if failure == "reset":
        a.behave(Behaviour(reset=True))
    with running_server(gateway_config(a, b)) as server:
        if failure == "refused":
            a.stop()  # healthy at its last probe, refusing connections now
        headers, text = ask(server, stream=stream)
        assert pending_zero(server)
    assert (headers["x-nexus-backend"], headers["x-nexus-route-reason"]) == ("b", "failover")
    assert text == "Hello from b"


# -- 5. no response at all ------------------------------------------------------------------------


@MODES
def test_a_hanging_backend_hits_the_first_byte_timeout_and_fails_over(
    fakes: list[FakeBackend], stream: bool
) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(hang=True))
    with running_server(gateway_config(a, b)) as server:
        started = time.monotonic()
        headers, text = ask(server, stream=stream)
        elapsed = time.monotonic() - started
        assert pending_zero(server)
    assert (headers["x-nexus-backend"], text) == ("b", "Hello from b")
    assert 1.0 <= elapsed < 10.0  # waited the first-byte timeout (1 s), not the deadline


@MODES
def test_every_backend_hanging_is_a_504_within_the_deadline(
    fakes: list[FakeBackend], stream: bool
) -> None:
    for fake in fakes:
        fake.behave(Behaviour(hang=True))
    config = gateway_config(*fakes)
    config["server"]["request_timeout_seconds"] = 2.5
    with running_server(config) as server:
        started = time.monotonic()
        response, body = post(server, stream=stream)
        elapsed = time.monotonic() - started
        assert pending_zero(server)
    assert response.status_code == 504
    assert json.loads(body)["error"]["code"] == "upstream_timeout"
    # Three 1 s attempts would take 3 s: the 2.5 s deadline cut the third one short.
    assert 2.0 <= elapsed < 3.0
    assert len(fakes[2].inference_requests) == 1


# -- 6. slow first token --------------------------------------------------------------------------


@MODES
def test_a_first_token_slower_than_the_limit_fails_over(
    fakes: list[FakeBackend], stream: bool
) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(delay_before_headers=1.5))
    with running_server(gateway_config(a, b)) as server:
        headers, text = ask(server, stream=stream)
    assert (headers["x-nexus-backend"], headers["x-nexus-route-reason"]) == ("b", "failover")
    assert text == "Hello from b"


@MODES
def test_a_slow_first_token_within_the_limit_is_served(
    fakes: list[FakeBackend], stream: bool
) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(delay_before_headers=0.5))
    with running_server(gateway_config(a, b)) as server:
        headers, text = ask(server, stream=stream)
    assert (headers["x-nexus-backend"], text) == ("a", "Hello from a")
    assert b.inference_requests == []


# -- 7 and 8. stream cut, stream stalled ----------------------------------------------------------


@pytest.mark.parametrize("failure", ["cut", "stall"])
def test_a_broken_stream_ends_with_an_error_event_and_counts_as_failed(
    fakes: list[FakeBackend], failure: str
) -> None:
    a, b = fakes[0], fakes[1]
    if failure == "cut":
        a.behave(Behaviour(cut_after_events=3))
    else:
        a.behave(Behaviour(delay_between_events=1.5))
    config = gateway_config(a, b)
    config["server"]["idle_timeout_seconds"] = 0.5
    with running_server(config) as server:
        response, body = post(server, stream=True)
        with pytest.raises(openai.APIError) as info:
            ask(server, stream=True)
        assert pending_zero(server)
        found = metrics(server)
        entries = history(server)
        stats = httpx.get(server.url + "/v1/stats").json()
    assert response.status_code == 200  # the headers had gone out
    assert b"[DONE]" not in body
    error = last_event_is_error(body)
    assert "'a'" in error["message"]
    if failure == "stall":
        assert "stalled" in error["message"]
    assert "upstream stream" in str(info.value.message)
    assert b.inference_requests == []  # no failover after the first byte
    assert [e["error"] for e in entries] == ["stream_broken", "stream_broken"]
    errors = {k[1]: v for k, v in found.items() if k[0] == "nexus_errors_total"}
    assert errors == {(("error_type", "stream_broken"), ("model", "fake-model")): 2}
    backends = {s["name"]: s for s in stats["backends"]}
    assert backends["a"]["upstream_errors"] == 2
    assert stats["requests"]["errors"] == 2


def test_a_non_streaming_body_that_is_not_json_is_a_502(fakes: list[FakeBackend]) -> None:
    """The non-streaming counterpart of 7 and 9: a truncated JSON body is never passed on.

    Documented: a 2xx body that is not JSON is a 502 (not in the failover list).
    """
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(malformed=True))
    with running_server(gateway_config(a, b)) as server:
        response, body = post(server, stream=False)
        with pytest.raises(openai.InternalServerError):
            ask(server, stream=False)
        assert pending_zero(server)
        entries = history(server)
    assert response.status_code == 502
    error = json.loads(body)["error"]
    assert error["code"] == "bad_gateway"
    assert "not JSON" in error["message"]
    assert b"broken" not in body
    assert b.inference_requests == []
    assert [e["status"] for e in entries] == [502, 502]


# -- 9. malformed chunk in a stream ---------------------------------------------------------------


def test_a_malformed_chunk_ends_the_stream_with_an_error_event(
    fakes: list[FakeBackend],
) -> None:
    """OpenAI door: an event whose JSON is cut off is not relayed; the stream ends with an error
    event (which the SDK raises), never [DONE]; the stream counts as failed; Nexus keeps serving.
    """
    a = fakes[0]
    a.push(Behaviour(malformed=True, times=2))
    with running_server(gateway_config(a)) as server:
        response, body = post(server, stream=True)
        with pytest.raises(openai.APIError, match="not JSON"):
            ask(server, stream=True)
        headers, text = ask(server, stream=True)  # the next stream is whole
        assert pending_zero(server)
        history = httpx.get(server.url + "/v1/history").json()["data"]
    assert response.status_code == 200
    assert b'"content": "x\n\n' not in body
    assert b"data: [DONE]" not in body
    assert json.loads(data_lines(body)[-1])["error"]["code"] == "malformed_response"
    assert [h["error"] for h in history[:3]] == [None, "stream_broken", "stream_broken"]
    assert (headers["x-nexus-backend"], text) == ("a", "Hello from a")


def test_a_malformed_chunk_on_a_translating_door_is_an_error_event(
    fakes: list[FakeBackend],
) -> None:
    """Anthropic and Ollama doors parse each chunk: a broken one ends the stream with an error."""
    a = fakes[0]
    a.push(Behaviour(malformed=True, times=2))
    with running_server(gateway_config(a)) as server:
        messages = httpx.post(
            server.url + "/v1/messages",
            json={"model": "fake-model", "max_tokens": 10, "messages": MESSAGES, "stream": True},
        )
        ollama = httpx.post(
            server.url + "/api/chat", json={"model": "fake-model", "messages": MESSAGES}
        )
        assert pending_zero(server)
    assert messages.status_code == 200
    events = [line for line in messages.text.split("\n") if line.startswith("event: ")]
    assert events[-1] == "event: error"
    assert "message_stop" not in messages.text
    last = json.loads(data_lines(messages.content)[-1])
    assert last["type"] == "error"
    lines = [json.loads(line) for line in ollama.text.splitlines() if line]
    assert "error" in lines[-1]
    assert not any(line.get("done") for line in lines)


# -- 10. missing [DONE] then a clean close --------------------------------------------------------


def test_a_stream_without_done_that_finished_ends_cleanly(fakes: list[FakeBackend]) -> None:
    """Documented choice: a finish_reason then a clean close is complete, passed on as it came."""
    a = fakes[0]
    a.behave(Behaviour(omit_done=True))
    with running_server(gateway_config(a)) as server:
        response, body = post(server, stream=True)
        _headers, text = ask(server, stream=True)
        entries = history(server)
    assert response.status_code == 200
    assert b"[DONE]" not in body
    assert b'"error"' not in body
    assert b'"finish_reason": "stop"' in body or b'"finish_reason":"stop"' in body
    assert text == "Hello from a"
    assert [e["error"] for e in entries] == [None, None]


def test_a_stream_closed_before_any_finish_reason_is_broken(fakes: list[FakeBackend]) -> None:
    """The other side of 10: a clean close without [DONE] *and* without finish_reason."""
    a = fakes[0]
    # Three events: role, then two content deltas, never the finish chunk.
    a.behave(Behaviour(omit_done=True, cut_after_events=3))
    with running_server(gateway_config(a)) as server:
        response, body = post(server, stream=True)
    assert response.status_code == 200
    assert b"[DONE]" not in body
    last_event_is_error(body)


# -- 11. context length ---------------------------------------------------------------------------


CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 4096 tokens. However, your messages "
        "resulted in 9000 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


@MODES
def test_context_length_400_is_passed_through_without_retry(
    fakes: list[FakeBackend], stream: bool
) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(status=400, error_body=CONTEXT_ERROR))
    with running_server(gateway_config(a, b)) as server:
        response, body = post(server, stream=stream)
        with pytest.raises(openai.BadRequestError) as info:
            ask(server, stream=stream)
        found = metrics(server)
        backend = server.gateway.registry.get("a")
        assert backend is not None
        assert pending_zero(server)
    assert response.status_code == 400
    assert json.loads(body) == CONTEXT_ERROR
    assert info.value.code == "context_length_exceeded"
    assert len(a.inference_requests) == 2
    assert b.inference_requests == []
    assert metric(found, "nexus_failovers_total") == 0
    assert backend.status.value == "healthy"


# -- 12. flapping ---------------------------------------------------------------------------------


class FlappingBackend(FakeBackend):
    """A fake whose model list (the health probe) fails or answers following a fixed pattern."""

    def __init__(self, name: str, pattern: list[bool]) -> None:
        super().__init__(name)
        self.pattern = pattern
        self.probes = 0
        self.outcomes: list[bool] = []

    async def route(
        self, request: web.Request, body: bytes, kind: str | None, *args: Any
    ) -> web.StreamResponse | None:
        if request.method == "GET" and request.path == "/v1/models":
            ok = self.pattern[self.probes % len(self.pattern)]
            self.probes += 1
            self.outcomes.append(ok)
            if not ok:
                return web.json_response({"error": {"message": "flap"}}, status=500)
        return None


def watch_transitions(server: RunningServer, name: str, seconds: float) -> list[str]:
    """The statuses ``name`` went through during ``seconds`` (sampled every 2 ms)."""
    seen = [status_of(server, name)]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = status_of(server, name)
        if now != seen[-1]:
            seen.append(now)
        time.sleep(0.002)
    return seen


@MODES
def test_a_flapping_backend_does_not_oscillate(stream: bool) -> None:
    # Two failed probes, three good ones, forever: never three failures in a row.
    flapper = FlappingBackend("a", [True, False, False, True, True])
    with flapper.running(), FakeBackend("b").running() as b:
        config = probing(flapper, b, failure_threshold=3, recovery_threshold=3)
        with running_server(config) as server:
            # Detection and the first probes may land on a failing step of the pattern: start
            # watching once it is healthy (a fresh backend needs no recovery streak).
            assert wait_until(lambda: status_of(server, "a") == "healthy")
            seen = watch_transitions(server, "a", 1.0)
            answers = [ask(server, stream=stream) for _ in range(5)]
            probes = flapper.probes
    assert probes >= 10
    assert seen == ["healthy"]
    assert all(text == f"Hello from {h['x-nexus-backend']}" for h, text in answers)


def test_hysteresis_keeps_a_backend_out_until_it_is_steadily_good() -> None:
    # Three failures (down), then only ever two good probes in a row: never back up.
    flapper = FlappingBackend("a", [False, False, False, True, True])
    with flapper.running(), FakeBackend("b").running() as b:
        config = probing(flapper, b, failure_threshold=3, recovery_threshold=3)
        with running_server(config) as server:
            assert wait_until(lambda: status_of(server, "a") == "unhealthy")
            seen = watch_transitions(server, "a", 1.0)
            headers, _ = ask(server, stream=False)
            probes = flapper.probes
    assert probes >= 10
    assert seen == ["unhealthy"]
    assert headers["x-nexus-backend"] == "b"


# -- 13. failover accounting ----------------------------------------------------------------------


@MODES
def test_failover_is_one_logical_request_with_its_attempts(
    fakes: list[FakeBackend], stream: bool
) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(status=500))
    config = gateway_config(a, b)
    config["pricing"] = [
        {
            "model": "*",
            "backends": ["a", "b"],
            "input_per_million": 1000,
            "output_per_million": 1000,
        }
    ]
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
    with running_server(config) as server:
        raw = sdk(server).chat.completions.with_raw_response.create(
            model="fake-model", messages=MESSAGES, stream=stream, max_tokens=50, **extra
        )
        if stream:
            chunks = list(raw.parse())
            usage = chunks[-1].usage
        else:
            usage = raw.parse().usage
        assert usage is not None
        server.call(server.gateway.accountant.drain())
        spent = server.gateway.accountant.spent
        assert pending_zero(server)
        found = metrics(server)
        entries = history(server)
        stats = httpx.get(server.url + "/v1/stats").json()
    assert raw.headers["x-nexus-backend"] == "b"
    # Spend: b's answer, once; a's failed attempt costs nothing, its reservation is released.
    assert spent == (usage.prompt_tokens + usage.completion_tokens) * 1000 * 1000
    assert metric(found, "nexus_requests_total") == 1
    requests = {k[1]: v for k, v in found.items() if k[0] == "nexus_requests_total"}
    assert dict(next(iter(requests)))["backend"] == "b"
    failovers = {k[1]: v for k, v in found.items() if k[0] == "nexus_failovers_total"}
    assert failovers == {(("from_backend", "a"), ("to_backend", "b")): 1}
    assert len(entries) == 1
    entry = entries[0]
    assert (entry["backend"], entry["route_reason"], entry["retries"]) == ("b", "failover", 1)
    assert entry["stream"] is stream
    assert entry["error"] is None
    assert stats["requests"] == {"total": 1, "errors": 0}
    backends = {s["name"]: s for s in stats["backends"]}
    assert backends["a"]["upstream_errors"] == 1
    assert backends["b"]["requests"] == 1


# -- 14. client disconnects -----------------------------------------------------------------------


def test_a_client_disconnect_closes_upstream_within_100_ms(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(delay_between_events=5.0))
    with running_server(gateway_config(a)) as server:
        body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", server.base_url + "/chat/completions", json=body) as response:
            next(response.iter_raw())
            closed_at = time.monotonic()
        assert a.wait_disconnect(timeout=2.0)
        assert pending_zero(server)
    assert a.disconnects[0] - closed_at < 0.1


async def _open_and_drop(client: httpx.AsyncClient, url: str, *, stream: bool) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, "stream": stream}
    if stream:
        async with client.stream("POST", url, json=body) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                assert chunk.startswith(b"data: ")
                break
        return
    with pytest.raises(httpx.ReadTimeout):
        # Long enough for the request to reach the backend on a loaded machine; the gateway's
        # first-byte timeout is longer still, so the client always leaves first.
        await client.post(url, json=body, timeout=httpx.Timeout(5, read=1.5))


@pytest.mark.parametrize(("stream", "count"), [(True, 1000), (False, 100)], ids=["stream", "plain"])
def test_many_disconnects_leak_nothing(fakes: list[FakeBackend], stream: bool, count: int) -> None:
    a, b = fakes[0], fakes[1]
    for fake in (a, b):
        fake.behave(
            Behaviour(delay_between_events=30.0) if stream else Behaviour(delay_before_headers=30)
        )
    config = gateway_config(a, b, strategy="round_robin")
    config["server"]["first_byte_timeout_seconds"] = 20.0
    config["server"]["request_timeout_seconds"] = 30.0

    async def workload(url: str) -> None:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            gate = asyncio.Semaphore(50)

            async def one() -> None:
                async with gate:
                    await _open_and_drop(client, url, stream=stream)

            await asyncio.gather(*(one() for _ in range(count)))

    with running_server(config) as server:
        asyncio.run(workload(server.base_url + "/chat/completions"))
        assert wait_until(lambda: len(a.disconnects) + len(b.disconnects) >= count, 10)
        assert pending_zero(server)
        found = metrics(server)
        entries = history(server)
    assert len(a.inference_requests) + len(b.inference_requests) == count
    assert metric(found, "nexus_pending_requests") == 0
    # A client walking away is not the backend's failure.
    assert metric(found, "nexus_failovers_total") == 0
    assert all(s.status.value == "healthy" for s in server.gateway.registry)
    assert entries
    assert all(e["error"] != "stream_broken" for e in entries)


# -- 15 and 16: nexus serve as a process ----------------------------------------------------------


def write_config(path: Path, backends: list[FakeBackend], extra: str = "") -> Path:
    entries = "".join(
        f'[[backends]]\nname = "{fake.name}"\nurl = "{fake.url}"\n\n' for fake in backends
    )
    path.write_text(f"[discovery]\nenabled = false\n\n{extra}\n{entries}", encoding="utf-8")
    return path


async def _read_stream(url: str, started: asyncio.Event, count: list[int], total: int) -> bytes:
    body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
    received = b""
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("POST", url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        try:
            async for chunk in response.aiter_raw():
                if not received:
                    count[0] += 1
                    if count[0] == total:
                        started.set()
                received += chunk
        except httpx.TransportError:
            pass  # judged below by what arrived
    return received


@pytest.mark.slow
@pytest.mark.parametrize(
    "drain",
    [
        "finish",
        "cut",
    ],
    ids=["streams-finish", "drain-runs-out"],
)
def test_sigterm_drains_20_streams_and_refuses_new_connections(tmp_path: Path, drain: str) -> None:
    """SIGTERM: each in-flight stream completes, or ends with an error event; exit code 0."""
    delay = 0.15 if drain == "finish" else 2.0
    drain_timeout = 5 if drain == "finish" else 1
    with FakeBackend("slow").running() as backend:
        backend.behave(Behaviour(delay_between_events=delay))
        config = write_config(
            tmp_path / "nexus.toml",
            [backend],
            f"[server]\ndrain_timeout_seconds = {drain_timeout}\nidle_timeout_seconds = 10\n",
        )
        with nexus_serve(config) as (process, url):

            async def scenario() -> tuple[list[bytes], bool, float, int]:
                started, count = asyncio.Event(), [0]
                tasks = [
                    asyncio.create_task(_read_stream(url, started, count, 20)) for _ in range(20)
                ]
                await asyncio.wait_for(started.wait(), 15)
                signalled = time.monotonic()
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                refused = False
                try:
                    async with httpx.AsyncClient(timeout=2) as fresh:
                        await fresh.get(url + "/health")
                except httpx.TransportError:
                    refused = True
                bodies = await asyncio.gather(*tasks)
                code = await asyncio.to_thread(process.wait, 30)
                return list(bodies), refused, time.monotonic() - signalled, code

            bodies, refused, took, code = asyncio.run(scenario())
    assert code == 0
    assert refused
    assert took < drain_timeout + 3
    for body in bodies:
        if body.endswith(b"data: [DONE]\n\n"):
            continue
        # Cut by the drain timeout: the client must be told, not left with a silent truncation.
        assert data_lines(body), body
        assert json.loads(data_lines(body)[-1]).keys() == {"error"}, body[-200:]
    if drain == "finish":
        assert all(body.endswith(b"data: [DONE]\n\n") for body in bodies)


PRICING = """
[[pricing]]
model = "*"
backends = ["a"]
input_per_million = 1000.0
output_per_million = 1000.0
"""


def _sqlite_total(path: Path) -> int:
    async def total() -> int:
        store = SqliteStore(str(path))
        await store.open()
        try:
            return await store.total("global", time.strftime("%Y-%m", time.gmtime()))
        finally:
            await store.close()

    return asyncio.run(total())


@pytest.mark.slow
def test_sigkill_mid_workload_loses_no_spend_and_corrupts_nothing(tmp_path: Path) -> None:
    state_file = tmp_path / "state.sqlite3"
    max_tokens = 100
    # Each request reserves (prompt estimate + max_tokens) tokens at $1000 / M before it is
    # sent; the prompt here is a few tokens at most.
    least_reservation = max_tokens * 10**6
    most_reservation = (max_tokens + 20) * 10**6
    with FakeBackend("a").running() as a:
        config_file = write_config(
            tmp_path / "nexus.toml",
            [a],
            f'{PRICING}\n[state]\nbackend = "sqlite"\npath = "{state_file}"\n',
        )
        completed: list[int] = []
        started = 0
        with nexus_serve(config_file) as (process, url):
            stop = threading.Event()

            def worker() -> None:
                nonlocal started
                client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
                while not stop.is_set():
                    started += 1
                    try:
                        answer = client.chat.completions.create(
                            model="fake-model", messages=MESSAGES, max_tokens=max_tokens
                        )
                    except openai.APIError:
                        return
                    assert answer.usage is not None
                    completed.append(
                        (answer.usage.prompt_tokens + answer.usage.completion_tokens) * 10**6
                    )

            # Some streams hang mid-answer, holding their reservations, while requests complete.
            a.push(Behaviour(delay_between_events=60, times=3))
            hanging = [
                threading.Thread(target=lambda: post_stream(url, max_tokens)) for _ in range(3)
            ]
            for thread in hanging:
                thread.start()
            assert wait_until(lambda: len(a.inference_requests) >= 3, 10)
            workers = [threading.Thread(target=worker) for _ in range(4)]
            for thread in workers:
                thread.start()
            assert wait_until(lambda: len(completed) >= 40, 20)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            stop.set()
            for thread in (*workers, *hanging):
                thread.join(10)
        assert len(completed) >= 40
        with sqlite3.connect(state_file) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = _sqlite_total(state_file)
        # Every answered request is counted (its cost, or its larger reservation if the settle
        # was lost with the process), the three open streams by their reservations; nothing
        # beyond a reservation per request started.
        assert stored >= sum(completed) + 3 * least_reservation
        assert stored <= (started + 3) * most_reservation
        a.reset()
        config = tomllib.loads(config_file.read_text(encoding="utf-8"))
        with running_server(config) as server:
            assert server.gateway.accountant.spent == stored
            answer = sdk(server).chat.completions.create(model="fake-model", messages=MESSAGES)
            assert answer.usage is not None
            server.call(server.gateway.accountant.drain())
            cost = (answer.usage.prompt_tokens + answer.usage.completion_tokens) * 10**6
            assert server.gateway.accountant.spent == stored + cost
        assert _sqlite_total(state_file) == stored + cost


def post_stream(url: str, max_tokens: int) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, "stream": True, "max_tokens": max_tokens}
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=70) as reply:
            for _ in reply.iter_raw():
                pass
    except httpx.TransportError:
        pass


# -- load -----------------------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


FAKE_PROCESS = """
import sys, time
from nexus_core.testing import Behaviour, FakeBackend
with FakeBackend(sys.argv[1]).running() as fake:
    fake.behave(Behaviour(delay_between_events=0.05))
    print(fake.url, flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def fake_process(name: str) -> Iterator[str]:
    """A FakeBackend in a process of its own (a load test must not share the test's GIL)."""
    process = subprocess.Popen(
        [sys.executable, "-c", FAKE_PROCESS, name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.kill()
        process.wait(10)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc for RSS")
def test_500_concurrent_streams(tmp_path: Path) -> None:
    """500 streaming clients at once, twice: no errors, all complete, nothing left pending."""
    clients = 500
    with fake_process("a") as url_a, fake_process("b") as url_b:
        config = tmp_path / "nexus.toml"
        config.write_text(
            "[discovery]\nenabled = false\n\n"
            f'[[backends]]\nname = "a"\nurl = "{url_a}"\n\n'
            f'[[backends]]\nname = "b"\nurl = "{url_b}"\n',
            encoding="utf-8",
        )
        with nexus_serve(config) as (process, url):

            async def round_of_streams() -> list[bytes | BaseException]:
                body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
                connector = aiohttp.TCPConnector(limit=0)
                timeout = aiohttp.ClientTimeout(total=30)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

                    async def one() -> bytes:
                        async with session.post(url + "/v1/chat/completions", json=body) as r:
                            assert r.status == 200
                            return await r.read()

                    return await asyncio.gather(
                        *(one() for _ in range(clients)), return_exceptions=True
                    )

            results = asyncio.run(round_of_streams())
            after_first = _rss_kib(process.pid)
            results += asyncio.run(round_of_streams())
            after_second = _rss_kib(process.pid)
            metrics = httpx.get(url + "/metrics").text
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert all(isinstance(r, bytes) and r.endswith(b"data: [DONE]\n\n") for r in results)
    samples = [s for family in text_string_to_metric_families(metrics) for s in family.samples]
    pending = [s.value for s in samples if s.name == "nexus_pending_requests"]
    assert pending == [0, 0]
    served = sum(
        s.value
        for s in samples
        if s.name == "nexus_requests_total" and s.labels.get("status") == "200"
    )
    assert served == 2 * clients
    # Memory: bounded in absolute terms, and a second identical round does not grow it much.
    assert after_first < 400 * 1024
    assert after_second - after_first < 40 * 1024
