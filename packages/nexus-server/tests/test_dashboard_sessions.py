"""The dashboard's operator sessions: random ids kept as digests, expiry, a bound, CSRF tokens."""

from __future__ import annotations

import re

from nexus_server.dashboard.sessions import (
    COOKIE,
    SESSION_SECONDS,
    Sessions,
    cleared_cookie,
    cookie,
    session_id_in,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_session_ids_and_tokens_are_random_and_the_ids_are_not_kept() -> None:
    sessions = Sessions()
    opened = [sessions.open(local=False) for _ in range(200)]
    ids = {session_id for session_id, _ in opened}
    tokens = {session.csrf for _, session in opened}
    assert len(ids) == 200
    assert len(tokens) == 200
    assert not ids & tokens
    for session_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", session_id)  # 32 random bytes
    # Kept by their digests only: a copy of the table gives no cookie.
    kept = repr(sessions._sessions)
    assert not any(session_id in kept for session_id in ids)
    assert all(sessions.get(session_id) is session for session_id, session in opened)


def test_a_session_expires_and_is_forgotten() -> None:
    clock = Clock()
    sessions = Sessions(clock=clock)
    session_id, session = sessions.open(local=False)
    clock.now += SESSION_SECONDS - 1
    assert sessions.get(session_id) is session
    clock.now += 1
    assert sessions.get(session_id) is None
    assert len(sessions) == 0
    assert sessions.get(session_id) is None


def test_sessions_are_bounded_and_the_oldest_go_first() -> None:
    clock = Clock()
    sessions = Sessions(limit=3, clock=clock)
    first, _ = sessions.open(local=True)
    clock.now += 1
    later = [sessions.open(local=True)[0] for _ in range(3)]
    assert len(sessions) == 3
    assert sessions.get(first) is None
    assert all(sessions.get(session_id) is not None for session_id in later)
    # Expired ones are swept when a session opens.
    clock.now += SESSION_SECONDS
    sessions.open(local=True)
    assert len(sessions) == 1


def test_closing_a_session_ends_it() -> None:
    sessions = Sessions()
    session_id, _ = sessions.open(local=False)
    sessions.close(session_id)
    assert sessions.get(session_id) is None
    sessions.close(None)
    sessions.close("unknown")
    assert sessions.get(None) is None
    assert sessions.get("") is None


def test_the_csrf_token_must_match_exactly() -> None:
    _, session = Sessions().open(local=False)
    assert session.csrf_matches(session.csrf)
    for wrong in (None, "", session.csrf[:-1], session.csrf + "a", session.csrf.swapcase(), "é"):
        assert not session.csrf_matches(wrong)


def test_a_notice_is_shown_once() -> None:
    _, session = Sessions().open(local=False)
    session.tell("Drained a", failed=False)
    assert session.take_notice() == ("Drained a", False)
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
