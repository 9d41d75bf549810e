"""What every state store shares: the ``StateStore`` interface, ``StateError``, the outage log
(``StoreOutage``) and the token-bucket arithmetic (``gcra``).

A store holds spend per ``(scope, period)`` — scope ``"global"`` or ``"key:team-a"``, period
``"2026-11"``, amounts in integer nano-USD —, token buckets for rate limits (``throttle``) and
small collections of records (keys and backends added at run time), listed whole by ``items``,
and records that expire (``put`` with ``ttl_seconds``: stored responses of the Responses API),
read one at a time by ``get`` and never listed, so a collection of them may be large.

Crash safety. A request first *reserves* its estimated cost under an id unique to that attempt;
the reservation counts in ``total()`` at once. When the request ends, ``settle`` removes the
reservation and adds the final cost in ONE atomic step (one SQLite transaction, one Redis Lua
script). Whatever moment a process dies, exactly one of two states is stored: the reservation
(counted at its estimate) or the settled amount (counted once). Spend is never lost and never
counted twice; after a crash an unsettled reservation stays counted at its estimate, which errs
on the side of the budget.

``settle`` is therefore not idempotent: never retry it after an error. A failed settle leaves
the reservation counted, or was applied; retrying could count the cost twice.

Every method raises ``StateError`` when the backend fails, and within a bounded time (each
store says how long it waits).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("nexus.state")

#: Expired records are removed by the store's writes at most this often (SQLite and memory; Redis
#: expires its keys itself). Until then an expired record is only hidden from ``get``.
PURGE_INTERVAL_SECONDS = 60.0
#: Expired records one write removes at most (the rest go at the next purge).
PURGE_BATCH = 1000

#: While a store keeps failing, a reminder is logged at most this often.
OUTAGE_LOG_SECONDS = 60.0


class StateError(Exception):
    """The state store cannot be opened or a read or write failed."""


class StoreOutage:
    """Logs a failing state store once per failure burst, not once per request.

    The first failure is logged at ERROR; while the store keeps failing, one reminder with the
    count at most every ``OUTAGE_LOG_SECONDS``; the first success after a burst (``recovered``)
    logs that the store answers again. ``failing`` is a plain attribute, cheap to read per call.
    """

    __slots__ = ("_clock", "_last_logged", "_since", "count", "failing", "kind")

    def __init__(self, kind: str = "", *, clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = kind
        self.failing = False
        #: Failures in the current burst.
        self.count = 0
        self._clock = clock
        self._since = 0.0
        self._last_logged = 0.0

    def failed(self, what: str, exc: BaseException, request_id: str = "") -> None:
        """A call to the store failed (``what`` it was for); logged once per burst.

        ``request_id``: the request it was for, if any (its line then starts with the id).
        """
        now = self._clock()
        self.count += 1
        prefix = f"{request_id} " if request_id else ""
        if not self.failing:
            self.failing = True
            self._since = self._last_logged = now
            log.error(
                "%sthe %s state store failed (%s): %s; requests that need it get 503 "
                "state_unavailable until it answers again",
                prefix,
                self.kind,
                what,
                exc,
                extra={"request_id": request_id},
            )
        elif now - self._last_logged >= OUTAGE_LOG_SECONDS:
            self._last_logged = now
            log.error(
                "%sthe %s state store is still failing (%d failures in %.0f s; last, %s: %s)",
                prefix,
                self.kind,
                self.count,
                now - self._since,
                what,
                exc,
                extra={"request_id": request_id},
            )

    def recovered(self) -> None:
        """A write to the store succeeded: end the burst (logged once)."""
        if not self.failing:
            return
        self.failing = False
        log.warning(
            "the %s state store answers again (after %d failures in %.1f s)",
            self.kind,
            self.count,
            self._clock() - self._since,
        )
        self.count = 0


class StateStore(Protocol):
    """Spend reservations and settled totals per (scope, period), token buckets, records."""

    kind: str  # "memory" | "sqlite" | "redis"

    async def open(self) -> None:
        """Connect and create the schema; ``StateError`` if that is impossible."""

    async def close(self) -> None:
        """Release the connection; closing twice is harmless."""

    async def reserve(self, scope: str, period: str, entry: str, amount: int) -> None:
        """Record the outstanding estimate ``amount`` under ``entry``; counted until settled."""

    async def settle(self, scope: str, period: str, entry: str, amount: int) -> None:
        """Atomically drop the reservation ``entry`` (if any) and add ``amount`` to the total."""

    async def total(self, scope: str, period: str) -> int:
        """Settled total plus every outstanding reservation of ``(scope, period)``."""

    async def throttle(
        self, key: str, interval: float, burst: float, cost: float, *, force: bool = False
    ) -> float:
        """A token bucket (GCRA): 0 when ``cost`` fits, else seconds until it would.

        ``interval``: seconds one unit refills; ``burst``: seconds of units the bucket holds.
        ``force`` takes the cost even when it does not fit (usage known only afterwards).
        """

    async def put(
        self, collection: str, key: str, value: str, *, ttl_seconds: float | None = None
    ) -> None:
        """Store ``value`` (a JSON document, say) under ``key`` in ``collection``.

        With ``ttl_seconds`` the record expires that long after this write and ``items`` does
        not list it (read it with ``get``); without, it stays until deleted. Either replaces
        whatever ``key`` held. Kept once this returns (SQLite, Redis: a restart of Nexus loses
        nothing).
        """

    async def get(self, collection: str, key: str) -> str | None:
        """The value under ``key`` in ``collection``; None when absent or expired."""

    async def items(self, collection: str) -> dict[str, str]:
        """Every key and value of ``collection`` put without ``ttl_seconds``."""

    async def delete(self, collection: str, key: str) -> bool:
        """Remove ``key`` from ``collection``; False when it was not there (or had expired)."""


def gcra(
    tat: float, now: float, interval: float, burst: float, cost: float, force: bool
) -> tuple[float, float]:
    """The bucket's next theoretical arrival time and the wait (0.0: the cost fits)."""
    tat = max(tat, now)
    new_tat = tat + cost * interval
    allow_at = new_tat - burst
    if not force and allow_at > now:
        return tat, allow_at - now
    return new_tat, 0.0
