"""End to end against real llama.cpp ``llama-server`` processes: openai SDK -> Nexus -> llama.cpp.

The model is random (tests/real/tiny_model.py), so the text is gibberish: tests check shapes,
token counts, routing headers and states, never content. Every request sends ``max_tokens``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from nexus_backend_llamacpp import LlamaCppAdapter
from nexus_core.adapters import BackendStatus
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_server.testing import RunningServer, running_server
from tests.real.llama_server import (
    ALIAS,
    CONTEXT,
    EMBEDDING_ARGS,
    SLOTS,
    LaunchLlama,
    LlamaServer,
)

pytestmark = pytest.mark.slow

MESSAGES: list[Any] = [{"role": "user", "content": "Say something."}]


def nexus_config(
    *servers: LlamaServer, load_interval: float = 3600, **routing: Any
) -> dict[str, Any]:
    """Nexus in front of ``servers`` (first = highest priority): probed once, load read every
    ``load_interval`` seconds."""
    return {
        "server": {
            "first_byte_timeout_seconds": 10.0,
            "idle_timeout_seconds": 10.0,
            "request_timeout_seconds": 30.0,
        },
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600, "load_interval_seconds": load_interval},
        "routing": routing,
        "backends": [
            server.backend(priority=10 * (index + 1)) for index, server in enumerate(servers)
        ],
    }


def sdk(nexus: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=nexus.base_url, api_key="unused", max_retries=0, timeout=30)


def test_models_and_context_length_discovered(launch_llama: LaunchLlama) -> None:
    a, b = launch_llama("a"), launch_llama("b")
    with running_server(nexus_config(a, b)) as nexus:
        models = sdk(nexus).models.list().data
    assert [model.id for model in models] == [ALIAS]
    entry = models[0].model_dump()
    assert sorted(entry["backends"]) == ["a", "b"]
    assert entry["owned_by"] == "llamacpp"
    # -c 1024 -np 2: each request gets one slot of 512 tokens, which is what a prompt must fit;
    # llama-server reports that (meta.n_ctx in /v1/models, n_ctx in /props), never the 1024.
    assert entry["context_length"] == CONTEXT // SLOTS
    # From /props: no vision modality, and the tiny model's chat template knows no tools.
    assert entry["capabilities"]["vision"] is False
    assert entry["capabilities"]["tools"] is False


def test_chat_non_streaming(launch_llama: LaunchLlama) -> None:
    server = launch_llama("a")
    with running_server(nexus_config(server)) as nexus:
        raw = sdk(nexus).chat.completions.with_raw_response.create(
            model=ALIAS, messages=MESSAGES, max_tokens=8, seed=1
        )
    completion = raw.parse()
    assert raw.headers["x-nexus-backend"] == "a"
    assert completion.model == ALIAS
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 8
    assert completion.usage.prompt_tokens > 5  # the chat template's tokens and the message
    assert choice.finish_reason == ("length" if completion.usage.completion_tokens == 8 else "stop")


def test_chat_streaming_with_usage(launch_llama: LaunchLlama) -> None:
    server = launch_llama("a")
    with running_server(nexus_config(server)) as nexus:
        stream = sdk(nexus).chat.completions.create(
            model=ALIAS,
            messages=MESSAGES,
            max_tokens=12,
            seed=1,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in {"length", "stop"}
    assert all(reason is None for reason in finishes[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    # One chunk per token, except that a token ending inside a UTF-8 character waits for the next.
    assert 0 < len(content) <= usage_chunk.usage.completion_tokens <= 12
    assert usage_chunk.usage.total_tokens == (
        usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens
    )


def test_embeddings(launch_llama: LaunchLlama) -> None:
    server = launch_llama("embed", *EMBEDDING_ARGS)
    with running_server(nexus_config(server)) as nexus:
        raw = sdk(nexus).embeddings.with_raw_response.create(
            model=ALIAS, input=["hello world", "a second, longer input text"]
        )
    response = raw.parse()
    assert raw.headers["x-nexus-backend"] == "embed"
    assert [item.index for item in response.data] == [0, 1]
    vectors = [item.embedding for item in response.data]
    assert [len(vector) for vector in vectors] == [64, 64]  # n_embd of the tiny model
    assert vectors[0] != vectors[1]
    assert response.usage.prompt_tokens > 4


@pytest.mark.anyio
async def test_loading_seen_during_start_up(launch_llama: LaunchLlama) -> None:
    # Probe in a tight loop from before the port opens until healthy: llama-server answers
    # /health 503 "Loading model" from a few ms after it listens until the model is ready (70 ms
    # or more for this model, longer on a busy machine); one probe takes a few ms at most.
    clients = HttpClients()
    _ = clients.probe  # made now: creating the client costs more than the whole loading window
    server = launch_llama("a", wait=False)
    adapter = LlamaCppAdapter(BackendConfig(name="a", url=server.url, type="llamacpp"), clients)
    seen: list[BackendStatus] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            result = await adapter.probe()
            if not seen or seen[-1] is not result.status:
                seen.append(result.status)
            if result.status is BackendStatus.HEALTHY:
                break
    finally:
        await clients.aclose()
    assert seen[-1] is BackendStatus.HEALTHY, server.log_tail()
    # Refused before the port opens (unless the first probe came late), then loading, healthy.
    assert seen[-2:] == [BackendStatus.LOADING, BackendStatus.HEALTHY], seen
    assert seen[:-2] in ([], [BackendStatus.UNHEALTHY]), seen
    assert [model.id for model in result.models] == [ALIAS]


def test_failover_when_a_server_is_killed_mid_run(launch_llama: LaunchLlama) -> None:
    a, b = launch_llama("a"), launch_llama("b")
    workers, total, kill_after = 4, 40, 10
    served: list[tuple[str, str]] = []  # (backend, route reason) in the order answers came
    lock = threading.Lock()

    with running_server(nexus_config(a, b, strategy="priority_only")) as nexus:
        client = sdk(nexus)

        def chat(_: int) -> None:
            raw = client.chat.completions.with_raw_response.create(
                model=ALIAS, messages=MESSAGES, max_tokens=32
            )
            assert raw.parse().usage is not None
            with lock:
                served.append((raw.headers["x-nexus-backend"], raw.headers["x-nexus-route-reason"]))
                if len(served) == kill_after:
                    a.kill()  # the other workers have requests on "a" right now

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(chat, range(total)))  # re-raises the first failed request

    backends = [backend for backend, _ in served]
    assert len(served) == total
    assert backends[:kill_after] == ["a"] * kill_after
    # Requests in flight on "a" when it died may have been answered just before; later ones
    # all went to "b", the first of them after trying "a" (Nexus still thought it healthy).
    later = backends[kill_after + workers - 1 :]
    assert later == ["b"] * len(later)
    assert "failover" in {reason for _, reason in served[kill_after:]}


def test_stream_cut_by_a_killed_server_is_an_error(launch_llama: LaunchLlama) -> None:
    # After the first byte nothing can move to another server: the client must see an error,
    # never a stream that looks complete.
    a, b = launch_llama("a"), launch_llama("b")
    max_tokens = CONTEXT // SLOTS - 32
    received: list[ChatCompletionChunk] = []

    def read_killing_a_after_two(stream: Iterable[ChatCompletionChunk]) -> None:
        for chunk in stream:
            received.append(chunk)
            if len(received) == 2:
                a.kill()

    with running_server(nexus_config(a, b, strategy="priority_only")) as nexus:
        stream = sdk(nexus).chat.completions.create(
            model=ALIAS,
            messages=MESSAGES,
            max_tokens=max_tokens,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        with pytest.raises(openai.APIError) as raised:
            read_killing_a_after_two(stream)
        after = sdk(nexus).chat.completions.with_raw_response.create(
            model=ALIAS, messages=MESSAGES, max_tokens=4
        )
    # An error event from Nexus naming the backend, not a dropped connection.
    assert not isinstance(raised.value, openai.APIConnectionError)
    assert "'a'" in str(raised.value)
    assert len(received) < max_tokens
    assert after.headers["x-nexus-backend"] == "b"


def test_load_aware_routing_from_real_slots(launch_llama: LaunchLlama) -> None:
    # "a" has the better priority but its two slots are kept busy by clients that bypass Nexus,
    # so only llama-server's own /slots can tell Nexus; the smart strategy must then prefer "b",
    # and go back to "a" once it is idle.
    a, b = launch_llama("a"), launch_llama("b")
    stop = threading.Event()

    def keep_a_busy() -> None:
        body = {
            "messages": MESSAGES,
            "max_tokens": 200,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.Client(trust_env=False, timeout=30) as direct:
            while not stop.is_set():
                try:
                    with direct.stream(
                        "POST", a.url + "/v1/chat/completions", json=body
                    ) as response:
                        for _ in response.iter_bytes():
                            pass
                except httpx.RemoteProtocolError:
                    # llama-server may close a kept-alive connection just as the next request
                    # goes out on it; this client only keeps "a" busy: it goes again.
                    continue

    def route() -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=ALIAS, messages=MESSAGES, max_tokens=4
        )
        return raw.headers["x-nexus-backend"]

    # Latency out of the score: one slow start-up probe on a busy machine would outweigh priority.
    config = nexus_config(a, b, load_interval=0.05, weights={"latency": 0.0})
    with running_server(config) as nexus:
        client = sdk(nexus)
        backend_a = nexus.gateway.registry.get("a")
        assert backend_a is not None

        def slots_of_a() -> tuple[int | None, int | None]:
            load = backend_a.load
            return (None, None) if load is None else (load.busy_slots, load.total_slots)

        assert route() == "a"
        # Two streams per slot: when one ends another is already waiting for the slot.
        with ThreadPoolExecutor(max_workers=2 * SLOTS) as pool:
            busy = [pool.submit(keep_a_busy) for _ in range(2 * SLOTS)]
            try:
                assert wait_for(lambda: slots_of_a() == (SLOTS, SLOTS)), backend_a.load
                assert backend_a.pending == 0  # Nexus itself sent "a" nothing
                while_busy = [route() for _ in range(5)]
            finally:
                stop.set()
            for future in busy:
                future.result()
        assert wait_for(lambda: slots_of_a() == (0, SLOTS)), backend_a.load
        after = route()
    assert while_busy == ["b"] * 5
    assert after == "a"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.anyio
async def test_auto_detection_recognises_the_real_server(launch_llama: LaunchLlama) -> None:
    from nexus_core.gateway import Gateway

    server = launch_llama("a")
    config = {"discovery": {"enabled": False}, "health_check": {"interval_seconds": 3600}}
    async with Gateway(config) as gateway:
        assert await gateway.detect_type(server.url) == "llamacpp"
        backend = await gateway.add_backend(server.url)
        assert backend.type_name == "llamacpp"
        assert backend.status is BackendStatus.HEALTHY
        assert ALIAS in backend.models


# -- errors keep their meaning (docs/api.md#errors) ----------------------------------------------


def test_embeddings_off_is_detected_listed_and_never_routed_there(
    launch_llama: LaunchLlama,
) -> None:
    chat_only = launch_llama("chat-only")
    embedder = launch_llama("embedder", *EMBEDDING_ARGS)
    with running_server(nexus_config(chat_only)) as nexus:
        entry = sdk(nexus).models.retrieve(ALIAS).model_dump()
        with pytest.raises(openai.BadRequestError) as info:
            sdk(nexus).embeddings.create(model=ALIAS, input="hello")
    assert entry["capabilities"]["embeddings"] is False
    assert (info.value.code, info.value.param) == ("embeddings_not_supported", "model")
    with running_server(nexus_config(chat_only, embedder)) as nexus:
        listed = sdk(nexus).models.retrieve(ALIAS).model_dump()
        raw = sdk(nexus).embeddings.with_raw_response.create(model=ALIAS, input="hello")
    assert listed["capabilities"]["embeddings"] is True
    # chat-only has the higher priority, yet embeddings never go there.
    assert raw.headers["x-nexus-backend"] == "embedder"


def test_an_undetected_501_reaches_the_client_as_a_400_with_llama_servers_message(
    launch_llama: LaunchLlama,
) -> None:
    # Declared as a plain OpenAI-wire server (type vllm), so nothing asks whether it embeds:
    # the request goes there and llama-server answers its 501.
    server = launch_llama("plain")
    config = nexus_config(server)
    config["backends"][0]["type"] = "vllm"
    with running_server(config) as nexus:
        client = openai.OpenAI(base_url=nexus.base_url, api_key="unused", max_retries=2)
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=ALIAS, input="hello")
        answered = httpx.get(nexus.url + "/v1/history").json()["data"]
    assert info.value.code == "embeddings_not_supported"
    assert "This server does not support embeddings. Start it with `--embeddings`" in str(
        info.value.message
    )
    assert [entry["status"] for entry in answered] == [400]  # one call, one request


def test_llama_servers_context_error_reaches_every_door(launch_llama: LaunchLlama) -> None:
    # 1,500 digits: about 375 tokens to Nexus's estimate (it fits the 512-token slot), 1,500 and
    # more to the real tokenizer (one token per digit): llama-server itself refuses it.
    server = launch_llama("a")
    prompt = [{"role": "user", "content": "7" * 1500}]
    with running_server(nexus_config(server)) as nexus:
        with pytest.raises(openai.BadRequestError) as info:
            sdk(nexus).chat.completions.create(model=ALIAS, messages=prompt, max_tokens=4)
        claude = anthropic.Anthropic(base_url=nexus.url, api_key="unused", max_retries=0)
        with pytest.raises(anthropic.BadRequestError) as refused:
            claude.messages.create(model=ALIAS, messages=prompt, max_tokens=4)
        with pytest.raises(ollama.ResponseError) as ollama_refused:
            ollama.Client(host=nexus.url).chat(model=ALIAS, messages=prompt, stream=False)
    # OpenAI's code (the body is llama-server's, with its own type and counts).
    assert info.value.code == "context_length_exceeded"
    body = info.value.response.json()["error"]
    assert body["type"] == "exceed_context_size_error"
    assert body["n_ctx"] == CONTEXT // SLOTS
    message = body["message"]
    assert "exceeds the available context size (512 tokens)" in message
    # The same message in Anthropic's and Ollama's shapes.
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }
    assert (ollama_refused.value.status_code, ollama_refused.value.error) == (400, message)


def test_responses_door_whole_and_streamed(launch_llama: LaunchLlama) -> None:
    # The Responses API (client.responses) through Nexus to a server that speaks only chat.
    server = launch_llama("a")
    with running_server(nexus_config(server)) as nexus:
        client = sdk(nexus)
        raw = client.responses.with_raw_response.create(
            model=ALIAS, instructions="Answer.", input="Hello", max_output_tokens=8
        )
        with client.responses.stream(model=ALIAS, input="Hello", max_output_tokens=8) as stream:
            events = list(stream)
    response = raw.parse()
    assert raw.headers["x-nexus-backend"] == "a"
    assert response.usage is not None
    assert 0 < response.usage.output_tokens <= 8
    assert response.usage.input_tokens > 5
    assert response.output_text
    cut = response.usage.output_tokens == 8
    assert response.status == ("incomplete" if cut else "completed")
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in types
    last = events[-1]
    assert last.type in {"response.completed", "response.incomplete"}
    final = last.response  # type: ignore[union-attr]
    assert final.usage is not None
    assert final.usage.output_tokens > 0
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert final.output[0].content[0].text == text  # type: ignore[union-attr]


def test_responses_door_continues_a_stored_conversation(launch_llama: LaunchLlama) -> None:
    # previous_response_id: the stored first turn goes before the second turn's input, so the
    # real server counts more prompt tokens for the same new input.
    server = launch_llama("a")
    with running_server(nexus_config(server)) as nexus:
        client = sdk(nexus)
        first = client.responses.create(model=ALIAS, input="Hello", max_output_tokens=8)
        second = client.responses.create(
            model=ALIAS, input="Hello", max_output_tokens=8, previous_response_id=first.id
        )
        kept = client.responses.retrieve(second.id)
    assert first.usage is not None
    assert second.usage is not None
    assert first.output_text
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.previous_response_id == first.id
    assert (kept.id, kept.output_text) == (second.id, second.output_text)
