"""The anthropic adapter's translation: an OpenAI chat request to Anthropic's Messages API, and
Anthropic's answer (a Message, or its event stream) back to OpenAI chat.

``chat_request_to_anthropic`` for the request, ``anthropic_answer_to_chat`` for a whole answer,
``AnthropicStreamToChat`` for a stream (an ``error`` event raises ``AnthropicStreamError``). The
front door's direction, a client's Messages request to an OpenAI-wire backend, is
``nexus_server.anthropic_wire``; what both share is ``nexus_core.anthropic_format``.

Where the formats do not map one to one:

- Every ``system`` (or ``developer``) message joins Anthropic's one system prompt, in order,
  separated by a blank line.
- Consecutive ``tool`` messages, and a user message right after them, make one user turn of
  ``tool_result`` blocks (Anthropic wants the results of one assistant turn together).
- Tool-call arguments that are not a JSON object are kept as ``{"_raw_arguments": "<text>"}``
  (``nexus_core.anthropic_format.parse_arguments``) and turned back into the same raw text.
- ``temperature`` is capped at 1 (OpenAI allows 2); ``max_tokens`` is required by Anthropic, so a
  request without one gets the adapter's default.
- Anthropic counts cached input apart; OpenAI's ``prompt_tokens`` include cache reads and writes
  (``prompt_tokens_details.cached_tokens`` the reads).
- A thinking block becomes ``reasoning_content``.
- OpenAI fields with no Anthropic counterpart (``response_format: json_object``, ``seed``,
  penalties, ``logprobs``, ...) are dropped; ``n`` over 1 is refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from nexus_core.anthropic_format import (
    TEXT_SEPARATOR,
    JSONDict,
    TranslationError,
    dump_arguments,
    new_tool_use_id,
    openai_text,
    parse_arguments,
)

__all__ = [
    "AnthropicStreamError",
    "AnthropicStreamToChat",
    "anthropic_answer_to_chat",
    "chat_request_to_anthropic",
    "finish_reason_from",
    "usage_from_anthropic",
]

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicStreamError(RuntimeError):
    """An ``error`` event in an Anthropic stream."""

    def __init__(self, message: str, error_type: str = "api_error") -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def finish_reason_from(stop_reason: Any) -> str:
    """OpenAI ``finish_reason`` for an Anthropic ``stop_reason``."""
    return _FINISH_REASONS.get(stop_reason, "stop")


def usage_from_anthropic(usage: Any) -> JSONDict:
    """OpenAI usage from Anthropic usage; prompt tokens include cache reads and writes."""
    if not isinstance(usage, Mapping):
        usage = {}
    cached = _int(usage.get("cache_read_input_tokens"))
    prompt = (
        _int(usage.get("input_tokens")) + cached + _int(usage.get("cache_creation_input_tokens"))
    )
    completion = _int(usage.get("output_tokens"))
    result: JSONDict = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        result["prompt_tokens_details"] = {"cached_tokens": cached}
    return result


# --------------------------------------------------------------------------------------------
# OpenAI request -> Anthropic request


def _image_block(url: Any, path: str) -> JSONDict:
    if not isinstance(url, str):
        raise TranslationError("field required", path)
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64":
            raise TranslationError("data URLs must be base64-encoded", path)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _openai_parts_to_blocks(content: Any, path: str) -> list[JSONDict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise TranslationError("must be a string or a list of parts", path)
    blocks: list[JSONDict] = []
    for j, part in enumerate(content):
        part_path = f"{path}.{j}"
        part_type = part.get("type") if isinstance(part, Mapping) else None
        if part_type in ("text", "refusal"):
            text = part.get(part_type)
            if isinstance(text, str) and text:
                blocks.append({"type": "text", "text": text})
        elif part_type == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
            blocks.append(_image_block(url, part_path + ".image_url.url"))
        elif part_type == "file":
            file = part.get("file") or {}
            data = file.get("file_data")
            if not isinstance(data, str) or not data.startswith("data:"):
                raise TranslationError("only inline file_data is supported", part_path)
            header, _, encoded = data[5:].partition(",")
            document: JSONDict = {
                "type": "document",
                "source": {
                    "type": "base64",
                    "media_type": header.partition(";")[0],
                    "data": encoded,
                },
            }
            if isinstance(file.get("filename"), str):
                document["title"] = file["filename"]
            blocks.append(document)
        else:
            raise TranslationError(f"content part type {part_type!r} is not supported", part_path)
    return blocks


def chat_request_to_anthropic(
    request: Mapping[str, Any], *, default_max_tokens: int = 4096
) -> JSONDict:
    """Translate an OpenAI chat completions request into an Anthropic Messages request."""
    if not isinstance(request, Mapping):
        raise TranslationError("request body must be a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise TranslationError("field required", "model")
    messages_in = request.get("messages")
    if not isinstance(messages_in, list):
        raise TranslationError("field required (a list of messages)", "messages")
    n = request.get("n")
    if isinstance(n, int) and n > 1:
        raise TranslationError("Anthropic models return one choice; n must be 1", "n")

    system: list[str] = []
    messages: list[JSONDict] = []
    # The user turn that consecutive tool messages (and a user message after them) fill.
    tool_turn: list[JSONDict] | None = None
    for i, message in enumerate(messages_in):
        path = f"messages.{i}"
        if not isinstance(message, Mapping):
            raise TranslationError("must be an object", path)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            # Anthropic has one system prompt: every system message joins it, in order.
            text = openai_text(content)
            if text:
                system.append(text)
        elif role == "tool":
            tool_call_id = message.get("tool_call_id")
            if not isinstance(tool_call_id, str):
                raise TranslationError("field required", path + ".tool_call_id")
            result: JSONDict = {"type": "tool_result", "tool_use_id": tool_call_id}
            result["content"] = (
                content if isinstance(content, str) else _openai_parts_to_blocks(content, path)
            )
            if tool_turn is None:
                tool_turn = []
                messages.append({"role": "user", "content": tool_turn})
            tool_turn.append(result)
        elif role == "user":
            if tool_turn is not None:
                tool_turn.extend(_openai_parts_to_blocks(content, path + ".content"))
                tool_turn = None
            elif isinstance(content, str):
                messages.append({"role": "user", "content": content})
            else:
                messages.append(
                    {"role": "user", "content": _openai_parts_to_blocks(content, path + ".content")}
                )
        elif role == "assistant":
            tool_turn = None
            messages.append(_assistant_to_messages(message, path))
        else:
            raise TranslationError(f"role {role!r} is not supported", path + ".role")

    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
    body: JSONDict = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens if isinstance(max_tokens, int) else default_max_tokens,
    }
    if system:
        body["system"] = TEXT_SEPARATOR.join(system)
    temperature = request.get("temperature")
    if isinstance(temperature, int | float):
        body["temperature"] = min(temperature, 1.0)  # OpenAI allows up to 2, Anthropic 1
    for key in ("top_p", "top_k"):
        if request.get(key) is not None:
            body[key] = request[key]
    stop = request.get("stop")
    if isinstance(stop, str):
        body["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        body["stop_sequences"] = list(stop)
    if request.get("stream") is True:
        body["stream"] = True
    if isinstance(request.get("user"), str):
        body["metadata"] = {"user_id": request["user"]}
    tools = request.get("tools")
    if tools:
        body["tools"] = _tools_to_messages(tools)
        tool_choice = _tool_choice_to_messages(request.get("tool_choice"))
        if request.get("parallel_tool_calls") is False:
            tool_choice = tool_choice or {"type": "auto"}
            if tool_choice["type"] != "none":
                tool_choice["disable_parallel_tool_use"] = True
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
    response_format = request.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        json_schema = response_format.get("json_schema") or {}
        body["output_config"] = {
            "format": {"type": "json_schema", "schema": json_schema.get("schema") or {}}
        }
    return body


def _assistant_to_messages(message: Mapping[str, Any], path: str) -> JSONDict:
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    if not tool_calls and isinstance(content, str):
        return {"role": "assistant", "content": content}
    blocks = _openai_parts_to_blocks(content, path + ".content")
    for k, call in enumerate(tool_calls or ()):
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise TranslationError("tool call needs a function name", f"{path}.tool_calls.{k}")
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_tool_use_id(),
                "name": function["name"],
                "input": parse_arguments(function.get("arguments")),
            }
        )
    return {"role": "assistant", "content": blocks}


def _tools_to_messages(tools: Any) -> list[JSONDict]:
    if not isinstance(tools, list):
        raise TranslationError("must be a list of tools", "tools")
    result: list[JSONDict] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if (
            not isinstance(tool, Mapping)
            or tool.get("type") != "function"
            or not isinstance(function, Mapping)
        ):
            raise TranslationError("only function tools are supported", f"tools.{i}")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("field required", f"tools.{i}.function.name")
        converted: JSONDict = {"name": name}
        if isinstance(function.get("description"), str):
            converted["description"] = function["description"]
        converted["input_schema"] = function.get("parameters") or {
            "type": "object",
            "properties": {},
        }
        if isinstance(function.get("strict"), bool):
            converted["strict"] = function["strict"]
        result.append(converted)
    return result


def _tool_choice_to_messages(tool_choice: Any) -> JSONDict | None:
    if tool_choice is None:
        return None
    if tool_choice == "auto":
        return {"type": "auto"}
    if tool_choice == "required":
        return {"type": "any"}
    if tool_choice == "none":
        return {"type": "none"}
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return {"type": "tool", "name": function["name"]}
    raise TranslationError("must be 'auto', 'required', 'none' or a named function", "tool_choice")


# --------------------------------------------------------------------------------------------
# Anthropic answer -> OpenAI answer


def _completion_id(message_id: Any) -> str:
    if isinstance(message_id, str) and message_id:
        return "chatcmpl-" + message_id.removeprefix("msg_")
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def anthropic_answer_to_chat(message: Mapping[str, Any], *, created: int | None = None) -> JSONDict:
    """Translate an Anthropic message into an OpenAI chat completion."""
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[JSONDict] = []
    for block in message.get("content") or ():
        block_type = block.get("type")
        if block_type == "text":
            texts.append(block.get("text") or "")
        elif block_type == "thinking":
            reasoning.append(block.get("thinking") or "")
        elif block_type == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id") or new_tool_use_id(),
                    "type": "function",
                    "function": {
                        "name": block.get("name") or "",
                        "arguments": dump_arguments(block.get("input") or {}),
                    },
                }
            )
    text = "".join(texts)
    chat_message: JSONDict = {"role": "assistant", "content": text or None}
    if reasoning:
        chat_message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        chat_message["tool_calls"] = tool_calls
    return {
        "id": _completion_id(message.get("id")),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": message.get("model") or "",
        "choices": [
            {
                "index": 0,
                "message": chat_message,
                "logprobs": None,
                "finish_reason": finish_reason_from(message.get("stop_reason")),
            }
        ],
        "usage": usage_from_anthropic(message.get("usage")),
    }


class AnthropicStreamToChat:
    """Turns Anthropic stream events (parsed ``data`` objects) into OpenAI chunk dicts.

    An ``error`` event raises ``AnthropicStreamError``. With ``include_usage`` (what
    ``stream_options.include_usage`` asks for) a last chunk with ``choices: []`` carries usage.
    """

    def __init__(
        self, model: str | None = None, *, include_usage: bool = True, created: int | None = None
    ) -> None:
        self.model = model
        self.include_usage = include_usage
        self.created = created if created is not None else int(time.time())
        self.id = _completion_id(None)
        self._usage: JSONDict = {}
        self._tool_index: dict[int, int] = {}

    def _chunk(self, delta: JSONDict, finish_reason: str | None = None) -> JSONDict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model or "",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    def feed(self, event: Mapping[str, Any]) -> list[JSONDict]:
        """The OpenAI chunks one Anthropic event makes (often one, sometimes none)."""
        event_type = event.get("type")
        if event_type == "content_block_delta":
            return self._block_delta(event)
        if event_type == "content_block_start":
            return self._block_start(event)
        if event_type == "message_start":
            message = event.get("message") or {}
            self.id = _completion_id(message.get("id"))
            self.model = self.model or message.get("model")
            self._usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if event_type == "message_delta":
            usage = event.get("usage") or {}
            self._usage.update({k: v for k, v in usage.items() if v is not None})
            delta = event.get("delta") or {}
            return [self._chunk({}, finish_reason_from(delta.get("stop_reason")))]
        if event_type == "message_stop":
            if not self.include_usage:
                return []
            chunk = self._chunk({})
            chunk["choices"] = []
            chunk["usage"] = usage_from_anthropic(self._usage)
            return [chunk]
        if event_type == "error":
            error = event.get("error") or {}
            raise AnthropicStreamError(
                str(error.get("message") or "upstream stream error"),
                str(error.get("type") or "api_error"),
            )
        # ping, content_block_stop, and event types added after this was written
        return []

    def _block_start(self, event: Mapping[str, Any]) -> list[JSONDict]:
        block = event.get("content_block") or {}
        block_type = block.get("type")
        if block_type == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block_type == "tool_use":
            tool_index = len(self._tool_index)
            self._tool_index[_int(event.get("index"))] = tool_index
            tool_input = block.get("input")
            call = {
                "index": tool_index,
                "id": block.get("id") or new_tool_use_id(),
                "type": "function",
                "function": {
                    "name": block.get("name") or "",
                    "arguments": dump_arguments(tool_input) if tool_input else "",
                },
            }
            return [self._chunk({"tool_calls": [call]})]
        return []

    def _block_delta(self, event: Mapping[str, Any]) -> list[JSONDict]:
        delta = event.get("delta") or {}
        delta_type = delta.get("type")
        if delta_type == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if delta_type == "input_json_delta" and delta.get("partial_json"):
            tool_index = self._tool_index.get(_int(event.get("index")))
            if tool_index is None:
                return []
            call = {"index": tool_index, "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        if delta_type == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        return []
