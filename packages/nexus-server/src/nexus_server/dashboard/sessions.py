"""The dashboard's operator sessions: who may use its controls, and their CSRF tokens.

A browser cannot send the admin key with a page load, so an operator posts it once to
``POST /dashboard/sign-in`` and gets a session cookie instead: a random id (256 bits). The
server keeps the session in the ``[state]`` store, under the SHA-256 digest of its id, with its
expiry and a CSRF token of its own; the key itself is never stored, in the browser or here.
With no admin key configured, a browser on this machine gets a session without signing in (the
admin API's loopback rule), still bound to that rule and with its own CSRF token.

The store (memory, SQLite, Redis) is what ``nexus serve --workers N`` shares: a session opened
by one worker is good on the others, and signing out ends it on all of them. Its records expire
with the session.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nexus_core.state import StateStore

#: The session cookie's name.
COOKIE = "nexus_session"
#: Seconds a session lasts from its sign-in (not extended by use): a working day.
SESSION_SECONDS = 8 * 3600
#: Random bytes of a session id and of a CSRF token.
TOKEN_BYTES = 32
#: The state store's collection of sessions (keys: digests of the ids).
COLLECTION = "dashboard_sessions"


@dataclass(slots=True)
class Session:
    """One operator's session: its CSRF token, when it ends, how it was opened."""

    #: The digest of its id: where the store keeps it.
    key: str
    csrf: str
    #: Epoch seconds.
    expires: float
    #: Opened by the loopback rule (no admin key configured), not by signing in: it is only
    #: good for requests that are still local while no admin key is configured.
    local: bool
    #: What the operator's last action did (or why it failed), shown once on the next page.
    notice: str | None = None
    failed: bool = False

    def csrf_matches(self, presented: str | None) -> bool:
        """Whether ``presented`` is this session's CSRF token (compared in constant time)."""
        if not presented:
            return False
        return hmac.compare_digest(presented.encode("utf-8"), self.csrf.encode("utf-8"))

    def tell(self, notice: str, *, failed: bool = False) -> None:
        """Keep ``notice`` for the next page (``Sessions.save`` keeps it in the store)."""
        self.notice, self.failed = notice, failed

    def take_notice(self) -> tuple[str | None, bool]:
        """The notice kept for this page, which then forgets it."""
        notice, failed = self.notice, self.failed
        self.notice, self.failed = None, False
        return notice, failed

    def dumps(self) -> str:
        """The session as the store keeps it."""
        fields = {
            "csrf": self.csrf,
            "expires": self.expires,
            "local": self.local,
            "notice": self.notice,
            "failed": self.failed,
        }
        return json.dumps(fields, separators=(",", ":"))


def digest(session_id: str) -> str:
    """Where the store keeps the session of ``session_id`` (a copy of the store gives no id)."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class Sessions:
    """The operator sessions of one server, kept in its state store."""

    def __init__(
        self,
        store: StateStore,
        *,
        lifetime: float = SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.lifetime = lifetime
        self.clock = clock

    async def open(self, *, local: bool) -> tuple[str, Session]:
        """A new session: its id (for the cookie, never kept) and the session."""
        session_id = secrets.token_urlsafe(TOKEN_BYTES)
        session = Session(
            key=digest(session_id),
            csrf=secrets.token_urlsafe(TOKEN_BYTES),
            expires=self.clock() + self.lifetime,
            local=local,
        )
        await self.store.put(COLLECTION, session.key, session.dumps(), ttl_seconds=self.lifetime)
        return session_id, session

    async def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id``, or None (unknown, ended or expired)."""
        if not session_id or len(session_id) > 4 * TOKEN_BYTES:
            return None
        key = digest(session_id)
        text = await self.store.get(COLLECTION, key)
        if text is None:
            return None
        try:
            fields = json.loads(text)
            session = Session(
                key=key,
                csrf=str(fields["csrf"]),
                expires=float(fields["expires"]),
                local=fields["local"] is True,
                notice=fields.get("notice"),
                failed=fields.get("failed") is True,
            )
        except (ValueError, KeyError, TypeError):
            return None  # not a record this code wrote: no session
        if session.expires <= self.clock():
            await self.store.delete(COLLECTION, key)
            return None
        return session

    async def save(self, session: Session) -> None:
        """Keep what changed in ``session`` (its notice), until it expires as before."""
        left = session.expires - self.clock()
        if left > 0:
            await self.store.put(COLLECTION, session.key, session.dumps(), ttl_seconds=left)

    async def close(self, session_id: str | None) -> None:
        """End a session (signing out), for every worker."""
        if session_id and len(session_id) <= 4 * TOKEN_BYTES:
            await self.store.delete(COLLECTION, digest(session_id))


def session_id_in(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The session id in a request's ``Cookie`` headers, if any."""
    prefix = COOKIE + "="
    for name, value in headers:
        if name != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            part = part.strip()
            if part.startswith(prefix):
                return part[len(prefix) :] or None
    return None


def cookie(session_id: str, *, secure: bool, lifetime: float = SESSION_SECONDS) -> str:
    """The ``Set-Cookie`` value of a session: script-proof, never sent by another site's page."""
    value = f"{COOKIE}={session_id}; Path=/; Max-Age={int(lifetime)}; HttpOnly; SameSite=Strict"
    return value + "; Secure" if secure else value


def cleared_cookie(*, secure: bool) -> str:
    """The ``Set-Cookie`` value that makes the browser forget the session."""
    value = f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
    return value + "; Secure" if secure else value
