"""Gateway API keys: who may call, which models, how fast, how much; and the admin key.

Keys come from ``[[auth.keys]]`` (the key itself in the environment variable ``key_env``) or
from the state store (made by ``POST /admin/keys`` / ``nexus keys create``). Only a SHA-256
digest of each key is kept — in memory and in the store — so the store never holds a usable
key; keys Nexus makes are 256 random bits, for which a fast digest is the right choice.
Identifying a request's key is one digest and one dict look-up.

Rate limits are token buckets in the state store (``StateStore.throttle``), so with Redis every
replica draws from the same bucket: requests per minute are taken before routing; tokens per
minute are checked before routing and taken from the answer's usage afterwards. When the store
fails, a key with a rate limit is refused (``StateError``, answered 503 ``state_unavailable``):
a limit is never skipped. Tokens counted after an answer went out are logged once per failure
burst and dropped.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nexus_core.config import AuthConfig
from nexus_core.state import StateStore, StoreOutage

log = logging.getLogger("nexus.auth")

#: The state-store collection holding keys made at run time.
COLLECTION = "keys"
#: What keys Nexus makes start with (so they are recognisable in a leak scanner).
KEY_PREFIX = "nxk-"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Seconds of rate a bucket holds: one minute's worth of requests or tokens may come at once.
BURST_SECONDS = 60.0


def digest(key: str) -> str:
    """The SHA-256 hex digest a key is known by."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class ApiKey:
    """One gateway key, known by its digest."""

    name: str
    digest: str
    models: tuple[str, ...] = ()
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    monthly_budget_usd: float | None = None
    created: str = ""
    source: str = "config"
    _match: Callable[[str], Any] | None = None

    def __post_init__(self) -> None:
        if self.models:
            pattern = "|".join(f"(?:{fnmatch.translate(glob)})" for glob in self.models)
            self._match = re.compile(pattern).match

    def allows(self, model: str) -> bool:
        """Whether the key may use ``model`` (no allow-list: every model)."""
        return self._match is None or self._match(model) is not None

    def public(self) -> dict[str, Any]:
        """What the admin API shows: never the key, never its digest."""
        return {
            "name": self.name,
            "models": list(self.models),
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "monthly_budget_usd": self.monthly_budget_usd,
            "created": self.created or None,
            "source": self.source,
        }

    def stored(self) -> str:
        """The JSON kept in the state store (the digest, not the key)."""
        data = self.public()
        data.pop("name")
        data.pop("source")
        data["digest"] = self.digest
        return json.dumps(data, separators=(",", ":"))


