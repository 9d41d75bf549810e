"""The dashboard's operator sessions: who may use its controls, and their CSRF tokens.

A browser cannot send the admin key with a page load, so an operator posts it once to
``POST /dashboard/sign-in`` and gets a session cookie instead: a random id (256 bits) that the
server keeps, as a SHA-256 digest, with an expiry and a CSRF token of its own. The key itself
is never stored, in the browser or here. With no admin key configured, a browser on this
machine gets a session without signing in (the admin API's loopback rule), still bound to that
rule and with its own CSRF token.

Sessions live in this process's memory: bounded (``MAX_SESSIONS``, the oldest dropped first),
gone when the server restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: The session cookie's name.
COOKIE = "nexus_session"
#: Seconds a session lasts from its sign-in (not extended by use): a working day.
SESSION_SECONDS = 8 * 3600
#: Sessions kept at once; past it the oldest is dropped (a flood of sign-ins or of page loads
#: from this machine costs bounded memory).
MAX_SESSIONS = 1024
#: Random bytes of a session id and of a CSRF token.
TOKEN_BYTES = 32


@dataclass(slots=True)
class Session:
    """One operator's session: its CSRF token, when it ends, how it was opened."""

    csrf: str
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
        """Keep ``notice`` for the next page."""
        self.notice, self.failed = notice, failed

    def take_notice(self) -> tuple[str | None, bool]:
        """The notice kept for this page, which then forgets it."""
        notice, failed = self.notice, self.failed
        self.notice, self.failed = None, False
        return notice, failed


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8")).digest()


class Sessions:
    """The operator sessions of one server, by the digest of their ids (insertion order: oldest
    first)."""

    def __init__(
        self,
        *,
        lifetime: float = SESSION_SECONDS,
        limit: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self.clock = clock
        self._sessions: dict[bytes, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, *, local: bool) -> tuple[str, Session]:
        """A new session: its id (for the cookie, never kept here) and the session."""
        now = self.clock()
        sessions = self._sessions
        for key in [k for k, s in sessions.items() if s.expires <= now]:
            del sessions[key]
        while len(sessions) >= self.limit:
            del sessions[next(iter(sessions))]
        session_id = secrets.token_urlsafe(TOKEN_BYTES)
        session = Session(
            csrf=secrets.token_urlsafe(TOKEN_BYTES), expires=now + self.lifetime, local=local
        )
        sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id``, or None (unknown, or expired: then forgotten)."""
        if not session_id:
            return None
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._sessions[key]
            return None
        return session

    def close(self, session_id: str | None) -> None:
        """End a session (signing out)."""
        if session_id:
            self._sessions.pop(_digest(session_id), None)


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
