"""How ``nexus serve`` runs the garbage collector: what survives a young collection is frozen.

CPython's collector walks every object of a generation each time it collects it, and on this
kind of heap (hundreds of MB, objects scattered) a walk costs 0.2 to 0.6 µs per object, mostly
cache misses. An open stream keeps about 130 tracked objects alive for its whole life (its task,
coroutines, futures, parsers, transports), so with thousands open nearly everything a young
collection finds is alive. Left to CPython's three generations, those objects were walked again
in the middle generation (45 ms pauses at 5,000 streams) and then in full collections over the
whole heap, which CPython starts after a quarter of the old generation is *newly promoted*, not
when it has grown: with streams ending and starting all the time that is every few seconds, each
a pause of hundreds of milliseconds (docs/performance.md, "Open streams").

So an object is walked once: after every young collection, what survived it is moved to the
permanent generation (``gc.freeze``), which no collection walks. Freezing costs nothing per
object (two list pointers). A frozen object is still freed by its reference count the moment its
last reference goes, which is how every request's objects are freed (``tests/test_garbage.py``
checks that a request leaves no reference cycle). What a frozen object cannot be is freed as part
of a *cycle*: such garbage waits for a full collection. So the heap is watched (its allocated
blocks, read at most once a second after a young collection) and when it has grown to
``THAW_GROWTH`` times its lowest point since the last full collection, and ``THAW_MIN_SECONDS``
have passed, everything is unfrozen, collected once and frozen again. Cyclic garbage therefore
never takes more than about the live heap again; a server whose heap stays the same size is never
paused for a full collection; one whose load grows pays one per doubling, at most every five
minutes. The full collection runs as a callback of the event loop, right
after the young collection that found it due: a collection cannot start another (CPython ignores
``gc.collect()`` while one is running, callbacks included).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("nexus.server")

#: Net new tracked objects between two young collections; the pause of one is about this many
#: object walks (2 to 5 ms).
YOUNG_THRESHOLD = 10_000
#: A full collection when the heap has grown to this many times its lowest size since the last.
THAW_GROWTH = 2.0
#: And at most this often: a full collection walks the whole heap (1.0 s for the 1.0 million
#: objects of 9,800 open streams), and every stream waits meanwhile.
THAW_MIN_SECONDS = 300.0
#: The heap's size is read at most this often (reading it walks the allocator's pools: ~80 µs
#: at 6 million blocks).
CHECK_SECONDS = 1.0
#: The middle and old generations' thresholds: never reached, as nothing stays in them.
UNUSED_THRESHOLD = 1 << 30


class SurvivorFreezer:
    """The collector policy of ``nexus serve`` (see the module); ``install`` once at start-up.

    ``blocks`` and ``clock`` are the heap's size and the time, replaceable for tests.
    """

    def __init__(
        self,
        *,
        young: int = YOUNG_THRESHOLD,
        growth: float = THAW_GROWTH,
        min_seconds: float = THAW_MIN_SECONDS,
        check_seconds: float = CHECK_SECONDS,
        blocks: Callable[[], int] = sys.getallocatedblocks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.young = young
        self.growth = growth
        self.min_seconds = min_seconds
        self.check_seconds = check_seconds
        self._blocks = blocks
        self._clock = clock
        self._thawing = False
        self._scheduled = False
        self._checked = 0.0
        self._thawed = 0.0
        #: The heap's lowest size (allocated blocks) since the last full collection.
        self.low = 0
        #: Full collections run so far, and the last one's seconds and freed objects.
        self.thaws = 0
        self.last_thaw_seconds = 0.0
        self.last_thaw_freed = 0
        self._previous: tuple[int, int, int] | None = None

    def install(self) -> None:
        """Collect what start-up left, freeze the rest, and take over the collector."""
        self._previous = gc.get_threshold()
        gc.collect()
        gc.freeze()
        now = self._clock()
        self._checked = self._thawed = now
        self.low = self._blocks()
        gc.set_threshold(self.young, UNUSED_THRESHOLD, UNUSED_THRESHOLD)
        gc.callbacks.append(self._after_collection)

    def uninstall(self) -> None:
        """Give the collector back (thresholds as before; frozen objects stay frozen)."""
        if self._after_collection in gc.callbacks:
            gc.callbacks.remove(self._after_collection)
        if self._previous is not None:
            gc.set_threshold(*self._previous)
            self._previous = None

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or self._thawing:
            return
        gc.freeze()
        now = self._clock()
        if now - self._checked < self.check_seconds:
            return
        self._checked = now
        blocks = self._blocks()
        if blocks < self.low:
            self.low = blocks
        elif blocks >= self.low * self.growth and now - self._thawed >= self.min_seconds:
            self._schedule()

    def _schedule(self) -> None:
        """Have the event loop run ``thaw`` next (a collection cannot run inside this one)."""
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not the event loop's thread: due again at a later check
        self._scheduled = True
        loop.call_soon(self._thaw_now)

    def _thaw_now(self) -> None:
        self._scheduled = False
        self.thaw()

    def thaw(self) -> int:
        """Unfreeze everything, collect it all once, freeze what is left; the objects freed."""
        self._thawing = True
        started = time.perf_counter()
        try:
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
        finally:
            self._thawing = False
        self.thaws += 1
        self.last_thaw_seconds = time.perf_counter() - started
        self.last_thaw_freed = freed
        self._thawed = self._checked = self._clock()
        self.low = self._blocks()
        log.debug(
            "full garbage collection: %d objects freed in %.1f ms; %d blocks allocated",
            freed,
            self.last_thaw_seconds * 1000,
            self.low,
        )
        return freed
