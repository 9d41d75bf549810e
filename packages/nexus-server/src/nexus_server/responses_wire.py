"""The OpenAI Responses front door's translation: a Responses request to OpenAI chat for an
OpenAI-wire backend, and the backend's chat answer (whole or streamed) back to a ``response``.

``responses_request_to_chat`` for the request, ``chat_answer_to_response`` for a whole answer,
``ChatStreamToResponses`` for a streamed one; ``nexus_server.responses`` serves the door with them.
``input_items`` gives a request's ``input`` as a list of items (what a conversation store keeps).

Where the formats do not map one to one, the rule chosen is written next to the code and
summarised here:

- ``instructions`` and the ``system`` / ``developer`` messages of ``input`` become one leading
  system message (texts joined with a blank line), since many chat templates refuse a system
  message that is not first; with ``routing.system_messages = "keep"`` a system message after the
  first turn stays where it is. ``developer`` is sent as ``system``: few local servers know it.
- Adjacent ``input_text`` parts of one message become one string (every OpenAI-wire server takes a
  string); a message with an image keeps a list of parts.
- ``function_call`` items become the ``tool_calls`` of one assistant message (together with the
  assistant text just before them); ``function_call_output`` items become ``tool`` messages.
  ``reasoning`` items are dropped (they mean nothing to another model).
- ``max_output_tokens`` becomes ``max_tokens`` (what every local server reads).
- ``tool_choice`` and ``parallel_tool_calls`` go on only with ``tools`` (chat servers refuse
  them alone).
- A backend's reasoning text (``reasoning_content`` or ``reasoning``) becomes a ``reasoning`` item
  before the answer, its text as one ``reasoning_text`` part.
- Fields a chat backend cannot honour are accepted and ignored (``reasoning``, ``truncation``,
  ``include``, ``service_tier``, ``store``, ``metadata``, ``prompt_cache_key``,
  ``safety_identifier``, ``max_tool_calls``, ``top_logprobs``, ``text.verbosity``,
  ``stream_options``), or refused with a 400 when ignoring them would change the answer
  (``background: true``, ``previous_response_id``, ``conversation``, ``prompt``, tools that are
  not functions, ``item_reference`` items, files by id or URL).
- A chat answer's ``finish_reason`` ``length`` is an ``incomplete`` response with
  ``incomplete_details.reason = "max_output_tokens"`` (``content_filter`` likewise).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Mapping
from typing import Any

from nexus_core import fastjson
from nexus_core.anthropic_format import TEXT_SEPARATOR, JSONDict, TranslationError, openai_text

__all__ = [
    "IGNORED_FIELDS",
    "ChatStreamToResponses",
    "ResponsesRequestError",
    "chat_answer_to_response",
    "input_items",
    "items_to_messages",
    "new_id",
    "response_usage",
    "responses_request_to_chat",
    "tool_namespaces",
    "usage_to_chat",
]

#: Request fields accepted and ignored: a chat backend has no counterpart, and the answer is right
#: without them (``store`` is the conversation store's; echoed in the response).
IGNORED_FIELDS = frozenset(
    {
        "reasoning",
        "truncation",
        "include",
        "service_tier",
        "store",
        "metadata",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "max_tool_calls",
        "top_logprobs",
        "stream_options",
    }
)
#: Input item types that are dropped from the history sent on.
_DROPPED_ITEMS = frozenset({"reasoning"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_ID_PREFIXES = {"message": "msg", "function_call": "fc", "reasoning": "rs"}


class ResponsesRequestError(TranslationError):
    """A Responses request that cannot be served; a 400 with ``param`` and maybe ``code``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param)
        self.code = code


def new_id(prefix: str) -> str:
    """A fresh id of OpenAI's shape: ``resp_``, ``msg_``, ``fc_`` followed by hex.

    From the operating system's random source, as uuid4: a response id must not be guessable
    (it is what ``GET /v1/responses/{id}`` and ``previous_response_id`` find a stored one by).
    """
    return f"{prefix}_{os.urandom(16).hex()}"


def _item_id(prefix: str) -> str:
    """An id for an output item or a call: unique, not a secret (nothing is found by it), so
    from ``random`` rather than a system call (which costs microseconds in some sandboxes)."""
    return f"{prefix}_{random.getrandbits(128):032x}"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --------------------------------------------------------------------------------------------
# Responses request -> OpenAI chat request


