"""The Responses front door's translation (``nexus_server.responses_wire``): a Responses request to
OpenAI chat, the chat answer and its stream back to a ``response``, read by the openai SDK's own
models and stream accumulator; hypothesis round trips chat -> responses -> chat."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from nexus_core import fastjson
from nexus_server.responses_wire import (
    IGNORED_FIELDS,
    ChatStreamToResponses,
    ResponsesRequestError,
    chat_answer_to_response,
    input_items,
    items_to_messages,
    response_shell,
    response_usage,
    responses_request_to_chat,
    usage_to_chat,
)

EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_events(data: bytes) -> list[Any]:
    """SSE bytes as the SDK's typed events (each ``event:`` line must match its ``type``)."""
    events = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        payload = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {payload['type']}"
        events.append(EVENT.validate_python(payload))
    return events


def accumulate(events: list[Any]) -> Any:
    """The SDK's ``responses.stream()`` accumulator over ``events``: its final response."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(event)
    return state._completed_response


# -- requests ----------------------------------------------------------------------------------


def test_string_input_and_instructions() -> None:
    chat = responses_request_to_chat(
        {"model": "m", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 9}
    )
    assert chat == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "max_tokens": 9,
    }


def test_system_and_developer_messages_join_the_leading_system_message() -> None:
    request = {
        "model": "m",
        "instructions": "A",
        "input": [
            {"role": "developer", "content": "B"},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
            {"role": "system", "content": [{"type": "input_text", "text": "C"}]},
        ],
    }
    assert responses_request_to_chat(request)["messages"] == [
        {"role": "system", "content": "A\n\nB\n\nC"},
        {"role": "user", "content": "Hi"},
    ]
    assert responses_request_to_chat(request, system_messages="keep")["messages"] == [
        {"role": "system", "content": "A\n\nB"},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "C"},
    ]


def test_history_items_become_chat_messages() -> None:
    items = [
        {"type": "message", "role": "user", "content": "Weather?"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "two"}],
        },
    ]
    assert items_to_messages(items) == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]


def test_user_parts_images_and_files() -> None:
    content = [
        {"type": "input_text", "text": "a"},
        {"type": "input_text", "text": "b"},
        {"type": "input_image", "image_url": "https://example.invalid/x.png", "detail": "auto"},
        {"type": "input_file", "filename": "x.pdf", "file_data": "data:application/pdf;base64,AA"},
    ]
    chat = responses_request_to_chat(
        {"model": "m", "input": [{"role": "user", "content": content}]}
    )
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "a\n\nb"},
        {
            "type": "image_url",
            "image_url": {"url": "https://example.invalid/x.png", "detail": "auto"},
        },
        {
            "type": "file",
            "file": {"filename": "x.pdf", "file_data": "data:application/pdf;base64,AA"},
        },
    ]


def test_tools_choice_format_and_settings() -> None:
    chat = responses_request_to_chat(
        {
            "model": "m",
            "input": "x",
            "stream": True,
            "tools": [{"type": "function", "name": "f", "parameters": None, "strict": False}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {
                "format": {"type": "json_schema", "name": "W", "schema": {"type": "object"}},
                "verbosity": "low",
            },
            "temperature": 0.5,
            "top_p": 0.5,
            "parallel_tool_calls": False,
            "user": "u",
            "reasoning": {"effort": "high"},
            "store": True,
            "include": ["reasoning.encrypted_content"],
            "truncation": "auto",
            "service_tier": "flex",
            "metadata": {"k": "v"},
        }
    )
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {"type": "object", "properties": {}},
                    "strict": False,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "W", "schema": {"type": "object"}},
        },
        "temperature": 0.5,
        "top_p": 0.5,
        "parallel_tool_calls": False,
        "user": "u",
    }


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": "x", "background": True}, "background"),
        ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation"),
        ({"model": "m", "input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"model": "m", "input": "x", "tools": [{"type": "file_search"}]}, "tools.0.type"),
        ({"model": "m", "input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
        ({"model": "m", "input": [{"type": "web_search_call"}]}, "input.0.type"),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input.0.content.0.image_url",
        ),
        (
            {
                "model": "m",
                "input": [
                    {"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}
                ],
            },
            "input.0.content.0.file_data",
        ),
    ],
)
def test_refused_requests_name_their_param(request_: dict[str, Any], param: str) -> None:
    with pytest.raises(ResponsesRequestError) as caught:
        responses_request_to_chat(request_)
    assert caught.value.param == param


NAMESPACE = {
    "type": "namespace",
    "name": "agents",
    "description": "Sub-agents",
    "tools": [
        {"type": "function", "name": "spawn", "parameters": {"type": "object"}},
        {"type": "function", "name": "close", "description": "Close one"},
    ],
}


def test_namespace_tools_are_flattened_and_their_calls_name_the_namespace() -> None:
    request = {"model": "m", "input": "x", "tools": [NAMESPACE]}
    chat = responses_request_to_chat(request)
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "spawn", "parameters": {"type": "object"}}},
        {
            "type": "function",
            "function": {
                "name": "close",
                "description": "Close one",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]
    call = {"id": "c1", "type": "function", "function": {"name": "close", "arguments": "{}"}}
    answer = {"choices": [{"message": {"content": None, "tool_calls": [call]}}]}
    (item,) = chat_answer_to_response(answer, request)["output"]
    assert (item["name"], item["namespace"]) == ("close", "agents")
    converter = ChatStreamToResponses(request)
    data = converter.feed(
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **call}]}}]}
    )
    data += converter.finish()
    final = accumulate(parse_events(data))
    assert final.output[0].namespace == "agents"
    # Handed back, the call is the plain function again.
    assert items_to_messages([final.output[0].model_dump(exclude_none=True)])[0]["tool_calls"] == [
        call
    ]
    with pytest.raises(ResponsesRequestError) as caught:
        responses_request_to_chat(
            {**request, "tools": [{**NAMESPACE, "tools": [{"type": "custom", "name": "x"}]}]}
        )
    assert caught.value.param == "tools.0.tools.0.type"


def test_tool_choice_and_parallel_calls_go_on_only_with_tools() -> None:
    chat = responses_request_to_chat(
        {
            "model": "m",
            "input": "x",
            "tool_choice": "auto",
            "parallel_tool_calls": True,
            "tools": [],
        }
    )
    assert "tool_choice" not in chat
    assert "parallel_tool_calls" not in chat


IGNORED_VALUES: dict[str, Any] = {
    "reasoning": {"effort": "high", "summary": "auto"},
    "truncation": "auto",
    "include": ["reasoning.encrypted_content"],
    "service_tier": "flex",
    "store": False,
    "metadata": {"k": "v"},
    "prompt_cache_key": "k",
    "prompt_cache_retention": "24h",
    "safety_identifier": "s",
    "max_tool_calls": 3,
    "top_logprobs": 2,
    "stream_options": {"include_obfuscation": False},
}


@pytest.mark.parametrize("field", sorted(IGNORED_FIELDS))
def test_ignored_fields_change_nothing_sent(field: str) -> None:
    plain = {"model": "m", "input": "x"}
    assert responses_request_to_chat({**plain, field: IGNORED_VALUES[field]}) == (
        responses_request_to_chat(plain)
    )


def test_background_false_is_accepted() -> None:
    chat = responses_request_to_chat({"model": "m", "input": "x", "background": False})
    assert chat["messages"] == [{"role": "user", "content": "x"}]


def test_input_items_of_a_string_and_a_list() -> None:
    assert input_items({"input": "x"}) == [{"type": "message", "role": "user", "content": "x"}]
    items = [{"role": "user", "content": "x"}]
    assert input_items({"input": items}) == items


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "max_output_tokens",
        "type",
        "role",
        "content",
        "call_id",
        "name",
        "arguments",
        "output",
        "format",
        "image_url",
        "stream",
    ]
)
REQUESTS = st.dictionaries(
    KEYS,
    JSON
    | st.lists(
        st.dictionaries(
            KEYS,
            JSON
            | st.sampled_from(
                [
                    "message",
                    "user",
                    "assistant",
                    "system",
                    "function_call",
                    "function_call_output",
                    "input_text",
                    "input_image",
                    "function",
                    "json_schema",
                ]
            ),
            max_size=5,
        ),
        max_size=4,
    ),
    max_size=8,
)


@SETTINGS
@given(REQUESTS)
def test_any_request_translates_or_is_refused_with_a_param(request_: dict[str, Any]) -> None:
    try:
        chat = responses_request_to_chat(request_)
    except ResponsesRequestError as exc:
        message = str(exc)
        assert message
        return
    json.dumps(chat)
    assert chat["model"] == request_["model"]
    assert isinstance(chat["messages"], list)


# -- answers -----------------------------------------------------------------------------------

TEXT = st.text(min_size=1, max_size=30)
ARGUMENTS = st.dictionaries(
    st.text(min_size=1, max_size=5), st.integers() | st.text(max_size=5), max_size=3
).map(lambda value: json.dumps(value, separators=(",", ":")))
CALLS = st.lists(
    st.tuples(
        st.text(alphabet="abcdefgh0123456789", min_size=1, max_size=10),
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
        ARGUMENTS,
    ),
    max_size=3,
    unique_by=lambda call: call[0],
)


@st.composite
def completions(draw: st.DrawFn) -> dict[str, Any]:
    """A chat completion: text and/or tool calls, a finish reason, usage."""
    calls = draw(CALLS)
    text = draw(TEXT) if not calls or draw(st.booleans()) else None
    prompt, completion = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))
    finish_reason = "tool_calls" if calls else draw(st.sampled_from(["stop", "length"]))
    message: dict[str, Any] = {"role": "assistant", "content": text}
    reasoning = draw(st.none() | TEXT)
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [
            {
                "id": "call_" + call_id,
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
            for call_id, name, args in calls
        ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def chat_message_of(response: dict[str, Any]) -> dict[str, Any]:
    """The assistant message a response's output becomes when a client sends it back."""
    (message,) = items_to_messages(response["output"])
    return message


