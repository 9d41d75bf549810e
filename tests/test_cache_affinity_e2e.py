"""``strategy = "cache_affinity"`` end to end: real SDKs, a real Nexus, fake llama-servers.

Every turn of a conversation goes to one backend, whichever door it comes through (OpenAI,
Anthropic, Ollama, Responses: each translates to the same chat messages, keyed alike); two Nexus
servers with the same backends agree without talking to each other; a failed backend hands the
request to the next on the ring; a full one overflows. The fakes keep a prompt cache, so a turn
on the backend of its conversation reports cached tokens, which ``/metrics``, ``/v1/stats`` and
``/v1/history`` show.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus_core.testing import Behaviour, FakeLlamaCpp
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

MODEL = "tiny"


@pytest.fixture
def llamas() -> Iterator[list[FakeLlamaCpp]]:
    """Three fake llama-servers serving ``tiny``."""
    fakes = [FakeLlamaCpp(name, models=(MODEL,)) for name in ("l0", "l1", "l2")]
    contexts = [fake.running() for fake in fakes]
    for context in contexts:
        context.__enter__()
    try:
        yield fakes
    finally:
        for context in contexts:
            context.__exit__(None, None, None)


def config(
    fakes: list[FakeLlamaCpp], max_concurrent: int | None = None, **affinity: Any
) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [
        {"name": fake.name, "url": fake.url, "type": "llamacpp", "max_concurrent": max_concurrent}
        for fake in fakes
    ]
    return gateway_config(
        *entries, strategy="cache_affinity", cache_affinity=affinity, max_retries=2
    )


def system(index: int) -> str:
    return f"You are assistant {index}; answer in the voice of a {index}-th century sailor."


def turn_messages(index: int, turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system(index)}]
    for number in range(turns):
        messages.append({"role": "user", "content": f"question {number} from {index}"})
        if number < turns - 1:
            messages.append({"role": "assistant", "content": f"answer {number}"})
    return messages


def openai_turn(server: RunningServer, index: int, turns: int) -> tuple[str, str]:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=turn_messages(index, turns),  # type: ignore[arg-type]
        max_tokens=8,
    )
    return raw.headers["x-nexus-backend"], raw.headers["x-nexus-route-reason"]


def anthropic_turn(server: RunningServer, index: int, turns: int) -> tuple[str, str]:
    client = anthropic.Anthropic(base_url=server.url, api_key="sk-test", max_retries=0)
    messages = turn_messages(index, turns)
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        system=messages[0]["content"],
        messages=messages[1:],  # type: ignore[arg-type]
        max_tokens=8,
    )
    return raw.headers["x-nexus-backend"], raw.headers["x-nexus-route-reason"]


def ollama_turn(server: RunningServer, index: int, turns: int) -> tuple[str, str]:
    response = httpx.post(
        server.url + "/api/chat",
        json={"model": MODEL, "messages": turn_messages(index, turns), "stream": False},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.headers["x-nexus-backend"], response.headers["x-nexus-route-reason"]


def responses_turn(server: RunningServer, index: int, turns: int) -> tuple[str, str]:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    messages = turn_messages(index, turns)
    raw = client.responses.with_raw_response.create(
        model=MODEL,
        instructions=messages[0]["content"],
        input=[{"role": m["role"], "content": m["content"]} for m in messages[1:]],  # type: ignore[misc]
        max_output_tokens=16,
    )
    return raw.headers["x-nexus-backend"], raw.headers["x-nexus-route-reason"]


def metric(server: RunningServer, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_every_turn_of_a_conversation_lands_on_one_backend_through_every_door(
    llamas: list[FakeLlamaCpp],
) -> None:
    doors = (openai_turn, anthropic_turn, ollama_turn, responses_turn, openai_turn)
    with running_server(config(llamas)) as server:
        homes: dict[int, str] = {}
        for index in range(6):
            seen = set()
            for number, door in enumerate(doors, start=1):
                backend, reason = door(server, index, number)
                seen.add(backend)
                if number > 1:
                    assert reason == "cache-affinity", (door.__name__, reason)
            assert len(seen) == 1, f"conversation {index} went to {seen}"
            homes[index] = seen.pop()
        # Six conversations on three backends, within the bound: two each.
        assert sorted(list(homes.values()).count(f.name) for f in llamas) == [2, 2, 2]
        # Later turns found their prefix in the backend's prompt cache.
        cached = sum(
            metric(server, "nexus_prompt_tokens_cached_total", backend=f.name) for f in llamas
        )
        assert cached > 0
        stats = httpx.get(server.url + "/v1/stats").json()
        ratios = {b["name"]: b["cache_hit_ratio"] for b in stats["backends"]}
        assert all(ratio is not None and 0 < ratio < 1 for ratio in ratios.values()), ratios
        assert all(b["tokens"]["cached"] > 0 for b in stats["backends"])
        history = httpx.get(server.url + "/v1/history").json()["data"]
        assert {entry["cached_tokens"] for entry in history} - {0, None}
        # A stream's usage counts too (the last conversation: its prompts are still cached).
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=turn_messages(5, 6),  # type: ignore[arg-type]
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.prompt_tokens_details is not None
        cached_now = usage.prompt_tokens_details.cached_tokens
        assert cached_now
        newest = httpx.get(server.url + "/v1/history").json()["data"][0]
        assert newest["stream"] is True
        assert newest["cached_tokens"] == cached_now
        assert newest["route_reason"] == "cache-affinity"


def test_two_nexus_servers_place_conversations_alike(llamas: list[FakeLlamaCpp]) -> None:
    # The bound is local (epsilon 10: it never binds here); the placement is the hash alone,
    # so the second server, seeing the conversations in the opposite order, agrees.
    with running_server(config(llamas, epsilon=10)) as first:
        one = {index: openai_turn(first, index, 1)[0] for index in range(12)}
    with running_server(config(llamas, epsilon=10)) as second:
        two = {index: openai_turn(second, index, 3)[0] for index in reversed(range(12))}
    assert one == two
    assert len(set(one.values())) > 1


def test_a_failing_backend_hands_the_turn_to_the_next_on_the_ring(
    llamas: list[FakeLlamaCpp],
) -> None:
    with running_server(config(llamas)) as server:
        home, _ = openai_turn(server, 0, 1)
        failing = next(f for f in llamas if f.name == home)
        failing.push(Behaviour(status=500, times=1))
        backend, reason = openai_turn(server, 0, 2)
        assert backend != home
        assert reason == "failover"
        # The next turn is at home again (a failed attempt does not move the conversation).
        assert openai_turn(server, 0, 3) == (home, "cache-affinity")


def test_a_full_backend_overflows_to_the_next(llamas: list[FakeLlamaCpp]) -> None:
    fakes = llamas[:2]
    with running_server(config(fakes, max_concurrent=1)) as server:
        home, _ = openai_turn(server, 0, 1)
        slow = next(f for f in fakes if f.name == home)
        slow.push(Behaviour(delay_before_headers=0.8, times=1))
        before = len(slow.inference_requests)
        held = threading.Thread(target=openai_turn, args=(server, 0, 2))
        held.start()
        deadline = time.monotonic() + 5
        while len(slow.inference_requests) == before:  # the held turn is on its backend
            assert time.monotonic() < deadline
            time.sleep(0.01)
        backend, reason = openai_turn(server, 0, 3)
        held.join()
        assert backend != home
        assert reason == "cache-affinity-overflow"
