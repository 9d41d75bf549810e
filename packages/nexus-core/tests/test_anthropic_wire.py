"""Tests for the Anthropic Messages <-> OpenAI chat translator.

Shapes are checked against the real SDKs' models (``anthropic.types``, ``openai.types.chat``) and
streams are accumulated by the SDKs' own accumulators, so "faithful" means what the clients see.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import anthropic
import httpx2  # the anthropic SDK's HTTP client
import pytest
from anthropic import APIStatusError
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat._completions import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from nexus_core.anthropic_wire import (
    RAW_ARGUMENTS_KEY,
    TEXT_SEPARATOR,
    TOOL_ERROR_PREFIX,
    UNSIGNED_THINKING,
    AnthropicStreamError,
    ChatStreamToMessages,
    MessagesStreamToChat,
    TranslationError,
    anthropic_error_body,
    anthropic_error_type,
    chat_to_message,
    chat_to_messages,
    count_tokens,
    message_to_chat,
    messages_to_chat,
    parse_arguments,
    wants_thinking,
)

EVENT = TypeAdapter(RawMessageStreamEvent)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# Strategies

texts = st.text(min_size=1, max_size=20)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
tool_inputs = st.dictionaries(st.text(max_size=8), json_values, max_size=4).filter(
    lambda d: set(d) != {RAW_ARGUMENTS_KEY}
)
tool_ids = st.from_regex(r"(toolu|call)_[A-Za-z0-9]{4,12}", fullmatch=True)
tool_names = st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True)
text_blocks = texts.map(lambda t: {"type": "text", "text": t})
image_blocks = st.one_of(
    st.builds(
        lambda media_type, data: {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        },
        st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]),
        st.from_regex(r"[A-Za-z0-9+/]{4,16}={0,2}", fullmatch=True),
    ),
    st.builds(
        lambda name: {"type": "image", "source": {"type": "url", "url": f"https://x.test/{name}"}},
        st.from_regex(r"[a-z]{1,8}\.png", fullmatch=True),
    ),
)
tool_use_blocks = st.builds(
    lambda i, n, inp: {"type": "tool_use", "id": i, "name": n, "input": inp},
    tool_ids,
    tool_names,
    tool_inputs,
)


def _tool_result(tool_id: str, content: Any, is_error: bool | None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id, "content": content}
    if is_error is not None:
        block["is_error"] = is_error
    return block


tool_result_blocks = st.builds(
    _tool_result,
    tool_ids,
    st.text(max_size=20) | st.lists(text_blocks, min_size=1, max_size=3),
    st.none() | st.booleans(),
)
user_contents = st.one_of(
    texts,
    st.tuples(
        st.lists(tool_result_blocks, max_size=2),
        st.lists(text_blocks | image_blocks, max_size=3),
    )
    .filter(lambda t: t[0] or t[1])
    .map(lambda t: t[0] + t[1]),
)
# Text may follow a tool_use here: the translation moves it before the calls (documented).
assistant_contents = texts | st.lists(text_blocks | tool_use_blocks, min_size=1, max_size=4)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    turns = draw(st.integers(1, 6))
    return [
        {"role": "user", "content": draw(user_contents)}
        if i % 2 == 0
        else {"role": "assistant", "content": draw(assistant_contents)}
        for i in range(turns)
    ]


tool_defs = st.builds(
    lambda name, description, props: {
        "name": name,
        **({"description": description} if description is not None else {}),
        "input_schema": {
            "type": "object",
            "properties": {p: {"type": "string"} for p in props},
        },
    },
    tool_names,
    st.none() | texts,
    st.lists(tool_names, max_size=3),
)


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": draw(tool_names),
        "max_tokens": draw(st.integers(1, 100_000)),
        "messages": draw(conversations()),
    }
    system = draw(st.none() | texts | st.lists(text_blocks, max_size=3))
    if system is not None:
        request["system"] = system
    optional = {
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(1, 500),
        "stop_sequences": st.lists(texts, max_size=3),
        "stream": st.booleans(),
        "metadata": st.builds(lambda u: {"user_id": u}, texts),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            request[key] = draw(strategy)
    tools = draw(st.lists(tool_defs, max_size=3))
    if tools:
        request["tools"] = tools
        choice = draw(st.sampled_from(["auto", "any", "tool", "none", None]))
        if choice is not None:
            tool_choice: dict[str, Any] = {"type": choice}
            if choice == "tool":
                tool_choice["name"] = tools[0]["name"]
            if choice != "none" and draw(st.booleans()):
                tool_choice["disable_parallel_tool_use"] = draw(st.booleans())
            request["tool_choice"] = tool_choice
    return request


# --------------------------------------------------------------------------------------------
# Normal forms for comparing requests


def _merge_texts(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for block in blocks:
        if block["type"] == "text" and merged and merged[-1]["type"] == "text":
            merged[-1] = {
                "type": "text",
                "text": merged[-1]["text"] + TEXT_SEPARATOR + block["text"],
            }
        else:
            merged.append(dict(block))
    return merged


def _joined(content: Any) -> str:
    if isinstance(content, str):
        return content
    return TEXT_SEPARATOR.join(block["text"] for block in content if block["text"])


def _normal_blocks(role: str, content: Any) -> list[dict[str, Any]]:
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    normal: list[dict[str, Any]] = []
    for block in blocks:
        if block["type"] == "tool_result":
            text = _joined(block.get("content", ""))
            if block.get("is_error"):
                text = TOOL_ERROR_PREFIX + text
            normal.append(
                {"type": "tool_result", "tool_use_id": block["tool_use_id"], "text": text}
            )
        else:
            normal.append(block)
    if role == "assistant":
        # OpenAI puts an assistant turn's text before its tool calls.
        normal = [b for b in normal if b["type"] == "text"] + [
            b for b in normal if b["type"] != "text"
        ]
    return _merge_texts(normal)


def _normal_request(request: dict[str, Any]) -> dict[str, Any]:
    normal = {
        key: request[key]
        for key in ("model", "max_tokens", "temperature", "top_p", "top_k", "tools", "metadata")
        if key in request
    }
    if request.get("stream"):
        normal["stream"] = True
    if request.get("stop_sequences"):
        normal["stop_sequences"] = request["stop_sequences"]
    if "tool_choice" in request:
        choice = dict(request["tool_choice"])
        if not choice.get("disable_parallel_tool_use", True):
            del choice["disable_parallel_tool_use"]
        normal["tool_choice"] = choice
    system = _joined(request.get("system", ""))
    if system:
        normal["system"] = system
    normal["messages"] = [
        {"role": m["role"], "content": _normal_blocks(m["role"], m["content"])}
        for m in request["messages"]
    ]
    return normal


# --------------------------------------------------------------------------------------------
# Property tests


@PROPERTY
@given(anthropic_requests())
def test_request_round_trip_keeps_content_tool_calls_and_order(request: dict[str, Any]) -> None:
    chat = messages_to_chat(request)
    back = chat_to_messages(chat)
    assert _normal_request(back) == _normal_request(request)


@st.composite
def openai_completions(draw: st.DrawFn) -> dict[str, Any]:
    calls = [
        {
            "id": draw(tool_ids),
            "type": "function",
            "function": {
                "name": draw(tool_names),
                "arguments": draw(tool_inputs.map(json.dumps) | st.text(max_size=12) | st.just("")),
            },
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    message: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | st.text())}
    if calls:
        message["tool_calls"] = calls
    prompt = draw(st.integers(0, 10_000))
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": draw(st.integers(0, 10_000)),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if draw(st.booleans()):
        usage["prompt_tokens_details"] = {"cached_tokens": draw(st.integers(0, prompt))}
    return {
        "id": "chatcmpl-" + draw(st.from_regex(r"[a-z0-9]{6,12}", fullmatch=True)),
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": draw(
                    st.sampled_from(["stop", "length", "tool_calls", "content_filter"])
                ),
            }
        ],
        "usage": usage,
    }


def _expected_finish(finish_reason: str, has_tool_calls: bool) -> str:
    if has_tool_calls and finish_reason != "length":
        return "tool_calls"
    return finish_reason


def _calls_summary(calls: Any) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (c["id"], c["function"]["name"], parse_arguments(c["function"]["arguments"]))
        for c in calls or []
    ]


@PROPERTY
@given(openai_completions())
def test_response_round_trip_keeps_text_tool_calls_and_finish_reason(
    completion: dict[str, Any],
) -> None:
    message = chat_to_message(completion, model="claude-x")
    Message.model_validate(message)
    back = message_to_chat(message)
    ChatCompletion.model_validate(back)
    original, returned = completion["choices"][0], back["choices"][0]
    assert returned["message"]["content"] == (original["message"]["content"] or None)
    assert _calls_summary(returned["message"].get("tool_calls")) == _calls_summary(
        original["message"].get("tool_calls")
    )
    assert returned["finish_reason"] == _expected_finish(
        original["finish_reason"], bool(original["message"].get("tool_calls"))
    )
    assert back["usage"]["prompt_tokens"] == completion["usage"]["prompt_tokens"]
    assert back["usage"]["completion_tokens"] == completion["usage"]["completion_tokens"]


def _split(data: st.DataObject, text: str) -> list[str]:
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(text)), max_size=4))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


def _chunk(delta: dict[str, Any] | None, finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _stream_chunks(data: st.DataObject, completion: dict[str, Any]) -> list[dict[str, Any]]:
    choice = completion["choices"][0]
    message = choice["message"]
    chunks = [_chunk({"role": "assistant", "content": ""})]
    chunks += [_chunk({"content": piece}) for piece in _split(data, message["content"] or "")]
    for index, call in enumerate(message.get("tool_calls") or []):
        pieces = _split(data, call["function"]["arguments"]) or [""]
        first = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": pieces[0]},
        }
        chunks.append(_chunk({"tool_calls": [first]}))
        chunks += [
            _chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in pieces[1:]
        ]
    chunks.append(_chunk({}, choice["finish_reason"]))
    usage_chunk = _chunk(None)
    usage_chunk["usage"] = completion["usage"]
    chunks.append(usage_chunk)
    return chunks


def _parse_sse(stream: bytes) -> list[dict[str, Any]]:
    events = []
    assert stream.endswith(b"\n\n")
    for block in stream.decode().split("\n\n")[:-1]:
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ")
        assert data_line.startswith("data: ")
        data = json.loads(data_line[len("data: ") :])
        assert data["type"] == event_line[len("event: ") :]
        events.append(data)
    return events


def _message_summary(message: Any) -> dict[str, Any]:
    return {
        "id": message.id,
        "model": message.model,
        "role": message.role,
        "content": [block.model_dump(exclude_none=True) for block in message.content],
        "stop_reason": message.stop_reason,
        "stop_sequence": message.stop_sequence,
        "usage": message.usage.model_dump(exclude_none=True),
    }


# Valid JSON arguments only: the Anthropic SDK rejects a stream whose tool input is not JSON.
streamable_completions = openai_completions().filter(
    lambda c: all(
        RAW_ARGUMENTS_KEY not in parse_arguments(call["function"]["arguments"])
        for call in c["choices"][0]["message"].get("tool_calls") or []
    )
)


@PROPERTY
@given(streamable_completions, st.data())
def test_stream_accumulated_by_the_sdk_equals_the_whole_answer(
    completion: dict[str, Any], data: st.DataObject
) -> None:
    expected = chat_to_message(completion, model="claude-x")
    converter = ChatStreamToMessages("claude-x", message_id=expected["id"])
    chunks = _stream_chunks(data, completion)
    stream = converter.start() + b"".join(converter.feed(c) for c in chunks) + converter.finish()
    events = _parse_sse(stream)

    snapshot = None
    json_buffers: dict[int, bytes] = {}
    open_block = None
    for index, event in enumerate(events):
        parsed = EVENT.validate_python(event)
        snapshot = accumulate_event(event=parsed, current_snapshot=snapshot, json_bufs=json_buffers)
        # Blocks are sequential: started in index order, deltas only to the open one.
        if event["type"] == "content_block_start":
            assert open_block is None
            assert event["index"] == len(snapshot.content) - 1
            open_block = event["index"]
        elif event["type"] in ("content_block_delta", "content_block_stop"):
            assert event["index"] == open_block
            if event["type"] == "content_block_stop":
                open_block = None
        elif event["type"] == "message_delta":
            assert open_block is None
            assert index == len(events) - 2
    assert events[0]["type"] == "message_start"
    assert events[-1]["type"] == "message_stop"
    assert snapshot is not None
    assert _message_summary(snapshot) == _message_summary(Message.model_validate(expected))

    # ... and back to OpenAI chunks, accumulated by the OpenAI SDK: the original answer.
    to_chat = MessagesStreamToChat()
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for event in events:
        for chunk in to_chat.feed(event):
            state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    # The snapshot, not get_final_completion(): that one raises on finish_reason "length".
    final = state.current_completion_snapshot
    original = completion["choices"][0]
    # OpenAI streams open with content "" (so does this converter): compare "" and None alike.
    assert (final.choices[0].message.content or None) == (original["message"]["content"] or None)
    calls = [c.model_dump() for c in final.choices[0].message.tool_calls or []]
    assert _calls_summary(calls) == _calls_summary(original["message"].get("tool_calls"))
    assert final.choices[0].finish_reason == _expected_finish(
        original["finish_reason"], bool(original["message"].get("tool_calls"))
    )
    assert final.usage is not None
    assert final.usage.prompt_tokens == completion["usage"]["prompt_tokens"]
    assert final.usage.completion_tokens == completion["usage"]["completion_tokens"]


# --------------------------------------------------------------------------------------------
# messages_to_chat


def _request(**fields: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    } | fields


def test_system_blocks_become_one_system_message() -> None:
    chat = messages_to_chat(
        _request(
            system=[
                {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "b"},
            ]
        )
    )
    assert chat["messages"][0] == {"role": "system", "content": "a\n\nb"}
    assert chat["messages"][1] == {"role": "user", "content": "hi"}


# A conversation as Claude Code sends it: a system message after the first turns.
MID_SYSTEM = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "system", "content": "the user is in a hurry"},
    {"role": "user", "content": [{"type": "text", "text": "go on"}]},
]


def _roles(chat: dict[str, Any]) -> list[str]:
    return [m["role"] for m in chat["messages"]]


def test_a_later_system_message_joins_the_leading_prompt_by_default() -> None:
    chat = messages_to_chat(_request(system="be brief", messages=MID_SYSTEM))
    assert _roles(chat) == ["system", "user", "assistant", "user"]
    assert chat["messages"][0]["content"] == "be brief\n\nthe user is in a hurry"
    assert chat["messages"][3]["content"] == "go on"
    # Without a top-level system prompt the folded one becomes the leading one.
    alone = messages_to_chat(_request(messages=MID_SYSTEM))
    assert alone["messages"][0] == {"role": "system", "content": "the user is in a hurry"}
    assert _roles(alone) == ["system", "user", "assistant", "user"]


def test_system_messages_before_the_first_turn_are_the_leading_prompt_in_every_mode() -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "first"}]},
        {"role": "user", "content": "hi"},
    ]
    for mode in ("merge", "reminder"):
        chat = messages_to_chat(_request(system="top", messages=messages), system_messages=mode)
        assert chat["messages"] == [
            {"role": "system", "content": "top\n\nfirst"},
            {"role": "user", "content": "hi"},
        ]


def test_reminder_mode_puts_the_system_message_into_the_next_user_turn() -> None:
    chat = messages_to_chat(
        _request(system="be brief", messages=MID_SYSTEM), system_messages="reminder"
    )
    assert _roles(chat) == ["system", "user", "assistant", "user"]
    assert chat["messages"][0]["content"] == "be brief"
    assert chat["messages"][3]["content"] == (
        "<system-reminder>\nthe user is in a hurry\n</system-reminder>\n\ngo on"
    )


def test_reminder_mode_keeps_roles_alternating_around_tool_results_and_at_the_end() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}],
        },
        {"role": "system", "content": "tools may be slow"},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sun"}],
        },
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "thanks"},
        {"role": "system", "content": "wrap up"},
    ]
    chat = messages_to_chat(_request(messages=messages), system_messages="reminder")
    assert _roles(chat) == ["user", "assistant", "tool", "user", "assistant", "user"]
    # A turn of tool results only gets a user message after them for the reminder...
    assert chat["messages"][3]["content"] == (
        "<system-reminder>\ntools may be slow\n</system-reminder>"
    )
    # ... and a reminder after the last user message goes to its end.
    assert chat["messages"][5]["content"] == (
        "thanks\n\n<system-reminder>\nwrap up\n</system-reminder>"
    )
    # Between an answer and the next answer there is no user turn: it becomes one.
    between = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "system", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    chat = messages_to_chat(_request(messages=between), system_messages="reminder")
    assert _roles(chat) == ["user", "assistant", "user", "assistant"]


def test_reminder_before_an_image_only_turn_is_a_text_part_first() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    messages = [*MID_SYSTEM[:3], {"role": "user", "content": [image]}]
    chat = messages_to_chat(_request(messages=messages), system_messages="reminder")
    parts = chat["messages"][-1]["content"]
    assert parts[0] == {
        "type": "text",
        "text": "<system-reminder>\nthe user is in a hurry\n</system-reminder>",
    }
    assert parts[1]["type"] == "image_url"


def test_keep_mode_forwards_system_messages_where_they_are() -> None:
    chat = messages_to_chat(
        _request(system="be brief", messages=MID_SYSTEM), system_messages="keep"
    )
    assert _roles(chat) == ["system", "user", "assistant", "system", "user"]
    assert chat["messages"][3] == {"role": "system", "content": "the user is in a hurry"}


def test_adaptive_thinking_counts_as_thinking_on() -> None:
    assert wants_thinking({"thinking": {"type": "adaptive"}})
    assert wants_thinking({"thinking": {"type": "enabled", "budget_tokens": 1024}})
    assert not wants_thinking({"thinking": {"type": "disabled"}})
    assert not wants_thinking({})


def test_images_become_image_url_parts() -> None:
    chat = messages_to_chat(
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                    ],
                }
            ]
        )
    )
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
            ],
        }
    ]


def test_tool_use_and_tool_result_map_to_tool_calls_and_tool_messages() -> None:
    chat = messages_to_chat(
        _request(
            messages=[
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get",
                            "input": {"city": "Oslo"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "also this"},
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [{"type": "text", "text": "boom"}],
                            "is_error": True,
                        },
                    ],
                },
            ]
        )
    )
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        # tool messages come first, whatever the block order was
        {"role": "tool", "tool_call_id": "toolu_1", "content": "rain"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
        {"role": "user", "content": "also this"},
    ]


def test_assistant_with_only_tool_use_has_null_content() -> None:
    chat = messages_to_chat(
        _request(
            messages=[
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                },
            ]
        )
    )
    assert chat["messages"][1]["content"] is None
    assert chat["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"


def test_image_in_tool_result_moves_to_the_following_user_message() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x.test/s.png"}}
    chat = messages_to_chat(
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [{"type": "text", "text": "shot"}, image],
                        }
                    ],
                }
            ]
        )
    )
    assert chat["messages"] == [
        {"role": "tool", "tool_call_id": "t", "content": "shot"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://x.test/s.png"}}],
        },
    ]


def test_raw_arguments_fallback_returns_the_raw_text() -> None:
    chat = messages_to_chat(
        _request(
            messages=[
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "t",
                            "name": "f",
                            "input": {RAW_ARGUMENTS_KEY: "{oops"},
                        }
                    ],
                },
            ]
        )
    )
    assert chat["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{oops"


def test_parameters_map_to_openai_names() -> None:
    chat = messages_to_chat(
        _request(
            stop_sequences=["END"],
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            stream=True,
            metadata={"user_id": "u1"},
            thinking={"type": "enabled", "budget_tokens": 1024},
            service_tier="auto",
            tools=[
                {
                    "name": "get",
                    "description": "Get it",
                    "input_schema": {"type": "object", "properties": {}},
                    "cache_control": {"type": "ephemeral"},
                }
            ],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        )
    )
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u1",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get",
                    "description": "Get it",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get"}, {"type": "function", "function": {"name": "get"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    tools = [{"name": "get", "input_schema": {"type": "object"}}]
    chat = messages_to_chat(_request(tools=tools, tool_choice=choice))
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


def test_tool_choice_without_tools_is_dropped() -> None:
    chat = messages_to_chat(_request(tool_choice={"type": "auto"}))
    assert "tool_choice" not in chat
    assert "tools" not in chat


def test_structured_output_becomes_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = messages_to_chat(
        _request(output_config={"format": {"type": "json_schema", "schema": schema}})
    )
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }
    assert chat_to_messages(chat)["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }


def test_documents_with_text_sources_become_text() -> None:
    chat = messages_to_chat(
        _request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "doc"},
                        },
                        {"type": "text", "text": "summarise"},
                    ],
                }
            ]
        )
    )
    assert chat["messages"] == [{"role": "user", "content": "doc\n\nsummarise"}]


@pytest.mark.parametrize(
    ("mutation", "param"),
    [
        ({"model": None}, "model"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"messages": None}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages.0.content.0.type",
        ),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0.type"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                    }
                ]
            },
            "messages.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}
                ]
            },
            "messages.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages.0.content.0.source.type",
        ),
        ({"system": 5}, "system"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        (
            {"tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "maybe"}},
            "tool_choice.type",
        ),
        (
            {"tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "tool"}},
            "tool_choice.name",
        ),
    ],
)
def test_invalid_requests_raise_translation_error(mutation: dict[str, Any], param: str) -> None:
    request = {k: v for k, v in (_request() | mutation).items() if v is not None}
    with pytest.raises(TranslationError) as caught:
        messages_to_chat(request)
    assert caught.value.param == param
    assert param in str(caught.value)


def test_translation_error_is_a_value_error() -> None:
    assert issubclass(TranslationError, ValueError)


# --------------------------------------------------------------------------------------------
# chat_to_message


def _completion(
    message: dict[str, Any], finish_reason: str = "stop", **extra: Any
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant"} | message,
        "finish_reason": finish_reason,
    }
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1,
        "model": "backend-model",
        "choices": [choice | extra],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def test_chat_to_message_shape() -> None:
    message = chat_to_message(_completion({"content": "Hello"}), model="claude-x")
    assert message == {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 5,
        },
    }
    Message.model_validate(message)


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_finish_reason_maps_to_stop_reason(finish_reason: str | None, stop_reason: str) -> None:
    message = chat_to_message(_completion({"content": "x"}, finish_reason), model="m")  # type: ignore[arg-type]
    assert message["stop_reason"] == stop_reason


def test_tool_calls_with_finish_reason_stop_still_mean_tool_use() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    message = chat_to_message(_completion({"content": None, "tool_calls": [call]}), model="m")
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}
    ]
    assert message["stop_reason"] == "tool_use"


def test_invalid_tool_arguments_are_kept_raw() -> None:
    calls = [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{broken"}},
        {"id": "b", "type": "function", "function": {"name": "f", "arguments": "[1]"}},
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}},
    ]
    message = chat_to_message(_completion({"tool_calls": calls}, "tool_calls"), model="m")
    assert [block["input"] for block in message["content"]] == [
        {RAW_ARGUMENTS_KEY: "{broken"},
        {RAW_ARGUMENTS_KEY: "[1]"},
        {},
    ]


def test_missing_tool_call_id_gets_a_toolu_id() -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = chat_to_message(_completion({"tool_calls": [call]}), model="m")
    assert message["content"][0]["id"].startswith("toolu_")


def test_stop_sequence_is_reported_when_the_server_names_it() -> None:
    completion = _completion({"content": "x"}, stop_reason="END")
    message = chat_to_message(completion, model="m", stop_sequences=["END"])
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    # Without the request's stop sequences (or with a token id) it is an ordinary end of turn.
    assert chat_to_message(completion, model="m")["stop_reason"] == "end_turn"
    completion = _completion({"content": "x"}, stop_reason=151645)
    assert (
        chat_to_message(completion, model="m", stop_sequences=["END"])["stop_reason"] == "end_turn"
    )


def test_cached_prompt_tokens_are_counted_apart() -> None:
    completion = _completion({"content": "x"})
    completion["usage"]["prompt_tokens_details"] = {"cached_tokens": 4}
    usage = chat_to_message(completion, model="m")["usage"]
    assert usage["input_tokens"] == 6
    assert usage["cache_read_input_tokens"] == 4


def test_reasoning_becomes_thinking_only_when_asked() -> None:
    completion = _completion({"content": "answer", "reasoning_content": "because"})
    assert chat_to_message(completion, model="m")["content"] == [{"type": "text", "text": "answer"}]
    message = chat_to_message(completion, model="m", include_thinking=True)
    assert message["content"][0] == {
        "type": "thinking",
        "thinking": "because",
        "signature": UNSIGNED_THINKING,
    }
    Message.model_validate(message)


# --------------------------------------------------------------------------------------------
# ChatStreamToMessages


def _run(converter: ChatStreamToMessages, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stream = converter.start() + b"".join(converter.feed(c) for c in chunks) + converter.finish()
    events = _parse_sse(stream)
    for event in events:
        EVENT.validate_python(event)
    return events


def test_stream_event_sequence_for_text_then_tool() -> None:
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hi"}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        _chunk({}, "tool_calls"),
    ]
    usage = _chunk(None)
    usage["usage"] = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    events = _run(ChatStreamToMessages("m", message_id="msg_1", input_tokens=5), [*chunks, usage])
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[0]["message"]["id"] == "msg_1"
    assert events[0]["message"]["usage"]["input_tokens"] == 5
    assert events[4]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "f",
        "input": {},
    }
    assert events[5]["delta"] == {"type": "input_json_delta", "partial_json": '{"a":'}
    assert events[8]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[8]["usage"]["output_tokens"] == 3
    assert events[8]["usage"]["input_tokens"] == 7


def test_stream_without_usage_reports_the_known_input_tokens() -> None:
    events = _run(ChatStreamToMessages("m", input_tokens=5), [_chunk({"content": "x"}, "stop")])
    assert events[-2]["usage"]["input_tokens"] == 5
    assert events[-2]["usage"]["output_tokens"] == 0


def test_stream_waits_for_the_tool_name_and_handles_calls_without_index() -> None:
    chunks = [
        _chunk({"tool_calls": [{"id": "call_a", "function": {"arguments": '{"x"'}}]}),
        _chunk({"tool_calls": [{"function": {"name": "f", "arguments": ":1}"}}]}),
        _chunk({"tool_calls": [{"id": "call_b", "function": {"name": "g", "arguments": "{}"}}]}),
        _chunk({}, "stop"),
    ]
    events = _run(ChatStreamToMessages("m"), chunks)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("call_a", "f"), ("call_b", "g")]
    deltas = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == ['{"x":1}', "{}"]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_stream_thinking_block_precedes_text_when_asked() -> None:
    chunks = [_chunk({"reasoning_content": "hm"}), _chunk({"content": "ok"}), _chunk({}, "stop")]
    events = _run(ChatStreamToMessages("m", include_thinking=True), chunks)
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["thinking", "text"]
    plain = _run(ChatStreamToMessages("m"), chunks)
    assert [e["content_block"]["type"] for e in plain if e["type"] == "content_block_start"] == [
        "text"
    ]


def test_stream_thinking_block_ends_with_a_signature_delta() -> None:
    chunks = [
        _chunk({"reasoning_content": "let me "}),
        _chunk({"reasoning_content": "see"}),
        _chunk({"content": "ok"}),
        _chunk({}, "stop"),
    ]
    events = _run(ChatStreamToMessages("m", include_thinking=True), chunks)
    kinds = [
        e["delta"]["type"] if e["type"] == "content_block_delta" else e["type"] for e in events
    ]
    assert kinds[1:8] == [
        "content_block_start",
        "thinking_delta",
        "thinking_delta",
        "signature_delta",
        "content_block_stop",
        "content_block_start",
        "text_delta",
    ]
    message = None
    buffers: dict[int, bytes] = {}
    for event in events:
        parsed = EVENT.validate_python(event)
        message = accumulate_event(event=parsed, current_snapshot=message, json_bufs=buffers)
    assert message is not None
    thinking = message.content[0]
    assert thinking.type == "thinking"
    assert (thinking.thinking, thinking.signature) == ("let me see", UNSIGNED_THINKING)


def test_stream_start_is_sent_once_and_feed_starts_by_itself() -> None:
    converter = ChatStreamToMessages("m")
    first = converter.feed(_chunk({"content": "a"}))
    assert first.startswith(b"event: message_start\n")
    assert converter.start() == b""
    assert converter.finish_reason is None
    converter.feed(_chunk({}, "length"))
    assert converter.finish_reason == "length"
    assert b'"stop_reason":"max_tokens"' in converter.finish()


def test_stream_error_and_ping_events() -> None:
    assert ChatStreamToMessages.ping() == b'event: ping\ndata: {"type":"ping"}\n\n'
    error = ChatStreamToMessages.error("upstream broke", "overloaded_error")
    assert _parse_sse(error) == [
        {"type": "error", "error": {"type": "overloaded_error", "message": "upstream broke"}}
    ]


# --------------------------------------------------------------------------------------------
# Errors and token counts


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (599, "api_error"),
    ],
)
def test_error_types(status: int, error_type: str) -> None:
    assert anthropic_error_type(status) == error_type
    body = json.loads(anthropic_error_body(status, "nope", request_id="req_1"))
    assert body == {
        "type": "error",
        "error": {"type": error_type, "message": "nope"},
        "request_id": "req_1",
    }


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, "BadRequestError"),
        (401, "AuthenticationError"),
        (403, "PermissionDeniedError"),
        (404, "NotFoundError"),
        (413, "ContentTooLargeError"),
        (429, "RateLimitError"),
        (500, "InternalServerError"),
        (502, "InternalServerError"),
        (503, "ServiceUnavailableError"),
        (504, "GatewayTimeoutError"),
        (529, "OverloadedError"),
    ],
)
def test_sdk_raises_the_expected_exception_for_our_error_bodies(
    status: int, exception: str
) -> None:
    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=anthropic_error_body(status, "nope"))

    client = anthropic.Anthropic(
        api_key="k",
        base_url="http://nexus.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(reply)),
    )
    with pytest.raises(APIStatusError) as caught:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert type(caught.value).__name__ == exception
    assert caught.value.type == anthropic_error_type(status)
    assert caught.value.api_message == "nope"


def _sdk_client(stream: bytes) -> anthropic.Anthropic:
    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    return anthropic.Anthropic(
        api_key="k",
        base_url="http://nexus.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(reply)),
    )


def test_the_sdk_streams_our_events_into_a_message() -> None:
    converter = ChatStreamToMessages("claude-x", message_id="msg_s")
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    stream = (
        converter.start()
        + converter.ping()
        + converter.feed(_chunk({"content": "Hi"}))
        + converter.feed(_chunk({"tool_calls": [call]}))
        + converter.feed(_chunk({}, "tool_calls"))
        + converter.finish()
    )
    with _sdk_client(stream).messages.stream(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    ) as sdk_stream:
        text = "".join(sdk_stream.text_stream)
        message = sdk_stream.get_final_message()
    assert text == "Hi"
    assert message.id == "msg_s"
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["text", "tool_use"]


def test_the_sdk_raises_our_mid_stream_error() -> None:
    converter = ChatStreamToMessages("claude-x")
    stream = (
        converter.start()
        + converter.feed(_chunk({"content": "Hi"}))
        + converter.error("upstream closed the stream", "api_error")
    )
    sdk_stream = _sdk_client(stream).messages.stream(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    with sdk_stream as events, pytest.raises(APIStatusError) as caught:
        events.until_done()
    assert caught.value.api_message == "upstream closed the stream"


def test_count_tokens_is_a_rough_estimate() -> None:
    small = count_tokens({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert 1 <= small <= 10
    big = count_tokens({"model": "m", "messages": [{"role": "user", "content": "word " * 400}]})
    assert 450 <= big <= 560
    with_image = count_tokens(
        {
            "model": "m",
            "system": "s" * 400,
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                        {"type": "tool_result", "tool_use_id": "t", "content": "r" * 40},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t", "name": "f", "input": {"q": "x" * 40}}
                    ],
                },
            ],
        }
    )
    assert with_image > 1600 + 100 + 10 + 10
    with pytest.raises(TranslationError):
        count_tokens({"model": "m"})


# --------------------------------------------------------------------------------------------
# chat_to_messages, message_to_chat, MessagesStreamToChat


def test_chat_to_messages_maps_openai_fields() -> None:
    body = chat_to_messages(
        {
            "model": "claude-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "really"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,QUJD", "detail": "low"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "g", "arguments": "nope"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "one"},
                {
                    "role": "tool",
                    "tool_call_id": "call_2",
                    "content": [{"type": "text", "text": "two"}],
                },
                {"role": "user", "content": "thanks"},
            ],
            "max_completion_tokens": 99,
            "temperature": 1.7,
            "stop": "END",
            "user": "u",
            "stream": True,
            "stream_options": {"include_usage": True},
            "seed": 3,
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": False,
        }
    )
    assert body == {
        "model": "claude-x",
        "system": "be brief\n\nreally",
        "max_tokens": 99,
        "temperature": 1.0,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "u"},
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                    {
                        "type": "tool_use",
                        "id": "call_2",
                        "name": "g",
                        "input": {RAW_ARGUMENTS_KEY: "nope"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "content": [{"type": "text", "text": "two"}],
                    },
                    {"type": "text", "text": "thanks"},
                ],
            },
        ],
    }


def test_chat_to_messages_defaults_max_tokens_and_maps_tool_choices() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert chat_to_messages(base)["max_tokens"] == 4096
    assert chat_to_messages(base, default_max_tokens=7)["max_tokens"] == 7
    assert chat_to_messages(base | {"max_tokens": 5})["max_tokens"] == 5
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for choice, expected in [("auto", "auto"), ("required", "any"), ("none", "none")]:
        body = chat_to_messages(base | {"tools": tools, "tool_choice": choice})
        assert body["tool_choice"] == {"type": expected}
    body = chat_to_messages(base | {"tools": tools, "parallel_tool_calls": False})
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("mutation", "param"),
    [
        ({"model": None}, "model"),
        ({"messages": None}, "messages"),
        ({"n": 2}, "n"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages.0.content.0",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools.0"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": "sometimes",
            },
            "tool_choice",
        ),
    ],
)
def test_chat_to_messages_rejects_what_anthropic_cannot_take(
    mutation: dict[str, Any], param: str
) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "x"}]} | mutation
    request = {k: v for k, v in request.items() if v is not None}
    with pytest.raises(TranslationError) as caught:
        chat_to_messages(request)
    assert caught.value.param == param


def test_message_to_chat_shape() -> None:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "hm", "signature": "s"},
            {"type": "text", "text": "Let me "},
            {"type": "text", "text": "look."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": "x"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 2, "output_tokens": 4},
    }
    chat = message_to_chat(message, created=5)
    ChatCompletion.model_validate(chat)
    assert chat == {
        "id": "chatcmpl-01",
        "object": "chat.completion",
        "created": 5,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me look.",
                    "reasoning_content": "hm",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"q":"x"}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 4,
            "total_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 2},
        },
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reason_maps_to_finish_reason(stop_reason: str, finish_reason: str) -> None:
    chat = message_to_chat({"id": "msg_1", "content": [], "stop_reason": stop_reason})
    assert chat["choices"][0]["finish_reason"] == finish_reason


def test_messages_stream_to_chat_chunks_and_error() -> None:
    converter = MessagesStreamToChat(created=1)
    events = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_9",
                "model": "claude-x",
                "content": [],
                "usage": {"input_tokens": 4, "output_tokens": 1},
            },
        },
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 6},
        },
        {"type": "message_stop"},
    ]
    chunks = [chunk for event in events for chunk in converter.feed(event)]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert {chunk["id"] for chunk in chunks} == {"chatcmpl-9"}
    assert [c["choices"][0]["delta"] if c["choices"] else c["usage"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
        {},
        {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
    ]
    assert chunks[4]["choices"][0]["finish_reason"] == "tool_calls"
    assert MessagesStreamToChat(include_usage=False).feed({"type": "message_stop"}) == []
    with pytest.raises(AnthropicStreamError) as caught:
        converter.feed(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
    assert (caught.value.message, caught.value.error_type) == ("Overloaded", "overloaded_error")
