"""Durable state: budget spend and rate-limit counters behind one small interface.

``StateStore`` holds two things. Spend per ``(scope, period)`` — scope ``"global"`` or
``"key:team-a"``, period ``"2026-11"``, amounts in integer nano-USD — and short-lived counters
(``incr``) for rate limits. Three stores implement it: ``MemoryStore`` (lost on restart),
``SqliteStore`` (one local file) and ``RedisStore`` (shared by several gateway replicas).

Crash safety. A request first *reserves* its estimated cost under an id unique to that attempt;
the reservation counts in ``total()`` at once. When the request ends, ``settle`` removes the
reservation and adds the final cost in ONE atomic step (one SQLite transaction, one Redis Lua
script). Whatever moment a process dies, exactly one of two states is stored: the reservation
(counted at its estimate) or the settled amount (counted once). Spend is never lost and never
counted twice; after a crash an unsettled reservation stays counted at its estimate, which errs
on the side of the budget.

``settle`` is therefore not idempotent: never retry it after an error. A failed settle leaves
the reservation counted, or was applied; retrying could count the cost twice.

Every method raises ``StateError`` when the backend fails, and within a bounded time: SQLite
waits at most ``SQLITE_BUSY_SECONDS`` for another process's lock (and a call queued behind a
waiting one gives up at the same deadline), Redis at most ``REDIS_TIMEOUT_SECONDS`` to connect,
for a reply, or for a free pooled connection (a paused server must not hang requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from nexus_core.config import LEGACY_SQLITE_PATH, StateBackend, StateConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "StateError",
    "StateStore",
    "StoreOutage",
    "open_store",
]

_T = TypeVar("_T")

log = logging.getLogger("nexus.state")

#: Longest wait for another process's SQLite write lock (or behind a call that waits for it).
SQLITE_BUSY_SECONDS = 2.0
#: Longest wait for Redis to accept a connection, to answer a command, or for a free pooled
#: connection. Redis answers in well under a millisecond; this long without a reply is an outage.
REDIS_TIMEOUT_SECONDS = 2.0
#: While a store keeps failing, a reminder is logged at most this often.
OUTAGE_LOG_SECONDS = 60.0
#: The SQLite file every instance on a machine shared before each got its own (``sqlite_path``).
LEGACY_FILE_NAME = "state.sqlite3"
#: Beside the legacy file: the instance that kept it (``instance_label``).
OWNER_SUFFIX = ".owner"
#: ``server.port``'s default, for callers that do not say.
DEFAULT_PORT = 8000


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
    """Spend reservations and settled totals per (scope, period), and expiring counters."""

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

    async def incr(self, key: str, amount: int, ttl_seconds: float) -> int:
        """Add ``amount`` to a counter that expires ``ttl_seconds`` after its creation."""

    async def throttle(
        self, key: str, interval: float, burst: float, cost: float, *, force: bool = False
    ) -> float:
        """A token bucket (GCRA): 0 when ``cost`` fits, else seconds until it would.

        ``interval``: seconds one unit refills; ``burst``: seconds of units the bucket holds.
        ``force`` takes the cost even when it does not fit (usage known only afterwards).
        """

    async def put(self, collection: str, key: str, value: str) -> None:
        """Store ``value`` (a JSON document, say) under ``key`` in ``collection``."""

    async def items(self, collection: str) -> dict[str, str]:
        """Every key and value of ``collection``."""

    async def delete(self, collection: str, key: str) -> bool:
        """Remove ``key`` from ``collection``; False when it was not there."""


def open_store(
    config: StateConfig,
    environ: Mapping[str, str] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    port: int = DEFAULT_PORT,
) -> StateStore:
    """The store ``[state]`` describes, constructed but not opened.

    ``config_file`` and ``port`` say which instance this is (``sqlite_path``); with the default
    SQLite file this may take over the file of earlier versions (``claim_legacy``).
    """
    if config.backend is StateBackend.MEMORY:
        return MemoryStore()
    env = environ if environ is not None else os.environ
    if config.backend is StateBackend.SQLITE:
        return SqliteStore(sqlite_path(config, env, config_file=config_file, port=port, claim=True))
    name = config.redis_url_env
    url = env.get(name) if name else None
    if not url:
        raise StateError(
            f"[state] backend is 'redis' but the environment variable {name or '(unset)'} "
            "holding the Redis URL is not set"
        )
    return RedisStore(url, key_prefix=config.key_prefix)


# -- which SQLite file --------------------------------------------------------------------------
#
# Left unset, ``state.path`` means a file of this instance's own: two ``nexus serve`` on one
# machine must not share spend, keys or run-time backends, while a restart of the same instance
# (and every worker of ``--workers N``) must find its file again. What tells instances apart is
# the configuration file (its absolute path, so the same file from any directory is the same
# instance, and symlinks are not followed: a deployment that swaps the link target stays one
# instance); without a file, the port. Earlier versions shared ``state.sqlite3``: the first
# instance to start without ``state.path`` takes it over (its name goes into ``*.owner``), so
# an upgraded single instance keeps its spend and backends; every other instance starts afresh.


def is_default_path(config: StateConfig) -> bool:
    """Whether ``state.path`` is unset (or the old default, which now means the same)."""
    return config.path is None or config.path == LEGACY_SQLITE_PATH


def state_directory(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/nexus``, else ``~/.local/state/nexus``."""
    xdg = environ.get("XDG_STATE_HOME")
    return Path(xdg) / "nexus" if xdg else Path("~/.local/state/nexus").expanduser()


