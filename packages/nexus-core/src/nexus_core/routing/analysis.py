"""What a request needs (``analyze``, once per request) and whether a model has it (``missing``)."""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from nexus_core.adapters import CAPABILITIES, Endpoint, ModelInfo
from nexus_core.errors import GatewayError, bad_request

__all__ = [
    "CAPABILITIES",
    "CHARS_PER_TOKEN",
    "RequestNeeds",
    "analyze",
    "missing",
    "missing_reason",
    "prefix_key",
]

# Rough bytes-per-token used to estimate prompt size before the context-length check.
CHARS_PER_TOKEN = 4
#: Characters of a request's leading text (system prompt, first user message) its conversation
#: key hashes at most: enough to tell conversations apart, bounded work for a huge prompt.
PREFIX_KEY_CHARS = 32_768
#: Tool names the conversation key hashes at most.
PREFIX_KEY_TOOLS = 64


@dataclass(slots=True)
class RequestNeeds:
    """What routing needs to know about a request, parsed once."""

    model: str
    stream: bool = False
    vision: bool = False
    tools: bool = False
    json_mode: bool = False
    estimated_tokens: int = 0
    #: Tier mode from ``X-Nexus-Flexible: true`` (and no ``X-Nexus-Strict: true``).
    flexible: bool = False
    #: A stream whose client asked for ``stream_options.include_usage``.
    include_usage: bool = False
    #: An embeddings request: backends whose model says it cannot embed are skipped.
    embeddings: bool = False
    #: The request's prompt field (``messages``, ``prompt``, ``input``), named by its errors.
    prompt_param: str = "messages"
    #: The conversation's key (``prefix_key``), set only when the strategy orders by it; 0: none.
    prefix_key: int = 0
    #: ``X-Nexus-Route-Reason`` a strategy that takes ``needs`` chose for this request ("": its
    #: ``reason``).
    route_reason: str = ""


def missing(info: ModelInfo, needs: RequestNeeds) -> tuple[str, ...]:
    """What ``needs`` asks that ``info``'s model says it lacks; ``()``: it can serve the request.

    The one capability check: routing's filter, its explanations and its errors all ask here.
    Only a model that states a lack (``False``, a known context length) is excluded: unknown
    means maybe. Runs per request for every candidate: no allocation when nothing is missing.
    """
    lacks: tuple[str, ...] = ()
    if needs.vision and info.vision is False:
        lacks += ("vision",)
    if needs.tools and info.tools is False:
        lacks += ("tools",)
    if needs.json_mode and info.json_mode is False:
        lacks += ("json_mode",)
    if needs.embeddings and info.embeddings is False:
        lacks += ("embeddings",)
    context = info.context_length
    if context is not None and needs.estimated_tokens > context:
        lacks += ("context_length",)
    return lacks


def missing_reason(info: ModelInfo, needs: RequestNeeds, lacks: tuple[str, ...]) -> dict[str, Any]:
    """The ``missing_capability`` reason's fields for ``lacks = missing(info, needs)``."""
    flags = [name for name in lacks if name != "context_length"]
    parts = [f"model {info.id} lacks {', '.join(flags)}"] if flags else []
    fields: dict[str, Any] = {}
    if "context_length" in lacks:
        fields["context_length"] = info.context_length
        parts.append(
            f"prompt of about {needs.estimated_tokens} tokens exceeds the context length "
            f"{info.context_length} of {info.id}"
        )
    return {"missing": list(lacks), "message": "; ".join(parts), **fields}


