"""``RedisStore``: state in Redis, shared by several gateway replicas (needs the optional
``redis`` package).

Every call waits at most ``REDIS_TIMEOUT_SECONDS`` to connect, for a reply, or for a free pooled
connection (a paused server must not hang requests).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nexus_core.state.base import StateError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

#: Longest wait for Redis to accept a connection, to answer a command, or for a free pooled
#: connection. Redis answers in well under a millisecond; this long without a reply is an outage.
REDIS_TIMEOUT_SECONDS = 2.0

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
    and ``{prefix}pending:{scope}:{period}`` (a hash entry -> amount); token buckets in
    ``{prefix}tat:{key}``, records in ``{prefix}records:{collection}`` (a hash), records put
    with a ttl in ``{prefix}expiring:{collection}:{key}`` (a string with Redis's own expiry:
    a hash field cannot expire before Redis 7.4).

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

    async def put(
        self, collection: str, key: str, value: str, *, ttl_seconds: float | None = None
    ) -> None:
        """Store ``value`` under ``key`` in ``collection``: in the collection's hash, or with
        ``ttl_seconds`` in a key of its own that Redis expires (one MULTI/EXEC either way)."""
        listed, expiring = self._record_keys(collection, key)
        with self._errors():
            async with self._redis().pipeline(transaction=True) as pipe:
                if ttl_seconds is None:
                    pipe.delete(expiring)
                    pipe.hset(listed, key, value)
                else:
                    pipe.hdel(listed, key)
                    pipe.set(expiring, value, px=max(1, math.ceil(ttl_seconds * 1000)))
                await pipe.execute()

    async def get(self, collection: str, key: str) -> str | None:
        """The value under ``key`` in ``collection``; None when absent or expired."""
        listed, expiring = self._record_keys(collection, key)
        with self._errors():
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.hget(listed, key)
                pipe.get(expiring)
                found, kept = await pipe.execute()
        value = found if found is not None else kept
        return None if value is None else _text(value)

    async def items(self, collection: str) -> dict[str, str]:
        """Every key and value of ``collection`` put without ``ttl_seconds``."""
        with self._errors():
            raw = await self._redis().hgetall(f"{self.key_prefix}records:{collection}")
        return {_text(key): _text(value) for key, value in raw.items()}

    async def delete(self, collection: str, key: str) -> bool:
        """Remove ``key`` from ``collection``; False when it was not there (or had expired)."""
        listed, expiring = self._record_keys(collection, key)
        with self._errors():
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.hdel(listed, key)
                pipe.delete(expiring)
                removed = await pipe.execute()
        return any(removed)

    def _record_keys(self, collection: str, key: str) -> tuple[str, str]:
        """The collection's hash, and the key of ``key`` put with a ttl."""
        prefix = self.key_prefix
        return f"{prefix}records:{collection}", f"{prefix}expiring:{collection}:{key}"

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
