"""Incremental Server-Sent Events framing: bytes in, complete events out, nothing lost or doubled.

The relay forwards each event the moment its blank line arrives. Events may be split across TCP
chunks anywhere (even between ``\\r`` and ``\\n``), use CRLF, LF or CR line ends, carry comments
(``: keep-alive``) or several ``data:`` lines. Output events are normalised to LF line ends and
end in a blank line; comment lines are dropped (they carry no data for an OpenAI client).
"""

from __future__ import annotations

import json
import re
from typing import Any

DONE = b"data: [DONE]\n\n"
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_DONE_PREFIXES = (b"data: [DONE]", b"data:[DONE]")


def completes_answer(event: bytes) -> bool:
    """Whether ``event`` shows an OpenAI stream complete: ``[DONE]`` or a ``finish_reason``.

    Servers that omit ``[DONE]`` may still send a usage chunk after the finish chunk, so a stream
    that ends after either is whole; one that ends before both was cut.
    """
    return event.startswith(_DONE_PREFIXES) or _FINISHED.search(event) is not None


class SSEParser:
    """Feed raw bytes, get back complete events (each ending in ``\\n\\n``)."""

    __slots__ = ("_buffer", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        # The last chunk ended in "\r": a "\n" opening the next one belongs to that line end.
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add a chunk; return the events it completed, in order."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            # A trailing "\r" already ends its line (so a CR-only event is not held back until
            # more bytes come); a "\n" at the start of the next chunk is then swallowed.
            self._skip_lf = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\n\n" not in buffer:
            self._buffer = buffer
            return []
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop()
        events: list[bytes] = []
        for block in blocks:
            event = _clean(block)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> bytes | None:
        """An event left without its closing blank line when the stream ended, if any."""
        block, self._buffer = self._buffer, b""
        self._skip_lf = False
        return _clean(block.rstrip(b"\n"))


def _clean(block: bytes) -> bytes | None:
    if block[:1] == b"\n":
        # More than one blank line between events leaves line ends at the start of a block.
        block = block.lstrip(b"\n")
    if not block:
        return None
    if block[:1] == b":" or b"\n:" in block:
        lines = [line for line in block.split(b"\n") if line and line[:1] != b":"]
        if not lines:
            return None
        block = b"\n".join(lines)
    return block + b"\n\n"


def event_data(event: bytes) -> bytes:
    """The ``data`` field of one event: its ``data:`` lines joined by ``\\n``."""
    parts: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value[:1] == b" " else value)
        elif line == b"data":  # a field name alone is that field with an empty value
            parts.append(b"")
    return b"\n".join(parts)


def error_event(message: str, *, kind: str = "upstream_error", code: str | None = None) -> bytes:
    """An SSE event the OpenAI SDK raises as an error: ``data: {"error": {...}}``."""
    payload: dict[str, Any] = {
        "error": {"message": message, "type": kind, "param": None, "code": code}
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
