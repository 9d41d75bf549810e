"""Durable state: reserve/settle semantics on every store, crash safety, shared Redis replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from nexus_core.config import StateBackend, StateConfig
from nexus_core.config.schema import LEGACY_SQLITE_PATH
from nexus_core.state import (
    MemoryStore,
    RedisStore,
    SqliteStore,
    StateError,
    StateStore,
    StoreOutage,
    open_store,
)
from nexus_core.state.location import describe_state, is_default_path, sqlite_path
from nexus_core.testing.net import closed_port_url
from nexus_core.testing.redis import redis_server, redis_server_binary

pytestmark = pytest.mark.anyio

PERIOD = "2026-11"


def need_redis_server() -> None:
    """Skip without ``redis-server``, except in CI, which must run these tests."""
    if redis_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not on PATH, and CI must run the Redis tests")
        pytest.skip("redis-server is not on PATH (Debian: apt-get install redis-server)")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real redis-server for the module; each test uses its own key prefix."""
    need_redis_server()
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def redis_store(url: str, prefix: str) -> RedisStore:
    return RedisStore(url, key_prefix=prefix)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str
) -> AsyncIterator[StateStore]:
    """An open store of each kind, closed after the test."""
    opened: StateStore
    if request.param == "memory":
        opened = MemoryStore()
    elif request.param == "sqlite":
        opened = SqliteStore(tmp_path / "state.sqlite3")
    else:
        url = request.getfixturevalue("redis_url")
        opened = redis_store(url, f"test-{uuid.uuid4().hex}:")
    await opened.open()
    assert opened.kind == request.param
    try:
        yield opened
    finally:
        await opened.close()
        await opened.close()  # idempotent


async def test_reserve_counts_until_settled_at_the_final_amount(store: StateStore) -> None:
    assert await store.total("global", PERIOD) == 0
    await store.reserve("global", PERIOD, "req-1", 100)
    assert await store.total("global", PERIOD) == 100
    await store.settle("global", PERIOD, "req-1", 40)
    assert await store.total("global", PERIOD) == 40


async def test_total_is_settled_plus_outstanding(store: StateStore) -> None:
    await store.settle("global", PERIOD, "done-1", 10)
    await store.settle("global", PERIOD, "done-2", 20)
    await store.reserve("global", PERIOD, "open-1", 300)
    await store.reserve("global", PERIOD, "open-2", 4000)
    assert await store.total("global", PERIOD) == 10 + 20 + 300 + 4000


async def test_settle_without_reservation_adds_and_zero_settles_release(store: StateStore) -> None:
    await store.settle("global", PERIOD, "never-reserved", 7)
    assert await store.total("global", PERIOD) == 7
    await store.reserve("global", PERIOD, "failed", 50)
    await store.settle("global", PERIOD, "failed", 0)
    assert await store.total("global", PERIOD) == 7


async def test_settling_one_entry_leaves_another(store: StateStore) -> None:
    await store.reserve("global", PERIOD, "a", 5)
    await store.reserve("global", PERIOD, "b", 9)
    await store.settle("global", PERIOD, "a", 1)
    assert await store.total("global", PERIOD) == 1 + 9
    await store.settle("global", PERIOD, "b", 2)
    assert await store.total("global", PERIOD) == 1 + 2


async def test_scopes_and_periods_are_independent(store: StateStore) -> None:
    # One request counts against the global budget and its key's, under the same entry id.
    await store.reserve("global", PERIOD, "req", 100)
    await store.reserve("key:team-a", PERIOD, "req", 100)
    await store.settle("global", "2026-10", "old", 3)
    await store.settle("key:team-a", PERIOD, "req", 60)
    assert await store.total("global", PERIOD) == 100
    assert await store.total("key:team-a", PERIOD) == 60
    assert await store.total("global", "2026-10") == 3
    assert await store.total("key:team-b", PERIOD) == 0


