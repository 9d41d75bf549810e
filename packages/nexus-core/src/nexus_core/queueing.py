"""Capacity queue: where a request waits while every backend that could serve it is full.

A backend with ``max_concurrent`` is *full* when its ``pending`` count has reached the limit.
When every planned route is full, the request registers a waiter (its priority, an arrival
number and the backends it waits for) and awaits a future; nothing polls. Each time a slot on a
limited backend is released (``release``), the first waiter in priority order (``high`` before
``normal``, FIFO within one) that waits for that backend is woken, once. A woken waiter re-plans;
if everything is full again it goes back in at its old place (the front of its priority for all
who came later). A waiter that leaves without using its wake-up (cancelled, timed out at the
same moment) passes it on, so no wake-up is lost.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from dataclasses import dataclass, field

from nexus_core.errors import GatewayError
from nexus_core.registry import Backend

__all__ = ["CapacityQueue", "is_full", "release"]

#: Priority ranks: lower is served first.
HIGH = 0
NORMAL = 1


def is_full(backend: Backend) -> bool:
    """True when the backend has a ``max_concurrent`` and that many requests in flight."""
    limit = backend.max_concurrent
    return limit is not None and backend.pending >= limit


def release(backend: Backend, queue: CapacityQueue | None, model: str | None = None) -> None:
    """Give back one of ``backend``'s slots (taken for ``model``) and wake a request waiting for
    it (the one place)."""
    backend.pending -= 1
    if model is not None:
        in_flight = backend.in_flight
        in_flight[model] = in_flight.get(model, 1) - 1
    if queue is not None and backend.max_concurrent is not None and queue.waiters:
        queue.slot_freed(backend)


@dataclass(eq=False, slots=True)
class Waiter:
    """One queued request."""

    rank: int
    seq: int
    backends: frozenset[int]
    future: asyncio.Future[None] = field(repr=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.rank, self.seq)


class CapacityQueue:
    """Bounded priority queue of requests waiting for a backend slot (one per Gateway)."""

    def __init__(self, *, enabled: bool = True, max_size: int = 100, max_wait: float = 30.0):
        self.enabled = enabled
        self.max_size = max_size
        self.max_wait = max_wait
        #: Waiters in service order, kept sorted by (rank, seq).
        self.waiters: list[Waiter] = []
        self._keys: list[tuple[int, int]] = []
        self._seq = 0

    @property
    def queue_depth(self) -> int:
        """Requests waiting now (a gauge)."""
        return len(self.waiters)

    @property
    def retry_after(self) -> str:
        """The ``Retry-After`` seconds suggested with a 503 from the queue."""
        return str(max(1, math.ceil(min(self.max_wait, 5.0))))

    def slot_freed(self, backend: Backend) -> None:
        """Wake the first waiter that waits for ``backend`` (at most one)."""
        ident = id(backend)
        waiters = self.waiters
        index = 0
        while index < len(waiters):
            waiter = waiters[index]
            if waiter.future.done():
                # Cancelled, not yet run to its cleanup: drop it; it must not swallow the wake-up.
                del waiters[index]
                del self._keys[index]
                continue
            if ident in waiter.backends:
                del waiters[index]
                del self._keys[index]
                waiter.future.set_result(None)
                return
            index += 1

    def _insert(self, waiter: Waiter) -> None:
        index = bisect.bisect(self._keys, waiter.key)
        self._keys.insert(index, waiter.key)
        self.waiters.insert(index, waiter)

    def _remove(self, waiter: Waiter) -> None:
        index = bisect.bisect_left(self._keys, waiter.key)
        if index < len(self.waiters) and self.waiters[index] is waiter:
            del self.waiters[index]
            del self._keys[index]

    def _busy(self, message: str, code: str) -> GatewayError:
        return GatewayError(
            503,
            message,
            type="service_unavailable",
            code=code,
            headers={"Retry-After": self.retry_after},
        )

    async def wait(
        self,
        backends: list[Backend],
        *,
        high: bool = False,
        seq: int | None = None,
        deadline: float | None = None,
    ) -> tuple[int, float]:
        """Wait until a slot on one of ``backends`` is released; raise 503 when that cannot be.

        ``seq`` and ``deadline`` come from an earlier call of the same request (a woken waiter
        that found everything full again keeps its place and its deadline). Returns them.
        """
        if not self.enabled:
            raise self._busy(
                "Every backend that can serve this request is at its max_concurrent "
                "and the queue is disabled",
                "backends_busy",
            )
        loop = asyncio.get_running_loop()
        if seq is None:
            if len(self.waiters) >= self.max_size:
                raise self._busy(
                    f"Every backend that can serve this request is busy and the queue is full "
                    f"({self.max_size} waiting)",
                    "queue_full",
                )
            self._seq += 1
            seq = self._seq
            deadline = loop.time() + self.max_wait
        assert deadline is not None
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise self._timeout()
        waiter = Waiter(
            HIGH if high else NORMAL,
            seq,
            frozenset(id(b) for b in backends),
            loop.create_future(),
        )
        self._insert(waiter)
        try:
            async with asyncio.timeout(remaining):
                await waiter.future
        except TimeoutError:
            if self._leave(waiter):
                return seq, deadline  # woken at the very moment the wait ran out: use it
            raise self._timeout() from None
        except BaseException:
            if self._leave(waiter):
                self.pass_on(backends)  # cancelled after the wake-up: the next one gets it
            raise
        return seq, deadline

    def _leave(self, waiter: Waiter) -> bool:
        """Take a departing waiter out; True when it had been woken already."""
        if waiter.future.done() and not waiter.future.cancelled():
            return True
        waiter.future.cancel()
        self._remove(waiter)
        return False

    def pass_on(self, backends: list[Backend]) -> None:
        """Hand an unused wake-up on: one waiter per backend with a free slot is woken."""
        for backend in backends:
            if backend.max_concurrent is not None and not is_full(backend) and self.waiters:
                self.slot_freed(backend)

    def _timeout(self) -> GatewayError:
        return self._busy(
            f"Every backend that can serve this request stayed busy for "
            f"{self.max_wait:g} s (queue.max_wait_seconds)",
            "queue_timeout",
        )
