"""``MemoryStore``: state in this process's dictionaries, lost on restart (``[state] backend =
"memory"``, and tests)."""

from __future__ import annotations

import time
from collections.abc import Callable

from nexus_core.state.base import PURGE_INTERVAL_SECONDS, gcra


class MemoryStore:
    """Everything in dictionaries of this process; gone on restart."""

    kind = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._settled: dict[tuple[str, str], int] = {}
        self._pending: dict[tuple[str, str], dict[str, int]] = {}
        self._records: dict[str, dict[str, str]] = {}
        self._tats: dict[str, float] = {}
        #: Records put with a ttl: (collection, key) -> (expires at, value).
        self._expiring: dict[tuple[str, str], tuple[float, str]] = {}
        self._purged_at = clock()

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the data stays until the object goes."""

    async def reserve(self, scope: str, period: str, entry: str, amount: int) -> None:
        """Record the outstanding estimate ``amount`` under ``entry``; counted until settled."""
        self._pending.setdefault((scope, period), {})[entry] = amount

    async def settle(self, scope: str, period: str, entry: str, amount: int) -> None:
        """Atomically drop the reservation ``entry`` (if any) and add ``amount`` to the total."""
        pending = self._pending.get((scope, period))
        if pending is not None:
            pending.pop(entry, None)
        self._settled[scope, period] = self._settled.get((scope, period), 0) + amount

    async def total(self, scope: str, period: str) -> int:
        """Settled total plus every outstanding reservation of ``(scope, period)``."""
        pending = self._pending.get((scope, period), {})
        return self._settled.get((scope, period), 0) + sum(pending.values())

    async def throttle(
        self, key: str, interval: float, burst: float, cost: float, *, force: bool = False
    ) -> float:
        """A token bucket (GCRA): 0 when ``cost`` fits, else seconds until it would."""
        now = time.time()
        tat, wait = gcra(self._tats.get(key, 0.0), now, interval, burst, cost, force)
        if wait == 0.0:
            self._tats[key] = tat
        return wait

    async def put(
        self, collection: str, key: str, value: str, *, ttl_seconds: float | None = None
    ) -> None:
        """Store ``value`` under ``key`` in ``collection`` (expiring after ``ttl_seconds``)."""
        if ttl_seconds is None:
            self._expiring.pop((collection, key), None)
            self._records.setdefault(collection, {})[key] = value
            return
        now = self._clock()
        self._records.get(collection, {}).pop(key, None)
        self._expiring[collection, key] = (now + ttl_seconds, value)
        if now - self._purged_at >= PURGE_INTERVAL_SECONDS:
            self._purged_at = now
            expired = [name for name, (until, _) in self._expiring.items() if until <= now]
            for name in expired:
                del self._expiring[name]

    async def get(self, collection: str, key: str) -> str | None:
        """The value under ``key`` in ``collection``; None when absent or expired."""
        value = self._records.get(collection, {}).get(key)
        if value is not None:
            return value
        found = self._expiring.get((collection, key))
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._expiring[collection, key]
            return None
        return found[1]

    async def items(self, collection: str) -> dict[str, str]:
        """Every key and value of ``collection`` put without ``ttl_seconds``."""
        return dict(self._records.get(collection, {}))

    async def delete(self, collection: str, key: str) -> bool:
        """Remove ``key`` from ``collection``; False when it was not there (or had expired)."""
        if self._records.get(collection, {}).pop(key, None) is not None:
            return True
        found = self._expiring.pop((collection, key), None)
        return found is not None and found[0] > self._clock()
