"""The anthropic adapter's translation (``nexus_backend_anthropic.wire``): an OpenAI chat request
to Anthropic's Messages API, and its answer and event stream back to OpenAI chat.
"""

from __future__ import annotations

from typing import Any

import pytest

from nexus_backend_anthropic.wire import (
    AnthropicStreamError,
    AnthropicStreamToChat,
    anthropic_answer_to_chat,
    chat_request_to_anthropic,
)
from nexus_core.anthropic_format import (
    RAW_ARGUMENTS_KEY,
    TranslationError,
)

# --------------------------------------------------------------------------------------------
# chat_request_to_anthropic, anthropic_answer_to_chat, AnthropicStreamToChat


def test_chat_request_to_anthropic_maps_openai_fields() -> None:
    body = chat_request_to_anthropic(
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


def test_chat_request_to_anthropic_defaults_max_tokens_and_maps_tool_choices() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert chat_request_to_anthropic(base)["max_tokens"] == 4096
    assert chat_request_to_anthropic(base, default_max_tokens=7)["max_tokens"] == 7
    assert chat_request_to_anthropic(base | {"max_tokens": 5})["max_tokens"] == 5
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for choice, expected in [("auto", "auto"), ("required", "any"), ("none", "none")]:
        body = chat_request_to_anthropic(base | {"tools": tools, "tool_choice": choice})
        assert body["tool_choice"] == {"type": expected}
    body = chat_request_to_anthropic(base | {"tools": tools, "parallel_tool_calls": False})
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
def test_chat_request_to_anthropic_rejects_what_anthropic_cannot_take(
    mutation: dict[str, Any], param: str
) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "x"}]} | mutation
    request = {k: v for k, v in request.items() if v is not None}
    with pytest.raises(TranslationError) as caught:
        chat_request_to_anthropic(request)
    assert caught.value.param == param


def test_anthropic_answer_to_chat_shape() -> None:
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
    chat = anthropic_answer_to_chat(message, created=5)
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
    chat = anthropic_answer_to_chat({"id": "msg_1", "content": [], "stop_reason": stop_reason})
    assert chat["choices"][0]["finish_reason"] == finish_reason


def test_messages_stream_to_chat_chunks_and_error() -> None:
    converter = AnthropicStreamToChat(created=1)
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
    assert AnthropicStreamToChat(include_usage=False).feed({"type": "message_stop"}) == []
    with pytest.raises(AnthropicStreamError) as caught:
        converter.feed(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
    assert (caught.value.message, caught.value.error_type) == ("Overloaded", "overloaded_error")
