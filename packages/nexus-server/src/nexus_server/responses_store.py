"""The Responses API's conversation state: responses kept in the gateway's ``[state]`` store.

A stored response is one record, under its id in the collection ``responses``: the response
object, the items of its own turn and the gateway key that made it. A response that continues
another (``previous_response_id``) keeps only what its request added (its input items) and its
output, with a link to the response it continued, so a conversation of N turns is N records of
one turn each: what is stored grows with the conversation's length, not with its square. Loading
a conversation walks the links back to the first turn, one read of the store per response, and
the walk is bounded by ``[responses] max_chain_depth`` and ``max_conversation_bytes``.

Two shapes of record, both read:

- ``{"owner", "response", "items"}``: a first turn (or one saved without ``previous``); ``items``
  is the whole conversation up to and including its output. Every record written before
  conversations were linked has this shape and holds its whole conversation, so it still loads,
  and can be continued, as it was.
- ``{"owner", "response", "turn", "previous", "depth"}``: a later turn; ``turn`` is this request's
  input items and its output, ``previous`` the id of the response it continued, ``depth`` the
  number of responses in its conversation (itself included). The items are under another name
  on purpose: a gateway of an older version reading it (replicas upgraded one by one) finds no
  ``items``, takes it for unreadable and answers "not found", never a silently shortened
  conversation.

Each record expires ``[responses] retention_seconds`` after it was written
(``StateStore.put``'s ``ttl_seconds``: Redis expires it itself, SQLite purges it as it writes);
saving a later turn refreshes no earlier one, so nothing anybody sent outlives the retention. A
conversation whose first turn has expired, or any of whose responses was deleted, cannot be
continued past that point: a clear 400 names the response that is gone. Records are read by key
only, never listed.

A record is only ever found by the key that made it: ``load``, ``record`` and ``delete`` answer
None/False for another key's record exactly as for a missing one, and a link to another key's
record is a missing link. The door (``POST /v1/responses``) saves and loads;
``ResponsesController`` serves ``GET``/``DELETE /v1/responses/{id}`` and
``GET /v1/responses/{id}/input_items``.
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
    return GatewayError(404, f"Response with id '{_shown(response_id)}' not found.")


def previous_response_not_found(response_id: str, asked: str | None = None) -> GatewayError:
    """400 ``previous_response_not_found``: OpenAI's own words for the response asked for;
    for a response further back in its conversation, which one is gone and why it is needed."""
    message = f"Previous response with id '{_shown(response_id)}' not found."
    if asked is not None and asked != response_id:
        message = (
            f"Previous response with id '{_shown(response_id)}' not found: response "
            f"'{_shown(asked)}' continues a conversation that needs it, and it has expired or "
            "was deleted. Start a new conversation (send the whole input without "
            "previous_response_id)."
        )
    return GatewayError(
        400, message, param="previous_response_id", code="previous_response_not_found"
    )


def conversation_too_long(response_id: str, why: str, *, to: str = "continue") -> GatewayError:
    """400 ``conversation_too_long``: the conversation ``response_id`` ends is past a bound."""
    return GatewayError(
        400,
        f"The conversation of response '{_shown(response_id)}' is too long to {to}: {why}. "
        "Start a new conversation (send the whole input without previous_response_id).",
        param="previous_response_id",
        code="conversation_too_long",
    )


def _shown(response_id: str) -> str:
    return response_id if len(response_id) <= MAX_ID_LENGTH else response_id[:MAX_ID_LENGTH] + "…"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as it was stored: the object, its conversation, the key that made it."""

    #: The response object as it was answered (OpenAI's ``response`` shape).
    response: dict[str, Any]
    #: The whole conversation as Responses input items, ending with this response's output
    #: (from ``ResponseStore.record``: only the items its own record holds).
    items: list[dict[str, Any]]
    #: The gateway key that made it (None: made with ``[auth]`` off).
    owner: str | None
    #: The id of the response it continued (None: the first turn, or a whole-conversation record).
    previous: str | None = None
    #: Responses in its conversation, itself included (1: the first turn).
    depth: int = 1
    #: Bytes of the records read to load it (its conversation's stored size).
    size: int = 0

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
        self,
        response: dict[str, Any],
        items: list[dict[str, Any]],
        owner: str | None,
        *,
        previous: StoredResponse | None = None,
    ) -> bool:
        """Keep ``response`` under ``response["id"]``, for ``owner`` (the gateway key's name;
        None with ``[auth]`` off) and ``retention_seconds``.

        ``items``: this turn's input items and output when ``previous`` (the conversation it
        continued, as ``load`` gave it) is given, which the record then links to; else the
        whole conversation, kept in the record itself. False when it is not kept:
        ``[responses] store`` is off, or the record is larger than ``max_record_bytes`` (logged
        at WARNING; the answer goes out all the same).
        """
        config = self._gateway.config.responses
        if not config.store:
            return False
        response_id = response.get("id")
        if not isinstance(response_id, str) or not 0 < len(response_id) <= MAX_ID_LENGTH:
            raise ValueError(f"a stored response needs an id of 1 to {MAX_ID_LENGTH} characters")
        fields: dict[str, Any]
        if previous is None:
            fields = {"owner": owner, "response": response, "items": items}
        else:
            link = previous.response.get("id")
            if not isinstance(link, str):
                raise ValueError("the response a stored response continues needs an id")
            fields = {
                "owner": owner,
                "response": response,
                "turn": items,
                "previous": link,
                "depth": previous.depth + 1,
            }
        record = _encode(fields)
        size = len(record)
        if size > config.max_record_bytes:
            log.warning(
                "response %s is not stored: its record (the response and the %d items of its "
                "turn) is %d bytes, over [responses] max_record_bytes (%d); a "
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

    async def record(
        self, response_id: str, owner: str | None, *, any_owner: bool = False
    ) -> StoredResponse | None:
        """The record ``owner`` stored under ``response_id``, read alone (its ``items`` are
        what the record holds, the conversation is not walked); None when it is missing, has
        expired, is another key's, or storing is off. ``any_owner``: whoever stored it (the
        admin key)."""
        if not self.enabled:
            return None
        stored = await self._read(response_id)
        if stored is None or (not any_owner and stored.owner != owner):
            return None
        return stored

    async def load(
        self,
        response_id: str,
        owner: str | None,
        *,
        any_owner: bool = False,
        to_list: bool = False,
    ) -> StoredResponse | None:
        """The response ``owner`` stored under ``response_id`` with its whole conversation, to
        continue it (``to_list``: to list its input items); None as ``record``.

        Raises ``GatewayError`` 400: ``previous_response_not_found`` naming the response of its
        conversation that is gone (expired, deleted, unreadable, or another key's), and
        ``conversation_too_long`` when it is past ``max_chain_depth`` or
        ``max_conversation_bytes`` — to continue, a conversation must hold fewer responses
        and at most that many bytes; to list, the one response or record more that
        continuing it may have added.
        """
        first = await self.record(response_id, owner, any_owner=any_owner)
        if first is None:
            return None
        config = self._gateway.config.responses
        max_depth = config.max_chain_depth if to_list else config.max_chain_depth - 1
        max_bytes = config.max_conversation_bytes + (config.max_record_bytes if to_list else 0)
        to = "list" if to_list else "continue"
        # The depth its record says is checked first: one read refuses a conversation that
        # is too long, and the walk below counts for itself, so neither bound relies on it.
        depth = first.depth
        size = first.size
        turns = [first.items]
        link = first.previous
        hops = 1
        while True:
            if depth > max_depth or hops > max_depth:
                raise conversation_too_long(
                    response_id,
                    f"it holds {max(depth, hops)} responses, and [responses] "
                    f"max_chain_depth is {config.max_chain_depth}",
                    to=to,
                )
            if size > max_bytes:
                raise conversation_too_long(
                    response_id,
                    f"its stored records hold {size} bytes or more, and [responses] "
                    f"max_conversation_bytes is {config.max_conversation_bytes}",
                    to=to,
                )
            if link is None:
                break
            earlier = await self._read(link)
            # The owner of the response asked for, not the caller's: the admin key walks a
            # key's conversation, and nobody walks into another key's record.
            if earlier is None or earlier.owner != first.owner:
                raise previous_response_not_found(link, response_id)
            hops += 1
            size += earlier.size
            turns.append(earlier.items)
            link = earlier.previous
        if hops == 1:
            return first
        items = [item for turn in reversed(turns) for item in turn]
        return StoredResponse(first.response, items, first.owner, first.previous, first.depth, size)

    async def delete(self, response_id: str, owner: str | None, *, any_owner: bool = False) -> bool:
        """Remove the response ``owner`` stored under ``response_id``; False as ``record``
        None. Only that record goes: the responses it continued stay, and a later one that
        continued it can still be retrieved but no longer continued or listed."""
        if await self.record(response_id, owner, any_owner=any_owner) is None:
            return False
        deleted = await self._gateway.accountant.store.delete(COLLECTION, response_id)
        self._gateway.store_outage.recovered()
        return deleted

    async def _read(self, response_id: str) -> StoredResponse | None:
        """The record under ``response_id`` of any owner; None when missing or unreadable."""
        if not 0 < len(response_id) <= MAX_ID_LENGTH:
            return None
        raw = await self._gateway.accountant.store.get(COLLECTION, response_id)
        if raw is None:
            return None
        try:
            return _decode(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("stored response %s is unreadable; treated as missing", response_id)
            return None


def _decode(raw: str) -> StoredResponse:
    """A record of either shape (see the module's docstring); raises on anything else."""
    record = fastjson.loads(raw)
    response = record["response"]
    owner = record["owner"]
    if not isinstance(response, dict) or not (owner is None or isinstance(owner, str)):
        raise TypeError("not a stored response")
    if "turn" not in record:
        items = record["items"]
        if not isinstance(items, list):
            raise TypeError("not a stored response")
        return StoredResponse(response, items, owner, None, 1, len(raw.encode()))
    turn, previous, depth = record["turn"], record["previous"], record["depth"]
    if (
        not isinstance(turn, list)
        or not isinstance(previous, str)
        or not isinstance(depth, int)
        or depth < 2
    ):
        raise TypeError("not a stored response")
    return StoredResponse(response, turn, owner, previous, depth, len(raw.encode()))


#: Records are encoded with msgspec: one may be megabytes, encoded on the event loop, several
#: times faster than ``json.dumps`` (and strictly JSON: a NaN is written as null).
_encode = msgspec.json.Encoder().encode