@SETTINGS
@given(completions())
def test_chat_to_responses_to_chat_keeps_text_calls_and_usage(completion: dict[str, Any]) -> None:
    response = chat_answer_to_response(completion, {"model": "m", "input": "x"})
    parsed = Response.model_validate(response)  # the SDK's own model reads it
    assert parsed.id.startswith("resp_")
    message = completion["choices"][0]["message"]
    back = chat_message_of(response)
    assert (back["content"] or None) == message["content"]
    assert back.get("tool_calls") == message.get("tool_calls")
    assert usage_to_chat(response["usage"]) == completion["usage"]
    cut = completion["choices"][0]["finish_reason"] == "length"
    assert parsed.status == ("incomplete" if cut else "completed")
    if cut:
        assert parsed.incomplete_details is not None
        assert parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.output_text == (message["content"] or "")
    reasoning = [item for item in parsed.output if item.type == "reasoning"]
    if "reasoning_content" in message:
        assert parsed.output[0] == reasoning[0]
        assert reasoning[0].content is not None
        assert reasoning[0].content[0].text == message["reasoning_content"]
    else:
        assert reasoning == []


def stream_chunks(completion: dict[str, Any], cuts: list[int]) -> list[dict[str, Any]]:
    """``completion`` as chat stream chunks, its text and arguments cut at ``cuts``."""
    message = completion["choices"][0]["message"]

    def pieces(text: str) -> list[str]:
        points = sorted({cut % (len(text) + 1) for cut in cuts} | {0, len(text)})
        return [text[a:b] for a, b in pairwise(points) if b > a]

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "usage": None,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [
        chunk({"reasoning_content": p}) for p in pieces(message.get("reasoning_content", ""))
    ]
    chunks += [chunk({"content": piece}) for piece in pieces(message["content"] or "")]
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        chunks.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": function["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        chunks += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in pieces(function["arguments"])
        ]
    chunks.append(chunk({}, completion["choices"][0]["finish_reason"]))
    chunks.append(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": completion["usage"],
        }
    )
    return chunks


