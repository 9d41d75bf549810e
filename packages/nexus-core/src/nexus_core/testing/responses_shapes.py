"""OpenAI Responses API shapes for the fakes: a ``response`` object and its typed stream events.

Taken from OpenAI's API reference (``POST /v1/responses``, "Streaming events") and the openai
SDK's ``openai.types.responses`` models: a response has ``id`` (``resp_``), ``object:
"response"``, ``created_at``, ``status``, ``model``, ``output`` (``message`` items with
``output_text`` parts, ``function_call`` items), ``usage`` (``input_tokens``,
``input_tokens_details.cached_tokens``, ``output_tokens``,
``output_tokens_details.reasoning_tokens``, ``total_tokens``) and the request's settings echoed.
A stream is ``event: <type>`` / ``data: <json>`` events, each with a ``sequence_number`` from 0:
``response.created``, ``response.in_progress``, then per item ``response.output_item.added``,
(text) ``response.content_part.added``, ``response.output_text.delta``...,
``response.output_text.done``, ``response.content_part.done``, (call)
``response.function_call_arguments.delta``/``done``, ``response.output_item.done``, and last
``response.completed`` (or ``response.incomplete``). No ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from nexus_core.testing.openai_shapes import count_tokens, normalise_tool_calls, split_text

__all__ = ["response_events", "response_object", "response_usage", "sse_event"]


def response_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """A response's ``usage``."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _shell(
    request: Mapping[str, Any], response_id: str, created_at: int, model: str
) -> dict[str, Any]:
    metadata = request.get("metadata")
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
        "model": model,
        "output": [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": request.get("store", True) is not False,
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": request.get("user"),
        "metadata": metadata if isinstance(metadata, Mapping) else {},
    }


def _items(
    response_id: str, content: str, tool_calls: Sequence[Mapping[str, Any]] | None, status: str
) -> list[dict[str, Any]]:
    if tool_calls:
        return [
            {
                "id": f"fc_{response_id[5:]}_{index}",
                "type": "function_call",
                "status": "completed",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
            }
            for index, call in enumerate(normalise_tool_calls(tool_calls))
        ]
    return [
        {
            "id": f"msg_{response_id[5:]}",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": content, "annotations": [], "logprobs": []}
            ],
        }
    ]


def response_object(
    request: Mapping[str, Any],
    *,
    response_id: str,
    created_at: int,
    model: str,
    content: str,
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
    incomplete: bool = False,
) -> dict[str, Any]:
    """The whole answer to ``request``: its text (or function calls), status and usage."""
    response = _shell(request, response_id, created_at, model)
    status = "incomplete" if incomplete else "completed"
    response["status"] = status
    if incomplete:
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    output = _items(response_id, content, tool_calls, status)
    response["output"] = output
    produced = (
        sum(count_tokens(item["arguments"]) + 1 for item in output)
        if tool_calls
        else len(split_text(content))
    )
    prompt = max(1, count_tokens(request.get("input")) + count_tokens(request.get("instructions")))
    response["usage"] = response_usage(prompt, produced)
    return response


def response_events(
    request: Mapping[str, Any],
    *,
    response_id: str,
    created_at: int,
    model: str,
    content: str,
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
    incomplete: bool = False,
) -> list[dict[str, Any]]:
    """The typed events of the streamed answer to ``request``, numbered from 0."""
    final = response_object(
        request,
        response_id=response_id,
        created_at=created_at,
        model=model,
        content=content,
        tool_calls=tool_calls,
        incomplete=incomplete,
    )
    started = _shell(request, response_id, created_at, model)
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for index, item in enumerate(final["output"]):
        if item["type"] == "function_call":
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "arguments": "", "status": "in_progress"},
                }
            )
            arguments = item["arguments"]
            for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                events.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": item["id"],
                        "output_index": index,
                        "delta": piece,
                    }
                )
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": index,
                    "name": item["name"],
                    "arguments": arguments,
                }
            )
        else:
            part = item["content"][0]
            text = part["text"]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "content": [], "status": "in_progress"},
                }
            )
            events.append(
                {
                    "type": "response.content_part.added",
                    **where,
                    "part": {**part, "text": ""},
                }
            )
            for piece in split_text(text):
                events.append(
                    {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
                )
            events.append(
                {"type": "response.output_text.done", **where, "text": text, "logprobs": []}
            )
            events.append({"type": "response.content_part.done", **where, "part": part})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append(
        {
            "type": "response.incomplete" if incomplete else "response.completed",
            "response": final,
        }
    )
    return [{**event, "sequence_number": number} for number, event in enumerate(events)]


def sse_event(event: Mapping[str, Any]) -> bytes:
    """One typed event as OpenAI sends it: ``event:`` and ``data:`` lines."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()