async def test_large_amounts_stay_exact(store: StateStore) -> None:
    big = 2**53 + 1  # a double would round this
    await store.reserve("global", PERIOD, "big", big)
    await store.settle("global", PERIOD, "other", big)
    assert await store.total("global", PERIOD) == 2 * big


async def test_concurrent_settles_are_exact(store: StateStore) -> None:
    async def one(n: int) -> None:
        await store.reserve("global", PERIOD, f"req-{n}", 1000)
        await store.settle("global", PERIOD, f"req-{n}", n)

    await asyncio.gather(*(one(n) for n in range(200)))
    assert await store.total("global", PERIOD) == sum(range(200))


async def test_sqlite_totals_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dirs" / "state.sqlite3"
    first = SqliteStore(path)
    await first.open()
    await first.reserve("global", PERIOD, "open", 5)
    await first.settle("global", PERIOD, "done", 11)
    await first.close()
    second = SqliteStore(path)
    await second.open()
    try:
        assert await second.total("global", PERIOD) == 16
        await second.settle("global", PERIOD, "open", 2)
        assert await second.total("global", PERIOD) == 13
    finally:
        await second.close()


async def test_sqlite_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = open_store(StateConfig(backend=StateBackend.SQLITE, path="~/state/nexus.sqlite3"))
    assert isinstance(store, SqliteStore)
    await store.open()
    await store.close()
    assert (tmp_path / "state" / "nexus.sqlite3").is_file()


async def test_sqlite_open_fails_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = SqliteStore(blocker / "state.sqlite3")  # its "directory" is a file
    with pytest.raises(StateError, match="cannot open the SQLite state file"):
        await store.open()
    await store.close()
    with pytest.raises(StateError, match="not open"):
        await store.total("global", PERIOD)


_CRASH = """
import asyncio, os, signal, sys
from nexus_core.state import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1])
    await store.open()
    await store.reserve("global", "2026-11", "A", 5)
    await store.reserve("global", "2026-11", "B", 7)
    await store.settle("global", "2026-11", "B", 3)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_sqlite_survives_sigkill_without_loss_or_double_count(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    result = await anyio.run_process(
        [sys.executable, "-c", textwrap.dedent(_CRASH), str(path)], check=False
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    store = SqliteStore(path)
    await store.open()
    try:
        # A is still counted at its estimate, B once at its final amount.
        assert await store.total("global", PERIOD) == 5 + 3
    finally:
        await store.close()


_WRITER = """
import asyncio, sys
from nexus_core.state import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1])
    await store.open()
    for n in range(100):
        await store.reserve("global", "2026-11", f"child-{n}", 1000)
        await store.settle("global", "2026-11", f"child-{n}", 2)
    await store.close()

