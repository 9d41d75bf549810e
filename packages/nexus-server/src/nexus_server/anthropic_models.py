"""The model listing in the shape of Anthropic's Models API, for the Anthropic SDKs.

``anthropic``'s ``models.list()`` and ``models.retrieve(id)`` call ``GET /v1/models`` and
``GET /v1/models/{id}``: the same paths as the OpenAI SDK's. What tells them apart is the
``anthropic-version`` header every Anthropic SDK sends (and no OpenAI SDK does). With it, the
listing is Anthropic's: ``{"data": [...], "has_more", "first_id", "last_id"}``, paged with
``limit``, ``after_id`` and ``before_id``; each model is ``{"type": "model", "id",
"display_name", "created_at", ...}``; errors are Anthropic's ``{"type": "error", ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from nexus_core.errors import GatewayError

#: The header that marks a request from an Anthropic SDK (``anthropic-version: 2023-06-01``).
VERSION_HEADER = "anthropic-version"
#: Models per page when the request names no ``limit`` (Anthropic's default).
DEFAULT_LIMIT = 20
#: The largest ``limit`` (Anthropic's).
MAX_LIMIT = 1000


def wants_anthropic(headers: Mapping[str, str]) -> bool:
    """Whether a listing request comes from an Anthropic client (it names an API version)."""
    return VERSION_HEADER in headers


def model_info(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One ``/v1/models`` entry as Anthropic's ``ModelInfo``."""
    model_id = str(entry["id"])
    alias_of = entry.get("alias_of")
    created = datetime.fromtimestamp(int(entry["created"]), UTC)
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id if alias_of is None else f"{model_id} (alias of {alias_of})",
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        # Served now: Nexus lists only models a healthy backend has.
        "lifecycle": "active",
        "max_input_tokens": entry.get("context_length"),
    }


def page(entries: Sequence[Mapping[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """A page of the listing (``entries``: sorted by id) as Anthropic pages it.

    ``after_id`` gives the models after that id, ``before_id`` those before it, ``limit`` (1 to
    1000, default 20) how many. Cursors compare by id, so a model that went away between two
    pages does not break the paging. 400 for a bad ``limit`` or both cursors at once.
    """
    limit = _limit(query.get("limit"))
    after = query.get("after_id")
    before = query.get("before_id")
    if after is not None and before is not None:
        raise _invalid("after_id and before_id cannot be used together", "after_id")
    ids = [str(entry["id"]) for entry in entries]
    if after is not None:
        rest = [entry for entry, model_id in zip(entries, ids, strict=True) if model_id > after]
        chosen, has_more = rest[:limit], len(rest) > limit
    elif before is not None:
        rest = [entry for entry, model_id in zip(entries, ids, strict=True) if model_id < before]
        chosen, has_more = rest[-limit:], len(rest) > limit
    else:
        chosen, has_more = list(entries[:limit]), len(entries) > limit
    data = [model_info(entry) for entry in chosen]
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise _invalid(f"limit: must be an integer from 1 to {MAX_LIMIT}", "limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _invalid(f"limit: must be an integer from 1 to {MAX_LIMIT}", "limit")
    return limit


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, param=param)
