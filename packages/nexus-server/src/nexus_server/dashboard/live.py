"""The dashboard's state and live feed: the page's fragments, ``GET /ws``, the snapshot.

One ``Dashboard`` per app listens to the registry and the monitor once, for the app's life. The
listeners run on the request path and in the health loop: they only set bits saying which parts
of the page are out of date (and a finished request bumps its backend's chart step, O(1)); they
render nothing and send nothing.

All HTML comes from ``render``. ``refresh()`` renders again, once, the fragments that are out of
date, whoever asks first (``GET /``, a poll of ``/dashboard/fragments``, a client connecting or
the feed): the history after requests finish, the matrix after backends or their models change,
and the summary and the cards (latency, pending, charts) once per 2 s step.

The feed: while a client is connected, one task flushes every ``FLUSH_SECONDS``: it refreshes,
keeps the fragments that differ from those it sent last, encodes them into one message and
queues that same text for every client. A client gets every fragment when it connects, then the
changed ones. Every client has a bounded queue; a client whose queue is full is disconnected
(close code 1013, "try again later"); the page reconnects and starts again from every fragment,
so no client ever shows a state with an update missing.

What is rendered is bounded whatever the size of the fleet: a card shows its first
``CARD_MODELS`` model ids (sorted) and its model count, the matrix its first ``MATRIX_MODELS``
rows and the count of distinct models. Both lists are computed when the models change (the
registry replaces a backend's ``models`` dict then, and says so), not per rendering.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nexus_core.auth import presented_key
from nexus_core.state import StateError
from nexus_server.dashboard.render import (
    CARD_MODELS,
    CHART_POINTS,
    MATRIX_MODELS,
    Card,
    Fragments,
    backend_fragments,
    card,
    health_fragments,
    history_fragments,
    history_row,
    matrix_fragments,
    new_history_fragments,
    operations_fragments,
    page,
    widget_fragments,
)
from nexus_server.dashboard.series import POINTS, STEP, Series
from nexus_server.dashboard.sessions import Sessions, session_id_in
from nexus_server.trust import LOCAL_KEY, Trust

if TYPE_CHECKING:
    from nexus_core.gateway import Gateway
    from nexus_core.observability import RequestRecord
    from nexus_core.registry import Backend
    from nexus_server.proxy import Receive, Scope, Send

log = logging.getLogger("nexus.dashboard")

#: Version of the ``/dashboard/snapshot`` schema (docs/dashboard.md). 2: bounded model lists,
#: ``matrix``.
SCHEMA_VERSION = 2
#: Seconds between two flushes of the feed: how long a change waits to reach the pages, and
#: what a burst of requests is gathered into.
FLUSH_SECONDS = 0.25
#: The parts of the page a listener can mark out of date.
HEALTH, WIDGETS, BACKENDS, MATRIX, HISTORY, OPERATIONS = 1, 2, 4, 8, 16, 32
EVERYTHING = HEALTH | WIDGETS | BACKENDS | MATRIX | HISTORY | OPERATIONS
#: Messages waiting for one client before it counts as too slow and is disconnected.
QUEUE_SIZE = 256
#: Seconds one send may take before the client counts as too slow.
SEND_TIMEOUT = 10.0
#: Close codes: the Origin is not this server's (before accept: HTTP 403); the client is too slow.
CLOSE_FORBIDDEN = 4003
CLOSE_TOO_SLOW = 1013


def _encode(fragments: Fragments) -> str:
    """The ``fragments`` message of ``/ws`` and ``/dashboard/fragments``."""
    message = {"type": "fragments", "fragments": fragments}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def viewer_allowed(gateway: Any, scope: Scope) -> bool:
    """With ``[auth]`` on, the dashboard shows to this machine (``nexus_server.trust``) and to
    the admin key only: it shows every tenant's requests, which a gateway key may not see
    (``may_view`` adds the operators signed in with the admin key)."""
    keys = gateway.keys
    if not keys.enabled:
        return True
    if scope.get(LOCAL_KEY) is True:
        return True
    found = dict(scope["headers"])
    admin: bool = keys.is_admin(presented_key(found.get(b"authorization"), found.get(b"x-api-key")))
    return admin


async def may_view(gateway: Any, scope: Scope, sessions: Sessions) -> bool:
    """``viewer_allowed``, or an operator signed in with the admin key (its session cookie)."""
    if viewer_allowed(gateway, scope):
        return True
    if gateway.keys.admin_digest is None:
        return False
    try:
        session = await sessions.get(session_id_in(scope["headers"]))
    except StateError:
        return False  # the store is down: the admin key in a header still works
    return session is not None and not session.local


def origin_allowed(headers: list[tuple[bytes, bytes]], trust: Trust) -> bool:
    """True without an Origin (not a browser) or when the Origin is the server's own: its
    host:port is the request's Host and that Host names this server (no DNS rebinding)."""
    origin = host = None
    for name, value in headers:
        if name == b"origin":
            origin = value
        elif name == b"host":
            host = value
    if origin is None:
        return True
    if not trust.host_allowed(host):
        return False
    parts = urlsplit(origin.decode("latin-1"))
    if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
        return False
    return parts.netloc.lower() == host.decode("latin-1").lower()


