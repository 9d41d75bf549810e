"""A backend that lies or breaks gets nothing: the real ``nexus serve`` against ``HostileBackend``.

One server carries most cases: a hostile backend (preferred, ``priority_only``) and a good fake,
both serving ``shared-model``; ``hostile-only`` is served by the hostile one alone. Before the
first byte an attack that may fail over does (the good backend answers); on ``hostile-only`` it is
a clean error in the front door's shape. After the first byte the stream ends with an error
event. Every case ends with the server still serving. The memory and probe cases start servers of
their own (``slow``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_core.testing import Attack, FakeBackend, HostileBackend
from nexus_core.testing.hostile import REDIRECT_TARGET
from tests.conftest import nexus_serve

MESSAGES = [{"role": "user", "content": "Hi"}]
#: The limits of the shared server, small so an attack is cut early (the memory test uses the
#: defaults).
BODY_LIMIT = 1024 * 1024
HEADER_LIMIT = 16 * 1024
EVENT_LIMIT = 256 * 1024


def config_text(hostile: HostileBackend, good: FakeBackend | None, server: str) -> str:
    good_entry = (
        f'[[backends]]\nname = "good"\nurl = "{good.url}"\ntype = "generic"\npriority = 2\n'
        if good is not None
        else ""
    )
    return f"""
[discovery]
enabled = false

[server]
first_byte_timeout_seconds = 1.0
idle_timeout_seconds = 0.5
request_timeout_seconds = 10.0
{server}

[routing]
strategy = "priority_only"

# Keep the hostile backend in play for every request (no cool-down).
[quality]
error_rate_threshold = 1.0
min_requests = 1000

[[backends]]
name = "hostile"
url = "{hostile.url}"
type = "generic"
priority = 1