asyncio.run(main())
"""


async def test_sqlite_two_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path)
    await store.open()
    try:
        child = asyncio.create_task(
            anyio.run_process([sys.executable, "-c", textwrap.dedent(_WRITER), str(path)])
        )
        for n in range(100):
            await store.reserve("global", PERIOD, f"parent-{n}", 1000)
            await store.settle("global", PERIOD, f"parent-{n}", 1)
        await child
        assert await store.total("global", PERIOD) == 100 * 1 + 100 * 2
    finally:
        await store.close()


async def test_redis_replicas_share_spend(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    one, two = redis_store(redis_url, prefix), redis_store(redis_url, prefix)
    await one.open()
    await two.open()
    try:
        await one.reserve("global", PERIOD, "r1", 100)
        assert await two.total("global", PERIOD) == 100
        await two.settle("global", PERIOD, "r1", 30)  # settled by the other replica
        assert await one.total("global", PERIOD) == 30

        async def spend(replica: RedisStore, name: str, n: int) -> None:
            await replica.reserve("global", PERIOD, f"{name}-{n}", 1000)
            await replica.settle("global", PERIOD, f"{name}-{n}", n)

        await asyncio.gather(
            *(spend(one, "one", n) for n in range(150)),
            *(spend(two, "two", n) for n in range(150)),
        )
        assert await one.total("global", PERIOD) == 30 + 2 * sum(range(150))
        await two.put("backends", "gpu", "{}")  # a record one replica adds, the other reads
        assert await one.items("backends") == {"gpu": "{}"}
    finally:
        await one.close()
        await two.close()


async def test_redis_keys_have_the_documented_names_and_expire(redis_url: str) -> None:
    from redis.asyncio import Redis

    prefix = f"test-{uuid.uuid4().hex}:"
    store = redis_store(redis_url, prefix)
    await store.open()
    raw = Redis.from_url(redis_url)
    try:
        await store.reserve("key:team-a", PERIOD, "open", 5)
        await store.settle("key:team-a", PERIOD, "done", 7)
        assert await raw.get(f"{prefix}spend:key:team-a:{PERIOD}") == b"7"
        assert await raw.hgetall(f"{prefix}pending:key:team-a:{PERIOD}") == {b"open": b"5"}
        for kind in ("spend", "pending"):
            ttl = await raw.ttl(f"{prefix}{kind}:key:team-a:{PERIOD}")
            assert 399 * 86400 < ttl <= 400 * 86400
    finally:
        await raw.aclose()
        await store.close()


async def test_unreachable_redis_fails_on_open_without_leaking_the_password() -> None:
    url = closed_port_url().replace("http://", "redis://user:s3cret@") + "/0"
    store = RedisStore(url)
    expected = r"cannot reach Redis at redis://user@127\.0\.0\.1:"
    with pytest.raises(StateError, match=expected) as info:
        await store.open()
    assert "s3cret" not in str(info.value)
    await store.close()


def test_redis_package_missing_says_how_to_install() -> None:
    # In a fresh interpreter: taking redis out of this one's sys.modules races with any thread
    # of another test that imports it (importlib's module locks then fail).
    script = (
        "import asyncio, sys\n"
        "sys.modules['redis'] = None\n"
        "from nexus_core.state import RedisStore, StateError\n"
        "try:\n"
        "    asyncio.run(RedisStore('redis://127.0.0.1:1/0').open())\n"
        "except StateError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'nexusgw-core[redis]'" in done.stdout, done.stdout + done.stderr


async def test_open_store_builds_the_configured_store(tmp_path: Path) -> None:
    assert isinstance(open_store(StateConfig(backend=StateBackend.MEMORY)), MemoryStore)
    sqlite = open_store(StateConfig(backend=StateBackend.SQLITE, path=str(tmp_path / "s.db")))
    assert isinstance(sqlite, SqliteStore)
    assert sqlite.path == tmp_path / "s.db"
    config = StateConfig(
        backend=StateBackend.REDIS, redis_url_env="NEXUS_TEST_REDIS", key_prefix="x:"
    )
    redis = open_store(config, {"NEXUS_TEST_REDIS": "redis://127.0.0.1:1/0"})
    assert isinstance(redis, RedisStore)
    assert (redis.url, redis.key_prefix) == ("redis://127.0.0.1:1/0", "x:")
    with pytest.raises(StateError, match="NEXUS_TEST_REDIS"):
        open_store(config, {})


async def test_records_put_items_delete(store: StateStore) -> None:
    assert await store.items("backends") == {}
    await store.put("backends", "gpu", '{"url": "http://gpu:1"}')
    await store.put("backends", "cpu", '{"url": "http://cpu:1"}')
    await store.put("keys", "team-a", '{"hash": "x"}')
    await store.put("backends", "gpu", '{"url": "http://gpu:2"}')  # replaces
    assert await store.items("backends") == {
        "gpu": '{"url": "http://gpu:2"}',
        "cpu": '{"url": "http://cpu:1"}',
    }
    assert await store.delete("backends", "cpu") is True
    assert await store.delete("backends", "cpu") is False
    assert await store.items("backends") == {"gpu": '{"url": "http://gpu:2"}'}
    assert await store.items("keys") == {"team-a": '{"hash": "x"}'}


async def test_sqlite_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteStore(path)
    await first.open()
    await first.put("backends", "gpu", "{}")
    await first.close()
    second = SqliteStore(path)
    await second.open()
    try:
        assert await second.items("backends") == {"gpu": "{}"}
    finally:
        await second.close()


async def test_get_reads_one_record_of_either_kind(store: StateStore) -> None:
    assert await store.get("responses", "resp_1") is None
    await store.put("backends", "gpu", "{}")
    await store.put("responses", "resp_1", '{"id": "resp_1"}', ttl_seconds=3600)
    assert await store.get("backends", "gpu") == "{}"
    assert await store.get("responses", "resp_1") == '{"id": "resp_1"}'
    assert await store.get("backends", "resp_1") is None  # collections are separate
    # An expiring record is read by key, never listed: its collection may be large.
    assert await store.items("responses") == {}
    await store.put("responses", "resp_1", '{"id": "resp_1", "v": 2}', ttl_seconds=3600)
    assert await store.get("responses", "resp_1") == '{"id": "resp_1", "v": 2}'
    # One value per key: a put of the other kind replaces it.
    await store.put("responses", "resp_1", "listed")
    assert await store.items("responses") == {"resp_1": "listed"}
    await store.put("responses", "resp_1", "expiring", ttl_seconds=3600)
    assert await store.items("responses") == {}
    assert await store.get("responses", "resp_1") == "expiring"
    assert await store.delete("responses", "resp_1") is True
    assert await store.delete("responses", "resp_1") is False
    assert await store.get("responses", "resp_1") is None


async def test_large_expiring_records_come_back_whole(store: StateStore) -> None:
    value = "é" * 3_000_000  # 6 MB of UTF-8
    await store.put("responses", "big", value, ttl_seconds=60)
    assert await store.get("responses", "big") == value


class Clock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_expiring_records_go_when_their_time_is_up(kind: str, tmp_path: Path) -> None:
    clock = Clock()
    store: StateStore = (
        MemoryStore(clock=clock)
        if kind == "memory"
        else SqliteStore(tmp_path / "state.sqlite3", clock=clock)
    )
    await store.open()
    try:
        await store.put("responses", "short", "a", ttl_seconds=10)
        await store.put("responses", "long", "b", ttl_seconds=100)
        await store.put("backends", "kept", "c")
        clock.now += 9.5
        assert await store.get("responses", "short") == "a"
        clock.now += 0.5
        assert await store.get("responses", "short") is None
        assert await store.delete("responses", "short") is False  # expired: was not there
        assert await store.get("responses", "long") == "b"
        clock.now += 1000
        assert await store.get("responses", "long") is None
        assert await store.get("backends", "kept") == "c"  # no ttl: never expires
    finally:
        await store.close()


async def test_sqlite_writes_purge_expired_records_in_batches(tmp_path: Path) -> None:
    from nexus_core.state.base import PURGE_BATCH, PURGE_INTERVAL_SECONDS

    clock = Clock()
    path = tmp_path / "state.sqlite3"
    store = SqliteStore(path, clock=clock)
    await store.open()
    try:
        for n in range(PURGE_BATCH + 5):
            await store.put("responses", f"r{n}", "x", ttl_seconds=1)
        await store.put("responses", "fresh", "y", ttl_seconds=10_000)
        clock.now += PURGE_INTERVAL_SECONDS + 1

        def rows() -> int:
            with contextlib.closing(sqlite3.connect(path)) as db:
                return int(db.execute("SELECT COUNT(*) FROM expiring").fetchone()[0])

        assert rows() == PURGE_BATCH + 6
        await store.put("responses", "next", "z", ttl_seconds=10_000)  # purges one batch
        assert rows() == 5 + 2
        await store.put("responses", "again", "z", ttl_seconds=10_000)  # too soon: no purge
        assert rows() == 5 + 3
        clock.now += PURGE_INTERVAL_SECONDS
        await store.put("responses", "later", "z", ttl_seconds=10_000)
        assert rows() == 4
        assert await store.get("responses", "fresh") == "y"
    finally:
        await store.close()


async def test_memory_writes_purge_expired_records() -> None:
    from nexus_core.state.base import PURGE_INTERVAL_SECONDS

    clock = Clock()
    store = MemoryStore(clock=clock)
    for n in range(50):
        await store.put("responses", f"r{n}", "x", ttl_seconds=1)
    clock.now += PURGE_INTERVAL_SECONDS
    await store.put("responses", "fresh", "y", ttl_seconds=10)
    assert list(store._expiring) == [("responses", "fresh")]


async def test_sqlite_expiring_records_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteStore(path)
    await first.open()
    await first.put("responses", "resp_1", '{"id": "resp_1"}', ttl_seconds=3600)
    await first.close()
    second = SqliteStore(path)
    await second.open()
    try:
        assert await second.get("responses", "resp_1") == '{"id": "resp_1"}'
    finally:
        await second.close()


async def test_sqlite_file_of_an_earlier_version_gains_the_expiring_table(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:  # the schema before expiring records
        db.execute(
            "CREATE TABLE records (collection TEXT NOT NULL, key TEXT NOT NULL, "
            "value TEXT NOT NULL, PRIMARY KEY (collection, key)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO records VALUES ('backends', 'gpu', '{}')")
        db.execute("PRAGMA user_version=1")
        db.commit()
    store = SqliteStore(path)
    await store.open()
    try:
        await store.put("responses", "resp_1", "{}", ttl_seconds=60)
        assert await store.get("responses", "resp_1") == "{}"
        assert await store.items("backends") == {"gpu": "{}"}
    finally:
        await store.close()


async def test_redis_expiring_records_are_keys_redis_expires(redis_url: str) -> None:
    from redis.asyncio import Redis

    prefix = f"test-{uuid.uuid4().hex}:"
    one, two = redis_store(redis_url, prefix), redis_store(redis_url, prefix)
    await one.open()
    await two.open()
    raw = Redis.from_url(redis_url)
    try:
        await one.put("responses", "resp_1", "{}", ttl_seconds=30 * 86400)
        assert await raw.get(f"{prefix}expiring:responses:resp_1") == b"{}"
        ttl = await raw.ttl(f"{prefix}expiring:responses:resp_1")
        assert 30 * 86400 - 60 < ttl <= 30 * 86400
        assert await two.get("responses", "resp_1") == "{}"  # another replica reads it
        await one.put("responses", "soon", "x", ttl_seconds=0.05)
        with anyio.fail_after(10):
            for _ in range(500):  # Redis expires it itself, however long that takes here
                if await two.get("responses", "soon") is None:
                    break
                await anyio.sleep(0.02)
        assert await two.get("responses", "soon") is None
        assert await raw.exists(f"{prefix}expiring:responses:soon") == 0
        assert await two.delete("responses", "resp_1") is True
        assert await one.get("responses", "resp_1") is None
    finally:
        await raw.aclose()
        await one.close()
        await two.close()


async def test_throttle_is_a_token_bucket(store: StateStore) -> None:
    # 10 per minute: one unit every 6 s, a minute's worth (10) may come at once.
    waits = [await store.throttle("key:a", 6.0, 60.0, 1) for _ in range(11)]
    assert waits[:10] == [0.0] * 10
    assert 5.0 < waits[10] <= 6.0
    # Another key has its own bucket.
    assert await store.throttle("key:b", 6.0, 60.0, 1) == 0.0
    # A cost checked with 0 passes while there is room, and force takes it even past the top.
    assert await store.throttle("tokens:a", 0.001, 60.0, 0) == 0.0
    assert await store.throttle("tokens:a", 0.001, 60.0, 100_000, force=True) == 0.0
    wait = await store.throttle("tokens:a", 0.001, 60.0, 0)
    assert 39.0 < wait <= 40.0  # 100 s of tokens taken, 60 s of burst: 40 s to wait


async def test_throttle_is_shared_by_two_replicas(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    one, two = redis_store(redis_url, prefix), redis_store(redis_url, prefix)
    await one.open()
    await two.open()
    try:
        results = await asyncio.gather(
            *(store.throttle("key:shared", 6.0, 60.0, 1) for store in (one, two) for _ in range(8))
        )
        assert sum(1 for wait in results if wait == 0.0) == 10
    finally:
        await one.close()
        await two.close()


# --- a store that fails: bounded waits, one log line per burst -----------------------------------


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection holds the file's write lock (an open exclusive transaction)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_sqlite_calls_queued_behind_a_locked_one_give_up_instead_of_waiting_in_turn(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "state.sqlite3", busy_timeout_seconds=0.3)
    await store.open()
    try:
        with write_locked(store.path):
            results = await asyncio.gather(
                *(store.put("keys", f"k{i}", "1") for i in range(6)), return_exceptions=True
            )
            # Reads go on: WAL lets them past another process's write lock.
            assert await store.total("global", PERIOD) == 0
        assert all(isinstance(r, StateError) for r in results), results
        messages = [str(r) for r in results]
        # The first waited for the lock; those queued behind it gave up at their deadline
        # rather than each waiting the busy timeout in turn.
        assert "database is locked" in messages[0]
        assert any("still busy after 0.3 s" in m for m in messages[1:]), messages
        await store.put("keys", "k0", "1")  # the lock gone, it works again
        assert await store.items("keys") == {"k0": "1"}
    finally:
        await store.close()


async def test_a_reservation_the_store_cannot_take_is_refused_and_not_counted(
    tmp_path: Path,
) -> None:
    from nexus_core.accounting import Accountant
    from nexus_core.config import BudgetConfig
    from nexus_core.pricing import Price

    store = SqliteStore(tmp_path / "state.sqlite3", busy_timeout_seconds=0.2)
    accountant = Accountant(BudgetConfig(monthly_limit_usd=10), [], store)
    await accountant.start()
    price = Price(input_per_million=1.0, output_per_million=2.0)
    try:
        with write_locked(store.path):
            with pytest.raises(StateError, match="locked"):
                await accountant.open_charge(price, 1000, 1000, key="team-a")
            assert (accountant.spent, accountant.key_spent.get("team-a", 0)) == (0, 0)
            assert accountant.outage.failing is False  # the gateway notes a refused request
        charge = await accountant.open_charge(price, 1000, 1000, key="team-a")
        assert accountant.spent == charge.estimate > 0
        assert await store.total("key:team-a", charge.period) == charge.estimate
    finally:
        await accountant.stop()


async def test_a_settle_that_fails_is_logged_once_and_leaves_the_reservation_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nexus_core.accounting import Accountant
    from nexus_core.config import BudgetConfig
    from nexus_core.pricing import Price

    store = SqliteStore(tmp_path / "state.sqlite3", busy_timeout_seconds=0.2)
    accountant = Accountant(BudgetConfig(monthly_limit_usd=10), [], store)
    await accountant.start()
    price = Price(input_per_million=1.0, output_per_million=2.0)
    try:
        charges = [await accountant.open_charge(price, 1000, 1000) for _ in range(3)]
        estimate = charges[0].estimate
        with caplog.at_level(logging.INFO, logger="nexus.state"), write_locked(store.path):
            for charge in charges:
                charge.settle(1)  # the streams ended; their settles go in the background
            while accountant._writes:
                await asyncio.gather(*list(accountant._writes), return_exceptions=True)
        failed = [r for r in caplog.records if "state store failed" in r.getMessage()]
        assert len(failed) == 1
        assert accountant.outage.count == 3
        # Not retried: each stays counted at its estimate, none twice, none lost.
        assert await store.total("global", charges[0].period) == 3 * estimate
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nexus.state"):
            (await accountant.open_charge(price, 1000, 1000)).settle(5)
            await accountant.drain()
        assert len(caplog.records) == 1
        assert (
            caplog.records[0]
            .getMessage()
            .startswith("the sqlite state store answers again (after 3 failures in ")
        )
        assert await store.total("global", charges[0].period) == 3 * estimate + 5
    finally:
        await accountant.stop()


def test_store_outage_logs_a_burst_once_then_a_reminder_then_the_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    outage = StoreOutage("redis", clock=lambda: now[0])
    error = StateError("Redis at redis://127.0.0.1:1/0: Timeout reading")
    with caplog.at_level(logging.INFO, logger="nexus.state"):
        outage.recovered()  # nothing was failing: nothing to say
        for _ in range(500):
            outage.failed("serve a request", error)
            now[0] += 0.1  # 50 s of failures: one line
        assert len(caplog.records) == 1
        now[0] += 11.0
        outage.failed("settle a request's cost", error)  # a minute on: one reminder
        outage.recovered()
        outage.recovered()
        outage.failed("serve a request", error)  # a new burst
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR", "WARNING", "ERROR"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == (
        "the redis state store failed (serve a request): Redis at redis://127.0.0.1:1/0: "
        "Timeout reading; requests that need it get 503 state_unavailable until it answers "
        "again"
    )
    assert messages[1] == (
        "the redis state store is still failing (501 failures in 61 s; last, settle a "
        "request's cost: Redis at redis://127.0.0.1:1/0: Timeout reading)"
    )
    assert messages[2] == "the redis state store answers again (after 501 failures in 61.0 s)"
    assert messages[3].startswith("the redis state store failed (serve a request)")


# -- which SQLite file an instance uses ---------------------------------------------------------


def default_file(
    environ: dict[str, str], config_file: Path | str | None = None, port: int = 8000
) -> Path:
    return Path(sqlite_path(StateConfig(), environ, config_file=config_file, port=port))


def test_the_default_file_is_one_per_configuration_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    (tmp_path / "a").mkdir()
    first = default_file(env, tmp_path / "a" / "nexus.toml")
    second = default_file(env, tmp_path / "b" / "nexus.toml")
    assert first != second
    assert first.parent == second.parent == tmp_path / "xdg" / "nexus"
    assert first.name.startswith("nexus-")
    assert first.suffix == ".sqlite3"
    # The same file named from another directory is the same instance; the port plays no part.
    monkeypatch.chdir(tmp_path / "a")
    assert default_file(env, "nexus.toml", port=9000) == first
    assert default_file(env, "../a/./nexus.toml") == first


def test_without_a_configuration_file_the_port_tells_instances_apart(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path)}
    assert default_file(env, None, 8000) == tmp_path / "nexus" / "port-8000.sqlite3"
    assert default_file(env, None, 8001) == tmp_path / "nexus" / "port-8001.sqlite3"


def test_without_xdg_state_home_the_files_are_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_file({}, None) == tmp_path / ".local/state/nexus/port-8000.sqlite3"


def test_a_path_that_is_set_is_used_as_it_is(tmp_path: Path) -> None:
    config = StateConfig(path=str(tmp_path / "mine.sqlite3"))
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}
    assert sqlite_path(config, env, config_file=tmp_path / "x.toml") == config.path
    # ... except the old default, as `nexus config init` wrote it into every file: it means unset.
    old = StateConfig(path=LEGACY_SQLITE_PATH)
    assert is_default_path(old)
    unset = sqlite_path(StateConfig(), env, config_file=tmp_path / "x.toml")
    assert sqlite_path(old, env, config_file=tmp_path / "x.toml") == unset


async def test_the_first_instance_to_start_keeps_the_file_earlier_versions_shared(
    tmp_path: Path,
) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path)}
    legacy = tmp_path / "nexus" / "state.sqlite3"
    old = SqliteStore(legacy)  # what an earlier version left: spend and a run-time backend
    await old.open()
    await old.settle("global", PERIOD, "done", 42)
    await old.put("backends", "gpu", '{"name": "gpu", "url": "http://10.0.0.5:8000"}')
    await old.close()
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"

    # Before anyone starts, `nexus config check` of either would name the old file.
    assert default_file(env, a) == default_file(env, b) == legacy
    assert "takes it over when it starts" in describe_state(StateConfig(), env, config_file=a)
    assert not (tmp_path / "nexus" / "state.sqlite3.owner").exists()

    store = open_store(StateConfig(), env, config_file=a)  # instance a starts first
    assert isinstance(store, SqliteStore)
    assert store.path == legacy
    await store.open()
    try:
        assert await store.total("global", PERIOD) == 42
        assert set(await store.items("backends")) == {"gpu"}
    finally:
        await store.close()
    owner = (tmp_path / "nexus" / "state.sqlite3.owner").read_text()
    assert owner == f"configuration file {a}\n"
    assert "kept from earlier versions by this instance" in describe_state(
        StateConfig(), env, config_file=a
    )

    # b, and a configuration-less instance, get files of their own, empty.
    other = open_store(StateConfig(), env, config_file=b)
    assert isinstance(other, SqliteStore)
    assert other.path == default_file(env, b) != legacy
    await other.open()
    try:
        assert await other.total("global", PERIOD) == 0
        assert await other.items("backends") == {}
    finally:
        await other.close()
    assert default_file(env, None) == tmp_path / "nexus" / "port-8000.sqlite3"
    # a again (a restart, another worker): still the old file.
    assert default_file(env, a) == legacy


def test_an_instance_with_a_file_of_its_own_leaves_the_old_one_alone(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path)}
    own = default_file(env, tmp_path / "a.toml")
    own.parent.mkdir(parents=True)
    own.touch()
    (tmp_path / "nexus" / "state.sqlite3").touch()
    assert Path(sqlite_path(StateConfig(), env, config_file=tmp_path / "a.toml", claim=True)) == own
    assert not (tmp_path / "nexus" / "state.sqlite3.owner").exists()


_CLAIM = """
import sys, time
from pathlib import Path
from nexus_core.state.location import claim_legacy
start = float(sys.argv[3])
while time.time() < start:
    pass