class Client:
    """One connected page: its bounded queue of encoded messages (shared with every client)."""

    __slots__ = ("overflowed", "queue")

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        # None in the queue means "close: too slow".
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=size)
        self.overflowed = False

    def offer(self, text: str) -> None:
        """Queue a message without waiting; on overflow drop the queue and mark the client."""
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class Dashboard:
    """State, fragments and live feed of the dashboard of one gateway."""

    def __init__(self, gateway: Gateway, *, queue_size: int = QUEUE_SIZE) -> None:
        self.gateway = gateway
        self.queue_size = queue_size
        #: The operators' sessions (``control``): who sees and may use the controls.
        self.sessions = Sessions(gateway.accountant.store)
        self.series = Series()
        self.clients: set[Client] = set()
        # Per backend: the ``models`` dict the list was taken from (the registry replaces it on
        # every change, so identity says whether it is current) and its first model ids.
        self._card_models: dict[str, tuple[dict[str, Any], list[str]]] = {}
        self._matrix: dict[str, Any] | None = None
        # What the page shows: the fragments as rendered last, the parts out of date since
        # (bits), the 2 s step the widgets and cards were rendered in.
        self._fragments: Fragments = {}
        # The cards: per backend, the id of its card's element, what its inside was rendered
        # from (``_card_key``) and the inside; ids are never reused.
        self._cards: dict[str, tuple[str, tuple[Any, ...], str]] = {}
        self._card_ids = 0
        self._layout: list[tuple[str, str]] = []
        self._stale = EVERYTHING
        self._step = -1
        #: What the operations panel was rendered from (``_operations_key``).
        self._operations_shown: tuple[Any, ...] = ()
        # The history's rows, newest first: each record (a finished one never changes) and
        # its row, rendered once.
        self._rows: list[tuple[RequestRecord, str]] = []
        # The fragments as sent last (every one after the first flush; the cards' insides and
        # their layout apart), and the message carrying all of them (for a new client or a
        # poll), encoded once per change.
        self._sent: Fragments = {}
        self._sent_layout: list[tuple[str, str]] = []
        self._sent_cards: dict[str, str] = {}
        self._sent_rows: list[RequestRecord] = []
        self._everything: str | None = None
        self._flusher: asyncio.Future[None] | None = None
        gateway.registry.subscribe(self._on_backend)
        gateway.monitor.subscribers.append(self._on_request)

    # -- listeners (called on the request path and by the health loop: never block) ----------

    def _on_request(self, record: RequestRecord) -> None:
        if record.backend:
            self.series.add(
                record.backend, record.duration, record.status >= 400 or bool(record.error)
            )
        self._stale |= HISTORY | WIDGETS
        if record.cached_tokens is not None:
            self._stale |= BACKENDS  # its card's cache hit ratio moved

    def _on_backend(self, event: str, backend: Backend) -> None:
        if event != "status":  # added, removed, models: the matrix is built again when read
            self._matrix = None
        # The health pill counts backends, the matrix's dots have the backends' colours.
        self._stale |= HEALTH | BACKENDS | MATRIX
        if event == "removed":
            self.series.forget(backend.name)
            self._card_models.pop(backend.name, None)
            self._cards.pop(backend.name, None)

    # -- what the page shows --------------------------------------------------------------------

    def backend(self, backend: Backend) -> dict[str, Any]:
        """``Backend.snapshot()`` with only the first ``CARD_MODELS`` model ids and the count."""
        models = backend.models
        cached = self._card_models.get(backend.name)
        if cached is None or cached[0] is not models:
            cached = self._card_models[backend.name] = (
                models,
                heapq.nsmallest(CARD_MODELS, models),
            )
        latency = backend.latency_ms
        series = self.gateway.monitor.by_backend.get(backend.name)
        return {
            "name": backend.name,
            "url": backend.config.url,
            "type": backend.type_name,
            "kind": backend.kind,
            "source": backend.source,
            "status": backend.status.value,
            "zone": backend.zone.value,
            "tier": backend.tier,
            "priority": backend.priority,
            "max_concurrent": backend.max_concurrent,
            "pending": backend.pending,
            "latency_ms": None if latency is None else round(latency, 3),
            "last_error": backend.last_error,
            "last_checked": backend.last_checked,
            "version": backend.version,
            "requests_total": backend.requests_total,
            "errors_total": backend.errors_total,
            "cache_hit_ratio": None if series is None else series.cache_hit_ratio(),
            "models": cached[1],
            "model_count": len(models),
        }

    def matrix(self) -> dict[str, Any]:
        """The first ``MATRIX_MODELS`` model ids (sorted), each with the backends serving it."""
        if self._matrix is None:
            registry = self.gateway.registry
            ids = registry.model_ids()
            rows = []
            for model in heapq.nsmallest(MATRIX_MODELS, ids):
                serving = registry.serving(model)
                row: dict[str, Any] = {"model": model, "backends": [b.name for b in serving]}
                # Where the server reports it (lifecycle operations), the model's state there.
                states = {
                    b.name: state.value
                    for b in serving
                    if (state := b.model_states.get(model)) is not None
                }
                if states:
                    row["states"] = states
                rows.append(row)
            self._matrix = {"model_count": len(ids), "rows": rows}
        return self._matrix

    def operations(self) -> list[dict[str, Any]]:
        """The fleet operations running and the last finished ones, newest first
        (``GET /admin/operations``)."""
        return [operation.snapshot() for operation in self.gateway.operations.list()]

    def _operations_key(self) -> tuple[Any, ...]:
        # What the operations panel shows changes with these (a few operations: microseconds).
        return tuple((op.id, op.state, op.step, op.error) for op in self.gateway.operations.list())

    def stats(self) -> dict[str, Any]:
        """The summary widgets' part of ``/v1/stats`` (its per-model part grows with the fleet)."""
        return self.gateway.monitor.summary()

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as data: ``GET /dashboard/snapshot``."""
        gateway = self.gateway
        backends = list(gateway.registry)
        return {
            "type": "snapshot",
            "version": SCHEMA_VERSION,
            "time": time.time(),
            "step_seconds": STEP,
            "health": gateway.health_summary(),
            "backends": [self.backend(b) for b in backends],
            "matrix": self.matrix(),
            "history": gateway.monitor.history_entries(),
            "stats": self.stats(),
            "series": {b.name: self.series.points(b.name, POINTS) for b in backends},
            "operations": self.operations(),
        }

    # -- fragments ------------------------------------------------------------------------------

    def refresh(self) -> Fragments:
        """Every fragment of the page, rendering again (once) those that are out of date."""
        step = self.series.now_index()
        if step != self._step:  # a new chart point; latency, pending, the queue: per step
            self._step = step
            self._stale |= WIDGETS | BACKENDS
        operations = self._operations_key()
        if operations != self._operations_shown:
            self._operations_shown = operations
            self._stale |= OPERATIONS
        stale = self._stale
        if not stale:
            return self._fragments
        self._stale = 0
        gateway = self.gateway
        fragments = self._fragments
        views: list[dict[str, Any]] = []
        if stale & (BACKENDS | MATRIX):
            views = [self.backend(b) for b in gateway.registry]
        if stale & HEALTH:
            fragments.update(health_fragments(gateway.health_summary()))
        if stale & WIDGETS:
            fragments.update(widget_fragments(self.stats()))
        if stale & BACKENDS:
            fragments.update(backend_fragments(self._render_cards(views)))
        if stale & MATRIX:
            fragments.update(matrix_fragments(views, self.matrix()))
        if stale & OPERATIONS:
            fragments.update(operations_fragments(self.operations()))
        if stale & HISTORY:
            rendered = {id(record): row for record, row in self._rows}
            self._rows = [
                (record, rendered.get(id(record)) or history_row(record.as_dict()))
                for record in reversed(gateway.monitor.history)
            ]
            fragments.update(history_fragments([row for _, row in self._rows]))
        return fragments

    def _render_cards(self, views: list[dict[str, Any]]) -> list[Card]:
        """Every backend's card; the inside of one is rendered again only when what it shows
        changed (a card whose backend served nothing for as long as its charts show does not
        change from one step to the next)."""
        window = self._step - CHART_POINTS
        cards: list[Card] = []
        for view in views:
            name = view["name"]
            charts = self._step if self.series.active_since(name, window) else None
            key = _card_key(view, charts)
            cached = self._cards.get(name)
            if cached is None or cached[1] != key:
                slot = cached[0] if cached is not None else self._card_id()
                inside = card(view, self.series.points(name, CHART_POINTS))
                cached = self._cards[name] = (slot, key, inside)
            cards.append((cached[0], name, cached[2]))
        self._layout = [(slot, name) for slot, name, _ in cards]
        return cards

    def _card_id(self) -> str:
        self._card_ids += 1
        return f"card-{self._card_ids}"

    def flush(self) -> None:
        """Refresh, and queue the fragments that changed since the last flush for every client
        (rendered and encoded once, whatever the number of clients)."""
        sent = self._sent
        changed = {key: html for key, html in self.refresh().items() if sent.get(key) != html}
        if not changed:
            return
        sent.update(changed)
        self._everything = None
        if "history" in changed:
            records = [record for record, _ in self._rows]
            new = _new_on_top(records, self._sent_rows)
            if new is not None:  # the rows sent are still there, below the new ones
                del changed["history"]
                rows = [history_row(record.as_dict(), fresh=True) for record in records[:new]]
                changed.update(new_history_fragments(rows, len(records)))
            self._sent_rows = records
        if "backends" in changed and self._layout == self._sent_layout:
            # The same cards in the same order: only the insides that changed, each alone.
            del changed["backends"]
            for slot, inside in ((c[0], c[2]) for c in self._cards.values()):
                if self._sent_cards.get(slot) != inside:
                    changed[slot] = inside
        self._sent_layout = self._layout
        self._sent_cards = {slot: inside for slot, _, inside in self._cards.values()}
        if self.clients and changed:
            text = _encode(changed)
            for client in self.clients:
                client.offer(text)

    def everything(self) -> str:
        """The message with every fragment, current: a client's first, and each poll's answer."""
        self.flush()
        if self._everything is None:
            self._everything = _encode(self._sent)
        return self._everything

    def page(self, viewer: str = "", *, operator: bool = False) -> str:
        """The whole page, current (``GET /``), with the ``viewer``'s own part."""
        self.flush()
        return page(self._sent, viewer=viewer, operator=operator)

    # -- the WebSocket --------------------------------------------------------------------------

    async def websocket(self, scope: Scope, receive: Receive, send: Send, trust: Trust) -> None:
        """``GET /ws``: check the Origin, send every fragment, then the changed ones until the
        client leaves."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if not origin_allowed(scope["headers"], trust) or not await may_view(
            self.gateway, scope, self.sessions
        ):
            # Closing before accepting makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": CLOSE_FORBIDDEN})
            return
        await send({"type": "websocket.accept"})
        client = Client(self.queue_size)
        first = self.everything()
        # Registered in the same step its first message was taken: every later change reaches
        # it in a flush.
        self.clients.add(client)
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush_loop())
        sender = asyncio.ensure_future(self._send_loop(client, first, send))
        listener = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.clients.discard(client)
            tasks: list[asyncio.Future[None]] = [sender, listener]
            if not self.clients and self._flusher is not None:
                tasks.append(self._flusher)
                self._flusher = None
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # a rendering bug must not end the feed of every page
                log.exception("dashboard: rendering failed")

    async def _send_loop(self, client: Client, first: str, send: Send) -> None:
        text: str | None = first
        while text is not None:
            try:
                await asyncio.wait_for(send({"type": "websocket.send", "text": text}), SEND_TIMEOUT)
            except TimeoutError:
                log.info("dashboard client too slow: disconnected")
                return
            text = await client.queue.get()
        log.info("dashboard client too slow: disconnected")
        await send({"type": "websocket.close", "code": CLOSE_TOO_SLOW})


def _new_on_top(rows: list[RequestRecord], sent: list[RequestRecord]) -> int | None:
    """How many rows are new on top of those sent, or None when the rows sent are not all
    still there below them (more than the table keeps came in)."""
    if not sent:
        return None
    for index, record in enumerate(rows):
        if record is sent[0]:
            kept = rows[index:]
            return index if all(a is b for a, b in zip(kept, sent, strict=False)) else None
    return None


def _card_key(view: dict[str, Any], charts: int | None) -> tuple[Any, ...]:
    # What a card shows (its charts: the step they end at, or None when they are all zeros).
    return (
        view["status"],
        view["type"],
        view["zone"],
        view["latency_ms"],
        view["pending"],
        view.get("cache_hit_ratio"),
        view["max_concurrent"],
        view["last_error"],
        view["model_count"],
        view["models"],
        charts,
    )


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
