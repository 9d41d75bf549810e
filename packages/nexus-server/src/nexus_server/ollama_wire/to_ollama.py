"""OpenAI answers (whole, or streamed as SSE chunks) → Ollama's answers and NDJSON stream lines,
and Ollama's error bodies."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from nexus_core.openai_wire import dumps


def rfc3339_nano(ns: int | None = None) -> str:
    """UTC time as Go's RFC3339Nano (``2023-08-04T19:22:45.499127Z``): Ollama's ``created_at``."""
    if ns is None:
        ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def load_response(model: str, *, kind: Literal["chat", "generate"]) -> dict[str, Any]:
    """Answer to an Ollama "load the model" call (empty prompt or no messages)."""
    answer: dict[str, Any] = {"model": model, "created_at": rfc3339_nano()}
    if kind == "chat":
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    answer.update(done=True, done_reason="load")
    return answer


def openai_chat_to_ollama(
    response: Mapping[str, Any], *, model: str, started_ns: int, now_ns: int | None = None
) -> dict[str, Any]:
    """OpenAI chat completion → Ollama ``/api/chat`` answer.

    ``started_ns`` is ``time.monotonic_ns()`` when the request arrived (``now_ns`` the same clock
    at the end; by default read now).
    """
    choice = _first_choice(response)
    message = choice.get("message") or {}
    out_message: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    thinking = _reasoning(message)
    if thinking:
        out_message["thinking"] = thinking
    calls = [
        _tool_call_to_ollama(call, n) for n, call in enumerate(message.get("tool_calls") or [])
    ]
    if calls:
        out_message["tool_calls"] = calls
    answer: dict[str, Any] = {"model": model, "created_at": rfc3339_nano(), "message": out_message}
    answer.update(_final(choice.get("finish_reason"), response, started_ns, now_ns, None))
    return answer


def openai_chat_to_ollama_generate(
    response: Mapping[str, Any], *, model: str, started_ns: int, now_ns: int | None = None
) -> dict[str, Any]:
    """OpenAI chat completion (for a translated generate) → Ollama ``/api/generate`` answer."""
    choice = _first_choice(response)
    message = choice.get("message") or {}
    answer: dict[str, Any] = {
        "model": model,
        "created_at": rfc3339_nano(),
        "response": message.get("content") or "",
    }
    thinking = _reasoning(message)
    if thinking:
        answer["thinking"] = thinking
    answer.update(_final(choice.get("finish_reason"), response, started_ns, now_ns, None))
    return answer


def openai_completion_to_ollama_generate(
    response: Mapping[str, Any], *, model: str, started_ns: int, now_ns: int | None = None
) -> dict[str, Any]:
    """OpenAI text completion (raw or suffix generate) → Ollama ``/api/generate`` answer."""
    choice = _first_choice(response)
    answer: dict[str, Any] = {
        "model": model,
        "created_at": rfc3339_nano(),
        "response": choice.get("text") or "",
    }
    answer.update(_final(choice.get("finish_reason"), response, started_ns, now_ns, None))
    return answer


def openai_embeddings_to_ollama(response: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """OpenAI embeddings → Ollama ``/api/embed`` answer (vectors in input order)."""
    data = sorted(response.get("data") or [], key=lambda item: item.get("index", 0))
    answer: dict[str, Any] = {"model": model, "embeddings": [item["embedding"] for item in data]}
    usage = response.get("usage") or {}
    count = usage.get("prompt_tokens") or usage.get("total_tokens")
    if count:
        answer["prompt_eval_count"] = count
    return answer


def openai_embeddings_to_ollama_legacy(response: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI embeddings → legacy ``/api/embeddings`` answer: one ``embedding`` (empty if none)."""
    data = response.get("data") or []
    return {"embedding": data[0]["embedding"] if data else []}


