"""Requests for paths Nexus does not serve are logged at INFO, and never flood the log."""

from __future__ import annotations

import logging

import pytest

from nexus_server.app import UNKNOWN_PATHS_LOGGED, UnknownPaths


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    found = [r.getMessage() for r in caplog.records if r.name == "nexus.server"]
    caplog.clear()
    return found


@pytest.mark.anyio
async def test_one_line_per_path_then_a_count_when_the_window_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nexus.server")
    unknown = UnknownPaths()
    try:
        for number in range(5):
            unknown.note("POST", "/api/pull", 404, f"rid-{number}")
        unknown.note("GET", "/api/pull", 405, "rid-get")
        assert lines(caplog) == [
            "rid-0 POST /api/pull: 404, Nexus has no such route (further requests for it are "
            "counted: one line a minute)",
            "rid-get GET /api/pull: 405, Nexus has no such method on this route (further "
            "requests for it are counted: one line a minute)",
        ]
        unknown.flush()  # what the window's timer does after a minute
        assert lines(caplog) == ["POST /api/pull: 404, 4 more times in the last 60 s"]
        # A new window: the path is logged again at once.
        unknown.note("POST", "/api/pull", 404, "rid-later")
        (again,) = [r for r in caplog.records if r.name == "nexus.server"]
        assert again.getMessage().startswith("rid-later POST /api/pull: 404")
        assert again.request_id == "rid-later"  # type: ignore[attr-defined]
        assert again.levelno == logging.INFO
    finally:
        unknown.close()


@pytest.mark.anyio
async def test_a_scanner_gets_a_bounded_number_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nexus.server")
    unknown = UnknownPaths()
    try:
        for number in range(UNKNOWN_PATHS_LOGGED + 20):
            unknown.note("GET", f"/scan/{number}", 404, f"rid-{number}")
        unknown.note("GET", "/scan/0", 404, "rid-repeat")
        assert len(lines(caplog)) == UNKNOWN_PATHS_LOGGED
        unknown.flush()
        assert lines(caplog) == [
            "GET /scan/0: 404, 1 more time in the last 60 s",
            "20 more requests for 20 other unknown paths in the last 60 s (not logged one by one)",
        ]
        # Thousands of paths: the same few lines (and the memory of the paths is bounded too).
        for number in range(100_000):
            unknown.note("GET", f"/scan/{number}", 404, f"rid-{number}")
        assert len(lines(caplog)) == UNKNOWN_PATHS_LOGGED
        unknown.flush()
        assert lines(caplog) == [
            f"{100_000 - UNKNOWN_PATHS_LOGGED} more requests for at least "
            f"{10 * UNKNOWN_PATHS_LOGGED} other unknown paths in the last 60 s (not logged one "
            "by one)"
        ]
    finally:
        unknown.close()


@pytest.mark.anyio
async def test_a_long_path_is_clipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nexus.server")
    unknown = UnknownPaths()
    try:
        unknown.note("GET", "/" + "x" * 5000, 404, "rid")
        (line,) = lines(caplog)
        assert len(line) < 400
    finally:
        unknown.close()
