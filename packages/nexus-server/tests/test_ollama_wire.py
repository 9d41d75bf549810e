"""Ollama API ⇄ OpenAI translation; answers are checked against the real ``ollama`` client."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import ollama
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_server.ollama_wire.listings import (
    guess_parameter_size,
    guess_quantization,
    ps_entry,
    show_response,
    tags_entry,
)
from nexus_server.ollama_wire.to_ollama import (
    ChatStreamToOllama,
    GenerateStreamToOllama,
    error_line,
    load_response,
    ollama_error,
    openai_chat_to_ollama,
    openai_chat_to_ollama_generate,
    openai_completion_to_ollama_generate,
    openai_embeddings_to_ollama,
    openai_embeddings_to_ollama_legacy,
    rfc3339_nano,
)
from nexus_server.ollama_wire.to_openai import (
    TranslationError,
    chat_is_load,
    chat_to_openai,
    embed_to_openai,
    generate_to_openai,
    image_mime,
    legacy_embeddings_to_openai,
    options_to_openai,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 20).decode()
GIF = base64.b64encode(b"GIF89a" + b"\x00" * 20).decode()
WEBP = base64.b64encode(b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 20).decode()
OTHER = base64.b64encode(b"BM" + b"\x00" * 20).decode()
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def lines(data: bytes) -> list[dict[str, Any]]:
    """NDJSON bytes → objects, checking the framing on the way."""
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


# -- options ---------------------------------------------------------------------------------


def test_options_map_to_openai_fields_and_drop_the_rest() -> None:
    options = {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 7,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
        "repeat_penalty": 1.1,
        "num_predict": 128,
        "stop": ["</s>", "User:"],
        "num_ctx": 8192,
        "mirostat": 2,
        "num_gpu": 1,
        "made_up": "x",
    }
    assert options_to_openai(options) == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 7,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.3,
        "repeat_penalty": 1.1,
        "max_tokens": 128,
        "stop": ["</s>", "User:"],
    }


@pytest.mark.parametrize("num_predict", [-1, -2, 0])
def test_unlimited_num_predict_sets_no_max_tokens(num_predict: int) -> None:
    assert options_to_openai({"num_predict": num_predict}) == {}


def test_options_stop_string_becomes_list_and_integers_are_integers() -> None:
    assert options_to_openai({"stop": "\n", "seed": 3.0, "top_k": 20.0}) == {
        "stop": ["\n"],
        "seed": 3,
        "top_k": 20,
    }
    assert options_to_openai(None) == {}


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"temperature": "hot"}, "options.temperature"),
        ({"seed": True}, "options.seed"),
        ({"stop": [1, 2]}, "options.stop"),
        ([], "options"),
    ],
)
def test_badly_typed_options_are_refused(options: Any, param: str) -> None:
    with pytest.raises(TranslationError) as caught:
        options_to_openai(options)
    assert caught.value.param == param


numbers = st.floats(min_value=-2, max_value=2, allow_nan=False) | st.integers(-100, 100)


@given(
    st.dictionaries(
        st.sampled_from(
            ["temperature", "top_p", "top_k", "seed", "num_predict", "min_p", "num_ctx", "x"]
        ),
        numbers,
    )
)
def test_options_property_passed_keys_keep_their_value(options: dict[str, Any]) -> None:
    body = options_to_openai(options)
    assert "num_ctx" not in body
    assert "x" not in body
    for key in ("temperature", "top_p", "min_p"):
        assert body.get(key) == options.get(key)
    for key in ("top_k", "seed"):
        assert body.get(key) == (None if key not in options else int(options[key]))
    predict = options.get("num_predict")
    assert body.get("max_tokens") == (int(predict) if predict and int(predict) > 0 else None)


# -- chat requests ---------------------------------------------------------------------------


def test_chat_streams_by_default_with_usage() -> None:
    body = chat_to_openai({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_chat_without_stream_keeps_options_and_drops_ollama_only_fields() -> None:
    body = chat_to_openai(
        {
            "model": "m",
            "messages": [{"role": "system", "content": "be brief"}],
            "stream": False,
            "options": {"temperature": 0, "num_ctx": 4096},
            "keep_alive": "5m",
            "think": True,
        }
    )
    assert body == {
        "model": "m",
        "messages": [{"role": "system", "content": "be brief"}],
        "stream": False,
        "temperature": 0,
    }


def test_chat_images_become_image_url_parts_with_sniffed_types() -> None:
    body = chat_to_openai(
        {
            "model": "m",
            "stream": False,
            "messages": [
                {"role": "user", "content": "what is this?", "images": [PNG, JPEG]},
                {"role": "user", "content": "", "images": [GIF, WEBP, OTHER]},
            ],
        }
    )
    first, second = body["messages"]
    assert first["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
    ]
    assert [part["image_url"]["url"].split(";")[0] for part in second["content"]] == [
        "data:image/gif",
        "data:image/webp",
        "data:image/jpeg",
    ]


def test_image_mime_defaults_to_jpeg() -> None:
    assert image_mime(b"") == "image/jpeg"
    assert image_mime(b"RIFF\x00\x00\x00\x00WAVE") == "image/jpeg"


def test_data_url_images_are_kept_and_garbage_is_refused() -> None:
    url = f"data:image/png;base64,{PNG}"
    body = chat_to_openai(
        {"model": "m", "messages": [{"role": "user", "content": "x", "images": [url]}]}
    )
    assert body["messages"][0]["content"][1]["image_url"]["url"] == url
    with pytest.raises(TranslationError, match="base64"):
        chat_to_openai(
            {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["not!b64"]}]}
        )


def test_tool_round_trip_links_results_to_generated_ids_by_name() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    body = chat_to_openai(
        {
            "model": "m",
            "tools": tools,
            "messages": [
                {"role": "user", "content": "weather in Paris and time?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                        {"function": {"name": "clock", "arguments": {}}},
                    ],
                },
                {"role": "tool", "tool_name": "clock", "content": "12:00"},
                {"role": "tool", "tool_name": "weather", "content": "sunny"},
                {"role": "assistant", "content": "Sunny, noon.", "thinking": "easy"},
            ],
        }
    )
    assert body["tools"] == tools
    assistant, clock, weather, final = body["messages"][1:]
    assert assistant == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
        ],
    }
    assert clock == {"role": "tool", "content": "12:00", "tool_call_id": "call_2"}
    assert weather == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert final == {"role": "assistant", "content": "Sunny, noon."}


def test_tool_ids_sent_by_the_client_are_kept() -> None:
    body = chat_to_openai(
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "content": "checking",
                    "tool_calls": [
                        {"id": "call_abc", "function": {"name": "f", "arguments": {}}},
                        {"id": "call_def", "function": {"name": "f", "arguments": "{}"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_def", "content": "2"},
                {"role": "tool", "tool_name": "f", "content": "1"},
                {"role": "tool", "content": "orphan"},
            ],
        }
    )
    assistant, second, first, orphan = body["messages"]
    assert assistant["content"] == "checking"
    assert [call["id"] for call in assistant["tool_calls"]] == ["call_abc", "call_def"]
    assert second["tool_call_id"] == "call_def"
    assert first["tool_call_id"] == "call_abc"
    assert orphan["tool_call_id"] == "call_1"


def test_same_named_calls_are_answered_in_order() -> None:
    call = {"function": {"name": "f", "arguments": {}}}
    body = chat_to_openai(
        {
            "model": "m",
            "messages": [
                {"role": "assistant", "content": "", "tool_calls": [call, call, call]},
                *({"role": "tool", "tool_name": "f", "content": str(n)} for n in range(3)),
            ],
        }
    )
    assert [m["tool_call_id"] for m in body["messages"][1:]] == ["call_1", "call_2", "call_3"]


@pytest.mark.parametrize(
    ("request_body", "param"),
    [
        ({"messages": []}, "model"),
        ({"model": "", "messages": []}, "model"),
        ({"model": "m", "messages": {"role": "user"}}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"model": "m", "messages": [{"role": "system", "content": "x", "images": [PNG]}]},
            "messages[0].images",
        ),
        (
            {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
            "messages[0].tool_calls[0].function",
        ),
        ({"model": "m", "messages": [], "format": "yaml"}, "format"),
        ({"model": "m", "messages": [], "tools": {"x": 1}}, "tools"),
    ],
)
def test_invalid_chat_requests_raise_with_param(request_body: Any, param: str) -> None:
    with pytest.raises(TranslationError) as caught:
        chat_to_openai(request_body)
    assert caught.value.param == param
    assert isinstance(caught.value, ValueError)
    assert caught.value.message == str(caught.value)


def test_format_json_and_schema() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": False}
    assert chat_to_openai({**base, "format": "json"})["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    assert chat_to_openai({**base, "format": schema})["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert "response_format" not in chat_to_openai({**base, "format": ""})


def test_chat_without_messages_is_a_load_call() -> None:
    assert chat_is_load({"model": "m"})
    assert chat_is_load({"model": "m", "messages": []})
    assert not chat_is_load({"model": "m", "messages": [{"role": "user", "content": ""}]})
    answer = load_response("m", kind="chat")
    assert answer["done_reason"] == "load"
    assert ollama.ChatResponse.model_validate(answer).done
    assert ollama.GenerateResponse.model_validate(load_response("m", kind="generate")).done


roles = st.sampled_from(["system", "user", "assistant"])
plain_messages = st.lists(st.fixed_dictionaries({"role": roles, "content": st.text()}))


@given(plain_messages)
def test_plain_messages_keep_their_order_and_text(messages: list[dict[str, str]]) -> None:
    body = chat_to_openai({"model": "m", "messages": messages})
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        (m["role"], m["content"]) for m in messages
    ]


# -- generate and embeddings requests -------------------------------------------------------


def test_generate_becomes_chat_with_system_and_images() -> None:
    kind, body = generate_to_openai(
        {
            "model": "m",
            "prompt": "Why is the sky blue?",
            "system": "Answer briefly.",
            "images": [PNG],
            "format": "json",
            "options": {"num_predict": 10},
            "context": [1, 2, 3],
            "template": "{{ .Prompt }}",
        }
    )
    assert kind == "chat"
    assert body == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Why is the sky blue?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
        ],
        "response_format": {"type": "json_object"},
        "max_tokens": 10,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_generate_raw_and_suffix_use_completions() -> None:
    kind, body = generate_to_openai(
        {"model": "m", "prompt": "[INST] hi [/INST]", "raw": True, "system": "x", "stream": False}
    )
    assert (kind, body) == (
        "completions",
        {"model": "m", "prompt": "[INST] hi [/INST]", "stream": False},
    )
    kind, body = generate_to_openai({"model": "m", "prompt": "def f(", "suffix": "    return 1"})
    assert kind == "completions"
    assert body["suffix"] == "    return 1"
    assert body["stream"] is True
    with pytest.raises(TranslationError):
        generate_to_openai({"model": "m", "prompt": "x", "raw": True, "images": [PNG]})


def test_generate_with_empty_prompt_is_a_load_call() -> None:
    assert generate_to_openai({"model": "m"}) == ("load", {})
    assert generate_to_openai({"model": "m", "prompt": "", "stream": False}) == ("load", {})
    with pytest.raises(TranslationError):
        generate_to_openai({"prompt": "x"})


def test_embed_requests() -> None:
    assert embed_to_openai({"model": "e", "input": "hello", "truncate": False}) == {
        "model": "e",
        "input": ["hello"],
        "encoding_format": "float",
    }
    body = embed_to_openai(
        {"model": "e", "input": ["a", "b"], "dimensions": 64, "options": {"num_ctx": 9}}
    )
    assert body == {"model": "e", "input": ["a", "b"], "encoding_format": "float", "dimensions": 64}
    assert embed_to_openai({"model": "e", "input": ""})["input"] == []
    with pytest.raises(TranslationError) as caught:
        embed_to_openai({"model": "e", "input": [1, 2]})
    assert caught.value.param == "input"
    assert legacy_embeddings_to_openai({"model": "e", "prompt": "hi"})["input"] == ["hi"]
    assert legacy_embeddings_to_openai({"model": "e"})["input"] == []


# -- non-streaming answers ------------------------------------------------------------------

USAGE = {"prompt_tokens": 26, "completion_tokens": 282, "total_tokens": 308}


def test_chat_answer_with_metrics_parses_in_the_client() -> None:
    response = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "reasoning_content": "hm"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    answer = openai_chat_to_ollama(response, model="m", started_ns=1_000, now_ns=5_001_000)
    assert RFC3339_NANO.match(answer["created_at"])
    assert answer["message"] == {"role": "assistant", "content": "Hello!", "thinking": "hm"}
    assert answer["done"] is True
    assert answer["done_reason"] == "stop"
    assert answer["total_duration"] == 5_000_000
    assert answer["eval_duration"] == 5_000_000
    assert answer["load_duration"] == 0
    assert answer["prompt_eval_count"] == 26
    assert answer["eval_count"] == 282
    parsed = ollama.ChatResponse.model_validate(answer)
    assert parsed.message.content == "Hello!"
    assert parsed.eval_count == 282


def test_chat_answer_tool_calls_have_object_arguments() -> None:
    response = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_x",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        },
                        {"id": "call_y", "function": {"name": "f", "arguments": "not json"}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    answer = openai_chat_to_ollama(response, model="m", started_ns=0, now_ns=10)
    assert answer["done_reason"] == "stop"
    assert answer["message"]["content"] == ""
    assert answer["message"]["tool_calls"] == [
        {
            "id": "call_x",
            "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}},
        },
        {
            "id": "call_y",
            "function": {"index": 1, "name": "f", "arguments": {"arguments": "not json"}},
        },
    ]
    assert answer["prompt_eval_count"] == 0
    parsed = ollama.ChatResponse.model_validate(answer)
    assert parsed.message.tool_calls is not None
    assert parsed.message.tool_calls[0].function.arguments == {"city": "Paris"}


def test_length_finish_and_llamacpp_timings() -> None:
    response = {
        "choices": [{"message": {"content": "cut"}, "finish_reason": "length"}],
        "usage": USAGE,
        "timings": {"prompt_ms": 12.5, "predicted_ms": 300},
    }
    answer = openai_chat_to_ollama(response, model="m", started_ns=0, now_ns=10**9)
    assert answer["done_reason"] == "length"
    assert answer["prompt_eval_duration"] == 12_500_000
    assert answer["eval_duration"] == 300_000_000
    assert answer["total_duration"] == 10**9


def test_generate_answers_parse_in_the_client() -> None:
    chat = {"choices": [{"message": {"content": "blue"}, "finish_reason": "stop"}], "usage": USAGE}
    answer = openai_chat_to_ollama_generate(chat, model="m", started_ns=0, now_ns=1)
    assert answer["response"] == "blue"
    assert "context" not in answer
    assert ollama.GenerateResponse.model_validate(answer).response == "blue"
    completion = {"choices": [{"text": "x = 1", "finish_reason": "length"}], "usage": USAGE}
    answer = openai_completion_to_ollama_generate(completion, model="m", started_ns=0, now_ns=1)
    assert (answer["response"], answer["done_reason"]) == ("x = 1", "length")
    assert ollama.GenerateResponse.model_validate(answer).done


def test_embedding_answers_parse_in_the_client() -> None:
    response = {
        "data": [
            {"index": 1, "embedding": [0.3, 0.4]},
            {"index": 0, "embedding": [0.1, 0.2]},
        ],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    answer = openai_embeddings_to_ollama(response, model="e")
    assert answer == {"model": "e", "embeddings": [[0.1, 0.2], [0.3, 0.4]], "prompt_eval_count": 4}
    assert ollama.EmbedResponse.model_validate(answer).embeddings[1] == [0.3, 0.4]
    empty = openai_embeddings_to_ollama({"data": []}, model="e")
    assert ollama.EmbedResponse.model_validate(empty).embeddings == []
    legacy = openai_embeddings_to_ollama_legacy(response)
    assert ollama.EmbeddingsResponse.model_validate(legacy).embedding == [0.3, 0.4]
    assert openai_embeddings_to_ollama_legacy({"data": []}) == {"embedding": []}


def test_rfc3339_nano_trims_like_go() -> None:
    assert rfc3339_nano(1_691_176_965_499_127_000) == "2023-08-04T19:22:45.499127Z"
    assert rfc3339_nano(1_691_176_965_000_000_000) == "2023-08-04T19:22:45Z"
    assert rfc3339_nano(1_691_176_965_000_000_001) == "2023-08-04T19:22:45.000000001Z"


# -- streaming ------------------------------------------------------------------------------


def chunk(
    content: str | None = None,
    *,
    finish: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    role: str | None = None,
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls:
        delta["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE_CHUNK = {"id": "chatcmpl-1", "choices": [], "usage": USAGE}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        self.now += 1_000_000
        return self.now


def test_chat_stream_text_then_done_line_with_usage() -> None:
    stream = ChatStreamToOllama("m", started_ns=0, clock=FakeClock())
    out = b""
    for item in (
        chunk("", role="assistant"),
        chunk("Hel"),
        chunk("lo"),
        chunk(finish="stop"),
        USAGE_CHUNK,
    ):
        out += stream.feed(item)
    out += stream.finish()
    objects = lines(out)
    assert [o["message"]["content"] for o in objects] == ["Hel", "lo", ""]
    assert [o["done"] for o in objects] == [False, False, True]
    final = objects[-1]
    assert final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 26
    assert final["eval_count"] == 282
    # first token at 1 ms, finish at 2 ms on the fake clock
    assert final["prompt_eval_duration"] == 1_000_000
    assert final["eval_duration"] == 1_000_000
    assert final["total_duration"] == 2_000_000
    for line in objects:
        parsed = ollama.ChatResponse.model_validate(line)
        assert parsed.model == "m"
        assert RFC3339_NANO.match(line["created_at"])


def test_chat_stream_sends_tool_calls_whole_in_one_line() -> None:
    stream = ChatStreamToOllama("m", started_ns=0, clock=FakeClock())
    pieces = [
        chunk(
            role="assistant",
            tool_calls=[
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ],
        ),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"ci'}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]),
        chunk(
            tool_calls=[
                {"index": 1, "id": "call_b", "function": {"name": "clock", "arguments": "{}"}}
            ]
        ),
        chunk(finish="tool_calls"),
        USAGE_CHUNK,
    ]
    outputs = [stream.feed(piece) for piece in pieces]
    assert outputs[:4] == [b"", b"", b"", b""]
    (call_line,) = lines(outputs[4])
    assert call_line["message"]["tool_calls"] == [
        {
            "id": "call_a",
            "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}},
        },
        {"id": "call_b", "function": {"index": 1, "name": "clock", "arguments": {}}},
    ]
    assert call_line["done"] is False
    final = lines(stream.finish())
    assert len(final) == 1
    assert final[0]["done_reason"] == "stop"
    message = ollama.ChatResponse.model_validate(call_line).message
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.name == "weather"


def test_tool_calls_left_pending_come_out_before_the_done_line() -> None:
    stream = ChatStreamToOllama("m", started_ns=0, clock=FakeClock())
    stream.feed(chunk(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{}"}}]))
    first, final = lines(stream.finish())
    assert first["message"]["tool_calls"][0]["function"]["name"] == "f"
    assert "id" not in first["message"]["tool_calls"][0]
    assert final["done"] is True


def test_reasoning_deltas_become_thinking() -> None:
    stream = ChatStreamToOllama("m", started_ns=0, clock=FakeClock())
    (line,) = lines(stream.feed({"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}))
    assert line["message"] == {"role": "assistant", "content": "", "thinking": "hm"}
    assert ollama.ChatResponse.model_validate(line).message.thinking == "hm"


def test_upstream_error_chunk_becomes_an_error_line() -> None:
    stream = ChatStreamToOllama("m", started_ns=0)
    assert lines(stream.feed({"error": {"message": "boom"}})) == [{"error": "boom"}]
    assert error_line("cut") == b'{"error":"cut"}\n'
    assert ollama_error('model "x" not found') == b'{"error":"model \\"x\\" not found"}'


def test_generate_stream_from_completions_and_chat_chunks() -> None:
    stream = GenerateStreamToOllama("m", started_ns=0, clock=FakeClock())
    out = stream.feed({"choices": [{"index": 0, "text": "def ", "finish_reason": None}]})
    out += stream.feed({"choices": [{"index": 0, "text": "f():", "finish_reason": "length"}]})
    out += stream.feed(USAGE_CHUNK)
    out += stream.finish()
    objects = lines(out)
    assert [o["response"] for o in objects] == ["def ", "f():", ""]
    assert objects[-1]["done_reason"] == "length"
    for line in objects:
        ollama.GenerateResponse.model_validate(line)

    stream = GenerateStreamToOllama("m", started_ns=0, clock=FakeClock())
    out = stream.feed(chunk("blue")) + stream.feed(chunk(finish="stop")) + stream.finish()
    assert [o["response"] for o in lines(out)] == ["blue", ""]


def test_second_choices_are_ignored() -> None:
    stream = ChatStreamToOllama("m", started_ns=0, clock=FakeClock())
    assert stream.feed({"choices": [{"index": 1, "delta": {"content": "other"}}]}) == b""


@given(st.lists(st.text(min_size=1), max_size=8), st.text(), st.data())
def test_any_split_gives_the_same_text_and_arguments(
    pieces: list[str], arguments_text: str, data: st.DataObject
) -> None:
    arguments = json.dumps({"value": arguments_text})
    cuts = sorted(data.draw(st.lists(st.integers(0, len(arguments)), max_size=5)))
    argument_pieces = [
        arguments[a:b] for a, b in zip([0, *cuts], [*cuts, len(arguments)], strict=True)
    ]
    stream = ChatStreamToOllama("m", started_ns=0, clock=FakeClock())
    out = stream.feed(
        chunk(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}])
    )
    for piece in pieces:
        out += stream.feed(chunk(piece))
    for piece in argument_pieces:
        out += stream.feed(chunk(tool_calls=[{"index": 0, "function": {"arguments": piece}}]))
    out += stream.feed(chunk(finish="tool_calls")) + stream.finish()
    objects = lines(out)
    assert "".join(o["message"]["content"] for o in objects) == "".join(pieces)
    (with_calls,) = [o for o in objects if "tool_calls" in o["message"]]
    assert with_calls["message"]["tool_calls"][0]["function"]["arguments"] == {
        "value": arguments_text
    }


# -- listings -------------------------------------------------------------------------------


def test_tags_entry_guesses_from_the_name_and_parses_in_the_client() -> None:
    entry = tags_entry(
        "meta-llama/Llama-3.1-8B-Instruct-Q4_K_M",
        context_length=8192,
        capabilities={"tools": True, "vision": None},
    )
    assert entry["name"] == entry["model"] == "meta-llama/Llama-3.1-8B-Instruct-Q4_K_M"
    assert entry["size"] == 0
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    assert entry["digest"] == tags_entry("meta-llama/Llama-3.1-8B-Instruct-Q4_K_M")["digest"]
    assert entry["details"] == {
        "parent_model": "",
        "format": "",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "8B",
        "quantization_level": "Q4_K_M",
        "context_length": 8192,
    }
    assert entry["capabilities"] == ["completion", "tools"]
    listing = ollama.ListResponse.model_validate(
        {"models": [entry, tags_entry("gpt-4o", format="gguf", size=5)]}
    )
    assert listing.models[0].model == entry["model"]
    assert listing.models[1].details is not None
    assert listing.models[1].details.family == "gpt"


@pytest.mark.parametrize(
    ("name", "size", "quantization"),
    [
        ("mixtral-8x7b-instruct", "8x7B", ""),
        ("SmolLM2-135M", "135M", ""),
        ("qwen2.5:0.5b", "0.5B", ""),
        ("Qwen/Qwen2.5-7B-Instruct-AWQ", "7B", "AWQ"),
        ("llama3.2:3b-instruct-fp16", "3B", "FP16"),
        ("text-embedding-3-small", "", ""),
    ],
)
def test_name_guesses(name: str, size: str, quantization: str) -> None:
    assert guess_parameter_size(name) == size
    assert guess_quantization(name) == quantization


def test_show_response_parses_in_the_client() -> None:
    answer = show_response(
        "qwen2.5-vl-7b",
        context_length=32768,
        capabilities={"tools": True, "vision": True, "embeddings": False},
    )
    assert answer["model_info"] == {
        "general.architecture": "qwen2",
        "qwen2.context_length": 32768,
    }
    assert answer["capabilities"] == ["completion", "tools", "vision"]
    parsed = ollama.ShowResponse.model_validate(answer)
    assert parsed.modelinfo is not None
    assert parsed.capabilities == ["completion", "tools", "vision"]
    embedder = show_response("nomic-embed-text", capabilities={"embeddings": True})
    assert embedder["capabilities"] == ["embedding"]
    assert embedder["model_info"] == {"general.architecture": "unknown"}


def test_ps_parses_in_the_client() -> None:
    entry = ps_entry("llama3.2:3b", context_length=4096)
    parsed = ollama.ProcessResponse.model_validate({"models": [entry]})
    assert parsed.models[0].context_length == 4096
    assert parsed.models[0].expires_at is not None
