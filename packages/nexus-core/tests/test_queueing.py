"""The capacity queue: priority order, bounds, timeouts, cancellation and wake-ups."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from nexus_core.config import BackendConfig
from nexus_core.errors import GatewayError
from nexus_core.queueing import CapacityQueue, is_full, release
from nexus_core.registry import Backend, Zone

pytestmark = pytest.mark.anyio


def backend(name: str = "a", limit: int | None = 1, pending: int = 0) -> Backend:
    config = BackendConfig(name=name, url="http://127.0.0.1:1", type="generic")
    entry = Backend(
        name=name, config=config, adapter=cast(Any, None), zone=Zone.RESTRICTED, is_cloud=False
    )
    entry.max_concurrent = limit
    entry.pending = pending
    return entry


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_is_full() -> None:
    assert is_full(backend(limit=1, pending=1))
    assert not is_full(backend(limit=2, pending=1))
    assert not is_full(backend(limit=None, pending=100))


async def test_priority_then_fifo() -> None:
    queue = CapacityQueue(max_size=10, max_wait=5)
    b = backend(pending=1)
    served: list[str] = []

    async def waiter(name: str, high: bool) -> None:
        await queue.wait([b], high=high)
        served.append(name)

    tasks = []
    for name, high in [("n1", False), ("n2", False), ("h1", True), ("h2", True)]:
        tasks.append(asyncio.create_task(waiter(name, high)))
        await settle()
    assert queue.queue_depth == 4
    for _ in range(4):
        b.pending += 1
        release(b, queue)  # one slot freed: exactly one waiter woken
        await settle()
    await asyncio.gather(*tasks)
    assert served == ["h1", "h2", "n1", "n2"]
    assert queue.queue_depth == 0


async def test_one_release_wakes_one_waiter() -> None:
    queue = CapacityQueue(max_size=10, max_wait=5)
    b = backend(pending=1)
    tasks = [asyncio.create_task(queue.wait([b])) for _ in range(3)]
    await settle()
    release(b, queue)
    await settle()
    assert sum(t.done() for t in tasks) == 1
    assert queue.queue_depth == 2
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert queue.queue_depth == 0


async def test_release_wakes_only_waiters_for_that_backend() -> None:
    queue = CapacityQueue(max_size=10, max_wait=5)
    a, b = backend("a", pending=1), backend("b", pending=1)
    on_a = asyncio.create_task(queue.wait([a]))
    await settle()
    on_b = asyncio.create_task(queue.wait([b]))
    await settle()
    release(b, queue)  # no head-of-line blocking: the waiter for b goes although a's came first
    await settle()
    assert on_b.done()
    assert not on_a.done()
    on_a.cancel()
    await asyncio.gather(on_a, return_exceptions=True)


async def test_queue_full_and_disabled() -> None:
    b = backend(pending=1)
    queue = CapacityQueue(max_size=1, max_wait=5)
    first = asyncio.create_task(queue.wait([b]))
    await settle()
    with pytest.raises(GatewayError) as caught:
        await queue.wait([b])
    assert caught.value.status == 503
    assert caught.value.code == "queue_full"
    assert "Retry-After" in caught.value.headers
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    with pytest.raises(GatewayError) as off:
        await CapacityQueue(enabled=False).wait([b])
    assert off.value.code == "backends_busy"
    assert off.value.status == 503


async def test_timeout() -> None:
    queue = CapacityQueue(max_size=5, max_wait=0.05)
    with pytest.raises(GatewayError) as caught:
        await queue.wait([backend(pending=1)])
    assert caught.value.status == 503
    assert caught.value.code == "queue_timeout"
    assert caught.value.headers["Retry-After"] == "1"
    assert queue.queue_depth == 0


async def test_cancelled_waiter_leaves_at_once() -> None:
    queue = CapacityQueue(max_size=5, max_wait=5)
    b = backend(pending=1)
    task = asyncio.create_task(queue.wait([b]))
    await settle()
    assert queue.queue_depth == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert queue.queue_depth == 0


async def test_wake_up_of_a_cancelled_waiter_is_passed_on() -> None:
    queue = CapacityQueue(max_size=5, max_wait=5)
    b = backend(pending=1)
    first = asyncio.create_task(queue.wait([b]))
    await settle()
    second = asyncio.create_task(queue.wait([b]))
    await settle()
    release(b, queue)  # wakes ``first``...
    first.cancel()  # ...which goes away before it runs: ``second`` must get the slot
    await settle()
    assert first.cancelled()
    assert second.done()
    assert second.exception() is None
    assert queue.queue_depth == 0


async def test_requeued_waiter_keeps_its_place_and_deadline() -> None:
    queue = CapacityQueue(max_size=5, max_wait=5)
    b = backend(pending=1)
    order: list[str] = []

    async def early() -> None:
        seq, deadline = await queue.wait([b])
        b.pending += 1  # someone else took the slot first: wait again, same place
        await queue.wait([b], seq=seq, deadline=deadline)
        order.append("early")

    async def late() -> None:
        await queue.wait([b])
        order.append("late")

    one = asyncio.create_task(early())
    await settle()
    two = asyncio.create_task(late())
    await settle()
    release(b, queue)
    await settle()
    release(b, queue)
    await settle()
    release(b, queue)
    await asyncio.gather(one, two)
    assert order == ["early", "late"]


async def test_cancelled_but_not_yet_cleaned_waiter_does_not_swallow_a_wake_up() -> None:
    queue = CapacityQueue(max_size=5, max_wait=5)
    b = backend(pending=1)
    first = asyncio.create_task(queue.wait([b]))
    await settle()
    second = asyncio.create_task(queue.wait([b]))
    await settle()
    first.cancel()  # its future is cancelled now; its cleanup runs on the next loop step
    release(b, queue)
    await settle()
    assert first.cancelled()
    assert second.done()
    assert queue.queue_depth == 0
