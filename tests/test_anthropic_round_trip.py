"""Round trips through both Anthropic translations: the front door's (``nexus_server``) and the
anthropic backend's (``nexus_backend_anthropic``), each undoing the other.

Shapes are checked against the real SDKs' models (``anthropic.types``, ``openai.types.chat``) and
streams are accumulated by the SDKs' own accumulators, so "faithful" means what the clients see.
The one-direction tests are next to each translation, in its own package.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat._completions import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from nexus_backend_anthropic.wire import (
    AnthropicStreamToChat,
    anthropic_answer_to_chat,
    chat_request_to_anthropic,
)
from nexus_core.anthropic_format import (
    RAW_ARGUMENTS_KEY,
    TEXT_SEPARATOR,
    parse_arguments,
)
from nexus_server.anthropic_wire import (
    TOOL_ERROR_PREFIX,
    ChatStreamToAnthropic,
    anthropic_request_to_chat,
    chat_answer_to_anthropic,
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
    chat = anthropic_request_to_chat(request)
    back = chat_request_to_anthropic(chat)
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
    message = chat_answer_to_anthropic(completion, model="claude-x")
    Message.model_validate(message)
    back = anthropic_answer_to_chat(message)
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
    expected = chat_answer_to_anthropic(completion, model="claude-x")
    converter = ChatStreamToAnthropic("claude-x", message_id=expected["id"])
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
    to_chat = AnthropicStreamToChat()
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


def test_structured_output_survives_the_round_trip() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = {
        "model": "m",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
    }
    chat = anthropic_request_to_chat(request)
    assert chat["response_format"]["json_schema"]["schema"] == schema
    assert chat_request_to_anthropic(chat)["output_config"] == request["output_config"]
