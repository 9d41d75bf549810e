"""The dashboard's live feed: ``GET /ws`` (plain ASGI WebSocket) and the snapshot behind it.

One ``Dashboard`` per app listens to the registry and the monitor once, for the app's life, and
fans every event out to the connected clients. With nobody connected a finished request costs one
O(1) update of the time series and a loop over an empty set.

What is sent is bounded whatever the size of the fleet: a backend carries its first
``CARD_MODELS`` model ids (sorted) and its model count, and the models x backends matrix its first
``MATRIX_MODELS`` rows and the count of distinct models. Both are computed when the models change
(the registry replaces a backend's ``models`` dict then, and says so), not per message; the
periodic ``stats`` message carries the matrix only in the step after it changed.

Every client has a bounded queue of encoded messages. Listeners only ``put_nowait``: a client
whose queue is full is disconnected (close code 1013, "try again later"); the page reconnects and
starts again from a fresh snapshot, so no client ever sees a state with a delta missing.
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
from nexus_server.dashboard.render import CARD_MODELS, MATRIX_MODELS
from nexus_server.dashboard.series import POINTS, STEP, Series
from nexus_server.trust import LOCAL_KEY, Trust

if TYPE_CHECKING:
    from nexus_core.gateway import Gateway
    from nexus_core.observability import RequestRecord
    from nexus_core.registry import Backend
    from nexus_server.proxy import Receive, Scope, Send

log = logging.getLogger("nexus.dashboard")

#: Version of the ``/ws`` message schema (docs/dashboard.md). 2: bounded model lists, ``matrix``.
SCHEMA_VERSION = 2
#: Messages waiting for one client before it counts as too slow and is disconnected.
QUEUE_SIZE = 256
#: Seconds one send may take before the client counts as too slow.
SEND_TIMEOUT = 10.0
#: Close codes: the Origin is not this server's (before accept: HTTP 403); the client is too slow.
CLOSE_FORBIDDEN = 4003
CLOSE_TOO_SLOW = 1013


def _encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def viewer_allowed(gateway: Any, scope: Scope) -> bool:
    """With ``[auth]`` on, the dashboard shows to this machine (``nexus_server.trust``) and to
    the admin key only: it shows every tenant's requests, which a gateway key may not see."""
    keys = gateway.keys
    if not keys.enabled:
        return True
    if scope.get(LOCAL_KEY) is True:
        return True
    found = dict(scope["headers"])
    admin: bool = keys.is_admin(presented_key(found.get(b"authorization"), found.get(b"x-api-key")))
    return admin


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
    """One connected page: its bounded queue of encoded messages."""

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
    """State and live feed of the dashboard of one gateway."""

    def __init__(self, gateway: Gateway, *, queue_size: int = QUEUE_SIZE) -> None:
        self.gateway = gateway
        self.queue_size = queue_size
        self.series = Series()
        self.clients: set[Client] = set()
        self._stats_cache: tuple[int, str] | None = None
        # Per backend: the ``models`` dict the list was taken from (the registry replaces it on
        # every change, so identity says whether it is current) and its first model ids.
        self._card_models: dict[str, tuple[dict[str, Any], list[str]]] = {}
        self._matrix: dict[str, Any] | None = None
        # Bumped when the matrix may have changed; the stats message carries it when the
        # version it sent last is older.
        self._matrix_version = 0
        self._matrix_sent = 0
        gateway.registry.subscribe(self._on_backend)
        gateway.monitor.subscribers.append(self._on_request)

    # -- listeners (called on the request path and by the health loop: never block) ----------

    def _on_request(self, record: RequestRecord) -> None:
        failed = record.status >= 400 or record.error is not None
        if record.backend:
            self.series.add(record.backend, record.duration, failed)
        if self.clients:
            self.broadcast({"type": "request", "request": record.as_dict()})

    def _on_backend(self, event: str, backend: Backend) -> None:
        if event != "status":  # added, removed, models: the matrix is built again when read
            self._matrix = None
            self._matrix_version += 1
        if self.clients:
            self.broadcast({"type": "backend", "event": event, "backend": self.backend(backend)})
        if event == "removed":
            self.series.forget(backend.name)
            self._card_models.pop(backend.name, None)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for every client (encoded once)."""
        text = _encode(message)
        for client in self.clients:
            client.offer(text)

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
            "models": cached[1],
            "model_count": len(models),
        }

    def matrix(self) -> dict[str, Any]:
        """The first ``MATRIX_MODELS`` model ids (sorted), each with the backends serving it."""
        if self._matrix is None:
            registry = self.gateway.registry
            ids = registry.model_ids()
            self._matrix = {
                "model_count": len(ids),
                "rows": [
                    {"model": model, "backends": [b.name for b in registry.serving(model)]}
                    for model in heapq.nsmallest(MATRIX_MODELS, ids)
                ],
            }
        return self._matrix

    def stats(self) -> dict[str, Any]:
        """The summary widgets' part of ``/v1/stats`` (its per-model part grows with the fleet)."""
        return self.gateway.monitor.summary()

    # -- messages -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows: the ``snapshot`` message and ``/dashboard/snapshot``."""
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
        }

    def stats_message(self) -> str:
        """The ``stats`` message of the step completed last (built once per step)."""
        index = self.series.now_index()
        cached = self._stats_cache
        if cached is not None and cached[0] == index:
            return cached[1]
        gateway = self.gateway
        backends = list(gateway.registry)
        message = {
            "type": "stats",
            "time": time.time(),
            "health": gateway.health_summary(),
            "backends": [self.backend(b) for b in backends],
            "stats": self.stats(),
            "points": {b.name: self.series.last_point(b.name) for b in backends},
        }
        if self._matrix_sent != self._matrix_version:
            self._matrix_sent = self._matrix_version
            message["matrix"] = self.matrix()
        text = _encode(message)
        self._stats_cache = (index, text)
        return text

    # -- the WebSocket --------------------------------------------------------------------------

    async def websocket(self, scope: Scope, receive: Receive, send: Send, trust: Trust) -> None:
        """``GET /ws``: check the Origin, send a snapshot, then deltas until the client leaves."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if not origin_allowed(scope["headers"], trust) or not viewer_allowed(self.gateway, scope):
            # Closing before accepting makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": CLOSE_FORBIDDEN})
            return
        await send({"type": "websocket.accept"})
        client = Client(self.queue_size)
        first = _encode(self.snapshot())
        # Registered in the same step the snapshot was taken: every later event is a delta.
        self.clients.add(client)
        sender = asyncio.ensure_future(self._send_loop(client, first, send))
        listener = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.clients.discard(client)
            for task in (sender, listener):
                task.cancel()
            for task in (sender, listener):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _send_loop(self, client: Client, first: str, send: Send) -> None:
        await asyncio.wait_for(send({"type": "websocket.send", "text": first}), SEND_TIMEOUT)
        next_tick = _next_tick()
        while True:
            timeout = next_tick - time.time()
            if timeout <= 0:
                text: str | None = self.stats_message()
                next_tick = _next_tick()
            else:
                try:
                    text = await asyncio.wait_for(client.queue.get(), timeout)
                except TimeoutError:
                    continue
            if text is None:
                log.info("dashboard client too slow: disconnected")
                await send({"type": "websocket.close", "code": CLOSE_TOO_SLOW})
                return
            try:
                await asyncio.wait_for(send({"type": "websocket.send", "text": text}), SEND_TIMEOUT)
            except TimeoutError:
                log.info("dashboard client too slow: disconnected")
                return


def _next_tick() -> float:
    # Just after the next step boundary, so that the step it reports is complete.
    return (int(time.time() // STEP) + 1) * STEP + 0.05


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
