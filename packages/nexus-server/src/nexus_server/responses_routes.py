"""``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``: the stored
responses of the Responses API (``nexus_server.responses_store``), as the openai SDK's
``responses.retrieve``, ``responses.delete`` and ``responses.input_items.list`` call them.

``POST /v1/responses`` is a proxy door that ``NexusApp`` dispatches by its exact path; these
longer paths reach Litestar. With ``[auth]`` on they pass ``key_guard``: a gateway key finds only
the responses it made (another key's is a 404, as a missing one), the admin key every one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, delete, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from nexus_core.auth import ApiKey
from nexus_core.errors import GatewayError, bad_request
from nexus_core.gateway import Gateway, state_unavailable
from nexus_core.state import StateError
from nexus_server.guards import key_guard
from nexus_server.proxy import REQUEST_ID_KEY
from nexus_server.responses_store import ResponseStore, StoredResponse, response_not_found
from nexus_server.schemas import Answer, ErrorEnvelope, errors

#: Input items one page lists by default, and at most (OpenAI's limits).
DEFAULT_PAGE = 20
MAX_PAGE = 100

NOT_FOUND = {
    401: "[auth] is on and the request carries no gateway key Nexus knows.",
    404: "No stored response of that id for this key (missing, expired, deleted, or another "
    "key's).",
    503: "The [state] store is not answering (state_unavailable).",
}

ResponseId = FromPath[str]


class ResponseDeleted(Answer):
    """What ``DELETE /v1/responses/{id}`` answers."""

    id: str
    object: Literal["response"]
    deleted: bool


class InputItemList(Answer):
    """A page of a stored response's input items (OpenAI's cursor list)."""

    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ResponsesController(Controller):
    """The stored responses: retrieve, delete, list their input items."""

    path = "/v1/responses"
    guards = [key_guard]
    tags = ["responses"]

    @get("/{response_id:str}", responses=errors(ErrorEnvelope, {**NOT_FOUND, 400: "stream=true."}))
    async def retrieve(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[Gateway],
        viewer: NamedDependency[ApiKey | None],
        response_id: ResponseId,
        stream: Annotated[
            bool | None,
            QueryParameter(description="Refused when true: a stored response is not replayed."),
        ] = None,
    ) -> dict[str, Any]:
        """The stored response object, as it was answered."""
        if stream:
            raise bad_request(
                "Nexus does not replay a stored response as a stream; retrieve it without stream",
                param="stream",
            )
        return (await _stored(request, gateway, viewer, response_id, whole=False)).response

    @delete("/{response_id:str}", status_code=200, responses=errors(ErrorEnvelope, NOT_FOUND))
    async def remove(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[Gateway],
        viewer: NamedDependency[ApiKey | None],
        response_id: ResponseId,
    ) -> ResponseDeleted:
        """Delete a stored response (only it: the responses it continued stay)."""
        owner, any_owner = _owner(gateway, viewer)
        try:
            deleted = await ResponseStore(gateway).delete(response_id, owner, any_owner=any_owner)
        except StateError as exc:
            raise _unavailable(request, gateway, exc) from None
        if not deleted:
            raise response_not_found(response_id)
        return ResponseDeleted(id=response_id, object="response", deleted=True)

    @get(
        "/{response_id:str}/input_items",
        responses=errors(
            ErrorEnvelope,
            {
                **NOT_FOUND,
                400: "A bad limit, order or after; a response of its conversation is gone "
                "(previous_response_not_found) or the conversation is past [responses] "
                "max_chain_depth or max_conversation_bytes (conversation_too_long).",
            },
        ),
    )
    async def input_items(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[Gateway],
        viewer: NamedDependency[ApiKey | None],
        response_id: ResponseId,
        after: Annotated[
            str | None, QueryParameter(description="List the items after this item id.")
        ] = None,
        limit: Annotated[
            int, QueryParameter(description=f"Items per page, 1 to {MAX_PAGE}.")
        ] = DEFAULT_PAGE,
        order: Annotated[
            str, QueryParameter(description="asc (oldest first) or desc (newest first).")
        ] = "desc",
    ) -> InputItemList:
        """The items the stored response answered (its whole conversation before its output,
        read back through the responses it continued)."""
        if not 1 <= limit <= MAX_PAGE:
            raise bad_request(f"limit must be from 1 to {MAX_PAGE}", param="limit")
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'", param="order")
        stored = await _stored(request, gateway, viewer, response_id, whole=True)
        items = [listed(item, index) for index, item in enumerate(stored.input_items)]
        if order == "desc":
            items.reverse()
        start = 0
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise bad_request(f"No input item with id '{after[:256]}'", param="after")
            start = ids.index(after) + 1
        page = items[start : start + limit]
        return InputItemList(
            object="list",
            data=page,
            first_id=page[0]["id"] if page else None,
            last_id=page[-1]["id"] if page else None,
            has_more=start + limit < len(items),
        )


def listed(item: dict[str, Any], index: int) -> dict[str, Any]:
    """An input item as the input item list shows it: with an id (``item_<index>`` when it was
    sent without one) and a shorthand message (``{"role", "content": "text"}``) written out."""
    shown = dict(item)
    if "type" not in shown and "role" in shown:
        shown["type"] = "message"
    content = shown.get("content")
    if shown.get("type") == "message" and isinstance(content, str):
        kind = "output_text" if shown.get("role") == "assistant" else "input_text"
        shown["content"] = [{"type": kind, "text": content}]
    if not isinstance(shown.get("id"), str):
        shown["id"] = f"item_{index}"
    return shown


def _owner(gateway: Gateway, viewer: ApiKey | None) -> tuple[str | None, bool]:
    """Whose responses the caller finds: its key's; with ``[auth]`` off the ones made without a
    key; the admin key (``viewer`` None with auth on) every one."""
    if viewer is not None:
        return viewer.name, False
    return None, gateway.keys.enabled


async def _stored(
    request: Request[Any, Any, Any],
    gateway: Gateway,
    viewer: ApiKey | None,
    response_id: str,
    *,
    whole: bool,
) -> StoredResponse:
    """The response's record; ``whole``: with its whole conversation (a 400 when it is broken
    or too long)."""
    owner, any_owner = _owner(gateway, viewer)
    store = ResponseStore(gateway)
    try:
        if whole:
            stored = await store.load(response_id, owner, any_owner=any_owner, to_list=True)
        else:
            stored = await store.record(response_id, owner, any_owner=any_owner)
    except StateError as exc:
        raise _unavailable(request, gateway, exc) from None
    if stored is None:
        raise response_not_found(response_id)
    return stored


def _unavailable(
    request: Request[Any, Any, Any], gateway: Gateway, exc: StateError
) -> GatewayError:
    """503 ``state_unavailable``; the store's failure logged once per burst."""
    raw = request.scope.get(REQUEST_ID_KEY)
    request_id = raw.decode("latin-1") if isinstance(raw, bytes) else ""
    what = f"{request.method} {request.url.path!r}"
    gateway.store_outage.failed(what, exc, request_id)
    return state_unavailable("stored responses are kept there")
