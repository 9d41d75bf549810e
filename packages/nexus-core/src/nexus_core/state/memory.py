"""``MemoryStore``: state in this process's dictionaries, lost on restart (``[state] backend =
"memory"``, and tests)."""

from __future__ import annotations

import time

from nexus_core.state.base import gcra


class MemoryStore:
    """Everything in dictionaries of this process; gone on restart."""

    kind = "memory"

    def __init__(self) -> None:
        self._settled: dict[tuple[str, str], int] = {}
        self._pending: dict[tuple[str, str], dict[str, int]] = {}
        self._records: dict[str, dict[str, str]] = {}
        self._tats: dict[str, float] = {}

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

    async def put(self, collection: str, key: str, value: str) -> None:
        """Store ``value`` under ``key`` in ``collection``."""
        self._records.setdefault(collection, {})[key] = value

    async def items(self, collection: str) -> dict[str, str]:
        """Every key and value of ``collection``."""
        return dict(self._records.get(collection, {}))

    async def delete(self, collection: str, key: str) -> bool:
        """Remove ``key`` from ``collection``; False when it was not there."""
        return self._records.get(collection, {}).pop(key, None) is not None