def _first_choice(response: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = response.get("choices") or [{}]
    first: Mapping[str, Any] = choices[0]
    return first


def _reasoning(message: Mapping[str, Any]) -> str:
    """Reasoning text under the names vLLM/llama.cpp/LM Studio use; Ollama calls it thinking."""
    value = message.get("reasoning_content") or message.get("reasoning") or ""
    return value if isinstance(value, str) else ""


def _tool_call_to_ollama(call: Mapping[str, Any], index: int) -> dict[str, Any]:
    function = call.get("function") or {}
    out: dict[str, Any] = {
        "function": {
            "index": index,
            "name": function.get("name") or "",
            "arguments": parse_arguments(function.get("arguments")),
        }
    }
    if call.get("id"):
        out["id"] = call["id"]
    return out


def parse_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI's JSON-string arguments → Ollama's object; other text kept as ``arguments``."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def done_reason(finish_reason: Any) -> str:
    """OpenAI ``finish_reason`` → Ollama ``done_reason`` (``length`` or ``stop``)."""
    return "length" if finish_reason == "length" else "stop"


def _final(
    finish_reason: Any,
    response: Mapping[str, Any],
    started_ns: int,
    now_ns: int | None,
    first_token_ns: int | None,
) -> dict[str, Any]:
    """``done``, ``done_reason`` and the metrics of a final answer."""
    now = time.monotonic_ns() if now_ns is None else now_ns
    total = max(now - started_ns, 0)
    if first_token_ns is None:
        prompt_duration, eval_duration = 0, total
    else:
        prompt_duration = max(first_token_ns - started_ns, 0)
        eval_duration = max(now - first_token_ns, 0)
    timings = response.get("timings")
    if isinstance(timings, Mapping):
        # llama.cpp says how long its own prompt and generation phases took.
        prompt_duration = _ms_to_ns(timings.get("prompt_ms"), prompt_duration)
        eval_duration = _ms_to_ns(timings.get("predicted_ms"), eval_duration)
    usage = response.get("usage") or {}
    return {
        "done": True,
        "done_reason": done_reason(finish_reason),
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
        "prompt_eval_duration": prompt_duration,
        "eval_count": int(usage.get("completion_tokens") or 0),
        "eval_duration": eval_duration,
    }


def _ms_to_ns(value: Any, default: int) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return int(value * 1_000_000)
    return default


# -- streaming --------------------------------------------------------------------------------


class _StreamToOllama:
    """OpenAI stream chunks (parsed ``data:`` JSON) → Ollama NDJSON lines.

    ``feed`` returns the bytes to send for one chunk (often ``b""``). When the upstream stream
    ended cleanly (``[DONE]`` or end after a finish reason) ``finish`` gives the ``done`` line;
    a stream that broke gets ``error_line`` instead, never a ``done`` line. An upstream
    ``{"error": ...}`` chunk is turned into that error line by ``feed``; the stream ends there.
    """

    def __init__(
        self,
        model: str,
        *,
        started_ns: int,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.model = model
        self.started_ns = started_ns
        self.clock = clock
        #: The upstream ``finish_reason`` once seen (None: the upstream has not finished).
        self.finish_reason: str | None = None
        self.first_token_ns: int | None = None
        self._usage: dict[str, Any] = {}
        self._timings: Mapping[str, Any] | None = None
        #: Tool call deltas by index: id, name and the argument text so far.
        self._calls: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        """One OpenAI chunk → NDJSON bytes to send now (``b""`` when there is nothing)."""
        error = chunk.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, Mapping) else error
            return error_line(str(message or "upstream error"))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        if isinstance(chunk.get("timings"), Mapping):
            self._timings = chunk["timings"]
        out = b""
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # Ollama has one answer per request
            text, thinking = self._texts(choice)
            calls = (choice.get("delta") or {}).get("tool_calls") or []
            for call in calls:
                self._add_call(call)
            if self.first_token_ns is None and (text or thinking or calls):
                self.first_token_ns = self.clock()
            if text or thinking:
                out += self._line(text, thinking, None)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                out += self._flush_calls()
        return out

    def finish(self) -> bytes:
        """The final ``done: true`` line with ``done_reason``, counts and durations."""
        out = self._flush_calls()
        response: dict[str, Any] = {"usage": self._usage}
        if self._timings is not None:
            response["timings"] = self._timings
        final = self._message("", "", None)
        final.update(
            _final(self.finish_reason, response, self.started_ns, self.clock(), self.first_token_ns)
        )
        return out + dumps(final) + b"\n"

    def _texts(self, choice: Mapping[str, Any]) -> tuple[str, str]:
        delta = choice.get("delta") or {}
        return delta.get("content") or "", _reasoning(delta)

    def _add_call(self, call: Mapping[str, Any]) -> None:
        slot = self._calls.setdefault(
            call.get("index", len(self._calls)), {"id": None, "name": "", "arguments": ""}
        )
        if call.get("id"):
            slot["id"] = call["id"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["name"] += function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            slot["arguments"] += arguments
        elif isinstance(arguments, dict):
            slot["arguments"] = dumps(arguments).decode()

    def _flush_calls(self) -> bytes:
        if not self._calls:
            return b""
        calls = [
            _tool_call_to_ollama({"id": slot["id"], "function": slot}, n)
            for n, (_, slot) in enumerate(sorted(self._calls.items()))
        ]
        self._calls = {}
        return self._line("", "", calls)

    def _line(self, text: str, thinking: str, calls: list[dict[str, Any]] | None) -> bytes:
        message = self._message(text, thinking, calls)
        message["done"] = False
        return dumps(message) + b"\n"

    def _message(
        self, text: str, thinking: str, calls: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        raise NotImplementedError


class ChatStreamToOllama(_StreamToOllama):
    """OpenAI chat stream → Ollama ``/api/chat`` NDJSON lines."""

    def _message(
        self, text: str, thinking: str, calls: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        return {"model": self.model, "created_at": rfc3339_nano(), "message": message}


class GenerateStreamToOllama(_StreamToOllama):
    """OpenAI chat or completions stream → Ollama ``/api/generate`` NDJSON lines.

    Tool calls have no place in a generate answer and are dropped.
    """

    def _texts(self, choice: Mapping[str, Any]) -> tuple[str, str]:
        if "text" in choice:
            return choice.get("text") or "", ""
        return super()._texts(choice)

    def _add_call(self, call: Mapping[str, Any]) -> None:
        return

    def _message(
        self, text: str, thinking: str, calls: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "model": self.model,
            "created_at": rfc3339_nano(),
            "response": text,
        }
        if thinking:
            answer["thinking"] = thinking
        return answer


def ollama_error(message: str) -> bytes:
    """Ollama's error body ``{"error": "..."}``."""
    return dumps({"error": message})


def error_line(message: str) -> bytes:
    """Ollama's in-stream error: an NDJSON line ``{"error": "..."}`` (status stays 200)."""
    return ollama_error(message) + b"\n"
