"""Anthropic's Messages format: what both of Nexus's translations to and from OpenAI's chat need.

Nexus translates between the two formats in two places, each next to the code that uses it:

- the front door (``POST /v1/messages``: a client speaking Anthropic, OpenAI-wire backends
  behind), in ``nexus_server.anthropic_wire``;
- the Anthropic backend (an OpenAI chat request sent on to api.anthropic.com), in
  ``nexus_backend_anthropic.wire``.

This module holds what both of them, and the fake Anthropic server of ``nexus_core.testing``,
share: the error a request that cannot be translated raises, how text blocks are joined, how
tool-call arguments that are not a JSON object survive a round trip, Anthropic's error shape,
and the token estimate of ``/v1/messages/count_tokens``. It is in core because core's fake
Anthropic server needs part of it and core imports neither the server nor an adapter.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = [
    "IMAGE_TOKEN_ESTIMATE",
    "RAW_ARGUMENTS_KEY",
    "TEXT_SEPARATOR",
    "JSONDict",
    "TranslationError",
    "anthropic_error_body",
    "anthropic_error_type",
    "compact_json",
    "count_tokens",
    "dump_arguments",
    "new_tool_use_id",
    "openai_text",
    "parse_arguments",
]

JSONDict = dict[str, Any]

#: Joins the text blocks of one request message into one string.
TEXT_SEPARATOR = "\n\n"
#: Key under which tool-call arguments that are not a JSON object are kept.
RAW_ARGUMENTS_KEY = "_raw_arguments"
#: Tokens counted for one image by ``count_tokens`` (Anthropic's cap for a full-size image).
IMAGE_TOKEN_ESTIMATE = 1600

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    # Nexus answers 503 when no backend can take the request now: "try again later".
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class TranslationError(ValueError):
    """A request that cannot be translated; the message suits a 400 ``invalid_request_error``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.param = param


def compact_json(value: Any) -> str:
    """JSON text without spaces, non-ASCII kept as it is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def new_tool_use_id() -> str:
    """A fresh Anthropic-style tool use id, for tool calls that arrive without one."""
    return "toolu_" + uuid.uuid4().hex[:24]


def parse_arguments(arguments: Any) -> JSONDict:
    """Tool-call arguments as an input object; anything else is kept under ``_raw_arguments``."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        return {RAW_ARGUMENTS_KEY: compact_json(arguments)}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {RAW_ARGUMENTS_KEY: arguments}
    return parsed if isinstance(parsed, dict) else {RAW_ARGUMENTS_KEY: arguments}


def dump_arguments(tool_input: Any) -> str:
    """A tool input as OpenAI ``arguments`` text: compact JSON, or the raw text it came from."""
    if (
        isinstance(tool_input, dict)
        and len(tool_input) == 1
        and isinstance(tool_input.get(RAW_ARGUMENTS_KEY), str)
    ):
        raw: str = tool_input[RAW_ARGUMENTS_KEY]
        return raw
    return compact_json(tool_input)


def openai_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: the string, or its text and refusal parts
    joined with nothing."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text") or part.get("refusal") or ""
            for part in content
            if isinstance(part, Mapping)
        )
    return ""


# --------------------------------------------------------------------------------------------
# Errors


def anthropic_error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    known = _ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(status: int, message: str, *, request_id: str | None = None) -> bytes:
    """An Anthropic error body: ``{"type": "error", "error": {"type", "message"}}``."""
    body: JSONDict = {
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": message},
    }
    if request_id:
        body["request_id"] = request_id
    return compact_json(body).encode()


# --------------------------------------------------------------------------------------------
# Token estimate


def count_tokens(request: Mapping[str, Any]) -> int:
    """An estimate of a Messages request's input tokens: characters / 4, images a fixed amount.

    Not a tokenizer: good enough for Claude Code's context bookkeeping, never exact.
    """
    if not isinstance(request, Mapping):
        raise TranslationError("request body must be a JSON object")
    messages = request.get("messages")
    if not isinstance(messages, list):
        raise TranslationError("field required", "messages")
    chars = 0
    images = 0

    def walk(value: Any) -> None:
        nonlocal chars, images
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, Mapping):
            block_type = value.get("type")
            if block_type == "image" or (
                block_type == "document"
                and isinstance(value.get("source"), Mapping)
                and value["source"].get("type") in ("base64", "url", "file")
            ):
                images += 1
            elif block_type == "text":
                walk(value.get("text"))
            elif block_type == "tool_use":
                chars += len(value.get("name") or "") + len(compact_json(value.get("input") or {}))
            elif block_type == "tool_result":
                walk(value.get("content"))
            elif block_type in ("thinking", "redacted_thinking"):
                walk(value.get("thinking"))
            elif block_type == "document":
                walk(
                    value["source"].get("data")
                    if isinstance(value.get("source"), Mapping)
                    else None
                )
            else:
                walk(value.get("content"))

    walk(request.get("system"))
    for message in messages:
        if isinstance(message, Mapping):
            chars += 16  # role and turn markers
            walk(message.get("content"))
    tools = request.get("tools")
    if isinstance(tools, list):
        chars += len(compact_json(tools))
    return max(1, -(-chars // 4) + images * IMAGE_TOKEN_ESTIMATE)
