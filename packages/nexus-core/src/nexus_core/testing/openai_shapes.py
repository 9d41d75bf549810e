"""OpenAI wire shapes for fake servers: responses, stream chunks, errors, model lists.

Shapes follow the OpenAI API reference (and what vLLM / llama-server send): a fake built from
these looks to a client exactly like the real thing, so a test that passes against it means
something.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

FINGERPRINT = "fp_nexus_fake"

# Default error bodies per status, as OpenAI words them: (message, type, code).
_ERRORS: Mapping[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "permission_error", None),
    404: ("The requested resource does not exist.", "invalid_request_error", "not_found"),
    409: ("Conflict.", "invalid_request_error", None),
    422: ("Unprocessable entity.", "invalid_request_error", None),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    """An OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def default_error(status: int) -> dict[str, Any]:
    """The error envelope OpenAI would send with ``status``."""
    if status in _ERRORS:
        message, error_type, code = _ERRORS[status]
    elif status >= 500:
        message, error_type, code = f"Server error (HTTP {status}).", "server_error", None
    else:
        message, error_type, code = (
            f"Request failed (HTTP {status}).",
            "invalid_request_error",
            None,
        )
    return error_body(message, error_type, code=code)


def model_not_found(model: str) -> dict[str, Any]:
    """OpenAI's 404 body for a model it does not serve."""
    return error_body(
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        code="model_not_found",
    )


def dumps(value: Any) -> bytes:
    """Compact JSON bytes, as the streaming servers write them."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def split_text(text: str) -> list[str]:
    """Cut a reply into word-sized pieces (each keeps its trailing space), like token deltas."""
    return re.findall(r"\S+\s*|\s+", text)


def count_tokens(value: Any) -> int:
    """A deterministic stand-in for a tokenizer: words in every string inside ``value``."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, Mapping):
        return sum(count_tokens(item) for item in value.values())
    if isinstance(value, Sequence):
        return sum(count_tokens(item) if not isinstance(item, int) else 1 for item in value)
    return 0


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """A ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def add_cached_tokens(answer: dict[str, Any], cached: int | None) -> None:
    """Say in ``answer``'s usage (if it has one) that ``cached`` prompt tokens came from the
    prompt cache (``prompt_tokens_details.cached_tokens``); None: say nothing."""
    usage = answer.get("usage")
    if cached is not None and isinstance(usage, dict):
        usage["prompt_tokens_details"] = {"cached_tokens": min(cached, usage["prompt_tokens"])}


def normalise_tool_calls(tool_calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Fill what a short tool call leaves out (``id``, ``type``, JSON-string ``arguments``)."""
    result: list[dict[str, Any]] = []
    for index, call in enumerate(tool_calls):
        function = dict(call.get("function") or {})
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, separators=(",", ":"))
        function["arguments"] = arguments
        function.setdefault("name", "function")
        full = dict(call)
        full.setdefault("id", f"call_{index}")
        full.setdefault("type", "function")
        full["function"] = function
        result.append(full)
    return result


