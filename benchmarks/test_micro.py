"""Micro-benchmarks of the per-request work: routing decision, SSE parsing, body inspection.

Not part of the test run (the root pytest configuration collects `packages` and `tests` only).
Run: uv run pytest benchmarks/test_micro.py --benchmark-only -p no:cacheprovider
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.routing_decision import build
from nexus_core import fastjson
from nexus_core.adapters import Endpoint
from nexus_core.routing import analyze, prefix_key, replace_model
from nexus_core.sse import SSEParser, completes_answer, event_data
from nexus_server.responses_wire import ChatStreamToResponses, chat_answer_to_response

pytest.importorskip("pytest_benchmark")

Benchmark = Callable[..., Any]


@pytest.mark.parametrize("strategy", ["smart", "round_robin", "least_loaded", "cache_affinity"])
@pytest.mark.parametrize("backends", [5, 50, 500])
def test_routing_decision(benchmark: Benchmark, backends: int, strategy: str) -> None:
    """One `Router.plan` for a one-message chat request (target at 50 backends: <= 20 us)."""
    plan = build(backends, strategy).plan
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    needs = analyze(Endpoint.CHAT, body, keyed=strategy == "cache_affinity")
    routes = benchmark(plan, needs)
    assert len(routes) >= 1


def _event(index: int) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "mock",
        "choices": [{"index": 0, "delta": {"content": f" word{index}"}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


EVENTS = 100
STREAM = [_event(index) for index in range(EVENTS)]


def relay_events(chunks: list[bytes]) -> int:
    """What the relay does per upstream chunk: frame events and check for the end."""
    parser = SSEParser()
    count = 0
    for chunk in chunks:
        for event in parser.feed(chunk):
            completes_answer(event)
            count += 1
    return count


@pytest.mark.parametrize(
    "arrival",
    ["one event per chunk", "all in one chunk", "split mid-event"],
)
def test_sse_parsing(benchmark: Benchmark, arrival: str) -> None:
    """Framing 100 OpenAI chunks (SSEParser.feed + the completion check); divide by 100."""
    if arrival == "one event per chunk":
        chunks = STREAM
    elif arrival == "all in one chunk":
        chunks = [b"".join(STREAM)]
    else:
        whole = b"".join(STREAM)
        chunks = [whole[start : start + 97] for start in range(0, len(whole), 97)]
    benchmark.extra_info["events"] = EVENTS
    assert benchmark(relay_events, chunks) == EVENTS


def test_sse_decode_per_event(benchmark: Benchmark) -> None:
    """A translating front door's extra work per event: `event_data` and `fastjson.loads`."""

    def decode() -> int:
        return sum(len(fastjson.loads(event_data(event))) for event in STREAM)

    benchmark.extra_info["events"] = EVENTS
    assert benchmark(decode) > 0


def chat_body(kilobytes: int) -> bytes:
    """A chat request of about ``kilobytes`` KB: a conversation of 200-character messages."""
    messages: list[dict[str, str]] = []
    size = 60
    while size < kilobytes * 1024:
        text = ("lorem ipsum dolor sit amet " * 8)[:200]
        messages.append(
            {"role": "user" if len(messages) % 2 == 0 else "assistant", "content": text}
        )
        size += 240
    return json.dumps({"model": "m", "messages": messages, "stream": False}).encode()


@pytest.mark.parametrize("kilobytes", [1, 10, 100])
def test_body_inspection(benchmark: Benchmark, kilobytes: int) -> None:
    """What the proxy does to a request body: parse it, `analyze`; divide by the size in KB."""
    body = chat_body(kilobytes)

    def inspect() -> bool:
        return analyze(Endpoint.CHAT, fastjson.loads(body)).stream

    benchmark.extra_info["kilobytes"] = len(body) / 1024
    assert benchmark(inspect) is False


@pytest.mark.parametrize("kilobytes", [1, 10, 100])
def test_conversation_key(benchmark: Benchmark, kilobytes: int) -> None:
    """``prefix_key`` of a conversation with a system prompt of ``kilobytes`` KB (cache_affinity's
    extra work per request; it reads at most 32,768 characters)."""
    system = ("lorem ipsum dolor sit amet " * (40 * kilobytes))[: kilobytes * 1024]
    data = {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user"}]}
    benchmark.extra_info["kilobytes"] = kilobytes
    assert benchmark(prefix_key, Endpoint.CHAT, data) != 0


@pytest.mark.parametrize("kilobytes", [1, 10, 100])
def test_replace_model(benchmark: Benchmark, kilobytes: int) -> None:
    """Splicing another model name into a body (aliases, fallbacks); model is the first key."""
    body = chat_body(kilobytes)
    benchmark.extra_info["kilobytes"] = len(body) / 1024
    assert benchmark(replace_model, body, "other").startswith(b'{"model": "other"')


RESPONSES_REQUEST = {"model": "mock", "input": "Hello!", "store": False, "stream": True}
#: The canned backend's streamed answer (mock-nginx.conf): a role chunk, nine deltas, the finish.
RESPONSES_CHUNKS: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    for delta, finish in [
        ({"role": "assistant", "content": ""}, None),
        *[
            ({"content": word}, None)
            for word in ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]
        ],
        ({}, "stop"),
    ]
]
RESPONSES_ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "mock",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}


def test_responses_stream_translation(benchmark: Benchmark) -> None:
    """The Responses door's events for one streamed answer of 11 chat chunks (17 events)."""

    def translate() -> int:
        converter = ChatStreamToResponses(RESPONSES_REQUEST)
        size = len(converter.start())
        for chunk in RESPONSES_CHUNKS:
            size += len(converter.feed(chunk))
        return size + len(converter.finish())

    assert benchmark(translate) > 0


def test_responses_whole_answer(benchmark: Benchmark) -> None:
    """The Responses door's `response` for one whole chat answer, translated and encoded."""

    def translate() -> int:
        return len(fastjson.dumps(chat_answer_to_response(RESPONSES_ANSWER, RESPONSES_REQUEST)))

    assert benchmark(translate) > 0
