"""A real, throw-away ``redis-server`` on ``127.0.0.1`` for tests of shared state.

    with redis_server(tmp_path) as url:  # "redis://127.0.0.1:PORT/0"
        store = RedisStore(url)
        ...

Nothing is persisted (no RDB, no AOF); the server is terminated when the block ends. Tests that
need it skip when ``redis_server_binary()`` is None (Debian: ``apt-get install redis-server``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nexus_core.testing.net import free_port

__all__ = ["redis_server", "redis_server_binary"]

_START_TIMEOUT = 10.0
# A port taken between free_port() and the server's bind makes it exit; try a fresh one.
_ATTEMPTS = 3


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` on ``PATH``, or None when it is not installed."""
    return shutil.which("redis-server")


@contextmanager
def redis_server(tmp_path: str | os.PathLike[str]) -> Iterator[str]:
    """Run a ``redis-server`` on a free loopback port; yields its ``redis://`` URL."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    directory = Path(tmp_path)
    for attempt in range(1, _ATTEMPTS + 1):
        port = free_port()
        log = directory / f"redis-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(directory)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            if _wait_for_pong(process, port):
                yield f"redis://127.0.0.1:{port}/0"
                return
        finally:
            _stop(process)
        if attempt == _ATTEMPTS:
            raise RuntimeError(
                f"redis-server did not answer PING on 127.0.0.1:{port}: "
                f"{log.read_text(errors='replace')[-2000:]}"
            )


def _wait_for_pong(process: subprocess.Popen[bytes], port: int) -> bool:
    """True once the server answers PING; False if it exited or never answered."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