def analyze(endpoint: Endpoint, data: Any, keyed: bool = False) -> RequestNeeds:
    """Read the fields routing depends on; refuse bodies the gateway cannot route.

    ``keyed``: the strategy orders by the conversation (``Router.keyed``): ``prefix_key`` too.
    """
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("You must provide a model parameter", param="model", code="missing_model")
    needs = RequestNeeds(model=model, stream=data.get("stream") is True)
    if needs.stream:
        options = data.get("stream_options")
        needs.include_usage = isinstance(options, dict) and options.get("include_usage") is True
    if endpoint is Endpoint.CHAT:
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise _field_error("messages", messages, "an array of messages")
        chars = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict):
                        continue
                    kind = part.get("type")
                    if kind == "text":
                        text = part.get("text")
                        chars += len(text) if isinstance(text, str) else 0
                    elif kind in ("image_url", "input_image", "image"):
                        needs.vision = True
        needs.estimated_tokens = chars // CHARS_PER_TOKEN
        needs.tools = bool(data.get("tools")) or bool(data.get("functions"))
        response_format = data.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") in (
            "json_object",
            "json_schema",
        ):
            needs.json_mode = True
    elif endpoint is Endpoint.COMPLETIONS:
        needs.prompt_param = "prompt"
        prompt = data.get("prompt")
        if isinstance(prompt, str):
            needs.estimated_tokens = len(prompt) // CHARS_PER_TOKEN
        elif isinstance(prompt, list):
            needs.estimated_tokens = (
                sum(len(p) for p in prompt if isinstance(p, str)) // CHARS_PER_TOKEN
            )
        else:
            raise _field_error("prompt", prompt, "a string or an array")
    elif endpoint is Endpoint.EMBEDDINGS:
        needs.prompt_param = "input"
        needs.embeddings = True
        if data.get("input") is None:
            raise _field_error("input", None, "")
    if keyed:
        needs.prefix_key = prefix_key(endpoint, data)
    return needs


def prefix_key(endpoint: Endpoint, data: dict[str, Any]) -> int:
    """A stable 64-bit key of the request's conversation (0 for an embeddings request).

    Chat: the tools' names and the leading messages up to and including the first user message
    (role and text), at most ``PREFIX_KEY_CHARS`` characters of text. Every turn of a
    conversation re-sends that prefix unchanged, so all its turns share the key; two
    conversations differ in their system prompt or first question. Text is hashed the same
    whether it comes as a string or as text parts, so a conversation translated from another
    door keys alike. Completions: the prompt's first ``PREFIX_KEY_CHARS`` characters.
    A keyed hash (BLAKE2b), not ``hash()``: two Nexus processes compute the same key.
    """
    digest = blake2b(digest_size=8)
    budget = PREFIX_KEY_CHARS
    if endpoint is Endpoint.CHAT:
        tools = data.get("tools") or data.get("functions")
        if isinstance(tools, list):
            for tool in tools[:PREFIX_KEY_TOOLS]:
                if isinstance(tool, dict):
                    function = tool.get("function", tool)
                    name = function.get("name") if isinstance(function, dict) else None
                    if isinstance(name, str):
                        digest.update(_utf8(name[:256]) + b"\x00")
        digest.update(b"\x01")
        for message in data.get("messages") or ():
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            if role == "developer":
                role = "system"  # OpenAI's newer name for it; other doors send "system"
            if isinstance(role, str):
                digest.update(_utf8(role[:32]))
            digest.update(b"\x1e")
            content = message.get("content")
            if isinstance(content, str):
                text = content[:budget]
                digest.update(_utf8(text))
                budget -= len(text)
            elif isinstance(content, list):
                for part in content:
                    text_part = part.get("text") if isinstance(part, dict) else None
                    if isinstance(text_part, str) and budget > 0:
                        text = text_part[:budget]
                        digest.update(_utf8(text))
                        budget -= len(text)
            if role == "user" or budget <= 0:
                break
    elif endpoint is Endpoint.COMPLETIONS:
        prompt = data.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else None
        if not isinstance(prompt, str):
            return 0
        digest.update(_utf8(prompt[:budget]))
    else:
        return 0
    return int.from_bytes(digest.digest(), "big") or 1


def _utf8(text: str) -> bytes:
    # surrogatepass: JSON may carry a lone surrogate ("\ud800"); it still hashes.
    return text.encode("utf-8", "surrogatepass")


def _field_error(name: str, value: Any, expected: str) -> GatewayError:
    """400 for a required field that is missing (``missing_required_parameter``, OpenAI's code)
    or of the wrong type (``invalid_type``)."""
    if value is None:
        return bad_request(
            f"Missing required parameter: '{name}'", param=name, code="missing_required_parameter"
        )
    return bad_request(
        f"Invalid type for '{name}': expected {expected}", param=name, code="invalid_type"
    )
