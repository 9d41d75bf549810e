"""Incremental Server-Sent Events framing: bytes in, complete events out, nothing lost or doubled.

The relay forwards each event the moment its blank line arrives. Events may be split across TCP
chunks anywhere (even between ``\\r`` and ``\\n``), use CRLF, LF or CR line ends, carry comments
(``: keep-alive``) or several ``data:`` lines. Output events are normalised to LF line ends and
end in a blank line; comment lines are dropped (they carry no data for an OpenAI client).

Per event, substrings are looked for with ``bytes.find``, not ``in``: CPython 3.11's ``in`` on
bytes first tries its operand as an integer, and raises (then clears) a formatted ``TypeError``
each time, twice the cost of the search itself.
"""

from __future__ import annotations

import json
import re
from typing import Any

from nexus_core.buffers import gather

DONE = b"data: [DONE]\n\n"
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_RESPONSE_END = re.compile(rb'"type"\s*:\s*"response\.(?:completed|incomplete|failed)"')
#: How a Responses API event begins: its ``event:`` line, or its data when it has none.
_RESPONSE_EVENTS = (
    b"event: response.",
    b"event:response.",
    b'data: {"type":"response.',
    b'data: {"type": "response.',
)
#: How the event that ends an OpenAI stream begins.
DONE_PREFIXES = (b"data: [DONE]", b"data:[DONE]")


def completes_answer(event: bytes) -> bool:
    """Whether ``event`` shows an OpenAI stream complete: ``[DONE]`` or a ``finish_reason``
    (chat), or a Responses stream's ``response.completed``/``incomplete``/``failed``.

    Servers that omit ``[DONE]`` may still send a usage chunk after the finish chunk, so a stream
    that ends after either is whole; one that ends before both was cut.
    """
    return (
        event.startswith(DONE_PREFIXES)
        or _has_finish_reason(event)
        # A Responses API stream (a backend that speaks it natively) ends at its final event;
        # a prefix test (no scan of the event) keeps chat chunks off the pattern.
        or (event.startswith(_RESPONSE_EVENTS) and _RESPONSE_END.search(event) is not None)
    )


_FINISH_KEY = b'"finish_reason"'


def _has_finish_reason(event: bytes) -> bool:
    """Whether a ``finish_reason`` with a string value is in ``event`` (``_FINISHED``).

    Every chat chunk names ``finish_reason``, almost always ``"finish_reason":null``: the two
    usual spellings are told by a slice, and only other spacing goes to the pattern.
    """
    at = event.find(_FINISH_KEY)
    while at >= 0:
        value = event[at + 15 : at + 17]
        if value == b':"':
            return True
        if value != b":n" and _FINISHED.match(event, at) is not None:
            return True
        at = event.find(_FINISH_KEY, at + 15)
    return False


#: How a chunk that is exactly one clean event cannot start: a blank line, or a comment.
_NOT_AN_EVENT_START = (b"\n", b":")
#: The default limit on one event (``server.max_stream_event_bytes``).
MAX_EVENT_BYTES = 16 * 1024 * 1024
#: Pieces of an incomplete event kept as they came; past this many they are gathered into one.
_PIECES = 8


class EventTooLarge(ValueError):
    """One event grew past the parser's limit (the stream cannot go on).

    ``events``: the complete events the same chunk brought before the one that was too large.
    """

    def __init__(self, limit: int, events: list[bytes] | None = None) -> None:
        super().__init__(f"a stream event is larger than {limit} bytes")
        self.limit = limit
        self.events = events or []


class SSEParser:
    """Feed raw bytes, get back complete events (each ending in ``\\n\\n``).

    Linear in the bytes fed: an event's bytes are appended to a pending buffer as they come and
    only the new bytes are searched for its end, so a huge event costs what it weighs, not its
    size times the number of chunks it came in. One event (comment lines included) may hold at
    most ``max_event_bytes``; past that ``feed`` raises ``EventTooLarge`` and drops its buffer.
    """

    __slots__ = ("_max", "_pending", "_size", "_skip_lf")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        #: The pieces of an incomplete event, which never hold a blank line (``\\n\\n``), and
        #: their total size.
        self._pending: list[bytes | bytearray] = []
        self._size = 0
        # The last chunk ended in "\r": a "\n" opening the next one belongs to that line end.
        self._skip_lf = False
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add a chunk; return the events it completed, in order."""
        if (
            # The usual chunk (a backend writes each event whole): one event, LF line ends, no
            # comment line, nothing pending. It is its own clean form: handed back as it is.
            not self._pending
            and chunk[-2:] == b"\n\n"
            and chunk.find(b"\n\n") == len(chunk) - 2
            and not self._skip_lf
            and chunk[:1] not in _NOT_AN_EVENT_START
            and chunk.find(b"\r") < 0
            and chunk.find(b"\n:") < 0
            and len(chunk) <= self._max
        ):
            return [chunk]
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if chunk.find(b"\r") >= 0:
            # A trailing "\r" already ends its line (so a CR-only event is not held back until
            # more bytes come); a "\n" at the start of the next chunk is then swallowed.
            self._skip_lf = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        pending = self._pending
        if chunk.find(b"\n\n") < 0 and not (
            pending and chunk[:1] == b"\n" and pending[-1][-1:] == b"\n"
        ):
            # No event ends here: keep the piece (only the new bytes were searched).
            if chunk:
                self._size += len(chunk)
                if self._size > self._max:
                    self._too_large()
                if len(pending) < _PIECES:
                    pending.append(chunk)
                else:
                    # Many pieces (a big event, or a trickle of tiny chunks): gather them in one
                    # growing buffer, each byte copied once, no object per piece.
                    gather(pending, chunk)
            return []
        if pending:
            pending.append(chunk)
            buffer = b"".join(pending)
            pending.clear()
            self._size = 0
        else:
            buffer = chunk
        blocks = buffer.split(b"\n\n")
        tail = blocks.pop()
        events: list[bytes] = []
        if len(buffer) > self._max:
            # A rare case (one chunk bigger than the limit): check each event's size.
            for block in blocks:
                if len(block) > self._max:
                    self._too_large(events)
                event = _clean(block)
                if event is not None:
                    events.append(event)
            if len(tail) > self._max:
                self._too_large(events)
            blocks = []
        if tail:
            pending.append(tail)
            self._size = len(tail)
        for block in blocks:
            event = _clean(block)
            if event is not None:
                events.append(event)
        return events

    def _too_large(self, events: list[bytes] | None = None) -> None:
        self._pending.clear()
        self._size = 0
        raise EventTooLarge(self._max, events)

    def flush(self) -> bytes | None:
        """An event left without its closing blank line when the stream ended, if any."""
        block = b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        self._skip_lf = False
        return _clean(block.rstrip(b"\n"))


def _clean(block: bytes) -> bytes | None:
    if block[:1] == b"\n":
        # More than one blank line between events leaves line ends at the start of a block.
        block = block.lstrip(b"\n")
    if not block:
        return None
    if block[:1] == b":" or block.find(b"\n:") >= 0:
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
