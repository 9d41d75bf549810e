"""Bodies that arrive in many pieces: gathered in one growing buffer, joined once.

Shared by the upstream clients (``h1``, the aiohttp and httpx transports) and the SSE parser.
"""

from __future__ import annotations


def gather(parts: list[bytes | bytearray], piece: bytes) -> None:
    """Add ``piece`` to a big body's ``parts``, gathered into one growing buffer.

    Many pieces of a few hundred KiB each would leave the allocator's heap fragmented once they
    are freed (the process keeps the memory: +240 MB after one 128 MiB body refused); one buffer
    grows by reallocation and goes back to the system when it is freed.
    """
    first = parts[0]
    gathered = first if isinstance(first, bytearray) else bytearray(first)
    for part in parts[1:]:
        gathered += part
    gathered += piece
    parts[:] = [gathered]


def joined(parts: list[bytes | bytearray]) -> bytes:
    """A body's parts as one ``bytes`` (the only part itself when it is one)."""
    if len(parts) == 1:
        first = parts[0]
        if type(first) is bytes:
            return first
    return b"".join(parts)