def instance_label(config_file: str | os.PathLike[str] | None, port: int) -> str:
    """How this instance is told from others on the machine, as people read it."""
    if config_file is not None:
        return f"configuration file {os.path.abspath(config_file)}"
    return f"no configuration file, port {port}"


def instance_file_name(config_file: str | os.PathLike[str] | None, port: int) -> str:
    """This instance's own file: ``<stem>-<digest of the path>.sqlite3``, else ``port-<n>``."""
    if config_file is None:
        return f"port-{port}.sqlite3"
    absolute = os.path.abspath(config_file)
    digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(absolute).stem).strip("-.")[:40] or "config"
    return f"{stem}-{digest}.sqlite3"


def legacy_owner(legacy: Path) -> str | None:
    """Who kept the legacy file (``instance_label``); None: nobody yet, "": unreadable."""
    try:
        return (legacy.parent / (legacy.name + OWNER_SUFFIX)).read_text("utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def claim_legacy(legacy: Path, label: str) -> bool:
    """Name this instance the owner of the legacy file unless another one is; True: it is ours.

    The owner file appears whole or not at all (written aside, then hard-linked, which fails
    if it exists), so two instances starting together cannot both take it, and the workers
    of one instance agree.
    """
    owner = legacy.parent / (legacy.name + OWNER_SUFFIX)
    scratch = legacy.parent / f".{owner.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        scratch.write_text(label + "\n", "utf-8")
        try:
            os.link(scratch, owner)
        except FileExistsError:
            return legacy_owner(legacy) == label
        finally:
            scratch.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not take over the state file %s: %s", legacy, exc)
        return False
    log.warning(
        "this instance (%s) takes over %s, the state file earlier versions shared: its spend, "
        "keys and backends added at run time stay with it; other instances get a file of "
        "their own (%s names the owner)",
        label,
        legacy,
        owner.name,
    )
    return True


def sqlite_path(
    config: StateConfig,
    environ: Mapping[str, str],
    *,
    config_file: str | os.PathLike[str] | None = None,
    port: int = DEFAULT_PORT,
    claim: bool = False,
) -> str:
    """The SQLite file: ``state.path`` when set, else this instance's own file.

    The legacy file is this instance's when it owns it, or when nobody does and this instance
    has no file of its own yet (``claim``: take it now; without, only say which file it would
    be, as ``nexus config check`` does).
    """
    if config.path is not None and not is_default_path(config):
        return config.path
    directory = state_directory(environ)
    own = directory / instance_file_name(config_file, port)
    legacy = directory / LEGACY_FILE_NAME
    label = instance_label(config_file, port)
    owner = legacy_owner(legacy)
    if owner == label:
        return str(legacy)
    unclaimed = owner is None and legacy.is_file() and not own.exists()
    if unclaimed and (not claim or claim_legacy(legacy, label)):
        return str(legacy)
    return str(own)


def store_location(store: StateStore) -> str:
    """Where an opened store keeps its data, for the log line at start."""
    if store.kind == "memory":
        return "in memory (lost on restart)"
    if isinstance(store, SqliteStore):
        return f"in the SQLite file {store.path}"
    if isinstance(store, RedisStore):  # never its URL: it may hold a password
        return f"in Redis (keys prefixed {store.key_prefix!r})"
    return f"in the {store.kind} store"


def describe_state(
    config: StateConfig,
    environ: Mapping[str, str],
    *,
    config_file: str | os.PathLike[str] | None = None,
    port: int = DEFAULT_PORT,
) -> str:
    """One line saying where durable state is kept (``nexus config check``, the start log)."""
    if config.backend is StateBackend.MEMORY:
        return "in memory (lost on restart)"
    if config.backend is StateBackend.REDIS:
        return f"in Redis (${config.redis_url_env}), keys prefixed {config.key_prefix!r}"
    path = sqlite_path(config, environ, config_file=config_file, port=port)
    if not is_default_path(config):
        return f"in the SQLite file {path} (state.path)"
    label = instance_label(config_file, port)
    if Path(path).name != LEGACY_FILE_NAME:
        return f"in the SQLite file {path}, this instance's own ({label})"
    legacy = Path(path)
    if legacy_owner(legacy) == label:
        return f"in the SQLite file {path}, kept from earlier versions by this instance ({label})"
    return (
        f"in the SQLite file {path}, shared by earlier versions: this instance ({label}) takes "
        "it over when it starts, unless another one does first"
    )


class MemoryStore:
    """Everything in dictionaries of this process; gone on restart."""

    kind = "memory"

    def __init__(self) -> None:
        self._settled: dict[tuple[str, str], int] = {}
        self._pending: dict[tuple[str, str], dict[str, int]] = {}
        # key -> (value, monotonic expiry)
        self._counters: dict[str, tuple[int, float]] = {}
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

    async def incr(self, key: str, amount: int, ttl_seconds: float) -> int:
        """Add ``amount`` to a counter that expires ``ttl_seconds`` after its creation."""
        now = time.monotonic()
        value, expires = self._counters.get(key, (0, 0.0))
        if expires <= now:
            value, expires = 0, now + ttl_seconds
        value += amount
        self._counters[key] = (value, expires)
        return value

    async def throttle(
        self, key: str, interval: float, burst: float, cost: float, *, force: bool = False
    ) -> float:
        """A token bucket (GCRA): 0 when ``cost`` fits, else seconds until it would."""
        now = time.time()
        tat, wait = _gcra(self._tats.get(key, 0.0), now, interval, burst, cost, force)
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
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;
"""
# Purge expired counters once every this many incr calls, so old rate-limit windows do not pile up.
_PURGE_EVERY = 1024


class SqliteStore:
    """One SQLite file, all of its work on one dedicated thread; safe for several processes.

    Every reserve, settle and incr is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction, and
    ``total()`` reads the file, so two processes sharing a file see each other's spend.
    """

    kind = "sqlite"

    def __init__(self, path: str | Path, busy_timeout_seconds: float = SQLITE_BUSY_SECONDS) -> None:
        self.path = Path(path).expanduser()
        self._busy_timeout = busy_timeout_seconds
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._incr_calls = 0

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
            db.execute("PRAGMA journal_mode=WAL")
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
            _purge_counters(db)
        except sqlite3.Error as exc:
            db.close()
            raise StateError(f"cannot use the SQLite state file {self.path}: {exc}") from exc
        except BaseException:
            db.close()
            raise
        self._db = db

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

    async def incr(self, key: str, amount: int, ttl_seconds: float) -> int:
        """Add ``amount`` to a counter that expires ``ttl_seconds`` after its creation."""
        return await self._run(self._incr, key, amount, ttl_seconds)

    def _incr(self, key: str, amount: int, ttl_seconds: float) -> int:
        db = self._connection()
        # Wall-clock time: other processes sharing the file must agree on expiries.
        now = time.time()
        with _transaction(db):
            row = db.execute(
                "SELECT value, expires_at FROM counters WHERE key = ?", (key,)
            ).fetchone()
            if row is None or row[1] <= now:
                value, expires_at = amount, now + ttl_seconds
            else:
                value, expires_at = row[0] + amount, row[1]
            db.execute(
                "INSERT OR REPLACE INTO counters (key, value, expires_at) VALUES (?, ?, ?)",
                (key, value, expires_at),
            )
        self._incr_calls += 1
        if self._incr_calls % _PURGE_EVERY == 0:
            _purge_counters(db)
        return int(value)

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
            tat, wait = _gcra(float(found[0]) if found else 0.0, now, interval, burst, cost, force)
            if wait == 0.0:
                db.execute(
                    "INSERT OR REPLACE INTO records (collection, key, value) VALUES ('tat', ?, ?)",
                    (key, repr(tat)),
                )
        return wait

    async def put(self, collection: str, key: str, value: str) -> None:
        """Store ``value`` under ``key`` in ``collection`` (one committed transaction)."""
        await self._run(self._put, collection, key, value)

    def _put(self, collection: str, key: str, value: str) -> None:
        db = self._connection()
        with _transaction(db):
            db.execute(
                "INSERT OR REPLACE INTO records (collection, key, value) VALUES (?, ?, ?)",
                (collection, key, value),
            )

    async def items(self, collection: str) -> dict[str, str]:
        """Every key and value of ``collection``."""
        return await self._run(self._items, collection)

    def _items(self, collection: str) -> dict[str, str]:
        rows = (
            self._connection()
            .execute("SELECT key, value FROM records WHERE collection = ?", (collection,))
            .fetchall()
        )
        return {str(key): str(value) for key, value in rows}

    async def delete(self, collection: str, key: str) -> bool:
        """Remove ``key`` from ``collection``; False when it was not there."""
        return await self._run(self._delete, collection, key)

    def _delete(self, collection: str, key: str) -> bool:
        db = self._connection()
        with _transaction(db):
            cursor = db.execute(
                "DELETE FROM records WHERE collection = ? AND key = ?", (collection, key)
            )
        return cursor.rowcount > 0

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


def _purge_counters(db: sqlite3.Connection) -> None:
    with _transaction(db):
        db.execute("DELETE FROM counters WHERE expires_at <= ?", (time.time(),))


# GCRA on Redis's own clock (every replica agrees on it): the stored value is the theoretical
# arrival time; the key expires when the bucket would be full again.
_THROTTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[1]) * tonumber(ARGV[2])
local allow_at = new_tat - tonumber(ARGV[3])
if ARGV[4] == '0' and allow_at > now then return tostring(allow_at - now) end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1)
return '0'
"""
# Spend keys outlive their month by a comfortable margin, then go by themselves.
_PERIOD_TTL_MS = 400 * 24 * 3600 * 1000
# One script, so removing the reservation and adding the final amount are one atomic step. The
# amounts stay strings inside Lua: Lua numbers are doubles and would round large totals.
_SETTLE = """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 0
"""


class RedisStore:
    """Redis shared by several replicas: spend in ``{prefix}spend:{scope}:{period}`` (an integer)
    and ``{prefix}pending:{scope}:{period}`` (a hash entry -> amount); counters as plain keys.

    Needs Redis 7 or newer (``PEXPIRE ... NX``) and the optional ``redis`` package:
    ``pip install 'nexusgw-core[redis]'``.
    """

    kind = "redis"

    def __init__(self, url: str, key_prefix: str = "nexus:", max_connections: int = 64) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.max_connections = max_connections
        self._client: Redis | None = None
        self._settle_script: AsyncScript | None = None
        self._throttle_script: AsyncScript | None = None

    async def open(self) -> None:
        """Connect and PING; ``StateError`` if the package is missing or Redis is unreachable."""
        if self._client is not None:
            return
        try:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:
            raise StateError(
                "[state] backend 'redis' needs the redis package: pip install 'nexusgw-core[redis]'"
            ) from exc
        try:
            # A blocking pool: a burst of requests waits for a connection instead of failing
            # with "Too many connections". No automatic retries: a settle re-sent after a lost
            # reply would count twice. Every wait is bounded: a paused or unreachable Redis
            # fails the call (StateError) instead of holding the request.
            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise StateError(f"bad Redis URL {_without_password(self.url)}: {exc}") from exc
        client = Redis.from_pool(pool)
        try:
            await client.ping()
        except Exception as exc:
            await client.aclose()
            raise StateError(f"cannot reach Redis at {_without_password(self.url)}: {exc}") from exc
        self._client = client
        self._settle_script = client.register_script(_SETTLE)

    async def close(self) -> None:
        """Close the connection pool; closing twice is harmless."""
        client, self._client = self._client, None
        self._settle_script = None
        if client is not None:
            await client.aclose()

    async def reserve(self, scope: str, period: str, entry: str, amount: int) -> None:
        """Record the outstanding estimate ``amount`` under ``entry``; counted until settled."""
        pending = self._key("pending", scope, period)
        with self._errors():
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.hset(pending, entry, str(amount))
                pipe.pexpire(pending, _PERIOD_TTL_MS)
                await pipe.execute()

    async def settle(self, scope: str, period: str, entry: str, amount: int) -> None:
        """Atomically drop the reservation ``entry`` (if any) and add ``amount`` to the total."""
        script = self._settle_script
        if script is None:
            raise StateError("the Redis state store is not open")
        keys = [self._key("spend", scope, period), self._key("pending", scope, period)]
        with self._errors():
            await script(keys=keys, args=[entry, str(amount), _PERIOD_TTL_MS])

    async def total(self, scope: str, period: str) -> int:
        """Settled total plus every outstanding reservation of ``(scope, period)``."""
        with self._errors():
            # MULTI/EXEC: both reads see the same moment; summed here in exact integers.
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.get(self._key("spend", scope, period))
                pipe.hvals(self._key("pending", scope, period))
                settled, pending = await pipe.execute()
        return int(settled or 0) + sum(int(value) for value in pending)

    async def incr(self, key: str, amount: int, ttl_seconds: float) -> int:
        """Add ``amount`` to a counter that expires ``ttl_seconds`` after its creation."""
        ttl_ms = max(1, math.ceil(ttl_seconds * 1000))
        with self._errors():
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.incrby(self.key_prefix + key, amount)
                # NX (Redis 7): only a key without an expiry, i.e. the one INCRBY just created.
                pipe.pexpire(self.key_prefix + key, ttl_ms, nx=True)
                value, _ = await pipe.execute()
        return int(value)

    async def throttle(
        self, key: str, interval: float, burst: float, cost: float, *, force: bool = False
    ) -> float:
        """A token bucket (GCRA) in one Lua script on Redis's clock, shared by every replica."""
        client = self._redis()
        if self._throttle_script is None:
            self._throttle_script = client.register_script(_THROTTLE)
        with self._errors():
            wait = await self._throttle_script(
                keys=[f"{self.key_prefix}tat:{key}"],
                args=[repr(interval), repr(cost), repr(burst), "1" if force else "0"],
            )
        return float(_text(wait))

    async def put(self, collection: str, key: str, value: str) -> None:
        """Store ``value`` under ``key`` in ``collection`` (one hash per collection)."""
        with self._errors():
            await self._redis().hset(f"{self.key_prefix}records:{collection}", key, value)

    async def items(self, collection: str) -> dict[str, str]:
        """Every key and value of ``collection``."""
        with self._errors():
            raw = await self._redis().hgetall(f"{self.key_prefix}records:{collection}")
        return {_text(key): _text(value) for key, value in raw.items()}

    async def delete(self, collection: str, key: str) -> bool:
        """Remove ``key`` from ``collection``; False when it was not there."""
        with self._errors():
            removed = await self._redis().hdel(f"{self.key_prefix}records:{collection}", key)
        return bool(removed)

    def _key(self, kind: str, scope: str, period: str) -> str:
        return f"{self.key_prefix}{kind}:{scope}:{period}"

    def _redis(self) -> Redis:
        if self._client is None:
            raise StateError("the Redis state store is not open")
        return self._client

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        from redis.exceptions import RedisError

        try:
            yield
        except RedisError as exc:
            raise StateError(f"Redis at {_without_password(self.url)}: {exc}") from exc


def _gcra(
    tat: float, now: float, interval: float, burst: float, cost: float, force: bool
) -> tuple[float, float]:
    """The bucket's next theoretical arrival time and the wait (0.0: the cost fits)."""
    tat = max(tat, now)
    new_tat = tat + cost * interval
    allow_at = new_tat - burst
    if not force and allow_at > now:
        return tat, allow_at - now
    return new_tat, 0.0


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _without_password(url: str) -> str:
    """``url`` with the password (if any) left out, fit for messages and logs."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{host}" if user else host
    return parts._replace(netloc=netloc).geturl()
