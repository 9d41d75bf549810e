"""`nexus serve` listens with a backlog of ``LISTEN_BACKLOG`` (the kernel's cap permitting),
in one process and with workers.

A queue that overflows while Nexus is short of CPU ends in connections the kernel resets: at
10,000 streams opened in 3 s, 977 and 981 resets with uvicorn's 2,048, 271 and 295 with 4,096
(docs/performance.md, "Open streams"). The listening socket's backlog is what ``ss`` shows as the
Send-Q of a listening socket.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nexus_core.testing import FakeBackend
from nexus_server.serve import LISTEN_BACKLOG
from tests.conftest import nexus_serve

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on ``port`` on this machine (``ss -ltn``)."""
    shown = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    # State, Recv-Q (connections waiting to be accepted), Send-Q (the backlog), addresses.
    return int(shown[2])


def expected() -> int:
    cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    return min(LISTEN_BACKLOG, cap)


@pytest.mark.parametrize("workers", [None, "2"], ids=["one-process", "two-workers"])
def test_nexus_serve_listens_with_its_backlog(tmp_path: Path, workers: str | None) -> None:
    config = tmp_path / "nexus.toml"
    state = (
        f'backend = "sqlite"\npath = "{tmp_path / "state.sqlite3"}"'
        if workers
        else 'backend = "memory"'
    )
    backend = FakeBackend("a")
    with backend.running():
        config.write_text(
            f"[discovery]\nenabled = false\n[state]\n{state}\n"
            f'[[backends]]\nname = "a"\nurl = "{backend.url}"\n',
            encoding="utf-8",
        )
        args = ("--workers", workers) if workers else ()
        with nexus_serve(config, *args) as (_, url):
            port = int(url.rsplit(":", 1)[1])
            assert listen_backlog(port) == expected() > 2048