{good_entry}
"""


class Served:
    """The shared server and its two backends."""

    def __init__(
        self, url: str, hostile: HostileBackend, good: FakeBackend, process: Any, log: Path
    ) -> None:
        self.url = url
        self.hostile = hostile
        self.good = good
        self.process = process
        self.log = log


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("hostile")
    with (
        HostileBackend(models=["shared-model", "hostile-only"], drip_seconds=0.1) as hostile,
        FakeBackend("good", ["shared-model"]).running() as good,
    ):
        config = directory / "nexus.toml"
        config.write_text(
            config_text(
                hostile,
                good,
                f"max_response_body_bytes = {BODY_LIMIT}\n"
                f"max_response_header_bytes = {HEADER_LIMIT}\n"
                f"max_stream_event_bytes = {EVENT_LIMIT}\n",
            ),
            encoding="utf-8",
        )
        with nexus_serve(config) as (process, url):
            yield Served(url, hostile, good, process, config.with_suffix(".log"))


@pytest.fixture
def nexus(served: Served) -> Iterator[Served]:
    """The shared server with its hostile backend back to answering correctly, and, after the
    test, proof that the server still serves."""
    hostile = served.hostile
    hostile.attack = Attack.NONE
    hostile.opening_event = False
    hostile.location = REDIRECT_TARGET
    hostile.error_status = 400
    yield served
    hostile.attack = Attack.NONE
    with httpx.Client(timeout=10) as client:
        assert client.get(served.url + "/health").status_code == 200
        answer = client.post(
            served.url + "/v1/chat/completions",
            json={"model": "hostile-only", "messages": MESSAGES},
        )
        assert answer.status_code == 200, answer.text
    assert served.process.poll() is None


def chat(
    url: str, model: str, *, stream: bool = False, path: str = "/v1/chat/completions"
) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "stream": stream}
    if path == "/v1/messages":
        body["max_tokens"] = 32
    with httpx.Client(timeout=15) as client:
        return client.post(url + path, json=body)


def data_events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def no_control_characters(text: str) -> bool:
    return not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text)


# -- before the first byte: failover, or a clean 5xx ---------------------------------------------

BEFORE_THE_FIRST_BYTE = [
    (Attack.ENDLESS_BODY, False),
    (Attack.ENDLESS_BODY, True),
    (Attack.LENGTH_TOO_BIG, False),
    (Attack.LENGTH_SHORT, False),
    (Attack.GIANT_HEADERS, False),
    (Attack.GIANT_HEADERS, True),
    (Attack.GIANT_HEADER_VALUE, False),
    (Attack.GIANT_EVENT, True),
    (Attack.COMMENTS_ONLY, True),
    (Attack.PARTIAL_EVENT, True),
    (Attack.REDIRECT, False),
    (Attack.REDIRECT, True),
    (Attack.DRIP, False),
]


@pytest.mark.parametrize(("attack", "stream"), BEFORE_THE_FIRST_BYTE)
def test_an_attack_before_the_first_byte_fails_over_to_the_good_backend(
    nexus: Served, attack: Attack, stream: bool
) -> None:
    nexus.hostile.attack = attack
    answer = chat(nexus.url, "shared-model", stream=stream)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-nexus-backend"] == "good"
    assert answer.headers["x-nexus-route-reason"] == "failover"
    assert answer.headers["content-type"] == (
        "text/event-stream; charset=utf-8" if stream else "application/json"
    )
    if stream:
        assert answer.text.endswith("data: [DONE]\n\n")
        assert "Hello" in answer.text
    else:
        assert answer.json()["choices"][0]["message"]["content"] == "Hello from good"
    assert nexus.hostile.requests[-1].attack is attack  # the attack did happen


@pytest.mark.parametrize(
    ("attack", "stream", "status", "says"),
    [
        (Attack.ENDLESS_BODY, False, 502, "server.max_response_body_bytes"),
        (Attack.LENGTH_TOO_BIG, True, 502, "server.max_response_body_bytes"),
        (Attack.GIANT_HEADER_VALUE, False, 502, "server.max_response_header_bytes"),
        (Attack.GIANT_EVENT, True, 502, "server.max_stream_event_bytes"),
        (Attack.REDIRECT, False, 502, "does not follow redirects"),
        (Attack.LENGTH_SHORT, False, 504, "response body stalled"),
        (Attack.COMMENTS_ONLY, True, 504, "no first event within 1 s"),
        (Attack.HTML_OK, False, 502, "content type 'text/html; charset=utf-8', not JSON"),
        (Attack.SWITCHING_PROTOCOLS, False, 502, "101 Switching Protocols"),
        (Attack.GARBAGE, True, 502, "not valid HTTP"),
    ],
)
def test_an_attack_on_a_model_only_it_serves_is_a_clean_error(
    nexus: Served, attack: Attack, stream: bool, status: int, says: str
) -> None:
    nexus.hostile.attack = attack
    answer = chat(nexus.url, "hostile-only", stream=stream)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert says in error["message"]
    assert no_control_characters(error["message"])
    assert "<html" not in answer.text


@pytest.mark.parametrize("attack", [Attack.HTML_OK, Attack.SWITCHING_PROTOCOLS, Attack.GARBAGE])
def test_a_malformed_answer_is_a_502_without_failover(nexus: Served, attack: Attack) -> None:
    """Documented choice (docs/reliability.md): an answer that is not HTTP, or a whole answer
    that is not JSON, is a 502 at once, like a cut JSON body."""
    nexus.hostile.attack = attack
    before = len(nexus.good.inference_requests)
    answer = chat(nexus.url, "shared-model")
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "bad_gateway"
    assert len(nexus.good.inference_requests) == before


def test_a_redirect_is_never_followed_nor_relayed(nexus: Served) -> None:
    nexus.hostile.attack = Attack.REDIRECT
    answer = chat(nexus.url, "hostile-only")
    assert answer.status_code == 502
    assert "location" not in answer.headers
    message = answer.json()["error"]["message"]
    assert "backend answered HTTP 302, a redirect to 'http://127.0.0.1:1/steal?key= 2J'" in message
    assert no_control_characters(message)
    assert nexus.hostile.requests[-1].path == "/v1/chat/completions"  # nothing went elsewhere


# -- after the first byte: the stream ends with an error event -----------------------------------


@pytest.mark.parametrize(
    ("attack", "code"),
    [
        (Attack.GIANT_EVENT, "response_too_large"),
        (Attack.COMMENTS_ONLY, "timeout"),
        (Attack.PARTIAL_EVENT, "timeout"),
    ],
)
def test_an_attack_after_the_first_event_ends_the_stream_with_an_error_event(
    nexus: Served, attack: Attack, code: str
) -> None:
    nexus.hostile.attack = attack
    nexus.hostile.opening_event = True
    closed = nexus.hostile.peer_closed
    answer = chat(nexus.url, "shared-model", stream=True)
    assert answer.status_code == 200
    assert answer.headers["x-nexus-backend"] == "hostile"
    events = data_events(answer.text)
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    error = json.loads(events[-1])["error"]
    assert error["code"] == code
    assert "[DONE]" not in answer.text
    assert nexus.hostile.wait_peer_closed(closed + 1, 5.0)  # the upstream was dropped


@pytest.mark.parametrize(
    ("path", "ends_with"),
    [
        ("/v1/chat/completions", "data: [DONE]"),
        ("/v1/messages", 'data: {"type":"message_stop"}'),
        ("/api/chat", '"done":true'),
    ],
    ids=["openai", "anthropic", "ollama"],
)
def test_nothing_after_done_is_relayed_and_the_upstream_is_released(
    nexus: Served, path: str, ends_with: str
) -> None:
    nexus.hostile.attack = Attack.EVENTS_AFTER_DONE
    closed = nexus.hostile.peer_closed
    answer = chat(nexus.url, "hostile-only", stream=True, path=path)
    assert answer.status_code == 200
    assert "more" not in answer.text  # the endless events after [DONE] never reach the client
    last = answer.text.rstrip("\n").rpartition("\n")[2]
    assert ends_with in last, answer.text[-300:]
    # Released at once: the hostile backend sees its connection closed under its flood.
    assert nexus.hostile.wait_peer_closed(closed + 1, 5.0)
    with httpx.Client() as client:
        history = client.get(nexus.url + "/v1/history").json()["data"]
    entry = next(e for e in history if e["request_id"] == answer.headers["x-request-id"])
    assert (entry["status"], entry["error"]) == (200, None)  # completed, not client_closed


# -- 4xx pages become each front door's own error --------------------------------------------------


def test_a_4xx_html_page_becomes_the_openai_envelope(nexus: Served) -> None:
    nexus.hostile.attack = Attack.HTML_ERROR
    nexus.hostile.error_status = 403
    before = len(nexus.good.inference_requests)
    answer = chat(nexus.url, "shared-model")
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["message"].startswith("Backend 'hostile' answered HTTP 403: <!doctype html>")
    assert error["code"] == "upstream_client_error"
    assert no_control_characters(error["message"])
    assert len(error["message"]) < 300
    assert len(nexus.good.inference_requests) == before  # a 4xx is not retried elsewhere


def test_a_4xx_html_page_becomes_the_anthropic_error(nexus: Served) -> None:
    nexus.hostile.attack = Attack.HTML_ERROR
    answer = chat(nexus.url, "hostile-only", path="/v1/messages")
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("application/json")
    payload = answer.json()
    assert payload["type"] == "error"
    assert "answered HTTP 400" in payload["error"]["message"]
    assert no_control_characters(payload["error"]["message"])


def test_a_4xx_html_page_becomes_the_ollama_error(nexus: Served) -> None:
    nexus.hostile.attack = Attack.HTML_ERROR
    answer = chat(nexus.url, "hostile-only", path="/api/chat")
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("application/json")
    message = answer.json()["error"]
    assert isinstance(message, str)
    assert "answered HTTP 400" in message
    assert no_control_characters(message)


def test_no_attack_leaves_a_traceback_in_the_log(nexus: Served) -> None:
    """A 101, garbage or a parser error is one clean failure, never an exception logged with its
    traceback (the log holds every earlier case of this module too)."""
    before = nexus.log.read_text(errors="replace").count("\n")
    for attack in (Attack.SWITCHING_PROTOCOLS, Attack.GARBAGE, Attack.GIANT_HEADERS):
        nexus.hostile.attack = attack
        for _ in range(5):
            assert chat(nexus.url, "hostile-only").status_code == 502
    log = nexus.log.read_text(errors="replace")
    assert "Traceback" not in log
    assert "data_received" not in log
    # A few lines per failed request at most (the attempt, the request), not a flood.
    assert log.count("\n") - before <= 15 * 3


# -- memory and probes (servers of their own) --------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_memory_returns_to_its_baseline_after_endless_answers(tmp_path: Path) -> None:
    """With the default limits (128 MiB per body, 16 MiB per event), concurrent endless answers
    leave the server's RSS near where it started; unbounded, each would add about 1 GB a second."""
    with HostileBackend(Attack.ENDLESS_BODY, models=["hostile-only"]) as hostile:
        config = tmp_path / "nexus.toml"
        # Generous timeouts: what is proved is the size limit, and pushing 1.7 GB through
        # loopback must not end in a 504 when the test shares the machine with other work.
        text = config_text(hostile, None, "").replace(
            "first_byte_timeout_seconds = 1.0\nidle_timeout_seconds = 0.5\n"
            "request_timeout_seconds = 10.0",
            "first_byte_timeout_seconds = 20.0\nidle_timeout_seconds = 20.0\n"
            "request_timeout_seconds = 60.0",
        )
        assert "request_timeout_seconds = 60.0" in text
        config.write_text(text, encoding="utf-8")
        with nexus_serve(config) as (process, url), httpx.Client(timeout=90) as client:
            body = {"model": "hostile-only", "messages": MESSAGES}

            def attack(stream: bool) -> None:
                answer = client.post(url + "/v1/chat/completions", json={**body, "stream": stream})
                assert answer.status_code == 502
                assert "larger than the limit" in answer.json()["error"]["message"]

            def round_of(attack_kind: Attack, stream: bool, count: int = 4) -> None:
                hostile.attack = attack_kind
                threads = [threading.Thread(target=attack, args=(stream,)) for _ in range(count)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(60)

            round_of(Attack.ENDLESS_BODY, False, 1)  # warm up the code paths
            baseline = rss_mb(process.pid)
            sent = hostile.bytes_sent
            for _ in range(3):
                round_of(Attack.ENDLESS_BODY, False)
                round_of(Attack.GIANT_EVENT, True)
            grown = rss_mb(process.pid) - baseline
            # Twelve answers of more than 128 MiB each and twelve events of 16 MiB were refused.
            assert hostile.bytes_sent - sent > 12 * (128 + 16) * 1024 * 1024
            assert grown < 100, f"RSS grew by {grown:.0f} MB"
            hostile.attack = Attack.NONE
            assert client.post(url + "/v1/chat/completions", json=body).status_code == 200


@pytest.mark.slow
def test_a_drip_fed_probe_does_not_hang_the_health_loop(tmp_path: Path) -> None:
    with (
        HostileBackend(
            Attack.DRIP, models=["shared-model"], probes=False, drip_seconds=0.2
        ) as hostile,
        FakeBackend("good", ["shared-model"]).running() as good,
    ):
        config = tmp_path / "nexus.toml"
        config.write_text(
            config_text(hostile, good, "")
            + "\n[health_check]\ninterval_seconds = 0.3\ntimeout_seconds = 0.5\n"
            "failure_threshold = 1\n",
            encoding="utf-8",
        )
        with nexus_serve(config) as (process, url), httpx.Client(timeout=10) as client:
            hostile.probes = True  # from now on every probe answer is drip-fed

            def backends() -> dict[str, dict[str, Any]]:
                data = client.get(url + "/admin/backends").json()["data"]
                return {entry["name"]: entry for entry in data}

            deadline = threading.Event()
            for _ in range(100):
                state = backends()
                if state["hostile"]["status"] == "unhealthy":
                    break
                deadline.wait(0.1)
            assert state["hostile"]["status"] == "unhealthy"
            assert "timed out" in (state["hostile"]["last_error"] or "")

            # The loop goes on: probes keep coming (each cut, none hanging) and the good backend
            # stays healthy and serves.
            def probes() -> int:
                return sum(1 for r in hostile.requests if r.method == "GET")

            seen = probes()
            for _ in range(200):
                if probes() >= seen + 2:
                    break
                deadline.wait(0.05)
            assert probes() >= seen + 2
            assert backends()["good"]["status"] == "healthy"
            answer = client.post(
                url + "/v1/chat/completions", json={"model": "shared-model", "messages": MESSAGES}
            )
            assert answer.status_code == 200
            assert answer.headers["x-nexus-backend"] == "good"
            assert process.poll() is None
