"""Ollama requests (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``) →
OpenAI request bodies. See the package docstring for what does not map 1:1."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
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
#: Magic bytes → MIME type of base64 images; anything else is taken for JPEG.
IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class TranslationError(ValueError):
    """An Ollama request that cannot be translated; the message is fit for a 400 answer."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


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