@SETTINGS
@given(completions(), st.lists(st.integers(0, 100), max_size=4))
def test_a_stream_accumulates_in_the_sdk_to_the_whole_answer(
    completion: dict[str, Any], cuts: list[int]
) -> None:
    request = {"model": "m", "input": "x", "instructions": "I"}
    whole = chat_answer_to_response(completion, request)
    converter = ChatStreamToResponses(request)
    data = converter.start()
    for chunk in stream_chunks(completion, cuts):
        data += converter.feed(chunk)
    data += converter.finish()
    events = parse_events(data)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert events[1].type == "response.in_progress"
    last = events[-1]
    assert converter.response is not None
    assert last.response.id == converter.response["id"]
    if whole["status"] == "completed":
        assert last.type == "response.completed"
        final = accumulate(events)
        assert final is not None
        assert final.output_text == Response.model_validate(whole).output_text
    else:
        assert last.type == "response.incomplete"
        assert accumulate(events) is None  # the SDK's get_final_response wants completed
    strip = [{k: v for k, v in item.items() if k != "id"} for item in whole["output"]]
    assert [
        {k: v for k, v in item.items() if k != "id"} for item in converter.response["output"]
    ] == strip
    assert converter.response["usage"] == whole["usage"]
    assert chat_message_of(converter.response) == chat_message_of(whole)