def input_items(request: Mapping[str, Any]) -> list[JSONDict]:
    """The request's ``input`` as a list of items (a string is one user message)."""
    value = request.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


def responses_request_to_chat(
    request: Mapping[str, Any], *, system_messages: str = "merge"
) -> JSONDict:
    """Translate a Responses request into an OpenAI chat completions request.

    ``system_messages`` (``routing.system_messages``): ``keep`` leaves a system message after
    the first turn where it is; any other value joins it to the leading system message.
    """
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise ResponsesRequestError("you must provide a model parameter", "model", "missing_model")
    if request.get("background") is True:
        raise ResponsesRequestError(
            "background responses are not supported: Nexus answers while the connection is open",
            "background",
        )
    for field in ("conversation", "prompt"):
        if request.get(field) is not None:
            raise ResponsesRequestError(
                f"{field} needs OpenAI's stored objects, which a local backend does not have",
                field,
            )
    raw_input = request.get("input")
    if raw_input is None:
        raise ResponsesRequestError(
            "Missing required parameter: 'input'", "input", "missing_required_parameter"
        )
    if not isinstance(raw_input, (str, list)):
        raise ResponsesRequestError(
            "input must be a string or an array of items", "input", "invalid_type"
        )
    leading: list[str] = []
    instructions = request.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ResponsesRequestError("must be a string", "instructions", "invalid_type")
        if instructions:
            leading.append(instructions)
    if isinstance(raw_input, str):
        messages: list[JSONDict] = [{"role": "user", "content": raw_input}]
    else:
        messages = items_to_messages(raw_input, leading, keep=system_messages == "keep")
    if leading:
        messages.insert(0, {"role": "system", "content": TEXT_SEPARATOR.join(leading)})

    chat: JSONDict = {"model": model, "messages": messages}
    max_output_tokens = request.get("max_output_tokens")
    if max_output_tokens is not None:
        if (
            not isinstance(max_output_tokens, int)
            or isinstance(max_output_tokens, bool)
            or max_output_tokens < 1
        ):
            raise ResponsesRequestError(
                "must be an integer of at least 1", "max_output_tokens", "invalid_type"
            )
        chat["max_tokens"] = max_output_tokens
    for key in ("temperature", "top_p", "user"):
        if request.get(key) is not None:
            chat[key] = request[key]
    if request.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    tools = request.get("tools")
    tool_choice = request.get("tool_choice")
    if tool_choice is not None:
        tool_choice = _tool_choice_to_chat(tool_choice)
    # Chat servers (OpenAI's own) refuse tool_choice and parallel_tool_calls without tools;
    # Responses clients send them anyway.
    if tools:
        chat["tools"] = _tools_to_chat(tools)
        if tool_choice is not None:
            chat["tool_choice"] = tool_choice
        if isinstance(request.get("parallel_tool_calls"), bool):
            chat["parallel_tool_calls"] = request["parallel_tool_calls"]
    text = request.get("text")
    if text is not None:
        response_format = _text_to_chat(text)
        if response_format is not None:
            chat["response_format"] = response_format
    return chat


def items_to_messages(
    items: list[Any], leading: list[str] | None = None, *, keep: bool = False
) -> list[JSONDict]:
    """Responses input items as chat messages.

    System and developer texts before the first other message go to ``leading`` (the caller's
    leading system message); later ones too, unless ``keep``. Without ``leading`` they stay
    system messages where they are.
    """
    messages: list[JSONDict] = []
    for i, item in enumerate(items):
        path = f"input.{i}"
        if not isinstance(item, Mapping):
            raise ResponsesRequestError("must be an object", path, "invalid_type")
        item_type = item.get("type", "message")
        if item_type == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                text = _system_text(item.get("content"), path + ".content")
                if leading is not None and (not messages or not keep):
                    if text:
                        leading.append(text)
                else:
                    messages.append({"role": "system", "content": text})
            elif role == "user":
                messages.append(
                    {"role": "user", "content": _user_content(item.get("content"), path)}
                )
            elif role == "assistant":
                text = _assistant_text(item.get("content"), path)
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and "tool_calls" not in last:
                    last["content"] = (last["content"] or "") + text
                else:
                    messages.append({"role": "assistant", "content": text})
            else:
                raise ResponsesRequestError(
                    f"unexpected role {role!r}; expected 'user', 'assistant', 'system' or "
                    "'developer'",
                    path + ".role",
                )
        elif item_type == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not call_id:
                raise ResponsesRequestError("field required", path + ".call_id")
            if not isinstance(name, str) or not name:
                raise ResponsesRequestError("field required", path + ".name")
            arguments = item.get("arguments", "")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last["content"]:
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item_type == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise ResponsesRequestError("field required", path + ".call_id")
            output = item.get("output")
            if isinstance(output, list):
                output = _texts(output, path + ".output")
            elif not isinstance(output, str):
                raise ResponsesRequestError(
                    "must be a string or a list of text parts", path + ".output", "invalid_type"
                )
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif item_type in _DROPPED_ITEMS:
            continue
        elif item_type == "item_reference":
            raise ResponsesRequestError(
                "item references need stored responses, which are not available here",
                path + ".type",
            )
        else:
            raise ResponsesRequestError(
                f"input item type {item_type!r} is not supported: a chat backend takes "
                "messages, function_call and function_call_output items",
                path + ".type",
            )
    return messages


