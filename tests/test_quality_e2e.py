"""Quality end to end: a failing backend is avoided, retried after its cool-down, and restored."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.testing import running_server
from tests.conftest import gateway_config

MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]


def test_failing_backend_cools_down_and_is_restored(fakes: list[FakeBackend]) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(status=500))
    config = gateway_config(a, b, strategy="priority_only")
    config["quality"] = {"min_requests": 3, "cooldown_seconds": 0.5, "window_seconds": 60}
    with running_server(config) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

        def ask() -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="fake-model", messages=MESSAGES
            )
            return raw.headers["x-nexus-backend"]

        assert [ask() for _ in range(3)] == ["b", "b", "b"]
        assert len(a.inference_requests) == 3
        # Cooled down: a is no longer touched.
        assert [ask() for _ in range(3)] == ["b", "b", "b"]
        assert len(a.inference_requests) == 3
        # After the cool-down a is tried again (half-open), and restored when it answers.
        a.behave(Behaviour())
        time.sleep(0.6)
        assert ask() == "a"
        assert len(a.inference_requests) == 4
        assert [ask() for _ in range(2)] == ["a", "a"]


def test_streams_that_break_after_the_first_byte_count_as_failures(
    fakes: list[FakeBackend],
) -> None:
    a, b = fakes[0], fakes[1]
    a.behave(Behaviour(cut_after_events=2))
    config = gateway_config(a, b, strategy="priority_only")
    config["quality"] = {"min_requests": 3, "cooldown_seconds": 60, "window_seconds": 60}
    with running_server(config) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        for _ in range(3):
            # The first byte went out: no failover is possible, the client sees the break.
            stream = client.chat.completions.create(
                model="fake-model", messages=MESSAGES, stream=True
            )
            with pytest.raises(openai.APIError):
                list(stream)
        assert len(a.inference_requests) == 3
        # Three broken streams cooled a down: the next stream is served by b, whole.
        raw = client.chat.completions.with_raw_response.create(
            model="fake-model", messages=MESSAGES, stream=True
        )
        assert raw.headers["x-nexus-backend"] == "b"
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices
        )
        assert text == "Hello from b"
        assert len(a.inference_requests) == 3
