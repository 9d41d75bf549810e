"""Deprecated: the Anthropic <-> OpenAI translation was split by the side that uses it.

- What both directions share is ``nexus_core.anthropic_format`` (re-exported here, no warning).
- The front door's direction (a client's Messages request to OpenAI chat, and the chat answer
  back) is ``nexus_server.anthropic_wire``.
- The anthropic backend's direction (OpenAI chat to Anthropic's API, and its answer back) is
  ``nexus_backend_anthropic.wire``.

The old names of what moved still resolve, with a ``DeprecationWarning`` that names the new
home and name; they are looked up there only when asked for (core does not depend on the server
or an adapter), and raise ``AttributeError`` when that package is not installed.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from nexus_core.anthropic_format import (
    IMAGE_TOKEN_ESTIMATE,
    RAW_ARGUMENTS_KEY,
    TEXT_SEPARATOR,
    JSONDict,
    TranslationError,
    anthropic_error_body,
    anthropic_error_type,
    count_tokens,
    dump_arguments,
    new_tool_use_id,
    parse_arguments,
)

__all__ = [
    "IMAGE_TOKEN_ESTIMATE",
    "RAW_ARGUMENTS_KEY",
    "TEXT_SEPARATOR",
    "JSONDict",
    "TranslationError",
    "anthropic_error_body",
    "anthropic_error_type",
    "count_tokens",
    "dump_arguments",
    "new_tool_use_id",
    "parse_arguments",
]

_FRONT = "nexus_server.anthropic_wire"
_BACKEND = "nexus_backend_anthropic.wire"
#: Old name -> (module, new name) of everything that moved out of core.
MOVED: dict[str, tuple[str, str]] = {
    "messages_to_chat": (_FRONT, "anthropic_request_to_chat"),
    "chat_to_message": (_FRONT, "chat_answer_to_anthropic"),
    "ChatStreamToMessages": (_FRONT, "ChatStreamToAnthropic"),
    "wants_thinking": (_FRONT, "wants_thinking"),
    "message_id_from": (_FRONT, "message_id_from"),
    "stop_reason_from": (_FRONT, "stop_reason_from"),
    "usage_from_openai": (_FRONT, "usage_from_openai"),
    "TOOL_ERROR_PREFIX": (_FRONT, "TOOL_ERROR_PREFIX"),
    "REMINDER_OPEN": (_FRONT, "REMINDER_OPEN"),
    "REMINDER_CLOSE": (_FRONT, "REMINDER_CLOSE"),
    "UNSIGNED_THINKING": (_FRONT, "UNSIGNED_THINKING"),
    "chat_to_messages": (_BACKEND, "chat_request_to_anthropic"),
    "message_to_chat": (_BACKEND, "anthropic_answer_to_chat"),
    "MessagesStreamToChat": (_BACKEND, "AnthropicStreamToChat"),
    "AnthropicStreamError": (_BACKEND, "AnthropicStreamError"),
    "finish_reason_from": (_BACKEND, "finish_reason_from"),
    "usage_from_anthropic": (_BACKEND, "usage_from_anthropic"),
}


def __getattr__(name: str) -> Any:
    moved = MOVED.get(name)
    if moved is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, new_name = moved
    warnings.warn(
        f"nexus_core.anthropic_wire.{name} moved to {module_name}.{new_name}; import it from there",
        DeprecationWarning,
        stacklevel=2,
    )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AttributeError(
            f"nexus_core.anthropic_wire.{name} moved to {module_name}.{new_name}, "
            f"and {module_name.partition('.')[0]} is not installed"
        ) from exc
    return getattr(module, new_name)