print(claim_legacy(Path(sys.argv[1]), sys.argv[2]))
"""


def test_instances_starting_together_take_the_old_file_once(tmp_path: Path) -> None:
    import subprocess
    import time

    legacy = tmp_path / "state.sqlite3"
    legacy.touch()
    start = str(time.time() + 1.5)  # every process is waiting by then, then all go at once
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIM, str(legacy), f"instance {n}", start],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    answers = [process.communicate(timeout=30)[0].strip() for process in processes]
    assert sorted(answers) == ["False", "False", "False", "True"]
    winner = answers.index("True")
    assert (tmp_path / "state.sqlite3.owner").read_text() == f"instance {winner}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.sqlite3", "state.sqlite3.owner"]


async def test_stores_opening_a_new_sqlite_file_at_once_all_open_it(tmp_path: Path) -> None:
    """Workers of one instance start together on a file none has made yet. Turning a new file
    to WAL takes a lock SQLite does not wait for (no busy handler), so each opener must retry:
    before it did, one of two workers sometimes died at start-up ("database is locked")."""
    for round_ in range(40):
        path = tmp_path / f"state-{round_}.sqlite3"
        stores = [SqliteStore(path) for _ in range(4)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
            for number, store in enumerate(stores):
                await store.settle("global", "2026-12", f"entry-{number}", 1)
            assert await stores[0].total("global", "2026-12") == 4
        finally:
            for store in stores:
                await store.close()
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
