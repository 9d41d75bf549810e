"""The Anthropic front door's translation (``nexus_server.anthropic_wire``): a client's Messages
request to OpenAI chat, the chat answer and its stream back to Anthropic's, as the SDK reads them.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2  # the anthropic SDK's HTTP client
import pytest
from anthropic import APIStatusError
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from nexus_core.anthropic_format import (
    RAW_ARGUMENTS_KEY,
    TranslationError,
)
from nexus_server.anthropic_wire import (
    UNSIGNED_THINKING,
    ChatStreamToAnthropic,
    anthropic_request_to_chat,
    chat_answer_to_anthropic,
    wants_thinking,
)

EVENT = TypeAdapter(RawMessageStreamEvent)


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


# --------------------------------------------------------------------------------------------
# anthropic_request_to_chat


def _request(**fields: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    } | fields


def test_system_blocks_become_one_system_message() -> None:
    chat = anthropic_request_to_chat(
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
    chat = anthropic_request_to_chat(_request(system="be brief", messages=MID_SYSTEM))
    assert _roles(chat) == ["system", "user", "assistant", "user"]
    assert chat["messages"][0]["content"] == "be brief\n\nthe user is in a hurry"
    assert chat["messages"][3]["content"] == "go on"
    # Without a top-level system prompt the folded one becomes the leading one.
    alone = anthropic_request_to_chat(_request(messages=MID_SYSTEM))
    assert alone["messages"][0] == {"role": "system", "content": "the user is in a hurry"}
    assert _roles(alone) == ["system", "user", "assistant", "user"]


def test_system_messages_before_the_first_turn_are_the_leading_prompt_in_every_mode() -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "first"}]},
        {"role": "user", "content": "hi"},
    ]
    for mode in ("merge", "reminder"):
        chat = anthropic_request_to_chat(
            _request(system="top", messages=messages), system_messages=mode
        )
        assert chat["messages"] == [
            {"role": "system", "content": "top\n\nfirst"},
            {"role": "user", "content": "hi"},
        ]


def test_reminder_mode_puts_the_system_message_into_the_next_user_turn() -> None:
    chat = anthropic_request_to_chat(
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
    chat = anthropic_request_to_chat(_request(messages=messages), system_messages="reminder")
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
    chat = anthropic_request_to_chat(_request(messages=between), system_messages="reminder")
    assert _roles(chat) == ["user", "assistant", "user", "assistant"]


def test_reminder_before_an_image_only_turn_is_a_text_part_first() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    messages = [*MID_SYSTEM[:3], {"role": "user", "content": [image]}]
    chat = anthropic_request_to_chat(_request(messages=messages), system_messages="reminder")
    parts = chat["messages"][-1]["content"]
    assert parts[0] == {
        "type": "text",
        "text": "<system-reminder>\nthe user is in a hurry\n</system-reminder>",
    }
    assert parts[1]["type"] == "image_url"


def test_keep_mode_forwards_system_messages_where_they_are() -> None:
    chat = anthropic_request_to_chat(
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
    chat = anthropic_request_to_chat(
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
    chat = anthropic_request_to_chat(
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
    chat = anthropic_request_to_chat(
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
    chat = anthropic_request_to_chat(
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
    chat = anthropic_request_to_chat(
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
    chat = anthropic_request_to_chat(
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
    chat = anthropic_request_to_chat(_request(tools=tools, tool_choice=choice))
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


def test_tool_choice_without_tools_is_dropped() -> None:
    chat = anthropic_request_to_chat(_request(tool_choice={"type": "auto"}))
    assert "tool_choice" not in chat
    assert "tools" not in chat


def test_structured_output_becomes_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = anthropic_request_to_chat(
        _request(output_config={"format": {"type": "json_schema", "schema": schema}})
    )
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }


def test_documents_with_text_sources_become_text() -> None:
    chat = anthropic_request_to_chat(
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
        anthropic_request_to_chat(request)
    assert caught.value.param == param
    assert param in str(caught.value)


# --------------------------------------------------------------------------------------------
# chat_answer_to_anthropic


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


def test_chat_answer_to_anthropic_shape() -> None:
    message = chat_answer_to_anthropic(_completion({"content": "Hello"}), model="claude-x")
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
    message = chat_answer_to_anthropic(_completion({"content": "x"}, finish_reason), model="m")  # type: ignore[arg-type]
    assert message["stop_reason"] == stop_reason


def test_tool_calls_with_finish_reason_stop_still_mean_tool_use() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    message = chat_answer_to_anthropic(
        _completion({"content": None, "tool_calls": [call]}), model="m"
    )
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
    message = chat_answer_to_anthropic(_completion({"tool_calls": calls}, "tool_calls"), model="m")
    assert [block["input"] for block in message["content"]] == [
        {RAW_ARGUMENTS_KEY: "{broken"},
        {RAW_ARGUMENTS_KEY: "[1]"},
        {},
    ]


def test_missing_tool_call_id_gets_a_toolu_id() -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = chat_answer_to_anthropic(_completion({"tool_calls": [call]}), model="m")
    assert message["content"][0]["id"].startswith("toolu_")


def test_stop_sequence_is_reported_when_the_server_names_it() -> None:
    completion = _completion({"content": "x"}, stop_reason="END")
    message = chat_answer_to_anthropic(completion, model="m", stop_sequences=["END"])
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    # Without the request's stop sequences (or with a token id) it is an ordinary end of turn.
    assert chat_answer_to_anthropic(completion, model="m")["stop_reason"] == "end_turn"
    completion = _completion({"content": "x"}, stop_reason=151645)
    assert (
        chat_answer_to_anthropic(completion, model="m", stop_sequences=["END"])["stop_reason"]
        == "end_turn"
    )


def test_cached_prompt_tokens_are_counted_apart() -> None:
    completion = _completion({"content": "x"})
    completion["usage"]["prompt_tokens_details"] = {"cached_tokens": 4}
    usage = chat_answer_to_anthropic(completion, model="m")["usage"]
    assert usage["input_tokens"] == 6
    assert usage["cache_read_input_tokens"] == 4


def test_reasoning_becomes_thinking_only_when_asked() -> None:
    completion = _completion({"content": "answer", "reasoning_content": "because"})
    assert chat_answer_to_anthropic(completion, model="m")["content"] == [
        {"type": "text", "text": "answer"}
    ]
    message = chat_answer_to_anthropic(completion, model="m", include_thinking=True)
    assert message["content"][0] == {
        "type": "thinking",
        "thinking": "because",
        "signature": UNSIGNED_THINKING,
    }
    Message.model_validate(message)


# --------------------------------------------------------------------------------------------
# ChatStreamToAnthropic


def _run(converter: ChatStreamToAnthropic, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
    events = _run(ChatStreamToAnthropic("m", message_id="msg_1", input_tokens=5), [*chunks, usage])
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
    events = _run(ChatStreamToAnthropic("m", input_tokens=5), [_chunk({"content": "x"}, "stop")])
    assert events[-2]["usage"]["input_tokens"] == 5
    assert events[-2]["usage"]["output_tokens"] == 0


def test_stream_waits_for_the_tool_name_and_handles_calls_without_index() -> None:
    chunks = [
        _chunk({"tool_calls": [{"id": "call_a", "function": {"arguments": '{"x"'}}]}),
        _chunk({"tool_calls": [{"function": {"name": "f", "arguments": ":1}"}}]}),
        _chunk({"tool_calls": [{"id": "call_b", "function": {"name": "g", "arguments": "{}"}}]}),
        _chunk({}, "stop"),
    ]
    events = _run(ChatStreamToAnthropic("m"), chunks)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("call_a", "f"), ("call_b", "g")]
    deltas = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == ['{"x":1}', "{}"]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_stream_thinking_block_precedes_text_when_asked() -> None:
    chunks = [_chunk({"reasoning_content": "hm"}), _chunk({"content": "ok"}), _chunk({}, "stop")]
    events = _run(ChatStreamToAnthropic("m", include_thinking=True), chunks)
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["thinking", "text"]
    plain = _run(ChatStreamToAnthropic("m"), chunks)
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
    events = _run(ChatStreamToAnthropic("m", include_thinking=True), chunks)
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
    converter = ChatStreamToAnthropic("m")
    first = converter.feed(_chunk({"content": "a"}))
    assert first.startswith(b"event: message_start\n")
    assert converter.start() == b""
    assert converter.finish_reason is None
    converter.feed(_chunk({}, "length"))
    assert converter.finish_reason == "length"
    assert b'"stop_reason":"max_tokens"' in converter.finish()


def test_stream_error_and_ping_events() -> None:
    assert ChatStreamToAnthropic.ping() == b'event: ping\ndata: {"type":"ping"}\n\n'
    error = ChatStreamToAnthropic.error("upstream broke", "overloaded_error")
    assert _parse_sse(error) == [
        {"type": "error", "error": {"type": "overloaded_error", "message": "upstream broke"}}
    ]


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
    converter = ChatStreamToAnthropic("claude-x", message_id="msg_s")
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
    converter = ChatStreamToAnthropic("claude-x")
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
