"""Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/embed``...) ⇄ OpenAI, as dicts.

Nexus serves an Ollama-compatible front door so Ollama clients can use any backend. These pure
functions translate requests to OpenAI bodies and OpenAI answers (whole or streamed) back to
Ollama's shapes; the server does the HTTP. Formats follow ollama/ollama ``api/types.go`` and
``server/routes.go`` (v0.33) and what the ``ollama`` Python client parses.

Where the two formats do not map 1:1:

* Requests: ``keep_alive``, ``think``, ``logprobs``/``top_logprobs``, ``template``, ``context``
  (backend-specific token ids) and ``truncate`` are dropped. ``stream`` defaults to *true* as in
  Ollama. Options: see ``options_to_openai``.
* Tool calls: Ollama calls may lack ids; missing ids are made up as ``call_<n>`` and a ``tool``
  message without ``tool_call_id`` is linked to the first unanswered call with its ``tool_name``
  (or the first unanswered call at all).
* Responses: ``created_at`` is wall-clock time of the translation. Counts come from ``usage``.
  ``total_duration`` is measured from the caller's start; ``load_duration`` is 0 (a backend does
  not say). ``prompt_eval_duration``/``eval_duration`` come from llama.cpp's ``timings`` when
  present, else are measured when streaming (start to first token, first token to end), else
  are 0 and the whole time. ``done_reason`` is ``length`` or ``stop`` (tool calls end with
  ``stop``, as in Ollama). ``context`` is never returned: the token ids would be meaningless.
* Streaming: content and reasoning deltas become lines as they arrive; tool calls are sent whole,
  all in one line once the upstream finishes them (Ollama also sends a call only when parsed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from nexus_core.openai_wire import dumps

ROLES = frozenset({"system", "user", "assistant", "tool"})
#: Ollama options sent to OpenAI backends as they are. ``top_k``, ``min_p`` and
#: ``repeat_penalty`` are vendor extras (vLLM, llama.cpp, LM Studio accept them).
PASSED_OPTIONS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "repeat_penalty",
)
INTEGER_OPTIONS = frozenset({"top_k", "seed", "num_predict"})
#: Time stamps for models whose age nobody knows; deterministic so listings are stable.
UNKNOWN_TIME = "1970-01-01T00:00:00Z"
#: ``expires_at`` of a model with no known unload time: far future, as Ollama's keep_alive -1.
NEVER_EXPIRES = "9999-12-31T23:59:59Z"
#: Magic bytes → MIME type of base64 images; anything else is taken for JPEG.
IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
FAMILIES = (
    "llama",
    "qwen3",
    "qwen2",
    "qwen",
    "mistral",
    "mixtral",
    "gemma3",
    "gemma2",
    "gemma",
    "phi3",
    "phi",
    "deepseek",
    "granite",
    "command-r",
    "falcon",
    "starcoder",
    "codellama",
    "nomic-bert",
    "bert",
    "gpt",
    "claude",
)
PARAMETER_SIZE = re.compile(r"(?<![a-z0-9.])(\d+x)?(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.I)
QUANTIZATION = re.compile(
    r"(?<![a-z0-9])(q\d(?:_k)?(?:_[0-9msl]+)?|iq\d_\w+|f16|fp16|bf16|f32|fp8|awq|gptq|int4|int8)"
    r"(?![a-z0-9])",
    re.I,
)


class TranslationError(ValueError):
    """An Ollama request that cannot be translated; the message is fit for a 400 answer."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# -- requests ---------------------------------------------------------------------------------


