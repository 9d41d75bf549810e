"""``SqliteStore``: state in one SQLite file, safe for several processes (the workers of
``nexus serve --workers N``); which file is ``location``'s business.

Every call waits at most ``SQLITE_BUSY_SECONDS`` for another process's lock (and a call queued
behind a waiting one gives up at the same deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from nexus_core.state.base import PURGE_BATCH, PURGE_INTERVAL_SECONDS, StateError, gcra

_T = TypeVar("_T")

#: Longest wait for another process's SQLite write lock (or behind a call that waits for it).
SQLITE_BUSY_SECONDS = 2.0

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    scope TEXT NOT NULL,
    period TEXT NOT NULL,
    settled INTEGER NOT NULL,
    PRIMARY KEY (scope, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    scope TEXT NOT NULL,
    period TEXT NOT NULL,
    entry TEXT NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (scope, period, entry)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expiring (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (collection, key)
);
CREATE INDEX IF NOT EXISTS expiring_by_time ON expiring (expires);
"""
# Files written by earlier versions also hold a table ``counters``, never written to: left alone.
# ``expiring`` (records put with a ttl, large values: a rowid table) came later without a new
# schema version: a new table that older versions never read, so they still open the file.


class SqliteStore:
    """One SQLite file, all of its work on one dedicated thread; safe for several processes.

    Every write is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction, and ``total()`` reads the
    file, so two processes sharing a file see each other's spend.
    """

    kind = "sqlite"

    def __init__(
        self,
        path: str | Path,
        busy_timeout_seconds: float = SQLITE_BUSY_SECONDS,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path).expanduser()
        self._busy_timeout = busy_timeout_seconds
        #: Wall-clock seconds, for when records expire (shared by processes, so not monotonic).
        self._clock = clock
        self._purged_at = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Create the file, its directories and the schema; ``StateError`` if impossible."""
        if self._executor is not None:
            return
        # One worker thread owns the connection: sqlite3 objects stay on the thread that made
        # them, transactions never interleave, and the event loop never waits on the disk.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nexus-state")
        try:
            await self._run(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=True
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the SQLite state file {self.path}: {exc}") from exc
        try:
            # WAL lets readers in other processes go on while one writes. synchronous=NORMAL in
            # WAL mode: a COMMIT is in the OS's hands once it returns, so a killed process loses
            # nothing; only a power cut can drop the last commits (never corrupting the file).
            self._wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StateError(
                    f"the SQLite state file {self.path} was written by a newer Nexus "
                    f"(schema {version}, this one knows {_SCHEMA_VERSION})"
                )
            with _transaction(db):
                # Not executescript: it would COMMIT first, outside this transaction.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            db.close()
            raise StateError(f"cannot use the SQLite state file {self.path}: {exc}") from exc
        except BaseException:
            db.close()
            raise
        self._db = db

    def _wal(self, db: sqlite3.Connection) -> None:
        """Turn the file to WAL, waiting up to the busy timeout for another opener.

        Changing the journal mode takes a lock SQLite does not wait for (no busy handler): two
        workers opening a new file at once, one got "database is locked" at start-up.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    async def close(self) -> None:
        """Close the connection and stop the worker thread; closing twice is harmless."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, self._disconnect)
        finally:
            # The worker is idle now; it exits by itself without a blocking join here.
            executor.shutdown(wait=False)

    def _disconnect(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    async def reserve(self, scope: str, period: str, entry: str, amount: int) -> None:
        """Record the outstanding estimate ``amount`` under ``entry``; counted until settled."""
        await self._run(self._reserve, scope, period, entry, amount)

    def _reserve(self, scope: str, period: str, entry: str, amount: int) -> None:
        db = self._connection()
        with _transaction(db):
            db.execute(
                "INSERT OR REPLACE INTO reservations (scope, period, entry, amount) "
                "VALUES (?, ?, ?, ?)",
                (scope, period, entry, amount),
            )

    async def settle(self, scope: str, period: str, entry: str, amount: int) -> None:
        """Atomically drop the reservation ``entry`` (if any) and add ``amount`` to the total."""
        # Cancelling the caller does not stop the worker: the transaction commits or not, whole.
        await self._run(self._settle, scope, period, entry, amount)

    def _settle(self, scope: str, period: str, entry: str, amount: int) -> None:
        db = self._connection()
        with _transaction(db):
            db.execute(
                "DELETE FROM reservations WHERE scope = ? AND period = ? AND entry = ?",
                (scope, period, entry),
            )
            db.execute(
                "INSERT INTO spend (scope, period, settled) VALUES (?, ?, ?) "
                "ON CONFLICT (scope, period) DO UPDATE SET settled = settled + excluded.settled",
                (scope, period, amount),
            )

    async def total(self, scope: str, period: str) -> int:
        """Settled total plus every outstanding reservation of ``(scope, period)``."""
        return await self._run(self._total, scope, period)

    def _total(self, scope: str, period: str) -> int:
        # One statement reads one consistent snapshot of both tables.
        row = (
            self._connection()
            .execute(
                "SELECT (SELECT COALESCE(SUM(settled), 0) FROM spend"
                " WHERE scope = ?1 AND period = ?2)"
                " + (SELECT COALESCE(SUM(amount), 0) FROM reservations"
                " WHERE scope = ?1 AND period = ?2)",
                (scope, period),
            )
            .fetchone()
        )
        return int(row[0])

    async def throttle(
        self, key: str, interval: float, burst: float, cost: float, *, force: bool = False
    ) -> float:
        """A token bucket (GCRA) kept in the file: 0 when ``cost`` fits, else the wait."""
        return await self._run(self._throttle, key, interval, burst, cost, force)

    def _throttle(self, key: str, interval: float, burst: float, cost: float, force: bool) -> float:
        db = self._connection()
        now = time.time()
        with _transaction(db):
            row = db.execute(
                "SELECT value FROM records WHERE collection = 'tat' AND key = ?", (key,)
            )
            found = row.fetchone()
            tat, wait = gcra(float(found[0]) if found else 0.0, now, interval, burst, cost, force)
            if wait == 0.0:
                db.execute(
                    "INSERT OR REPLACE INTO records (collection, key, value) VALUES ('tat', ?, ?)",
                    (key, repr(tat)),
                )
        return wait

    async def put(
        self, collection: str, key: str, value: str, *, ttl_seconds: float | None = None
    ) -> None:
        """Store ``value`` under ``key`` in ``collection`` (one committed transaction).

        A write with ``ttl_seconds`` also removes expired records, at most every
        ``PURGE_INTERVAL_SECONDS`` and ``PURGE_BATCH`` at a time.
        """
        await self._run(self._put, collection, key, value, ttl_seconds)

    def _put(self, collection: str, key: str, value: str, ttl_seconds: float | None) -> None:
        db = self._connection()
        with _transaction(db):
            if ttl_seconds is None:
                db.execute(
                    "DELETE FROM expiring WHERE collection = ? AND key = ?", (collection, key)
                )
                db.execute(
                    "INSERT OR REPLACE INTO records (collection, key, value) VALUES (?, ?, ?)",
                    (collection, key, value),
                )
                return
            now = self._clock()
            db.execute("DELETE FROM records WHERE collection = ? AND key = ?", (collection, key))
            db.execute(
                "INSERT OR REPLACE INTO expiring (collection, key, value, expires) "
                "VALUES (?, ?, ?, ?)",
                (collection, key, value, now + ttl_seconds),
            )
            if now - self._purged_at >= PURGE_INTERVAL_SECONDS:
                self._purged_at = now
                db.execute(
                    "DELETE FROM expiring WHERE rowid IN "
                    "(SELECT rowid FROM expiring WHERE expires <= ? LIMIT ?)",
                    (now, PURGE_BATCH),
                )

    async def get(self, collection: str, key: str) -> str | None:
        """The value under ``key`` in ``collection``; None when absent or expired."""
        return await self._run(self._get, collection, key)

    def _get(self, collection: str, key: str) -> str | None:
        # One statement: one consistent snapshot of both tables.
        row = (
            self._connection()
            .execute(
                "SELECT value FROM records WHERE collection = ?1 AND key = ?2 UNION ALL "
                "SELECT value FROM expiring WHERE collection = ?1 AND key = ?2 AND expires > ?3",
                (collection, key, self._clock()),
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    async def items(self, collection: str) -> dict[str, str]:
        """Every key and value of ``collection`` put without ``ttl_seconds``."""
        return await self._run(self._items, collection)

    def _items(self, collection: str) -> dict[str, str]:
        rows = (
            self._connection()
            .execute("SELECT key, value FROM records WHERE collection = ?", (collection,))
            .fetchall()
        )
        return {str(key): str(value) for key, value in rows}

    async def delete(self, collection: str, key: str) -> bool:
        """Remove ``key`` from ``collection``; False when it was not there (or had expired)."""
        return await self._run(self._delete, collection, key)

    def _delete(self, collection: str, key: str) -> bool:
        db = self._connection()
        with _transaction(db):
            listed = db.execute(
                "DELETE FROM records WHERE collection = ? AND key = ?", (collection, key)
            ).rowcount
            expiring = db.execute(
                "DELETE FROM expiring WHERE collection = ? AND key = ? AND expires > ?",
                (collection, key, self._clock()),
            ).rowcount
            # An expired one goes too: it was not there for anyone.
            db.execute("DELETE FROM expiring WHERE collection = ? AND key = ?", (collection, key))
        return listed + expiring > 0

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StateError("the SQLite state store is not open")
        return self._db

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise StateError("the SQLite state store is not open")
        loop = asyncio.get_running_loop()
        # Calls run one at a time; while one waits for another process's lock, the ones queued
        # behind it give up when their own wait would pass the busy timeout, so no call waits
        # longer than about twice that, however many queue up.
        deadline = time.monotonic() + self._busy_timeout
        try:
            return await loop.run_in_executor(
                self._executor, self._before, deadline, function, *args
            )
        except sqlite3.Error as exc:
            raise StateError(f"SQLite state file {self.path}: {exc}") from exc

    def _before(self, deadline: float, function: Callable[..., _T], *args: Any) -> _T:
        if time.monotonic() > deadline:
            raise StateError(
                f"SQLite state file {self.path}: still busy after {self._busy_timeout:g} s "
                "(is another process holding a lock on it?)"
            )
        return function(*args)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: a read-then-write transaction can then never
    # fail with SQLITE_BUSY half way when another process writes (it waits busy_timeout instead).
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
