"""Names and text from outside Nexus are data: they never break an answer or leak a slot.

Backend names are held to one safe character set (the admin API refuses the rest, names made
from URLs are valid and addressable). Model names a backend lists may hold anything: in a
response header (``X-Nexus-Fallback-Model``) they are percent-encoded, on every front door,
streamed or not, and every backend's ``pending`` returns to 0. An answer that fails inside
Nexus before it started is the door's own error envelope, never a bare ``text/plain`` 500.
The real ``openai``, ``anthropic`` and ``ollama`` clients talk to a real Nexus (a thread).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import anthropic
import httpx
import ollama
import openai
import pytest

from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

#: A model name no header may carry as it is: outside Latin-1, CR/LF, an ANSI escape, a C1 CSI.
WEIRD = "模型\r\nX-Evil: 1\x1b[31m\x9b"
MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]


def pending(server: RunningServer) -> dict[str, int]:
    stats = httpx.get(server.url + "/v1/stats").json()
    return {backend["name"]: backend["pending"] for backend in stats["backends"]}


def assert_fallback_header(headers: httpx.Headers) -> None:
    raw = headers.raw
    value = next(v for k, v in raw if k.lower() == b"x-nexus-fallback-model")
    assert all(0x20 <= byte < 0x7F for byte in value), value
    assert unquote(value.decode("ascii")) == WEIRD
    assert headers["x-nexus-backend"] == "weird"
    assert b"x-evil" not in [k.lower() for k, _ in raw]


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """``primary`` always fails on ``broken``; its fallback is ``WEIRD`` on ``weird``."""
    broken = FakeBackend("broken", ["primary"], behaviour=Behaviour(status=500))
    weird = FakeBackend("weird", [WEIRD])
    with broken.running(), weird.running():
        config = gateway_config(broken, weird, fallbacks={"primary": [WEIRD]})
        with running_server(config) as running:
            yield running


def test_a_fallback_model_named_outside_latin_1_with_crlf_on_the_openai_door(
    server: RunningServer,
) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="primary", messages=MESSAGES)
    assert raw.status_code == 200
    assert_fallback_header(raw.headers)
    assert raw.parse().choices[0].message.content == "Hello from weird"
    with client.chat.completions.with_streaming_response.create(
        model="primary", messages=MESSAGES, stream=True
    ) as streamed:
        assert streamed.status_code == 200
        assert_fallback_header(streamed.headers)
        events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    # The backend-listed name itself, asked for directly, is served too.
    answer = client.chat.completions.create(model=WEIRD, messages=MESSAGES)
    assert answer.model == WEIRD
    assert WEIRD in [model.id for model in client.models.list()]
    assert pending(server) == {"broken": 0, "weird": 0}


def test_a_fallback_model_named_outside_latin_1_with_crlf_on_the_anthropic_door(
    server: RunningServer,
) -> None:
    claude = anthropic.Anthropic(base_url=server.url, api_key="sk-ant", max_retries=0)
    raw = claude.messages.with_raw_response.create(
        model="primary", max_tokens=16, messages=MESSAGES
    )
    assert raw.status_code == 200
    assert_fallback_header(raw.headers)
    assert raw.parse().content[0].text == "Hello from weird"  # type: ignore[union-attr]
    with claude.messages.stream(model="primary", max_tokens=16, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        assert_fallback_header(stream.response.headers)
    assert text == "Hello from weird"
    assert pending(server) == {"broken": 0, "weird": 0}


def test_a_fallback_model_named_outside_latin_1_with_crlf_on_the_ollama_door(
    server: RunningServer,
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        whole = http.post(
            "/api/chat", json={"model": "primary", "messages": MESSAGES, "stream": False}
        )
        assert whole.status_code == 200
        assert_fallback_header(whole.headers)
        assert whole.json()["message"]["content"] == "Hello from weird"
        with http.stream("POST", "/api/generate", json={"model": "primary", "prompt": "Hi"}) as s:
            assert s.status_code == 200
            assert_fallback_header(s.headers)
            lines = [json.loads(line) for line in s.iter_lines() if line]
    assert lines[-1]["done"] is True
    assert "".join(line["response"] for line in lines) == "Hello from weird"
    # The ollama client reads the listing with the name as it is.
    assert WEIRD in [m.model for m in ollama.Client(host=server.url).list().models]
    assert pending(server) == {"broken": 0, "weird": 0}


# -- an answer that fails inside Nexus before it started -------------------------------------------


@pytest.fixture
def odd_answers() -> Iterator[RunningServer]:
    """A backend whose answers are JSON of the wrong shape (a choice that is a number)."""
    odd = FakeBackend("odd", ["m"], behaviour=Behaviour(extra_response_fields={"choices": [5]}))
    with odd.running(), running_server(gateway_config(odd)) as running:
        yield running


def test_a_failure_before_the_answer_started_is_the_door_s_own_error(
    odd_answers: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = odd_answers
    caplog.set_level(logging.INFO)
    claude = anthropic.Anthropic(base_url=server.url, api_key="sk-ant", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as failed:
        claude.messages.create(model="m", max_tokens=16, messages=MESSAGES)
    assert failed.value.status_code >= 500
    assert failed.value.response.headers["content-type"] == "application/json"
    assert failed.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "Internal error in the gateway"},
    }
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=server.url).chat(model="m", messages=MESSAGES, stream=False)
    assert refused.value.status_code >= 500
    assert refused.value.error == "Internal error in the gateway"
    answer = httpx.post(
        server.url + "/api/generate", json={"model": "m", "prompt": "Hi", "stream": False}
    )
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"error": "Internal error in the gateway"}
    assert "x-request-id" in answer.headers
    # Streamed, the translation fails after the answer started: it is cut, never completed.
    with httpx.stream(
        "POST", server.url + "/api/chat", json={"model": "m", "messages": MESSAGES}
    ) as cut:
        assert cut.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            list(cut.iter_lines())
    assert pending(server) == {"odd": 0}
    # One line per failure, no traceback flood (a backend chooses how often this happens).
    failures = [r for r in caplog.records if "the answer failed" in r.getMessage()]
    assert len(failures) == 4
    assert "after it started" in failures[-1].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    # One record per request; the cut stream counts as failed.
    history = httpx.get(server.url + "/v1/history").json()["data"]
    assert len(history) == 4
    assert history[0]["stream"] is True
    assert history[0]["error"] is not None


# -- backend names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["team/gpu", "gpu\r\nX-Evil: 1", "模型", "-gpu", "gpu box", "x" * 65, "\x1b[31m"]
)
def test_the_admin_api_refuses_a_backend_name_outside_the_safe_set(name: str) -> None:
    with running_server(gateway_config()) as server:
        answer = httpx.post(
            server.url + "/admin/backends",
            json={"url": "http://127.0.0.1:9", "name": name, "type": "generic"},
        )
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["message"].startswith("Invalid backend: name: must be 1-64 letters")
        assert httpx.get(server.url + "/admin/backends").json()["data"] == []


def test_a_name_made_from_an_ipv6_url_is_valid_and_addressable() -> None:
    with running_server(gateway_config()) as server, httpx.Client(base_url=server.url) as http:
        added = http.post("/admin/backends", json={"url": "http://[::1]:9", "type": "generic"})
        assert added.status_code == 201
        assert added.json()["name"] == "ip6-1-9"
        assert http.post("/admin/backends/ip6-1-9/drain", json={}).status_code == 200
        assert http.delete("/admin/backends/ip6-1-9").json() == {"removed": "ip6-1-9"}