class KeyRingError(ValueError):
    """A key cannot be made or removed; the message says why (``param``: the field at fault)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


def checked_settings(
    models: Any, requests_per_minute: Any, tokens_per_minute: Any, monthly_budget_usd: Any
) -> tuple[tuple[str, ...], int | None, int | None, float | None]:
    """A key's settings, type-checked strictly; ``KeyRingError`` naming the field otherwise.

    JSON (the admin API, the state store) has no integer type of its own, and in Python a
    boolean is an integer: ``true`` must not become a limit of 1 request per minute, nor
    ``"60"``, ``1.5`` or ``-1`` anything at all. Absent (None) means no limit.
    """
    if models is None:
        models = []
    if not isinstance(models, list | tuple) or not all(
        isinstance(glob, str) and glob for glob in models
    ):
        raise KeyRingError("models must be a list of non-empty globs", param="models")
    limits: list[int | None] = []
    for label, value in (
        ("requests_per_minute", requests_per_minute),
        ("tokens_per_minute", tokens_per_minute),
    ):
        if value is not None and (type(value) is not int or value < 1):
            raise KeyRingError(
                f"{label} must be a whole number of at least 1, or null for no limit "
                f"(got {value!r})",
                param=label,
            )
        limits.append(value)
    budget = monthly_budget_usd
    if budget is not None and (
        type(budget) not in (int, float) or not math.isfinite(budget) or budget < 0
    ):
        raise KeyRingError(
            f"monthly_budget_usd must be a number of at least 0, or null for no budget "
            f"(got {budget!r})",
            param="monthly_budget_usd",
        )
    return (
        tuple(models),
        limits[0],
        limits[1],
        None if budget is None else float(budget),
    )


class KeyRing:
    """Every gateway key, the admin key, and the rate-limit buckets."""

    def __init__(
        self,
        config: AuthConfig,
        store: StateStore,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.enabled = config.enabled
        self.store = store
        self._environ = environ if environ is not None else os.environ
        self._by_digest: dict[str, ApiKey] = {}
        self._by_name: dict[str, ApiKey] = {}
        #: Logs store failures once per burst (the gateway shares its accountant's).
        self.outage = StoreOutage(store.kind)
        #: Stored keys found unreadable, logged once (``sync`` runs often with workers).
        self._unreadable: set[tuple[str, str]] = set()
        admin = self._environ.get(config.admin_key_env) if config.admin_key_env else None
        #: The admin key's digest; None: /admin answers loopback clients only.
        self.admin_digest: str | None = digest(admin) if admin else None

    async def load(self) -> None:
        """Read the configured keys from the environment and the made ones from the store."""
        for entry in self.config.keys:
            value = self._environ.get(entry.key_env)
            if not value:
                log.error(
                    "gateway key %r: the environment variable %s is not set; the key is unusable",
                    entry.name,
                    entry.key_env,
                )
                continue
            self._add(
                ApiKey(
                    name=entry.name,
                    digest=digest(value),
                    models=tuple(entry.models),
                    requests_per_minute=entry.requests_per_minute,
                    tokens_per_minute=entry.tokens_per_minute,
                    monthly_budget_usd=entry.monthly_budget_usd,
                    source="config",
                )
            )
        await self.sync()

    async def sync(self) -> None:
        """Catch up with the store: keys made or revoked by another replica or worker."""
        stored = await self.store.items(COLLECTION)
        for name, key in list(self._by_name.items()):
            if key.source == "store" and name not in stored:
                del self._by_name[name]
                self._by_digest.pop(key.digest, None)
        for name, raw in stored.items():
            existing = self._by_name.get(name)
            if existing is not None:
                if existing.source == "config":
                    log.warning("gateway key %r in the state store is shadowed by the config", name)
                continue
            try:
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise TypeError("not a JSON object")
                if not NAME.fullmatch(name):
                    raise KeyRingError("the name is not a valid key name", param="name")
                models, rpm, tpm, budget = checked_settings(
                    data.get("models"),
                    data.get("requests_per_minute"),
                    data.get("tokens_per_minute"),
                    data.get("monthly_budget_usd"),
                )
                self._add(
                    ApiKey(
                        name=name,
                        digest=str(data["digest"]),
                        models=models,
                        requests_per_minute=rpm,
                        tokens_per_minute=tpm,
                        monthly_budget_usd=budget,
                        created=str(data.get("created") or ""),
                        source="store",
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                # Fail closed: a key whose limits cannot be read is not usable (401), rather
                # than usable without them. Logged once per process.
                if (name, raw) not in self._unreadable:
                    self._unreadable.add((name, raw))
                    log.error("gateway key %r in the state store is unreadable: %s", name, exc)

    def _add(self, key: ApiKey) -> None:
        self._by_digest[key.digest] = key
        self._by_name[key.name] = key

    def identify(self, presented: str | None) -> ApiKey | None:
        """The key a client presented, or None."""
        if not presented:
            return None
        return self._by_digest.get(digest(presented))

    def is_admin(self, presented: str | None) -> bool:
        """Whether ``presented`` is the admin key (constant-time comparison)."""
        if self.admin_digest is None or not presented:
            return False
        return hmac.compare_digest(digest(presented), self.admin_digest)

    def listing(self) -> list[ApiKey]:
        """Every usable key, by name."""
        return sorted(self._by_name.values(), key=lambda k: k.name)

    async def create(
        self,
        name: str,
        *,
        models: list[str] | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        monthly_budget_usd: float | None = None,
    ) -> tuple[ApiKey, str]:
        """Make a key, keep its digest in the store; the plaintext is returned once.

        Every setting is checked strictly (``checked_settings``): a boolean is never a number.
        """
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise KeyRingError(
                "a key name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                "digit",
                param="name",
            )
        checked = checked_settings(
            models, requests_per_minute, tokens_per_minute, monthly_budget_usd
        )
        if name in self._by_name:
            raise KeyRingError(f"a key named {name!r} exists already", 409, param="name")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            name=name,
            digest=digest(plaintext),
            models=checked[0],
            requests_per_minute=checked[1],
            tokens_per_minute=checked[2],
            monthly_budget_usd=checked[3],
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            source="store",
        )
        await self.store.put(COLLECTION, name, key.stored())
        self._add(key)
        log.info("gateway key %r created", name)
        return key, plaintext

    async def revoke(self, name: str) -> None:
        """Remove a key made at run time (a configured key is removed from the config)."""
        key = self._by_name.get(name)
        if key is None:
            raise KeyRingError(f"no key named {name!r}", 404)
        if key.source == "config":
            raise KeyRingError(
                f"the key {name!r} is defined in the configuration ([[auth.keys]]); remove it "
                "there",
                409,
            )
        await self.store.delete(COLLECTION, name)
        del self._by_name[name]
        self._by_digest.pop(key.digest, None)
        log.info("gateway key %r revoked", name)

    async def admit(self, key: ApiKey) -> float:
        """Take one request from the key's buckets: 0 to go ahead, else seconds to wait.

        ``StateError`` when the store fails: the request is refused, never let through unmetered.
        """
        wait = 0.0
        rpm = key.requests_per_minute
        if rpm is not None:
            wait = await self.store.throttle(f"rpm:{key.name}", 60.0 / rpm, BURST_SECONDS, 1)
        tpm = key.tokens_per_minute
        if tpm is not None and not wait:
            wait = await self.store.throttle(f"tpm:{key.name}", 60.0 / tpm, BURST_SECONDS, 0)
        if self.outage.failing and (rpm is not None or tpm is not None):
            self.outage.recovered()
        return wait

    async def used_tokens(self, key: ApiKey, tokens: int, request_id: str = "") -> None:
        """Take the tokens an answer used (by request ``request_id``) from the key's
        tokens-per-minute bucket."""
        tpm = key.tokens_per_minute
        if tpm is None or tokens <= 0:
            return
        try:
            await self.store.throttle(
                f"tpm:{key.name}", 60.0 / tpm, BURST_SECONDS, tokens, force=True
            )
        except Exception as exc:  # the answer went out; a failed count must not hurt it
            self.outage.failed(f"count the tokens of key {key.name!r}", exc, request_id)
            return
        if self.outage.failing:
            self.outage.recovered()


def presented_key(authorization: bytes | None, api_key: bytes | None) -> str | None:
    """The key a client sent as ``Authorization: Bearer`` or ``x-api-key``."""
    if authorization:
        scheme, _, value = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if api_key:
        return api_key.decode("latin-1").strip() or None
    return None
