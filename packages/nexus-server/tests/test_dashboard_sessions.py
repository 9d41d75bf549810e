"""The dashboard's operator sessions: random ids kept as digests in the state store, expiry,
CSRF tokens, the cookie."""

from __future__ import annotations

import re

import pytest

from nexus_core.state import MemoryStore
from nexus_server.dashboard.sessions import (
    COLLECTION,
    COOKIE,
    SESSION_SECONDS,
    Sessions,
    cleared_cookie,
    cookie,
    digest,
    session_id_in,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def sessions_on(clock: Clock) -> tuple[Sessions, MemoryStore]:
    store = MemoryStore(clock=clock)
    return Sessions(store, clock=clock), store


async def test_session_ids_and_tokens_are_random_and_the_ids_are_not_kept() -> None:
    sessions, store = sessions_on(Clock())
    opened = [await sessions.open(local=False) for _ in range(200)]
    ids = {session_id for session_id, _ in opened}
    tokens = {session.csrf for _, session in opened}
    assert len(ids) == 200
    assert len(tokens) == 200
    assert not ids & tokens
    for session_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", session_id)  # 32 random bytes
    # Kept under their digests: a copy of the store gives no cookie.
    kept = repr(store._expiring)
    assert not any(session_id in kept for session_id in ids)
    for session_id, session in opened:
        found = await sessions.get(session_id)
        assert found is not None
        assert found.csrf == session.csrf


async def test_a_session_expires_and_is_forgotten() -> None:
    clock = Clock()
    sessions, store = sessions_on(clock)
    session_id, session = await sessions.open(local=False)
    clock.now += SESSION_SECONDS - 1
    assert await sessions.get(session_id) is not None
    clock.now += 1
    assert await sessions.get(session_id) is None
    assert await store.get(COLLECTION, session.key) is None


async def test_a_session_is_shared_by_every_worker_of_the_store_and_ends_for_all() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    one, other = Sessions(store, clock=clock), Sessions(store, clock=clock)
    session_id, session = await one.open(local=False)
    session.tell("Drained a")
    await one.save(session)
    seen = await other.get(session_id)
    assert seen is not None
    assert seen.take_notice() == ("Drained a", False)
    await other.save(seen)
    again = await one.get(session_id)
    assert again is not None
    assert again.notice is None
    await other.close(session_id)
    assert await one.get(session_id) is None


async def test_unknown_forged_and_oversized_ids_are_no_session() -> None:
    sessions, store = sessions_on(Clock())
    assert await sessions.get(None) is None
    assert await sessions.get("") is None
    assert await sessions.get("x" * 10_000) is None
    assert await sessions.get("unknown") is None
    # A record this code did not write (another version's, a tampered store): no session.
    for garbage in ("not json", "[]", '{"csrf": "x"}', '{"csrf": "x", "expires": "soon"}'):
        await store.put(COLLECTION, digest("planted"), garbage, ttl_seconds=60)
        assert await sessions.get("planted") is None
    await sessions.close(None)
    await sessions.close("unknown")


async def test_the_csrf_token_must_match_exactly() -> None:
    sessions, _ = sessions_on(Clock())
    _, session = await sessions.open(local=False)
    assert session.csrf_matches(session.csrf)
    for wrong in (None, "", session.csrf[:-1], session.csrf + "a", session.csrf.swapcase(), "é"):
        assert not session.csrf_matches(wrong)


async def test_a_notice_is_shown_once() -> None:
    sessions, _ = sessions_on(Clock())
    _, session = await sessions.open(local=True)
    session.tell("Unknown backend", failed=True)
    assert session.take_notice() == ("Unknown backend", True)
    assert session.take_notice() == (None, False)


def test_the_cookie_is_http_only_strict_and_secure_over_https() -> None:
    plain = cookie("abc", secure=False)
    assert plain == f"{COOKIE}=abc; Path=/; Max-Age={SESSION_SECONDS}; HttpOnly; SameSite=Strict"
    assert cookie("abc", secure=True) == plain + "; Secure"
    assert "Max-Age=0" in cleared_cookie(secure=False)
    assert cleared_cookie(secure=True).endswith("; Secure")


def test_the_session_id_is_read_from_the_cookie_header() -> None:
    assert session_id_in([(b"cookie", b"a=1; nexus_session=xyz; b=2")]) == "xyz"
    assert session_id_in([(b"cookie", b"a=1"), (b"cookie", b"nexus_session=q")]) == "q"
    assert session_id_in([(b"cookie", b"nexus_session=")]) is None
    assert session_id_in([(b"cookie", b"other_nexus_session=x")]) is None
    assert session_id_in([(b"x-nexus-session", b"x")]) is None
