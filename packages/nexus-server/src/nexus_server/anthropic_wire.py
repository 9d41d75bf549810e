"""The Anthropic Messages front door's translation: a client's Messages request to OpenAI chat for
an OpenAI-wire backend, and the backend's chat answer (whole or streamed) back to a Message.

``anthropic_request_to_chat`` for the request, ``chat_answer_to_anthropic`` for a whole answer,
``ChatStreamToAnthropic`` for a streamed one; ``nexus_server.anthropic`` serves the door with
them. (The other direction, OpenAI chat to an Anthropic backend, is the anthropic adapter's,
``nexus_backend_anthropic.wire``; what both share is ``nexus_core.anthropic_format``.)

Where the formats do not map one to one, the rule chosen is written next to the code and
summarised here:

- Adjacent text blocks of one request message (and the blocks of ``system`` and of a
  ``tool_result``) are joined with a blank line into one string: every OpenAI-wire server accepts a
  string, not all of them accept arrays of text parts. Text blocks of one *answer* are joined with
  nothing, since they are pieces of one generated text.
- A ``system`` message inside ``messages`` (Claude Code sends some) is folded, since many chat
  templates refuse a system message that is not first: by default it joins the leading system
  prompt; ``routing.system_messages = "reminder"`` adds it, in ``<system-reminder>`` tags, to the
  user turn next to it instead; ``"keep"`` forwards it where it is.
- A backend's reasoning text becomes a ``thinking`` block when the request turns thinking on
  (``enabled`` or ``adaptive``), with the signature ``UNSIGNED_THINKING``.
- An assistant turn's text comes before its tool calls in OpenAI's format, so text written after a
  ``tool_use`` block moves before the tool calls. ``thinking`` and ``redacted_thinking`` blocks in
  the history are dropped: their signatures mean nothing to another model.
- ``tool_result`` blocks become ``role: tool`` messages placed before the rest of the user turn,
  as OpenAI requires; ``is_error`` is kept by prefixing the content with ``"Error: "``. Images in a
  tool result (OpenAI tool messages carry text only) move into the user message that follows.
- Tool-call arguments that are not a JSON object are kept as ``{"_raw_arguments": "<text>"}`` and
  turned back into the same raw text when the history returns to an OpenAI backend.
- OpenAI does not say which stop sequence ended an answer; vLLM does (``choice.stop_reason``). When
  that names one of the request's ``stop_sequences`` the stop reason is ``stop_sequence``, otherwise
  ``end_turn``.
- Anthropic counts cached input apart: ``input_tokens = prompt_tokens - cached_tokens`` and
  ``cache_read_input_tokens = cached_tokens``.
- Request fields with no OpenAI counterpart (``thinking``, ``service_tier``, ``container``,
  ``cache_control``, ``output_config.effort``, ...) are dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from nexus_core.anthropic_format import (
    TEXT_SEPARATOR,
    JSONDict,
    TranslationError,
    compact_json,
    dump_arguments,
    new_tool_use_id,
    openai_text,
    parse_arguments,
)

__all__ = [
    "REMINDER_CLOSE",
    "REMINDER_OPEN",
    "TOOL_ERROR_PREFIX",
    "UNSIGNED_THINKING",
    "ChatStreamToAnthropic",
    "anthropic_request_to_chat",
    "chat_answer_to_anthropic",
    "message_id_from",
    "stop_reason_from",
    "usage_from_openai",
    "wants_thinking",
]

#: Prefix marking a ``tool_result`` with ``is_error: true`` in the OpenAI tool message.
TOOL_ERROR_PREFIX = "Error: "
#: What ``routing.system_messages = "reminder"`` wraps a later system message in (Claude Code's
#: own convention for instructions inside a user turn).
REMINDER_OPEN = "<system-reminder>"
REMINDER_CLOSE = "</system-reminder>"
#: The ``signature`` of a thinking block made from a backend's reasoning text. Anthropic signs
#: its thinking; an OpenAI-wire server cannot, and clients only hand the value back (Nexus
#: drops thinking blocks from the history it forwards), so this marks it as unsigned.
UNSIGNED_THINKING = "bmV4dXM6dW5zaWduZWQ="  # base64 of "nexus:unsigned"

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _sse(event_type: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event_type}\ndata: {compact_json(data)}\n\n".encode()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def message_id_from(openai_id: Any) -> str:
    """An Anthropic ``msg_`` id derived from an OpenAI completion id (or a fresh one)."""
    if isinstance(openai_id, str) and openai_id:
        if openai_id.startswith("msg_"):
            return openai_id
        return "msg_" + openai_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex[:24]


def stop_reason_from(
    finish_reason: Any,
    *,
    has_tool_calls: bool = False,
    matched_stop: Any = None,
    stop_sequences: Sequence[str] = (),
) -> tuple[str, str | None]:
    """Anthropic ``(stop_reason, stop_sequence)`` for an OpenAI ``finish_reason``."""
    if finish_reason == "length":
        return "max_tokens", None
    # Some servers (older Ollama) say "stop" while returning tool calls.
    if has_tool_calls:
        return "tool_use", None
    if finish_reason == "stop" and isinstance(matched_stop, str) and matched_stop in stop_sequences:
        return "stop_sequence", matched_stop
    return _STOP_REASONS.get(finish_reason, "end_turn"), None


def usage_from_openai(usage: Any) -> JSONDict:
    """Anthropic usage from OpenAI usage, with cached prompt tokens counted apart."""
    if not isinstance(usage, Mapping):
        usage = {}
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    return {
        "input_tokens": max(prompt - cached, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": _int(usage.get("completion_tokens")),
    }


# --------------------------------------------------------------------------------------------
# Anthropic request -> OpenAI request


def anthropic_request_to_chat(
    request: Mapping[str, Any], *, system_messages: str = "merge"
) -> JSONDict:
    """Translate an Anthropic Messages request into an OpenAI chat completions request.

    ``system_messages`` (``routing.system_messages``): what becomes of a ``system`` message
    after the first turn: ``merge`` joins it to the leading system prompt, ``reminder`` adds it
    to the adjacent user turn in ``<system-reminder>`` tags, ``keep`` forwards it as it is.
    """
    if not isinstance(request, Mapping):
        raise TranslationError("request body must be a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise TranslationError("field required (a model name)", "model")
    max_tokens = request.get("max_tokens")
    if max_tokens is None:
        raise TranslationError("field required", "max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise TranslationError("must be an integer of at least 1", "max_tokens")
    messages_in = request.get("messages")
    if messages_in is None:
        raise TranslationError("field required", "messages")
    if not isinstance(messages_in, list):
        raise TranslationError("must be a list of messages", "messages")

    messages: list[JSONDict] = []
    system = request.get("system")
    leading: list[str] = []
    if system is not None:
        system_text = _system_text(system, "system")
        if system_text:
            leading.append(system_text)
    keep = system_messages == "keep"
    # System messages before the first turn are part of the leading prompt (in every mode);
    # later ones are folded as ``system_messages`` says, since many chat templates refuse a
    # system message anywhere but first. Reminders wait here for the user turn they join.
    reminders: list[str] = []
    late: list[str] = []
    for i, message in enumerate(messages_in):
        path = f"messages.{i}"
        if not isinstance(message, Mapping):
            raise TranslationError("must be an object", path)
        role = message.get("role")
        content = message.get("content")
        if role == "user":
            turn = _user_to_chat(content, path)
            if reminders:
                _prepend_reminders(turn, reminders)
                reminders = []
            messages.extend(turn)
        elif role == "assistant":
            if reminders:
                _append_reminders(messages, reminders)
                reminders = []
            messages.append(_assistant_to_chat(content, path))
        elif role == "system":
            text = _system_text(content, path + ".content")
            if keep:
                messages.append({"role": "system", "content": text})
            elif not messages:
                if text:
                    leading.append(text)
            elif not text:
                continue
            elif system_messages == "reminder":
                reminders.append(f"{REMINDER_OPEN}\n{text}\n{REMINDER_CLOSE}")
            else:
                late.append(text)
        else:
            raise TranslationError(
                f"unexpected role {role!r}; expected 'user' or 'assistant'", path + ".role"
            )
    if reminders:
        _append_reminders(messages, reminders)
    if leading or late:
        messages.insert(0, {"role": "system", "content": TEXT_SEPARATOR.join(leading + late)})

    chat: JSONDict = {"model": model, "messages": messages, "max_tokens": max_tokens}
    for key in ("temperature", "top_p", "top_k"):
        if request.get(key) is not None:
            chat[key] = request[key]
    stop_sequences = request.get("stop_sequences")
    if stop_sequences is not None:
        if not isinstance(stop_sequences, list) or not all(
            isinstance(s, str) for s in stop_sequences
        ):
            raise TranslationError("must be a list of strings", "stop_sequences")
        if stop_sequences:
            chat["stop"] = list(stop_sequences)
    if request.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    metadata = request.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    tools = request.get("tools")
    if tools:
        chat["tools"] = _tools_to_chat(tools)
        tool_choice = request.get("tool_choice")
        if tool_choice is not None:
            _tool_choice_to_chat(tool_choice, chat)
    output_config = request.get("output_config")
    if isinstance(output_config, Mapping):
        output_format = output_config.get("format")
        if isinstance(output_format, Mapping) and output_format.get("type") == "json_schema":
            chat["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "response",
                    "schema": output_format.get("schema"),
                    "strict": True,
                },
            }
    return chat


def _system_text(system: Any, path: str) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise TranslationError("must be a string or a list of text blocks", path)
    texts: list[str] = []
    for j, block in enumerate(system):
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise TranslationError("only text blocks are allowed here", f"{path}.{j}")
        text = block.get("text")
        if not isinstance(text, str):
            raise TranslationError("field required", f"{path}.{j}.text")
        if text:
            texts.append(text)
    return TEXT_SEPARATOR.join(texts)


def wants_thinking(request: Mapping[str, Any]) -> bool:
    """Whether a Messages request turns thinking on: ``enabled``, or ``adaptive`` (the model
    decides; Claude Code's default), so a backend's reasoning comes back as thinking blocks."""
    thinking = request.get("thinking")
    return isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive")


def _prepend_reminders(turn: list[JSONDict], reminders: list[str]) -> None:
    """Put reminders at the start of a user turn's user message (after its tool results)."""
    text = TEXT_SEPARATOR.join(reminders)
    last = turn[-1] if turn else None
    if last is None or last["role"] != "user":
        turn.append({"role": "user", "content": text})
        return
    content = last["content"]
    if isinstance(content, str):
        last["content"] = text + TEXT_SEPARATOR + content if content else text
    elif content and content[0]["type"] == "text":
        content[0]["text"] = text + TEXT_SEPARATOR + content[0]["text"]
    else:
        content.insert(0, {"type": "text", "text": text})


def _append_reminders(messages: list[JSONDict], reminders: list[str]) -> None:
    """Reminders with no user turn after them: at the end of the user message before them, or
    a user message of their own where that is not one."""
    text = TEXT_SEPARATOR.join(reminders)
    last = messages[-1] if messages else None
    if last is None or last["role"] != "user":
        messages.append({"role": "user", "content": text})
        return
    content = last["content"]
    if isinstance(content, str):
        last["content"] = content + TEXT_SEPARATOR + text if content else text
    else:
        _append_text(content, text)


def _block_type(block: Any, path: str) -> str:
    if not isinstance(block, Mapping):
        raise TranslationError("content block must be an object", path)
    block_type = block.get("type")
    if not isinstance(block_type, str):
        raise TranslationError("field required", path + ".type")
    return block_type


def _block_text(block: Mapping[str, Any], path: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise TranslationError("field required", path + ".text")
    return text


def _append_text(parts: list[JSONDict], text: str) -> None:
    if not text:
        return
    if parts and parts[-1]["type"] == "text":
        parts[-1]["text"] += TEXT_SEPARATOR + text
    else:
        parts.append({"type": "text", "text": text})


def _image_part(block: Mapping[str, Any], path: str) -> JSONDict:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise TranslationError("field required", path + ".source")
    source_type = source.get("type")
    if source_type == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise TranslationError("base64 source needs media_type and data", path + ".source")
        url = f"data:{media_type};base64,{data}"
    elif source_type == "url":
        if not isinstance(source.get("url"), str):
            raise TranslationError("field required", path + ".source.url")
        url = source["url"]
    else:
        raise TranslationError(
            f"image source type {source_type!r} is not supported here", path + ".source.type"
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document_parts(block: Mapping[str, Any], path: str) -> list[JSONDict]:
    source = block.get("source")
    source_type = source.get("type") if isinstance(source, Mapping) else None
    if source_type == "text" and isinstance(source, Mapping):
        return [{"type": "text", "text": str(source.get("data", ""))}]
    if source_type == "content" and isinstance(source, Mapping):
        parts: list[JSONDict] = []
        inner = source.get("content")
        if isinstance(inner, str):
            _append_text(parts, inner)
            return parts
        for k, item in enumerate(inner if isinstance(inner, list) else []):
            item_path = f"{path}.source.content.{k}"
            item_type = _block_type(item, item_path)
            if item_type == "text":
                _append_text(parts, _block_text(item, item_path))
            elif item_type == "image":
                parts.append(_image_part(item, item_path))
            else:
                raise TranslationError(f"unsupported block type {item_type!r}", item_path)
        return parts
    if source_type == "base64" and isinstance(source, Mapping):
        media_type = source.get("media_type", "application/pdf")
        title = block.get("title")
        return [
            {
                "type": "file",
                "file": {
                    "filename": title if isinstance(title, str) and title else "document.pdf",
                    "file_data": f"data:{media_type};base64,{source.get('data', '')}",
                },
            }
        ]
    raise TranslationError(
        f"document source type {source_type!r} is not supported here", path + ".source"
    )


def _tool_result_to_chat(block: Mapping[str, Any], path: str, parts: list[JSONDict]) -> JSONDict:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str):
        raise TranslationError("field required", path + ".tool_use_id")
    content = block.get("content", "")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts: list[str] = []
        for k, item in enumerate(content):
            item_path = f"{path}.content.{k}"
            item_type = _block_type(item, item_path)
            if item_type == "text":
                item_text = _block_text(item, item_path)
                if item_text:
                    texts.append(item_text)
            elif item_type == "image":
                # OpenAI tool messages carry text only: the image goes to the user message.
                parts.append(_image_part(item, item_path))
            elif item_type == "document":
                for part in _document_parts(item, item_path):
                    if part["type"] == "text":
                        texts.append(part["text"])
                    else:
                        parts.append(part)
            else:
                raise TranslationError(f"unsupported block type {item_type!r}", item_path)
        text = TEXT_SEPARATOR.join(texts)
    else:
        raise TranslationError("must be a string or a list of blocks", path + ".content")
    if block.get("is_error") is True:
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _user_to_chat(content: Any, path: str) -> list[JSONDict]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise TranslationError("must be a string or a list of blocks", path + ".content")
    tool_messages: list[JSONDict] = []
    parts: list[JSONDict] = []
    for j, block in enumerate(content):
        block_path = f"{path}.content.{j}"
        block_type = _block_type(block, block_path)
        if block_type == "text":
            _append_text(parts, _block_text(block, block_path))
        elif block_type == "image":
            parts.append(_image_part(block, block_path))
        elif block_type == "tool_result":
            tool_messages.append(_tool_result_to_chat(block, block_path, parts))
        elif block_type == "document":
            for part in _document_parts(block, block_path):
                if part["type"] == "text":
                    _append_text(parts, part["text"])
                else:
                    parts.append(part)
        elif block_type in _DROPPED_BLOCKS:
            continue
        else:
            raise TranslationError(
                f"block type {block_type!r} is not supported in a user message",
                block_path + ".type",
            )
    if not parts:
        return tool_messages or [{"role": "user", "content": ""}]
    if len(parts) == 1 and parts[0]["type"] == "text":
        tool_messages.append({"role": "user", "content": parts[0]["text"]})
    else:
        tool_messages.append({"role": "user", "content": parts})
    return tool_messages


def _assistant_to_chat(content: Any, path: str) -> JSONDict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise TranslationError("must be a string or a list of blocks", path + ".content")
    texts: list[str] = []
    tool_calls: list[JSONDict] = []
    for j, block in enumerate(content):
        block_path = f"{path}.content.{j}"
        block_type = _block_type(block, block_path)
        if block_type == "text":
            text = _block_text(block, block_path)
            if text:
                texts.append(text)
        elif block_type == "tool_use":
            tool_id, name, tool_input = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(tool_id, str) or not isinstance(name, str):
                raise TranslationError("tool_use needs an id and a name", block_path)
            if not isinstance(tool_input, dict):
                raise TranslationError("must be an object", block_path + ".input")
            tool_calls.append(
                {
                    "id": tool_id,
                    "type": "function",
                    "function": {"name": name, "arguments": dump_arguments(tool_input)},
                }
            )
        elif block_type in _DROPPED_BLOCKS:
            continue
        else:
            raise TranslationError(
                f"block type {block_type!r} is not supported in an assistant message",
                block_path + ".type",
            )
    message: JSONDict = {"role": "assistant", "content": TEXT_SEPARATOR.join(texts)}
    if tool_calls:
        if not texts:
            message["content"] = None
        message["tool_calls"] = tool_calls
    return message


def _tools_to_chat(tools: Any) -> list[JSONDict]:
    if not isinstance(tools, list):
        raise TranslationError("must be a list of tools", "tools")
    result: list[JSONDict] = []
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        if not isinstance(tool, Mapping):
            raise TranslationError("must be an object", path)
        tool_type = tool.get("type")
        if tool_type not in (None, "custom"):
            raise TranslationError(
                f"tool type {tool_type!r} is an Anthropic-defined tool this backend cannot run",
                path + ".type",
            )
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise TranslationError("field required", path + ".name")
        if not isinstance(schema, Mapping):
            raise TranslationError("field required", path + ".input_schema")
        function: JSONDict = {"name": name}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        function["parameters"] = schema
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        result.append({"type": "function", "function": function})
    return result


def _tool_choice_to_chat(tool_choice: Any, chat: JSONDict) -> None:
    choice_type = tool_choice.get("type") if isinstance(tool_choice, Mapping) else None
    if choice_type in _TOOL_CHOICES:
        chat["tool_choice"] = _TOOL_CHOICES[choice_type]
    elif choice_type == "tool":
        name = tool_choice.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("field required", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise TranslationError(
            "must be {'type': 'auto' | 'any' | 'tool' | 'none'}", "tool_choice.type"
        )
    if tool_choice.get("disable_parallel_tool_use") is True and choice_type != "none":
        chat["parallel_tool_calls"] = False


# --------------------------------------------------------------------------------------------
# OpenAI answer -> Anthropic answer


def _reasoning_of(message: Mapping[str, Any]) -> str:
    # vLLM, llama.cpp and DeepSeek use reasoning_content; Ollama and newer vLLM use reasoning.
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return reasoning if isinstance(reasoning, str) else ""


def chat_answer_to_anthropic(
    response: Mapping[str, Any],
    *,
    model: str,
    stop_sequences: Sequence[str] = (),
    include_thinking: bool = False,
) -> JSONDict:
    """Translate an OpenAI chat completion into an Anthropic message.

    ``stop_sequences`` are the request's, to recognise a ``stop_sequence`` stop; with
    ``include_thinking`` the server's reasoning text becomes a ``thinking`` block (signed
    ``UNSIGNED_THINKING``).
    """
    choices = response.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") or {}
    content: list[JSONDict] = []
    if include_thinking:
        reasoning = _reasoning_of(message)
        if reasoning:
            content.append(
                {"type": "thinking", "thinking": reasoning, "signature": UNSIGNED_THINKING}
            )
    text = openai_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    tool_calls = message.get("tool_calls") or []
    for call in tool_calls:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_tool_use_id(),
                "name": function.get("name") or "",
                "input": parse_arguments(function.get("arguments")),
            }
        )
    stop_reason, stop_sequence = stop_reason_from(
        choice.get("finish_reason"),
        has_tool_calls=bool(tool_calls),
        matched_stop=choice.get("stop_reason"),
        stop_sequences=stop_sequences,
    )
    return {
        "id": message_id_from(response.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_from_openai(response.get("usage")),
    }


class _ToolCall:
    __slots__ = ("block", "id", "name", "pending")

    def __init__(self) -> None:
        self.block: int | None = None
        self.id = ""
        self.name = ""
        self.pending: list[str] = []


class ChatStreamToAnthropic:
    """Turns OpenAI chat stream chunks into Anthropic SSE events, one chunk at a time.

    Call ``start`` (optional: ``feed`` starts the stream itself), ``feed`` for every chunk and
    ``finish`` after the upstream's last chunk; or ``error`` when the upstream breaks. The caller
    can read ``finish_reason`` to tell a complete stream from a truncated one.
    """

    def __init__(
        self,
        model: str,
        *,
        message_id: str | None = None,
        input_tokens: int = 0,
        stop_sequences: Sequence[str] = (),
        include_thinking: bool = False,
    ) -> None:
        self.model = model
        self.message_id = message_id or message_id_from(None)
        self.input_tokens = input_tokens
        self.stop_sequences = tuple(stop_sequences)
        self.include_thinking = include_thinking
        self.finish_reason: str | None = None
        self._matched_stop: Any = None
        self._usage: Mapping[str, Any] | None = None
        self._started = False
        self._next_block = 0
        self._open_block: int | None = None
        self._open_kind: str | None = None
        self._tools: dict[int, _ToolCall] = {}
        self._last_tool: int | None = None

    def start(self) -> bytes:
        """The ``message_start`` event (once; later calls return nothing)."""
        if self._started:
            return b""
        self._started = True
        message: JSONDict = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        return _sse("message_start", {"type": "message_start", "message": message})

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        """The events one OpenAI chunk makes (often one delta, sometimes nothing)."""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = usage
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if self.include_thinking:
                reasoning = _reasoning_of(delta)
                if reasoning:
                    self._delta(out, "thinking", {"type": "thinking_delta", "thinking": reasoning})
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._delta(out, "text", {"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or ():
                self._tool_delta(out, call)
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                self.finish_reason = finish_reason
                self._matched_stop = choice.get("stop_reason")
        return b"".join(out)

    def finish(self) -> bytes:
        """Close the open block; then ``message_delta`` (stop reason, usage), ``message_stop``."""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        for call in self._tools.values():
            if call.block is None:  # arguments but never a name: still worth handing over
                self._open_tool(out, call)
        self._close(out)
        stop_reason, stop_sequence = stop_reason_from(
            self.finish_reason,
            has_tool_calls=bool(self._tools),
            matched_stop=self._matched_stop,
            stop_sequences=self.stop_sequences,
        )
        usage = usage_from_openai(self._usage)
        if self._usage is None:
            usage["input_tokens"] = self.input_tokens
        out.append(
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": usage,
                },
            )
        )
        out.append(_sse("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    @staticmethod
    def error(message: str, error_type: str = "api_error") -> bytes:
        """An ``error`` event, which the Anthropic SDK raises as an exception."""
        return _sse("error", {"type": "error", "error": {"type": error_type, "message": message}})

    @staticmethod
    def ping() -> bytes:
        """A ``ping`` event (keeps idle connections open)."""
        return b'event: ping\ndata: {"type":"ping"}\n\n'

    def _close(self, out: list[bytes]) -> None:
        if self._open_block is not None:
            if self._open_kind == "thinking":
                # Anthropic ends every thinking block with its signature, just before the stop.
                self._emit_delta(
                    out,
                    self._open_block,
                    {"type": "signature_delta", "signature": UNSIGNED_THINKING},
                )
            out.append(
                _sse(
                    "content_block_stop", {"type": "content_block_stop", "index": self._open_block}
                )
            )
            self._open_block = None
            self._open_kind = None

    def _open(self, out: list[bytes], kind: str, block: JSONDict) -> int:
        self._close(out)
        index = self._next_block
        self._next_block += 1
        self._open_block, self._open_kind = index, kind
        out.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        return index

    def _delta(self, out: list[bytes], kind: str, delta: JSONDict) -> None:
        if self._open_kind != kind:
            start: JSONDict = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            self._open(out, kind, start)
        self._emit_delta(out, self._open_block, delta)

    @staticmethod
    def _emit_delta(out: list[bytes], index: int | None, delta: JSONDict) -> None:
        out.append(
            _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )

    def _tool_delta(self, out: list[bytes], call: Mapping[str, Any]) -> None:
        call_id = call.get("id")
        index = call.get("index")
        if not isinstance(index, int):
            # A server that leaves out the index: a new id opens a call, else the last one grows.
            known = [i for i, c in self._tools.items() if call_id and c.id == call_id]
            if known:
                index = known[0]
            elif call_id or self._last_tool is None:
                index = len(self._tools)
            else:
                index = self._last_tool
        state = self._tools.get(index)
        if state is None:
            state = self._tools[index] = _ToolCall()
        self._last_tool = index
        if isinstance(call_id, str) and call_id and not state.id:
            state.id = call_id
        function = call.get("function") or {}
        name = function.get("name")
        if isinstance(name, str) and name and not state.name:
            state.name = name
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = compact_json(arguments)
        if arguments:
            state.pending.append(arguments)
        if state.block is None:
            if not state.name:
                return  # wait for the name before opening the block
            self._open_tool(out, state)
        elif state.pending:
            # A server interleaving parallel calls may add to a call whose block is closed
            # already; the delta still names that block, which is how SDKs accumulate.
            self._flush_arguments(out, state)

    def _open_tool(self, out: list[bytes], state: _ToolCall) -> None:
        state.id = state.id or new_tool_use_id()
        state.block = self._open(
            out, "tool", {"type": "tool_use", "id": state.id, "name": state.name, "input": {}}
        )
        self._flush_arguments(out, state)

    def _flush_arguments(self, out: list[bytes], state: _ToolCall) -> None:
        if state.pending:
            partial = "".join(state.pending)
            state.pending.clear()
            self._emit_delta(
                out, state.block, {"type": "input_json_delta", "partial_json": partial}
            )