def options_to_openai(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ollama ``options`` → OpenAI fields; ``num_ctx`` and other load-time knobs are dropped.

    Passed: ``PASSED_OPTIONS``; ``num_predict`` becomes ``max_tokens`` (zero or negative, i.e.
    unlimited, is omitted); ``stop`` becomes a list. Dropped: ``num_ctx`` (the backend fixes the
    context window), mirostat, ``typical_p``, ``repeat_last_n``, GPU/thread knobs, and any key
    Ollama does not know. A value of the wrong type raises, as Ollama does.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TranslationError("options must be an object", param="options")
    body: dict[str, Any] = {}
    for key in (*PASSED_OPTIONS, "num_predict"):
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TranslationError(f"option {key!r} must be a number", param=f"options.{key}")
        if key in INTEGER_OPTIONS:
            value = int(value)
        if key == "num_predict":
            if value > 0:
                body["max_tokens"] = value
        else:
            body[key] = value
    stop = options.get("stop")
    if isinstance(stop, str):
        body["stop"] = [stop]
    elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        if stop:
            body["stop"] = list(stop)
    elif stop is not None:
        raise TranslationError("option 'stop' must be a list of strings", param="options.stop")
    return body


def chat_is_load(request: Mapping[str, Any]) -> bool:
    """True for Ollama's "load the model" chat (no messages): answer ``load_response``."""
    return not request.get("messages")


def chat_to_openai(request: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama ``/api/chat`` body → OpenAI chat completions body."""
    model = _model(request)
    raw_messages = request.get("messages")
    if raw_messages is None:
        raw_messages = []
    if not isinstance(raw_messages, list):
        raise TranslationError("messages must be a list", param="messages")
    body: dict[str, Any] = {"model": model, "messages": _messages_to_openai(raw_messages)}
    tools = request.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise TranslationError("tools must be a list", param="tools")
        body["tools"] = tools
    _add_common(body, request)
    return body


def generate_to_openai(
    request: Mapping[str, Any],
) -> tuple[Literal["chat", "completions", "load"], dict[str, Any]]:
    """Ollama ``/api/generate`` body → which OpenAI endpoint to call and its body.

    ``raw`` or a ``suffix`` need the completions endpoint (prompt as is, ``suffix`` kept;
    ``system`` is then dropped, as Ollama does in raw mode). An empty prompt is Ollama's "load
    the model" call: ``("load", {})``, answered by ``load_response`` without a backend.
    """
    model = _model(request)
    prompt = request.get("prompt") or ""
    if not isinstance(prompt, str):
        raise TranslationError("prompt must be a string", param="prompt")
    if not prompt:
        return "load", {}
    suffix = request.get("suffix") or ""
    if not isinstance(suffix, str):
        raise TranslationError("suffix must be a string", param="suffix")
    images = request.get("images") or []
    body: dict[str, Any]
    if request.get("raw") or suffix:
        if images:
            raise TranslationError("images are not supported with raw or suffix", param="images")
        body = {"model": model, "prompt": prompt}
        if suffix:
            body["suffix"] = suffix
        _add_common(body, request)
        return "completions", body
    messages: list[dict[str, Any]] = []
    system = request.get("system")
    if system:
        if not isinstance(system, str):
            raise TranslationError("system must be a string", param="system")
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _user_content(prompt, images, "images")})
    body = {"model": model, "messages": messages}
    _add_common(body, request)
    return "chat", body


def embed_to_openai(request: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama ``/api/embed`` body → OpenAI embeddings body; ``input`` is always a list.

    Ollama answers an empty input (``""`` or ``[]``) with no embeddings and no model call: when
    ``input`` comes back empty, answer ``openai_embeddings_to_ollama({"data": []}, model=...)``.
    ``truncate``, ``keep_alive`` and ``options`` are dropped.
    """
    model = _model(request)
    raw = request.get("input")
    if raw is None or raw == "":
        inputs: list[str] = []
    elif isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        inputs = [item for item in raw if item]
    else:
        raise TranslationError("input must be a string or a list of strings", param="input")
    body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
    dimensions = request.get("dimensions")
    if dimensions:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 0:
            raise TranslationError("dimensions must be a positive integer", param="dimensions")
        body["dimensions"] = dimensions
    return body


def legacy_embeddings_to_openai(request: Mapping[str, Any]) -> dict[str, Any]:
    """Legacy ``/api/embeddings`` (``prompt``) → OpenAI embeddings body (empty: see embed)."""
    prompt = request.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise TranslationError("prompt must be a string", param="prompt")
    return embed_to_openai({"model": request.get("model"), "input": prompt or ""})


def _model(request: Mapping[str, Any]) -> str:
    if not isinstance(request, Mapping):
        raise TranslationError("the request body must be a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise TranslationError("model is required", param="model")
    return model


def _add_common(body: dict[str, Any], request: Mapping[str, Any]) -> None:
    """``format``, ``options`` and ``stream`` (Ollama streams unless told not to)."""
    response_format = _format_to_openai(request.get("format"))
    if response_format is not None:
        body["response_format"] = response_format
    body.update(options_to_openai(request.get("options")))
    stream = request.get("stream")
    body["stream"] = True if stream is None else bool(stream)
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}


def _format_to_openai(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    raise TranslationError('format must be "json" or a JSON schema object', param="format")


def _messages_to_openai(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    #: Unanswered tool calls of the conversation so far, as (id, name), oldest first.
    pending: list[tuple[str, str]] = []
    made_up = 0

    def new_id() -> str:
        nonlocal made_up
        made_up += 1
        return f"call_{made_up}"

    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise TranslationError(f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise TranslationError(
                f"{where}.role must be one of system, user, assistant, tool; got {role!r}",
                param=f"{where}.role",
            )
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise TranslationError(f"{where}.content must be a string", param=f"{where}.content")
        images = message.get("images") or []
        if images and role != "user":
            raise TranslationError(
                f"{where}: images are only supported on user messages", param=f"{where}.images"
            )
        converted: dict[str, Any] = {"role": role}
        if role == "user":
            converted["content"] = _user_content(content, images, f"{where}.images")
        elif role == "assistant":
            calls = _tool_calls_to_openai(message.get("tool_calls"), where, new_id)
            converted["content"] = content if content or not calls else None
            if calls:
                converted["tool_calls"] = calls
                pending = [(call["id"], call["function"]["name"]) for call in calls]
        elif role == "tool":
            call_id = message.get("tool_call_id")
            name = message.get("tool_name") or message.get("name")
            if not isinstance(call_id, str) or not call_id:
                call_id = _answer(pending, name) or new_id()
            else:
                pending = [call for call in pending if call[0] != call_id]
            converted["content"] = content
            converted["tool_call_id"] = call_id
        else:
            converted["content"] = content
        out.append(converted)
    return out


def _answer(pending: list[tuple[str, str]], name: Any) -> str | None:
    """Take the first unanswered call named ``name`` (any call when nameless) off ``pending``."""
    for position, (call_id, call_name) in enumerate(pending):
        if not name or call_name == name:
            del pending[position]
            return call_id
    return None


def _tool_calls_to_openai(
    calls: Any, where: str, new_id: Callable[[], str]
) -> list[dict[str, Any]]:
    if not calls:
        return []
    if not isinstance(calls, list):
        raise TranslationError(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
    out = []
    for position, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            param = f"{where}.tool_calls[{position}].function"
            raise TranslationError(f"{param} needs a name", param=param)
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = dumps({} if arguments is None else arguments).decode()
        call_id = call.get("id")
        out.append(
            {
                "id": call_id if isinstance(call_id, str) and call_id else new_id(),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
    return out


def _user_content(text: str, images: Any, where: str) -> str | list[dict[str, Any]]:
    """Plain text, or text and ``image_url`` parts when there are images."""
    if not images:
        return text
    if not isinstance(images, list):
        raise TranslationError(f"{where} must be a list of base64 strings", param=where)
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for position, image in enumerate(images):
        if not isinstance(image, str) or not image:
            raise TranslationError(f"{where}[{position}] must be a base64 string", param=where)
        url = image if image.startswith("data:") else _data_url(image, f"{where}[{position}]")
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _data_url(image: str, where: str) -> str:
    # Only the head is decoded: enough for the magic bytes and to catch non-base64 text early.
    head = image[:24]
    try:
        prefix = base64.b64decode(head + "=" * (-len(head) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise TranslationError(f"{where} is not valid base64 image data", param=where) from None
    return f"data:{image_mime(prefix)};base64,{image}"


def image_mime(prefix: bytes) -> str:
    """MIME type of an image from its first bytes: png, jpeg, gif or webp; jpeg when unsure."""
    for magic, mime in IMAGE_MAGIC:
        if prefix.startswith(magic):
            return mime
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


# -- responses --------------------------------------------------------------------------------


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


# -- listings ---------------------------------------------------------------------------------


def guess_family(model_id: str) -> str:
    """Model family from its name (``llama``, ``qwen2``...), or ``""`` when unknown."""
    name = model_id.lower().rsplit("/", 1)[-1]
    for family in FAMILIES:
        if family in name:
            return family
    return ""


def guess_parameter_size(model_id: str) -> str:
    """``8B``, ``8x7B``, ``135M`` from a model's name, or ``""``."""
    match = PARAMETER_SIZE.search(model_id.rsplit("/", 1)[-1])
    if not match:
        return ""
    experts, number, unit = match.groups()
    return f"{(experts or '').lower()}{number}{unit.upper()}"


def guess_quantization(model_id: str) -> str:
    """``Q4_K_M``, ``F16``, ``AWQ``... from a model's name, or ``""``."""
    match = QUANTIZATION.search(model_id.rsplit("/", 1)[-1])
    return match.group(1).upper() if match else ""


def model_details(
    model_id: str,
    *,
    family: str | None = None,
    parameter_size: str | None = None,
    quantization_level: str | None = None,
    format: str = "",
    context_length: int | None = None,
) -> dict[str, Any]:
    """Ollama's ``details`` object; what is not given is guessed from the name or left empty."""
    family = guess_family(model_id) if family is None else family
    details: dict[str, Any] = {
        "parent_model": "",
        "format": format,
        "family": family,
        "families": [family] if family else [],
        "parameter_size": (
            guess_parameter_size(model_id) if parameter_size is None else parameter_size
        ),
        "quantization_level": (
            guess_quantization(model_id) if quantization_level is None else quantization_level
        ),
    }
    if context_length:
        details["context_length"] = context_length
    return details


def digest(model_id: str) -> str:
    """A stable stand-in for Ollama's manifest digest: sha256 of the model's name."""
    return hashlib.sha256(model_id.encode()).hexdigest()


def tags_entry(
    model_id: str,
    *,
    context_length: int | None = None,
    capabilities: Mapping[str, bool | None] | None = None,
    family: str | None = None,
    parameter_size: str | None = None,
    quantization_level: str | None = None,
    format: str = "",
    size: int = 0,
    modified_at: str = UNKNOWN_TIME,
) -> dict[str, Any]:
    """One ``/api/tags`` ``models[]`` entry; unknown size is 0 and the digest hashes the name."""
    entry: dict[str, Any] = {
        "name": model_id,
        "model": model_id,
        "modified_at": modified_at,
        "size": size,
        "digest": digest(model_id),
        "details": model_details(
            model_id,
            family=family,
            parameter_size=parameter_size,
            quantization_level=quantization_level,
            format=format,
            context_length=context_length,
        ),
    }
    if capabilities is not None:
        entry["capabilities"] = capability_list(capabilities)
    return entry


def capability_list(capabilities: Mapping[str, bool | None]) -> list[str]:
    """Known capabilities → Ollama's list; every model but an embedding one can ``completion``."""
    names: list[str] = []
    embedding = bool(capabilities.get("embeddings") or capabilities.get("embedding"))
    if capabilities.get("completion", not embedding):
        names.append("completion")
    for key, name in (("tools", "tools"), ("vision", "vision"), ("thinking", "thinking")):
        if capabilities.get(key):
            names.append(name)
    if embedding:
        names.append("embedding")
    return names


def show_response(
    model_id: str,
    *,
    context_length: int | None = None,
    capabilities: Mapping[str, bool | None] | None = None,
    family: str | None = None,
    parameter_size: str | None = None,
    quantization_level: str | None = None,
    modified_at: str = UNKNOWN_TIME,
) -> dict[str, Any]:
    """``/api/show`` answer. ``template`` and ``parameters`` are empty: the backend owns them.

    ``model_info`` has ``general.architecture`` (the family, ``unknown`` if none is known) and
    ``<architecture>.context_length`` when the context length is known.
    """
    details = model_details(
        model_id,
        family=family,
        parameter_size=parameter_size,
        quantization_level=quantization_level,
    )
    architecture = details["family"] or "unknown"
    model_info: dict[str, Any] = {"general.architecture": architecture}
    if context_length:
        model_info[f"{architecture}.context_length"] = context_length
    return {
        "modelfile": f"# Served by Nexus\nFROM {model_id}\n",
        "parameters": "",
        "template": "",
        "details": details,
        "model_info": model_info,
        "capabilities": capability_list(capabilities or {}),
        "modified_at": modified_at,
    }


def ps_entry(
    model_id: str,
    *,
    context_length: int | None = None,
    family: str | None = None,
    size: int = 0,
    size_vram: int = 0,
    expires_at: str = NEVER_EXPIRES,
) -> dict[str, Any]:
    """One ``/api/ps`` ``models[]`` entry for a model a backend has loaded."""
    return {
        "name": model_id,
        "model": model_id,
        "size": size,
        "digest": digest(model_id),
        "details": model_details(model_id, family=family),
        "expires_at": expires_at,
        "size_vram": size_vram,
        "context_length": context_length or 0,
    }


def version_response(version: str) -> dict[str, Any]:
    """``/api/version`` answer."""
    return {"version": version}


def models_response(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``/api/tags`` or ``/api/ps`` body around entries."""
    return {"models": list(entries)}