def _texts(parts: list[Any], path: str) -> str:
    texts: list[str] = []
    for j, part in enumerate(parts):
        if not isinstance(part, Mapping) or part.get("type") not in _TEXT_PARTS:
            raise ResponsesRequestError("only text parts are allowed here", f"{path}.{j}")
        text = part.get("text")
        if not isinstance(text, str):
            raise ResponsesRequestError("field required", f"{path}.{j}.text")
        if text:
            texts.append(text)
    return TEXT_SEPARATOR.join(texts)


def _system_text(content: Any, path: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _texts(content, path)
    raise ResponsesRequestError("must be a string or a list of text parts", path, "invalid_type")


def _assistant_text(content: Any, path: str) -> str:
    """An assistant message's text: its ``output_text`` (and ``refusal``) parts, joined with
    nothing, since they are pieces of one generated text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ResponsesRequestError(
            "must be a string or a list of parts", path + ".content", "invalid_type"
        )
    texts: list[str] = []
    for j, part in enumerate(content):
        part_type = part.get("type") if isinstance(part, Mapping) else None
        if part_type in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part_type == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise ResponsesRequestError(
                f"part type {part_type!r} is not supported in an assistant message",
                f"{path}.content.{j}",
            )
    return "".join(texts)


def _user_content(content: Any, path: str) -> str | list[JSONDict]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ResponsesRequestError(
            "must be a string or a list of parts", path + ".content", "invalid_type"
        )
    parts: list[JSONDict] = []
    for j, part in enumerate(content):
        part_path = f"{path}.content.{j}"
        part_type = part.get("type") if isinstance(part, Mapping) else None
        if not isinstance(part, Mapping) or not isinstance(part_type, str):
            raise ResponsesRequestError("field required", part_path + ".type")
        if part_type in _TEXT_PARTS:
            text = part.get("text")
            if not isinstance(text, str):
                raise ResponsesRequestError("field required", part_path + ".text")
            if not text:
                continue
            if parts and parts[-1]["type"] == "text":
                parts[-1]["text"] += TEXT_SEPARATOR + text
            else:
                parts.append({"type": "text", "text": text})
        elif part_type == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise ResponsesRequestError(
                    "image_url required (a URL or a data: URL; file_id needs OpenAI's files)",
                    part_path + ".image_url",
                )
            image: JSONDict = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif part_type == "input_file":
            data = part.get("file_data")
            if not isinstance(data, str) or not data:
                raise ResponsesRequestError(
                    "file_data required (file_id and file_url need OpenAI's files)",
                    part_path + ".file_data",
                )
            filename = part.get("filename")
            parts.append(
                {
                    "type": "file",
                    "file": {
                        "filename": filename if isinstance(filename, str) else "file",
                        "file_data": data,
                    },
                }
            )
        else:
            raise ResponsesRequestError(
                f"part type {part_type!r} is not supported in a user message",
                part_path + ".type",
            )
    if not parts:
        return ""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text_only: str = parts[0]["text"]
        return text_only
    return parts


def _tools_to_chat(tools: Any) -> list[JSONDict]:
    if not isinstance(tools, list):
        raise ResponsesRequestError("must be a list of tools", "tools", "invalid_type")
    result: list[JSONDict] = []
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        if isinstance(tool, Mapping) and tool.get("type") == "namespace":
            # A group of function tools (the Codex CLI sends some): each becomes a chat tool of
            # its own name; a call of one gets its ``namespace`` back in the answer.
            inner = tool.get("tools")
            if not isinstance(inner, list):
                raise ResponsesRequestError("must be a list of tools", path + ".tools")
            for j, function_tool in enumerate(inner):
                result.append(_function_tool(function_tool, f"{path}.tools.{j}"))
        else:
            result.append(_function_tool(tool, path))
    return result


def tool_namespaces(request: Mapping[str, Any]) -> dict[str, str]:
    """The functions of the request's ``namespace`` tools: function name -> namespace."""
    found: dict[str, str] = {}
    tools = request.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, Mapping) and tool.get("type") == "namespace":
            inner = tool.get("tools")
            for function_tool in inner if isinstance(inner, list) else ():
                name = function_tool.get("name") if isinstance(function_tool, Mapping) else None
                if isinstance(name, str) and isinstance(tool.get("name"), str):
                    found.setdefault(name, tool["name"])
    return found


