"""`nexus serve` raises its own open-file limit at start-up and logs what it set.

The server starts with a soft limit below its hard one (``preexec_fn``); its limits are then read
from /proc. The cases where the hard limit is too low are in
``packages/nexus-server/tests/test_open_file_limit.py``.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from nexus_core.testing import free_port
from tests.conftest import NEXUS

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def limited(soft: int, hard: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def test_nexus_serve_raises_its_limit_at_start_up(tmp_path: Path) -> None:
    """The real command: its limits in /proc and the line it logged."""
    port = free_port()
    config = tmp_path / "nexus.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nmax_connections = 1000\n'
        '[state]\nbackend = "memory"\n'
    )
    log_file = tmp_path / "serve.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [NEXUS, "serve", "--config", str(config), "--no-discovery"],
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=limited(1024, 4096),
        )
    try:
        for _ in range(300):
            assert process.poll() is None, log_file.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"]
        assert "open-file limit raised from 1024 to 4096" in log_file.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
