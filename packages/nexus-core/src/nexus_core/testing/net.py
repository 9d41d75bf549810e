"""Loopback addresses for tests: a free port, and a port where connections are refused."""

from __future__ import annotations

import socket
import threading

# Sockets bound (never listening) for the life of the process, so their ports stay refused.
_reserved: list[socket.socket] = []
_reserved_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port_url() -> str:
    """``http://127.0.0.1:PORT`` where nothing listens: a connection is refused at once.

    The port stays bound (without ``listen``) until the process exits, so no other server can take
    it — the same state a vLLM server is in while it loads its model.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    with _reserved_lock:
        _reserved.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def blackhole_url() -> str:
    """``http://127.0.0.1:PORT`` where a connection attempt hangs until the client gives up.

    A listening socket whose accept queue is already full: Linux drops further SYNs, which is
    what an unreachable host looks like, without leaving the machine. Kept for the process life.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)
    with _reserved_lock:
        _reserved.extend((listener, filler))
    return f"http://127.0.0.1:{port}"
