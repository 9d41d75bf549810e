"""``nexus serve``'s collector policy: survivors of a young collection are frozen, cyclic garbage
among them is freed once the heap has grown, and the collector is given back on ``uninstall``.

Each scenario runs in a fresh interpreter: the policy takes over the process's collector.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = """
import asyncio, gc, weakref
from nexus_server.collector import SurvivorFreezer, UNUSED_THRESHOLD

class Node:
    def __init__(self):
        self.other = None

def young_collection():
    gc.collect(0)

async def young_collection_in_the_loop():
    # A full collection that a young one finds due runs as the loop's next callback.
    gc.collect(0)
    await asyncio.sleep(0)

def installed(heap, clock, *, min_seconds=0.0, check_seconds=0.0):
    # A freezer whose heap size and time the test sets: (freezer, [heap], [clock]).
    sizes, now = [heap], [clock]
    freezer = SurvivorFreezer(
        young=1_000, growth=2.0, min_seconds=min_seconds, check_seconds=check_seconds,
        blocks=lambda: sizes[0], clock=lambda: now[0],
    )
    freezer.install()
    return freezer, sizes, now
"""


def run(code: str) -> None:
    """Run ``code`` after the prelude in a fresh interpreter; its asserts are the test's."""
    script = PRELUDE + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok"), done.stdout


def test_what_survives_a_young_collection_is_frozen_and_the_old_generations_stay_empty() -> None:
    run(
        """
        freezer = SurvivorFreezer(young=1_000)
        freezer.install()
        assert gc.get_threshold() == (1_000, UNUSED_THRESHOLD, UNUSED_THRESHOLD)
        frozen = gc.get_freeze_count()
        kept = [[index] for index in range(5_000)]  # tracked and alive: they survive
        young_collection()
        assert gc.get_freeze_count() >= frozen + 5_000, (frozen, gc.get_freeze_count())
        assert gc.get_count()[1:] == (0, 0)
        assert len(gc.get_objects(1)) == 0 and len(gc.get_objects(2)) == 0
        # A frozen object is still freed by its reference count.
        probe = Node()
        alive = weakref.ref(probe)
        young_collection()
        del probe
        assert alive() is None
        print("ok")
        """
    )


def test_a_frozen_cycle_is_freed_when_the_heap_has_grown_enough_and_not_before() -> None:
    run(
        """
        freezer, heap, clock = installed(1_000, 0.0, min_seconds=60.0, check_seconds=1.0)
        a, b = Node(), Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        young_collection()  # the cycle is frozen
        del a, b

        async def main():
            await young_collection_in_the_loop()
            assert alive() is not None, "a frozen cycle waits for a full collection"
            # The heap doubled, but too soon after the last full collection: nothing yet.
            heap[0] = 2_500
            clock[0] = 30.0
            await young_collection_in_the_loop()
            assert freezer.thaws == 0 and alive() is not None
            # Grown, and long enough after: everything is collected once.
            clock[0] = 61.0
            await young_collection_in_the_loop()
            assert freezer.thaws == 1, freezer.thaws
            assert alive() is None
            assert freezer.last_thaw_freed >= 2
            # The heap's low point starts again from its size after the full collection.
            assert freezer.low == 2_500

        asyncio.run(main())
        print("ok")
        """
    )


def test_outside_the_event_loop_a_full_collection_waits_for_it() -> None:
    run(
        """
        freezer, heap, clock = installed(1_000, 100.0)
        heap[0] = 5_000
        young_collection()  # no event loop in this thread: nothing can run it now
        assert freezer.thaws == 0

        async def main():
            await young_collection_in_the_loop()
            assert freezer.thaws == 1

        asyncio.run(main())
        print("ok")
        """
    )


def test_a_heap_that_stays_the_same_size_is_never_fully_collected() -> None:
    run(
        """
        freezer, heap, clock = installed(10_000, 0.0)

        async def main():
            for step in range(50):
                # Load that comes and goes: the heap shrinks to its low point and grows back,
                # never to twice that.
                heap[0] = 10_000 + (step % 5) * 1_500
                clock[0] += 10.0
                await young_collection_in_the_loop()
            assert freezer.thaws == 0
            # It shrank (load gone), then grew to twice its low point: one full collection.
            heap[0] = 6_000
            clock[0] += 10.0
            await young_collection_in_the_loop()
            heap[0] = 12_000
            clock[0] += 10.0
            await young_collection_in_the_loop()
            assert freezer.thaws == 1

        asyncio.run(main())
        print("ok")
        """
    )


def test_uninstall_gives_the_collector_back() -> None:
    run(
        """
        gc.set_threshold(700, 10, 10)
        freezer = SurvivorFreezer(young=1_000)
        freezer.install()
        freezer.uninstall()
        assert gc.get_threshold() == (700, 10, 10)
        frozen = gc.get_freeze_count()
        kept = [[index] for index in range(5_000)]
        young_collection()
        assert gc.get_freeze_count() == frozen  # no longer frozen after a collection
        print("ok")
        """
    )
