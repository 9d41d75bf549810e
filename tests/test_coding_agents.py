"""What coding agents send, through a real Nexus, with the real client libraries.

Claude Code's system messages in the middle of ``messages`` and its ``thinking: adaptive``
(``anthropic`` SDK), Ollama clients reading ``capabilities`` from ``/api/show`` (``ollama``), and
the ``max_tokens: 32000`` every agent asks for against a vLLM that refuses a prompt plus
``max_tokens`` over its context (``openai``). The tools themselves run in ``test_real_tools.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from nexus_core.testing import Behaviour, FakeBackend, FakeLlamaCpp, FakeVLLM
from nexus_core.testing.fake_backend import SYSTEM_NOT_FIRST
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

#: A conversation as Claude Code sends it: a system message after the first turns.
CONVERSATION: list[Any] = [
    {"role": "user", "content": "Fix the bug in main.py"},
    {"role": "assistant", "content": "Which bug?"},
    {"role": "system", "content": "The user switched to plan mode."},
    {"role": "user", "content": [{"type": "text", "text": "The crash on start"}]},
]


@pytest.fixture
def strict_llama() -> Iterator[FakeLlamaCpp]:
    """A llama-server whose chat template refuses a system message that is not first."""
    with FakeLlamaCpp(behaviour=Behaviour(system_first=True)).running() as fake:
        yield fake


def claude(server: RunningServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="sk-ant-client", max_retries=0)


def _config(*backends: Any, **routing: Any) -> dict[str, Any]:
    config = gateway_config(*backends, **routing)
    for entry in config["backends"]:
        if "llama" in entry["name"]:
            entry["type"] = "llamacpp"
        elif "vllm" in entry["name"]:
            entry["type"] = "vllm"
    return config


# -- system messages in the middle of the conversation ---------------------------------------


def test_the_strict_fake_refuses_a_system_message_that_is_not_first(
    strict_llama: FakeLlamaCpp,
) -> None:
    """The misbehaviour itself, as llama-server shows it to a client calling it directly."""
    client = openai.OpenAI(base_url=strict_llama.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="fake-model",
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "late"},
            ],
        )
    assert SYSTEM_NOT_FIRST in str(refused.value)


def test_claude_codes_mid_conversation_system_message_is_merged_by_default(
    strict_llama: FakeLlamaCpp,
) -> None:
    with running_server(_config(strict_llama)) as server:
        message = claude(server).messages.create(
            model="fake-model",
            max_tokens=64,
            system="You are Claude Code.",
            messages=CONVERSATION,
        )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from llamacpp"
    sent = strict_llama.inference_requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == "You are Claude Code.\n\nThe user switched to plan mode."
    assert sent[3]["content"] == "The crash on start"


def test_reminder_mode_folds_it_into_the_next_user_turn_streamed(
    strict_llama: FakeLlamaCpp,
) -> None:
    with (
        running_server(_config(strict_llama, system_messages="reminder")) as server,
        claude(server).messages.stream(
            model="fake-model",
            max_tokens=64,
            system="You are Claude Code.",
            messages=CONVERSATION,
        ) as stream,
    ):
        text = "".join(stream.text_stream)
    assert text == "Hello from llamacpp"
    sent = strict_llama.inference_requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == "You are Claude Code."
    assert sent[3]["content"] == (
        "<system-reminder>\nThe user switched to plan mode.\n</system-reminder>\n\n"
        "The crash on start"
    )


def test_keep_mode_forwards_it_and_the_strict_template_refuses(
    strict_llama: FakeLlamaCpp,
) -> None:
    """``keep`` is the behaviour before folding: the session stops at the first such call."""
    with running_server(_config(strict_llama, system_messages="keep")) as server:
        with pytest.raises(anthropic.BadRequestError) as refused:
            claude(server).messages.create(model="fake-model", max_tokens=64, messages=CONVERSATION)
        assert refused.value.status_code == 400
    sent = strict_llama.inference_requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "system", "user"]


# -- thinking: adaptive -----------------------------------------------------------------------


@pytest.fixture
def reasoning_server() -> Iterator[RunningServer]:
    """Nexus in front of a backend whose answers carry ``reasoning_content``."""
    fake = FakeBackend("thinker", behaviour=Behaviour(reasoning="The user wants a greeting."))
    with fake.running(), running_server(gateway_config(fake)) as server:
        yield server


def test_adaptive_thinking_returns_the_reasoning_as_a_thinking_block(
    reasoning_server: RunningServer,
) -> None:
    client = claude(reasoning_server)
    message = client.messages.create(
        model="fake-model",
        max_tokens=64,
        thinking={"type": "adaptive"},
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == "The user wants a greeting."
    assert thinking.signature  # Anthropic's thinking blocks always carry one
    # Without thinking turned on, the reasoning stays out, as Anthropic's does.
    plain = client.messages.create(
        model="fake-model", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    )
    assert [block.type for block in plain.content] == ["text"]


def test_adaptive_thinking_streams_thinking_deltas_then_a_signature_delta(
    reasoning_server: RunningServer,
) -> None:
    with claude(reasoning_server).messages.stream(
        model="fake-model",
        max_tokens=64,
        thinking={"type": "adaptive"},
        messages=[{"role": "user", "content": "Hi"}],
    ) as stream:
        # The SDK's own helper events ("thinking", "signature", "text") left out.
        events = [e for e in stream if e.type.startswith(("message", "content_block"))]
        message = stream.get_final_message()
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    first_text = deltas.index("text_delta")
    assert set(deltas[: first_text - 1]) == {"thinking_delta"}
    assert deltas[first_text - 1] == "signature_delta"
    stops = [i for i, e in enumerate(events) if e.type == "content_block_stop"]
    signature_at = next(
        i
        for i, e in enumerate(events)
        if e.type == "content_block_delta" and e.delta.type == "signature_delta"
    )
    assert stops[0] == signature_at + 1  # just before the thinking block ends
    thinking = message.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == "The user wants a greeting."
    assert thinking.signature
    assert message.content[1].type == "text"


# -- /api/show capabilities -------------------------------------------------------------------


def test_api_show_lists_tools_when_unknown_and_embedding_for_embedding_models() -> None:
    fake = FakeBackend("box", ["chat-model", "embed-model", "plain-model"])
    backend = {
        "name": "box",
        "url": "",
        "models": [
            {"id": "embed-model", "embeddings": True},
            {"id": "plain-model", "tools": False},
        ],
    }
    with fake.running():
        backend["url"] = fake.url
        with running_server(gateway_config(backend)) as server:
            client = ollama.Client(host=server.url)
            unknown = client.show("chat-model").capabilities
            embedding = client.show("embed-model").capabilities
            without_tools = client.show("plain-model").capabilities
            tags = httpx.get(server.url + "/api/tags").json()["models"]
    # Tool support unknown: listed (Nexus routes tool calls there), so clients offer tools.
    assert unknown == ["completion", "tools"]
    assert embedding == ["embedding"]
    assert without_tools == ["completion"]
    listed = {entry["model"]: entry["capabilities"] for entry in tags}
    assert listed == {
        "chat-model": ["completion", "tools"],
        "embed-model": ["embedding"],
        "plain-model": ["completion"],
    }


# -- max_tokens over the context --------------------------------------------------------------


@pytest.fixture
def vllm() -> Iterator[FakeVLLM]:
    with FakeVLLM("vllm", max_model_len=4096).running() as fake:
        yield fake


def test_the_vllm_fake_refuses_max_tokens_over_its_context(vllm: FakeVLLM) -> None:
    client = openai.OpenAI(base_url=vllm.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="fake-model", max_tokens=32000, messages=[{"role": "user", "content": "hi"}]
        )
    assert "maximum context length is 4096 tokens" in str(refused.value)


def test_max_tokens_is_clamped_to_the_context_and_the_header_says_so(vllm: FakeVLLM) -> None:
    with running_server(_config(vllm)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="fake-model",
            max_tokens=32000,
            messages=[{"role": "user", "content": "Write a long story"}],
        )
        clamped = int(raw.headers["X-Nexus-Max-Tokens-Clamped"])
        assert raw.parse().choices[0].message.content == "Hello from vllm"
        sent = vllm.inference_requests[-1]
        assert sent.json["max_tokens"] == clamped
        # The room left after a high estimate of the prompt (the body at 3 bytes a token).
        assert clamped == 4096 - len(sent.body) // 3
        assert 3900 < clamped < 4096

        completion_limit = client.chat.completions.with_raw_response.create(
            model="fake-model",
            max_completion_tokens=32000,
            messages=[{"role": "user", "content": "Write a long story"}],
            stream=True,
        )
        chunks = list(completion_limit.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert int(completion_limit.headers["X-Nexus-Max-Tokens-Clamped"]) < 4096
        assert vllm.inference_requests[-1].json["max_completion_tokens"] < 4096

        # A limit that fits is sent as it is, and no header is added.
        fits = client.chat.completions.with_raw_response.create(
            model="fake-model", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert "X-Nexus-Max-Tokens-Clamped" not in fits.headers
        assert vllm.inference_requests[-1].json["max_tokens"] == 100


def test_the_anthropic_doors_max_tokens_is_clamped_after_translation(vllm: FakeVLLM) -> None:
    # Claude Code streams (the SDK refuses max_tokens this large without streaming).
    with (
        running_server(_config(vllm)) as server,
        claude(server).messages.stream(
            model="fake-model",
            max_tokens=32000,
            messages=[{"role": "user", "content": "Hi"}],
        ) as stream,
    ):
        assert stream.get_final_text() == "Hello from vllm"
        clamped = int(stream.response.headers["X-Nexus-Max-Tokens-Clamped"])
    assert vllm.inference_requests[-1].json["max_tokens"] == clamped < 4096


def test_a_failover_to_a_larger_context_sends_the_clients_limit(vllm: FakeVLLM) -> None:
    """The clamp is per attempt: each backend's own context decides."""
    vllm.behave(Behaviour(status=503))
    with FakeVLLM("vllm-big", max_model_len=65536).running() as big:
        with running_server(_config(vllm, big, strategy="priority_only")) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="fake-model",
                max_tokens=32000,
                messages=[{"role": "user", "content": "hi"}],
            )
        assert raw.headers["X-Nexus-Backend"] == "vllm-big"
        assert "X-Nexus-Max-Tokens-Clamped" not in raw.headers
        assert vllm.inference_requests[-1].json["max_tokens"] < 4096
        assert big.inference_requests[-1].json["max_tokens"] == 32000
