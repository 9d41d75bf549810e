"""Ollama's model listings: ``/api/tags`` and ``/api/ps`` entries and the ``/api/show`` answer,
with a model's ``details`` (family, parameter size, quantization) guessed from its name where
the backend does not say."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

#: Time stamps for models whose age nobody knows; deterministic so listings are stable.
UNKNOWN_TIME = "1970-01-01T00:00:00Z"
#: ``expires_at`` of a model with no known unload time: far future, as Ollama's keep_alive -1.
NEVER_EXPIRES = "9999-12-31T23:59:59Z"
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