def chat_completion(
    *,
    completion_id: str,
    model: str,
    created: int,
    content: str | None,
    tool_calls: Sequence[Mapping[str, Any]] | None,
    prompt_tokens: int,
    reasoning: str | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object (``reasoning``: the message's
    ``reasoning_content``, as vLLM, llama-server and DeepSeek send a reasoning model's;
    ``finish_reason`` instead of the natural one, e.g. ``length``)."""
    override = finish_reason
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        calls = normalise_tool_calls(tool_calls)
        message["content"] = None
        message["tool_calls"] = calls
        finish_reason = "tool_calls"
        completion_tokens = sum(count_tokens(call["function"]["arguments"]) + 1 for call in calls)
    else:
        finish_reason = "stop"
        completion_tokens = len(split_text(content or ""))
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": override or finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunks(
    *,
    completion_id: str,
    model: str,
    created: int,
    content: str | None,
    tool_calls: Sequence[Mapping[str, Any]] | None,
    prompt_tokens: int,
    include_usage: bool,
    reasoning: str | None = None,
    finish_reason: str | None = None,
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of one streamed answer, in order.

    A role chunk, content (or ``tool_calls``) deltas, a finish chunk with an empty delta and, when
    the client asked for ``stream_options.include_usage``, a last chunk with ``choices: []`` and
    the usage (every other chunk then carries ``"usage": null``, as OpenAI does).
    ``finish_reason`` replaces the natural one (e.g. ``length``).
    """
    override = finish_reason
    deltas: list[dict[str, Any]] = []
    # Reasoning deltas come first, after the role chunk (inserted below).
    thinking = [{"reasoning_content": piece} for piece in split_text(reasoning or "")]
    if tool_calls:
        deltas.append({"role": "assistant", "content": None})
        deltas.extend(thinking)
        for index, call in enumerate(normalise_tool_calls(tool_calls)):
            function = call["function"]
            opening = {
                "index": index,
                "id": call["id"],
                "type": call["type"],
                "function": {"name": function["name"], "arguments": ""},
            }
            deltas.append({"tool_calls": [opening]})
            arguments: str = function["arguments"]
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                if piece:
                    deltas.append(
                        {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                    )
        finish_reason = "tool_calls"
    else:
        deltas.append({"role": "assistant", "content": "", "refusal": None})
        deltas.extend(thinking)
        deltas.extend({"content": piece} for piece in split_text(content or ""))
        finish_reason = "stop"
    completion_tokens = len(deltas) - 1

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = None
        return body

    chunks = [
        chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
        for delta in deltas
    ]
    chunks.append(
        chunk(
            [
                {
                    "index": 0,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": override or finish_reason,
                }
            ]
        )
    )
    if include_usage:
        last = chunk([])
        last["usage"] = usage(prompt_tokens, completion_tokens)
        chunks.append(last)
    return chunks


def text_completion(
    *, completion_id: str, model: str, created: int, text: str, prompt_tokens: int
) -> dict[str, Any]:
    """A non-streaming legacy ``text_completion`` object."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage(prompt_tokens, len(split_text(text))),
    }


def completion_chunks(
    *,
    completion_id: str,
    model: str,
    created: int,
    text: str,
    prompt_tokens: int,
    include_usage: bool,
) -> list[dict[str, Any]]:
    """The streamed pieces of a legacy completion: text deltas, a finish chunk, maybe usage."""
    pieces = split_text(text)

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = None
        return body

    chunks = [
        chunk([{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}])
        for piece in pieces
    ]
    chunks.append(chunk([{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]))
    if include_usage:
        last = chunk([])
        last["usage"] = usage(prompt_tokens, len(pieces))
        chunks.append(last)
    return chunks


def embedding_vector(item: Any, dim: int) -> list[float]:
    """A unit vector of ``dim`` floats that depends only on ``item``."""
    seed = hashlib.sha256(dumps(item)).digest()
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        values.extend(b / 127.5 - 1.0 for b in block)
        counter += 1
    values = values[:dim]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def embeddings_response(
    *, model: str, inputs: Sequence[Any], dim: int, encoding_format: str | None
) -> dict[str, Any]:
    """An embeddings ``list``; ``encoding_format="base64"`` packs float32s as the SDK expects."""
    data: list[dict[str, Any]] = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item, dim)
        embedding: list[float] | str = vector
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(count_tokens(item) if not isinstance(item, int) else 1 for item in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def model_card(entry: str | Mapping[str, Any], *, created: int, owned_by: str) -> dict[str, Any]:
    """One ``/v1/models`` entry; extra keys of a dict entry (``max_model_len``...) pass through."""
    if isinstance(entry, str):
        return {"id": entry, "object": "model", "created": created, "owned_by": owned_by}
    card: dict[str, Any] = {
        "id": entry.get("id"),
        "object": "model",
        "created": created,
        "owned_by": owned_by,
    }
    card.update(entry)
    return card
