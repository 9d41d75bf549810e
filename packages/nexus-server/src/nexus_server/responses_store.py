"""The Responses API's conversation state: responses kept in the gateway's ``[state]`` store.

A stored response is one record, under its id in the collection ``responses``: the response
object, the whole conversation up to and including its output (as Responses input items, so
``previous_response_id`` continues it with one read) and the gateway key that made it. Records
expire after ``[responses] retention_seconds`` (``StateStore.put``'s ``ttl_seconds``: Redis
expires them itself, SQLite purges them as it writes) and are read by key only, never listed.

A record is only ever found by the key that made it: ``load`` and ``delete`` answer None/False
for another key's record exactly as for a missing one, so nobody learns that it exists. The
door (``POST /v1/responses``) saves and loads; ``ResponsesController`` serves
``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgspec

from nexus_core import fastjson
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway

log = logging.getLogger("nexus.responses")

#: The state store collection of stored responses (``{prefix}expiring:responses:{id}`` in Redis).
COLLECTION = "responses"
#: Longest response id looked up; a longer one cannot have been stored (``save`` refuses it).
MAX_ID_LENGTH = 256


def response_not_found(response_id: str) -> GatewayError:
    """404 as OpenAI answers for a response it does not have (``code`` null)."""
    shown = response_id if len(response_id) <= MAX_ID_LENGTH else response_id[:MAX_ID_LENGTH] + "…"
    return GatewayError(404, f"Response with id '{shown}' not found.")


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as it was stored: the object, its conversation, the key that made it."""

    #: The response object as it was answered (OpenAI's ``response`` shape).
    response: dict[str, Any]
    #: The whole conversation as Responses input items, ending with this response's output.
    items: list[dict[str, Any]]
    #: The gateway key that made it (None: made with ``[auth]`` off).
    owner: str | None

    @property
    def input_items(self) -> list[dict[str, Any]]:
        """The items the response answered: ``items`` without its own output items."""
        output = self.response.get("output")
        count = len(output) if isinstance(output, list) else 0
        return self.items[: len(self.items) - count] if count else list(self.items)


class ResponseStore:
    """Saves, loads and deletes stored responses for the door and the routes.

    Cheap to make (it keeps no state of its own): it reads the gateway's store at each call,
    since the gateway may replace it at start (a default SQLite file it cannot open). Every
    method raises ``StateError`` when the store fails; the caller answers 503
    ``state_unavailable``.
    """

    __slots__ = ("_gateway",)

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    @property
    def enabled(self) -> bool:
        """``[responses] store``: whether responses are kept (and found) at all."""
        return self._gateway.config.responses.store

    async def save(
        self, response: dict[str, Any], items: list[dict[str, Any]], owner: str | None
    ) -> bool:
        """Keep ``response`` with its conversation ``items`` under ``response["id"]``, for
        ``owner`` (the gateway key's name; None with ``[auth]`` off) and ``retention_seconds``.

        False when it is not kept: ``[responses] store`` is off, or the record is larger than
        ``max_record_bytes`` (logged at WARNING; the answer goes out all the same).
        """
        config = self._gateway.config.responses
        if not config.store:
            return False
        response_id = response.get("id")
        if not isinstance(response_id, str) or not 0 < len(response_id) <= MAX_ID_LENGTH:
            raise ValueError(f"a stored response needs an id of 1 to {MAX_ID_LENGTH} characters")
        record = _encode({"owner": owner, "response": response, "items": items})
        size = len(record)
        if size > config.max_record_bytes:
            log.warning(
                "response %s is not stored: its record (the response and its conversation of "
                "%d items) is %d bytes, over [responses] max_record_bytes (%d); a "
                "previous_response_id naming it will not be found",
                response_id,
                len(items),
                size,
                config.max_record_bytes,
            )
            return False
        await self._gateway.accountant.store.put(
            COLLECTION, response_id, record.decode(), ttl_seconds=config.retention_seconds
        )
        self._gateway.store_outage.recovered()
        return True

    async def load(
        self, response_id: str, owner: str | None, *, any_owner: bool = False
    ) -> StoredResponse | None:
        """The response ``owner`` stored under ``response_id``; None when it is missing, has
        expired, is another key's, or storing is off. ``any_owner``: whoever stored it (the
        admin key)."""
        if not self.enabled or not 0 < len(response_id) <= MAX_ID_LENGTH:
            return None
        raw = await self._gateway.accountant.store.get(COLLECTION, response_id)
        if raw is None:
            return None
        try:
            record = fastjson.loads(raw)
            stored = StoredResponse(record["response"], record["items"], record["owner"])
        except (ValueError, KeyError, TypeError):
            log.warning("stored response %s is unreadable; treated as missing", response_id)
            return None
        if not any_owner and stored.owner != owner:
            return None
        return stored

    async def delete(self, response_id: str, owner: str | None, *, any_owner: bool = False) -> bool:
        """Remove the response ``owner`` stored under ``response_id``; False as ``load`` None."""
        if await self.load(response_id, owner, any_owner=any_owner) is None:
            return False
        deleted = await self._gateway.accountant.store.delete(COLLECTION, response_id)
        self._gateway.store_outage.recovered()
        return deleted


#: Records are encoded with msgspec: one may be megabytes, encoded on the event loop, several
#: times faster than ``json.dumps`` (and strictly JSON: a NaN is written as null).
_encode = msgspec.json.Encoder().encode