#: Request settings a response echoes, with text that JSON must escape.
ODD_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
SETTINGS_REQUESTS = st.fixed_dictionaries(
    {"model": st.just("m"), "input": st.just("x")},
    optional={
        "instructions": ODD_TEXT,
        "temperature": st.floats(0, 2),
        "max_output_tokens": st.integers(1, 2**40),
        "metadata": st.dictionaries(ODD_TEXT, ODD_TEXT, max_size=2),
        "user": ODD_TEXT,
        "store": st.booleans(),
        "parallel_tool_calls": st.booleans(),
        "reasoning": st.just({"effort": "low", "summary": None}),
        "tool_choice": st.just("required"),
        "tools": st.just(
            [
                {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "a"}]},
                {"type": "function", "name": "b", "parameters": {"type": "object"}},
            ]
        ),
        "text": st.just(
            {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}
        ),
    },
)


def event_payloads(data: bytes) -> list[dict[str, Any]]:
    """Each event's data as JSON (its ``event:`` line checked against its ``type``)."""
    payloads = []
    for block in data.decode().split("\n\n"):
        if block:
            name_line, data_line = block.split("\n")
            payload = json.loads(data_line.removeprefix("data: "))
            assert name_line == f"event: {payload['type']}"
            payloads.append(payload)
    return payloads


@SETTINGS
@given(
    SETTINGS_REQUESTS,
    completions(),
    st.lists(st.integers(0, 100), max_size=4),
    st.none() | st.integers(0, 30),
)
def test_streamed_snapshots_are_the_response_they_describe(
    request_: dict[str, Any], completion: dict[str, Any], cuts: list[int], break_at: int | None
) -> None:
    """The events are written from byte templates: what they say must be the response object
    built as a dict, for any settings; a stream broken at ``break_at`` shows each item as far
    as its deltas went."""
    converter = ChatStreamToResponses(request_)
    chunks = stream_chunks(completion, cuts)
    data = converter.start()
    for chunk in chunks if break_at is None else chunks[:break_at]:
        data += converter.feed(chunk)
    data += converter.finish() if break_at is None else converter.error('gone "away" \u00e9')
    payloads = event_payloads(data)
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    shell = response_shell(
        request_, response_id=converter.response_id, created_at=converter.created_at
    )
    assert payloads[0]["response"] == payloads[1]["response"] == shell
    last = payloads[-1]["response"]
    if break_at is None:
        assert last == converter.response
        done = [p["item"] for p in payloads if p["type"] == "response.output_item.done"]
        assert sorted(done, key=last["output"].index) == last["output"]
        return
    assert converter.response is None
    assert payloads[-2] == {
        "type": "error",
        "sequence_number": len(payloads) - 2,
        "code": "server_error",
        "message": 'gone "away" \u00e9',
        "param": None,
    }
    assert last == {
        **shell,
        "status": "failed",
        "error": {"code": "server_error", "message": 'gone "away" \u00e9'},
        "output": last["output"],
        "usage": response_usage(completion["usage"]) if break_at >= len(chunks) else None,
    }
    for item in last["output"]:
        assert item["status"] == "incomplete"
        deltas = "".join(
            p["delta"]
            for p in payloads
            if p["type"].endswith(".delta") and p["item_id"] == item["id"]
        )
        if item["type"] == "function_call":
            assert item["arguments"] == deltas
        else:
            assert item["content"][0]["text"] == deltas