def _function_tool(tool: Any, path: str) -> JSONDict:
    if not isinstance(tool, Mapping):
        raise ResponsesRequestError("must be an object", path, "invalid_type")
    tool_type = tool.get("type")
    if tool_type != "function":
        raise ResponsesRequestError(
            f"tool type {tool_type!r} is not supported: Nexus translates to chat "
            "completions, where only function tools (and namespaces of them) exist",
            path + ".type",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise ResponsesRequestError("field required", path + ".name")
    function: JSONDict = {"name": name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    parameters = tool.get("parameters")
    function["parameters"] = (
        parameters if isinstance(parameters, Mapping) else {"type": "object", "properties": {}}
    )
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice_to_chat(tool_choice: Any) -> Any:
    if tool_choice in ("auto", "none", "required"):
        return tool_choice
    if isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        name = tool_choice.get("name")
        if not isinstance(name, str) or not name:
            raise ResponsesRequestError("field required", "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    raise ResponsesRequestError(
        "must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}",
        "tool_choice",
    )


def _text_to_chat(text: Any) -> JSONDict | None:
    if not isinstance(text, Mapping):
        raise ResponsesRequestError("must be an object", "text", "invalid_type")
    fmt = text.get("format")
    if fmt is None:
        return None
    format_type = fmt.get("type") if isinstance(fmt, Mapping) else None
    if format_type == "text":
        return None
    if format_type == "json_object":
        return {"type": "json_object"}
    if format_type == "json_schema" and isinstance(fmt, Mapping):
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name:
            raise ResponsesRequestError("field required", "text.format.name")
        if not isinstance(schema, Mapping):
            raise ResponsesRequestError("field required", "text.format.schema")
        json_schema: JSONDict = {"name": name, "schema": schema}
        if isinstance(fmt.get("description"), str):
            json_schema["description"] = fmt["description"]
        if isinstance(fmt.get("strict"), bool):
            json_schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": json_schema}
    raise ResponsesRequestError(
        "must be {'type': 'text' | 'json_object' | 'json_schema'}", "text.format.type"
    )


# --------------------------------------------------------------------------------------------
# OpenAI chat answer -> response


def response_usage(usage: Any) -> JSONDict | None:
    """A response's ``usage`` from chat usage (None when the backend gave none)."""
    if not isinstance(usage, Mapping):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = _int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, Mapping) else 0
    reasoning = (
        _int(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, Mapping)
        else 0
    )
    total = usage.get("total_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": _int(total) if isinstance(total, int) else prompt + completion,
    }


def usage_to_chat(usage: Mapping[str, Any]) -> JSONDict:
    """Chat usage from a response's ``usage`` (the other direction of ``response_usage``)."""
    return {
        "prompt_tokens": _int(usage.get("input_tokens")),
        "completion_tokens": _int(usage.get("output_tokens")),
        "total_tokens": _int(usage.get("total_tokens")),
    }


def _status_of(finish_reason: Any) -> tuple[str, JSONDict | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _message_item(item_id: str, text: str, status: str) -> JSONDict:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _reasoning_item(item_id: str, text: str, status: str) -> JSONDict:
    return {
        "id": item_id,
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def _reasoning_of(message: Mapping[str, Any]) -> str:
    # vLLM, llama.cpp and DeepSeek use reasoning_content; Ollama and newer vLLM use reasoning.
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return reasoning if isinstance(reasoning, str) else ""


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str, namespace: str | None
) -> JSONDict:
    item: JSONDict = {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    if namespace is not None:
        item["namespace"] = namespace
    return item


def response_shell(
    request: Mapping[str, Any],
    *,
    response_id: str,
    created_at: int,
    model: str | None = None,
) -> JSONDict:
    """A response object without output: the request's settings echoed, status in progress."""
    text = request.get("text")
    metadata = request.get("metadata")
    reasoning = request.get("reasoning")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model or request.get("model"),
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": reasoning
        if isinstance(reasoning, Mapping)
        else {"effort": None, "summary": None},
        "store": request.get("store", True) is not False,
        "temperature": request.get("temperature"),
        "text": text if isinstance(text, Mapping) else {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation") or "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": metadata if isinstance(metadata, Mapping) else {},
    }


def chat_answer_to_response(
    answer: Mapping[str, Any],
    request: Mapping[str, Any],
    *,
    response_id: str | None = None,
    created_at: int | None = None,
) -> JSONDict:
    """Translate an OpenAI chat completion into a ``response`` object for ``request``."""
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") or {}
    status, incomplete = _status_of(choice.get("finish_reason"))
    output: list[JSONDict] = []
    namespaces = tool_namespaces(request)
    reasoning = _reasoning_of(message)
    if reasoning:
        output.append(_reasoning_item(_item_id("rs"), reasoning, "completed"))
    text = openai_text(message.get("content"))
    tool_calls = message.get("tool_calls") or []
    if text or not tool_calls:
        output.append(_message_item(_item_id("msg"), text, status))
    for call in tool_calls:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = "" if arguments is None else json.dumps(arguments, separators=(",", ":"))
        name = function.get("name") or ""
        output.append(
            _call_item(
                _item_id("fc"),
                call.get("id") or _item_id("call"),
                name,
                arguments,
                "completed",
                namespaces.get(name),
            )
        )
    response = response_shell(
        request,
        response_id=response_id or new_id("resp"),
        created_at=created_at if created_at is not None else int(time.time()),
    )
    response["status"] = status
    response["incomplete_details"] = incomplete
    response["output"] = output
    response["usage"] = response_usage(answer.get("usage"))
    return response


#: The fields of a response object that change while it streams; the others echo the request's
#: settings and are encoded once per stream (``_ShellTemplate``).
_VARIABLE_FIELDS = ("status", "error", "incomplete_details", "output", "usage")
_NULL = b"null"
_EMPTY_TEXT_PART = b'{"type":"output_text","text":"","annotations":[],"logprobs":[]}'


def _heads(*event_types: str) -> dict[str, bytes]:
    """Each event's bytes up to its sequence number."""
    return {
        name: f'event: {name}\ndata: {{"type":"{name}","sequence_number":'.encode()
        for name in event_types
    }


_HEADS = _heads(
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.reasoning_text.delta",
    "response.reasoning_text.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
)


class _ShellTemplate:
    """A response object's JSON as fixed pieces around its variable fields
    (``_VARIABLE_FIELDS``, in the shell's order), so a snapshot encodes only what changed."""

    __slots__ = ("pieces",)

    def __init__(self, shell: Mapping[str, Any]) -> None:
        pieces: list[bytes] = []
        fixed: JSONDict = {}
        piece = b"{"
        for key, value in shell.items():
            if key not in _VARIABLE_FIELDS:
                fixed[key] = value
                continue
            if fixed:
                piece += fastjson.dumps(fixed)[1:-1] + b","
                fixed = {}
            pieces.append(b'%s"%s":' % (piece, key.encode()))
            piece = b","
        pieces.append(b"," + fastjson.dumps(fixed)[1:] if fixed else b"}")
        self.pieces = pieces

    def render(
        self, status: str, error: bytes, incomplete: bytes, output: bytes, usage: bytes
    ) -> bytes:
        """The response object with these values of its variable fields (all but ``status``
        already JSON)."""
        p = self.pieces
        return b'%s"%s"%s%s%s%s%s%s%s%s%s' % (
            p[0],
            status.encode(),
            p[1],
            error,
            p[2],
            incomplete,
            p[3],
            output,
            p[4],
            usage,
            p[5],
        )


class _Item:
    """One output item being streamed: a message's text, a function call's arguments, or
    reasoning text."""

    __slots__ = (
        "call_id",
        "done",
        "id",
        "index",
        "kind",
        "name",
        "namespace",
        "parts",
        "ref",
        "text_json",
    )

    def __init__(self, kind: str, item_id: str) -> None:
        self.kind = kind
        self.id = item_id
        #: Its place in ``output``; -1 until it is an output item (a call without a name yet).
        self.index = -1
        self.call_id = ""
        self.name = ""
        self.namespace: str | None = None
        self.parts: list[str] = []
        self.done = False
        #: ``,"item_id":"…","output_index":N``, which most of its events carry.
        self.ref = b""
        #: Its whole text (a call's arguments) as JSON once closed: encoded once for the events
        #: and snapshots that repeat it.
        self.text_json = b'""'

    def place(self, index: int) -> None:
        """Make it the output item at ``index``."""
        self.index = index
        self.ref = b',"item_id":"%s","output_index":%d' % (self.id.encode(), index)

    def close(self) -> bytes:
        """Mark it done; its whole text as JSON."""
        self.done = True
        self.text_json = fastjson.dumps("".join(self.parts))
        return self.text_json

    def as_item(self, status: str) -> JSONDict:
        """The item as a response's ``output`` holds it."""
        text = "".join(self.parts)
        if self.kind == "message":
            return _message_item(self.id, text, status)
        if self.kind == "reasoning":
            return _reasoning_item(self.id, text, status)
        return _call_item(self.id, self.call_id, self.name, text, status, self.namespace)

    def encode(self, status: str, *, added: bool = False) -> bytes:
        """``as_item(status)`` as JSON, with the text it was closed with; ``added``: as
        ``response.output_item.added`` shows it, with no text yet."""
        head = b'{"id":"%s","type":"%s","status":"%s"' % (
            self.id.encode(),
            self.kind.encode(),
            status.encode(),
        )
        if self.kind == "message":
            if added:
                return head + b',"role":"assistant","content":[]}'
            return b'%s,"role":"assistant","content":[%s]}' % (head, _text_part(self.text_json))
        if self.kind == "reasoning":
            if added:
                return head + b',"summary":[],"content":[]}'
            return b'%s,"summary":[],"content":[{"type":"reasoning_text","text":%s}]}' % (
                head,
                self.text_json,
            )
        namespace = self.namespace
        return b'%s,"call_id":%s,"name":%s,"arguments":%s%s}' % (
            head,
            fastjson.dumps(self.call_id),
            fastjson.dumps(self.name),
            b'""' if added else self.text_json,
            b"" if namespace is None else b',"namespace":' + fastjson.dumps(namespace),
        )


def _text_part(text_json: bytes) -> bytes:
    return b'{"type":"output_text","text":%s,"annotations":[],"logprobs":[]}' % text_json


class ChatStreamToResponses:
    """Turns OpenAI chat stream chunks into the Responses API's typed SSE events.

    ``start`` gives ``response.created`` and ``response.in_progress``; ``feed`` the events of one
    chunk; ``finish`` closes the open items and ends with ``response.completed`` (or
    ``response.incomplete`` when the backend stopped at the length limit); ``error`` ends a
    broken stream with ``error`` and ``response.failed``. ``response`` is the final response
    object once finished; ``finish_reason`` tells a complete stream from a cut one.

    Events are written from byte templates rather than encoded dicts: the request's settings
    are encoded once per stream, an item's id and index once per item, a delta's text once, and
    an item's whole text once when it closes, however many events repeat it.
    """

    def __init__(
        self,
        request: Mapping[str, Any],
        *,
        response_id: str | None = None,
        created_at: int | None = None,
    ) -> None:
        self.request = request
        self.response_id = response_id or new_id("resp")
        self.created_at = created_at if created_at is not None else int(time.time())
        self.finish_reason: str | None = None
        self._shell = response_shell(
            request, response_id=self.response_id, created_at=self.created_at
        )
        self._template = _ShellTemplate(self._shell)
        self._sequence = 0
        self._started = False
        self._usage: Any = None
        self._items: list[_Item] = []
        self._message: _Item | None = None
        self._reasoning: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._last_call: int | None = None
        self._namespaces = tool_namespaces(request)
        #: (status, incomplete_details) once finished.
        self._ending: tuple[str, JSONDict | None] | None = None
        self._response: JSONDict | None = None

    @property
    def response(self) -> JSONDict | None:
        """The final response object (completed or incomplete); None until ``finish``."""
        if self._ending is not None and self._response is None:
            status, incomplete = self._ending
            response = dict(self._shell)
            response["status"] = status
            response["incomplete_details"] = incomplete
            response["output"] = [
                item.as_item(status if item.kind == "message" else "completed")
                for item in self._items
            ]
            response["usage"] = response_usage(self._usage)
            self._response = response
        return self._response

    def _emit(self, out: list[bytes], event_type: str, body: bytes) -> None:
        """One event: its head, the next sequence number, then ``body``: the event's other
        fields, from the comma before the first to the event's end."""
        out.append(b"%s%d%s}\n\n" % (_HEADS[event_type], self._sequence, body))
        self._sequence += 1

    def _response_json(self, status: str, output_status: str | None, error: bytes) -> bytes:
        """The response with its items so far; ``output_status`` for every item, else the
        response's for messages and ``completed`` for the others."""
        output = b"[%s]" % b",".join(
            item.encode(output_status or (status if item.kind == "message" else "completed"))
            for item in self._items
        )
        incomplete = self._ending[1] if self._ending is not None else None
        return self._template.render(
            status,
            error,
            _NULL if incomplete is None else fastjson.dumps(incomplete),
            output,
            _NULL if self._usage is None else fastjson.dumps(response_usage(self._usage)),
        )

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress`` (once)."""
        if self._started:
            return b""
        self._started = True
        body = b',"response":' + self._template.render("in_progress", _NULL, _NULL, b"[]", _NULL)
        out: list[bytes] = []
        self._emit(out, "response.created", body)
        self._emit(out, "response.in_progress", body)
        return b"".join(out)

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        """The events one chat chunk makes (often one delta, sometimes none)."""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        usage = chunk.get("usage")
        # dict rather than Mapping in these tests: a parsed chunk holds dicts, and an abstract
        # class's isinstance costs several times as much, on every chunk.
        if usage is not None and isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and delta:
                reasoning = _reasoning_of(delta)
                if reasoning:
                    self._reasoning_delta(out, reasoning)
                text = delta.get("content")
                if text and isinstance(text, str):
                    self._text(out, text)
                calls = delta.get("tool_calls")
                if calls and isinstance(calls, list):
                    for call in calls:
                        if isinstance(call, dict):
                            self._tool_delta(out, call)
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                self.finish_reason = finish_reason
        return b"".join(out)

    def _open(self, kind: str) -> _Item:
        item = _Item(kind, _item_id(_ID_PREFIXES[kind]))
        item.place(len(self._items))
        self._items.append(item)
        return item

    def _item_added(self, out: list[bytes], item: _Item) -> None:
        self._emit(
            out,
            "response.output_item.added",
            b',"output_index":%d,"item":%s' % (item.index, item.encode("in_progress", added=True)),
        )

    def _item_done(self, out: list[bytes], item: _Item, status: str) -> None:
        self._emit(
            out,
            "response.output_item.done",
            b',"output_index":%d,"item":%s' % (item.index, item.encode(status)),
        )

    def _reasoning_delta(self, out: list[bytes], text: str) -> None:
        item = self._reasoning
        if item is None:
            self._close_message(out, "completed")
            item = self._reasoning = self._open("reasoning")
            self._item_added(out, item)
        item.parts.append(text)
        self._emit(
            out,
            "response.reasoning_text.delta",
            b'%s,"content_index":0,"delta":%s' % (item.ref, fastjson.dumps(text)),
        )

    def _close_reasoning(self, out: list[bytes]) -> None:
        item = self._reasoning
        if item is None:
            return
        self._reasoning = None
        text = item.close()
        self._emit(
            out,
            "response.reasoning_text.done",
            b'%s,"content_index":0,"text":%s' % (item.ref, text),
        )
        self._item_done(out, item, "completed")

    def _open_message(self, out: list[bytes]) -> _Item:
        message = self._message
        if message is None:
            self._close_reasoning(out)
            message = self._message = self._open("message")
            self._item_added(out, message)
            self._emit(
                out,
                "response.content_part.added",
                b'%s,"content_index":0,"part":%s' % (message.ref, _EMPTY_TEXT_PART),
            )
        return message

    def _text(self, out: list[bytes], text: str) -> None:
        message = self._open_message(out)
        message.parts.append(text)
        self._emit(
            out,
            "response.output_text.delta",
            b'%s,"content_index":0,"delta":%s,"logprobs":[]' % (message.ref, fastjson.dumps(text)),
        )

    def _close_message(self, out: list[bytes], status: str) -> None:
        message = self._message
        if message is None:
            return
        self._message = None
        text = message.close()
        ref = message.ref
        self._emit(
            out,
            "response.output_text.done",
            b'%s,"content_index":0,"text":%s,"logprobs":[]' % (ref, text),
        )
        self._emit(
            out,
            "response.content_part.done",
            b'%s,"content_index":0,"part":%s' % (ref, _text_part(text)),
        )
        self._item_done(out, message, status)

    def _tool_delta(self, out: list[bytes], call: Mapping[str, Any]) -> None:
        call_id = call.get("id")
        index = call.get("index")
        if not isinstance(index, int):
            # A server that leaves out the index: a new id opens a call, else the last one grows.
            known = [i for i, c in self._calls.items() if call_id and c.call_id == call_id]
            if known:
                index = known[0]
            elif call_id or self._last_call is None:
                index = len(self._calls)
            else:
                index = self._last_call
        self._last_call = index
        function = call.get("function") or {}
        state = self._calls.get(index)
        if state is None:
            # Not an output item until its name is known.
            state = self._calls[index] = _Item("function_call", _item_id("fc"))
        if isinstance(call_id, str) and call_id and not state.call_id:
            state.call_id = call_id
        name = function.get("name")
        if isinstance(name, str) and name and not state.name:
            state.name = name
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        if arguments:
            state.parts.append(arguments)
        if state.index < 0:
            if state.name:
                self._open_call(out, state)
        elif arguments:
            self._arguments_delta(out, state, arguments)

    def _arguments_delta(self, out: list[bytes], state: _Item, arguments: str) -> None:
        self._emit(
            out,
            "response.function_call_arguments.delta",
            b'%s,"delta":%s' % (state.ref, fastjson.dumps(arguments)),
        )

    def _open_call(self, out: list[bytes], state: _Item) -> None:
        """Make a call an output item: ``output_item.added``, then the arguments so far."""
        # A function call is an item of its own, after the text before it.
        self._close_reasoning(out)
        self._close_message(out, "completed")
        state.place(len(self._items))
        self._items.append(state)
        state.call_id = state.call_id or _item_id("call")
        state.namespace = self._namespaces.get(state.name)
        self._item_added(out, state)
        if state.parts:
            self._arguments_delta(out, state, "".join(state.parts))

    def _close_calls(self, out: list[bytes]) -> None:
        for state in self._calls.values():
            if state.done:
                continue
            if state.index < 0:  # arguments but never a name: still worth handing over
                self._open_call(out, state)
            arguments = state.close()
            self._emit(
                out,
                "response.function_call_arguments.done",
                b'%s,"name":%s,"arguments":%s' % (state.ref, fastjson.dumps(state.name), arguments),
            )
            self._item_done(out, state, "completed")

    def finish(self) -> bytes:
        """Close the open items, then ``response.completed`` (or ``response.incomplete``)."""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        self._ending = _status_of(self.finish_reason)
        status = self._ending[0]
        if not self._calls and not any(item.kind != "reasoning" for item in self._items):
            # An answer with no text and no call is still one (empty) message, as whole.
            self._open_message(out)
        self._close_reasoning(out)
        self._close_message(out, status)
        self._close_calls(out)
        event = "response.completed" if status == "completed" else "response.incomplete"
        self._emit(out, event, b',"response":' + self._response_json(status, None, _NULL))
        return b"".join(out)

    def error(self, message: str, code: str = "server_error") -> bytes:
        """An ``error`` event and ``response.failed``: the stream broke, nothing is hidden."""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        encoded = fastjson.dumps(message)
        self._emit(
            out,
            "error",
            b',"code":%s,"message":%s,"param":null' % (fastjson.dumps(code), encoded),
        )
        for item in self._items:
            if not item.done:  # its text so far, as the failed response shows it
                item.text_json = fastjson.dumps("".join(item.parts))
        error = b'{"code":"server_error","message":%s}' % encoded
        self._emit(
            out,
            "response.failed",
            b',"response":' + self._response_json("failed", "incomplete", error),
        )
        return b"".join(out)