def test_a_lone_surrogate_in_a_delta_is_escaped_not_fatal() -> None:
    # fastjson.loads lets a lone \ud800 escape through (as json.loads does); UTF-8 cannot hold it.
    chunk = fastjson.loads(b'{"choices":[{"index":0,"delta":{"content":"a\\ud800"}}]}')
    converter = ChatStreamToResponses({"model": "m", "input": "x"})
    data = converter.feed(chunk)
    data += converter.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    data += converter.finish()
    payloads = event_payloads(data)
    deltas = [p["delta"] for p in payloads if p["type"] == "response.output_text.delta"]
    assert deltas == ["a\ud800"]
    assert payloads[-1]["response"]["output"][0]["content"][0]["text"] == "a\ud800"


def test_a_broken_stream_ends_with_error_and_response_failed() -> None:
    converter = ChatStreamToResponses({"model": "m", "input": "x"})
    data = converter.feed(
        {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
    )
    data += converter.error("the backend went away")
    events = parse_events(data)
    assert [event.type for event in events][-2:] == ["error", "response.failed"]
    error, failed = events[-2:]
    assert error.message == "the backend went away"
    assert failed.response.status == "failed"
    assert failed.response.error.code == "server_error"
    assert failed.response.output[0].content[0].text == "Hel"
    assert converter.response is None  # nothing for a store to keep


def test_text_after_a_tool_call_opens_a_new_message_and_indexless_calls_are_followed() -> None:
    converter = ChatStreamToResponses({"model": "m", "input": "x"})

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    data = converter.feed(chunk({"content": "A"}))
    data += converter.feed(
        chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{"}}]})
    )
    data += converter.feed(chunk({"tool_calls": [{"function": {"arguments": "}"}}]}))
    data += converter.feed(chunk({"content": "B"}, "tool_calls"))
    data += converter.finish()
    final = accumulate(parse_events(data))
    assert [item.type for item in final.output] == ["message", "function_call", "message"]
    assert final.output[1].arguments == "{}"
    assert final.output[1].call_id == "c1"
    assert final.output_text == "AB"


def test_a_call_becomes_an_item_once_its_name_is_known() -> None:
    converter = ChatStreamToResponses({"model": "m", "input": "x"})

    def chunk(call: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}

    data = converter.feed(chunk({"index": 0, "id": "c1", "function": {"arguments": '{"a"'}}))
    # Nothing yet but the opening events.
    assert [e.type for e in parse_events(data)] == ["response.created", "response.in_progress"]
    data += converter.feed(chunk({"index": 0, "function": {"name": "f", "arguments": ":1}"}}))
    data += converter.feed(chunk({"index": 1, "function": {"arguments": "{}"}}))  # never named
    data += converter.finish()
    events = parse_events(data)
    added = [e for e in events if e.type == "response.output_item.added"]
    assert (added[0].item.name, added[0].item.call_id) == ("f", "c1")
    final = accumulate(events)
    assert [item.type for item in final.output] == ["function_call", "function_call"]
    assert final.output[0].arguments == '{"a":1}'
    assert (final.output[1].name, final.output[1].arguments) == ("", "{}")
    assert final.output[1].call_id.startswith("call_")


def test_an_empty_answer_is_one_empty_message() -> None:
    converter = ChatStreamToResponses({"model": "m", "input": "x"})
    data = converter.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    data += converter.finish()
    final = accumulate(parse_events(data))
    assert final.output_text == ""
    assert final.usage is None
