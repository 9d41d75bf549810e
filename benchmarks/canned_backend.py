"""A fast built-in canned OpenAI backend, for machines without nginx, and a paced SSE backend.

It answers the same bytes as `mock-nginx.conf` on the same ports: 18001 a JSON completion,
18011 an SSE stream of 11 events (model `mock`), 18021 the same stream under the model
`mock-stream`. With `--paced-port` it also serves a stream whose events are sent one at a time,
`--gap-ms` apart (nginx cannot pace), to check that a proxy relays events one by one.

Run: uv run python benchmarks/canned_backend.py [--paced-port 18031] [--gap-ms 2] [--no-canned]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import cast

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "mock",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
    },
    separators=(",", ":"),
).encode()


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    data = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "mock",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


#: The 11 events of `mock-nginx.conf`'s stream, then `[DONE]`.
EVENTS: list[bytes] = [
    _chunk({"role": "assistant", "content": ""}),
    *(
        _chunk({"content": word})
        for word in ("Hello", "!", " How", " can", " I", " help", " you", " today", "?")
    ),
    _chunk({}, "stop"),
    b"data: [DONE]\n\n",
]
STREAM = b"".join(EVENTS)
PLAIN_PORT, STREAM_PORT, MIXED_STREAM_PORT = 18001, 18011, 18021


def _models(name: str) -> bytes:
    return json.dumps(
        {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "bench"}],
        },
        separators=(",", ":"),
    ).encode()


def _response(content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
        b"%d\r\nConnection: keep-alive\r\n\r\n" % len(body) + body
    )


class CannedProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: every request is answered from prepared bytes, never parsed further."""

    def __init__(self, answers: dict[bytes, bytes], paced: float | None) -> None:
        self.answers = answers
        self.paced = paced
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        transport = self.transport
        assert transport is not None
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            length = 0
            marker = head.lower().find(b"content-length:")
            if marker >= 0:
                line_end = head.find(b"\r\n", marker)
                length = int(head[marker + 15 : line_end if line_end >= 0 else None])
            if len(buffer) < end + 4 + length:
                break
            buffer = buffer[end + 4 + length :]
            path = head[head.find(b" ") + 1 : head.find(b" HTTP/")]
            if self.paced is not None and path == b"/v1/chat/completions":
                self._pace(transport)
                continue
            transport.write(self.answers.get(path, b"HTTP/1.1 404 Not Found\r\n\r\n"))
        self.buffer = buffer

    def _pace(self, transport: asyncio.Transport) -> None:
        """Send the stream chunked, one event per write, ``paced`` seconds apart."""
        loop = asyncio.get_running_loop()
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        )
        gap = self.paced
        assert gap is not None

        def send(index: int) -> None:
            if transport.is_closing():
                return
            event = EVENTS[index]
            transport.write(b"%x\r\n%s\r\n" % (len(event), event))
            if index + 1 < len(EVENTS):
                loop.call_later(gap, send, index + 1)
            else:
                transport.write(b"0\r\n\r\n")

        send(0)


def answers(model: str, completion: bytes, content_type: bytes) -> dict[bytes, bytes]:
    """The prepared response bytes of one port, by request path."""
    return {
        b"/v1/models": _response(b"application/json", _models(model)),
        b"/health": _response(b"text/plain", b"ok"),
        b"/v1/chat/completions": _response(content_type, completion),
    }


async def serve(canned: bool, paced_port: int | None, gap: float) -> None:
    """Listen on the canned ports (and the paced one) until cancelled."""
    loop = asyncio.get_running_loop()
    ports: list[tuple[int, Callable[[], asyncio.Protocol]]] = []
    if canned:
        for port, table in (
            (PLAIN_PORT, answers("mock", COMPLETION, b"application/json")),
            (STREAM_PORT, answers("mock", STREAM, b"text/event-stream")),
            (MIXED_STREAM_PORT, answers("mock-stream", STREAM, b"text/event-stream")),
        ):
            ports.append((port, lambda table=table: CannedProtocol(table, None)))  # type: ignore[misc]
    if paced_port is not None:
        table = answers("mock", STREAM, b"text/event-stream")
        ports.append((paced_port, lambda: CannedProtocol(table, gap)))
    servers = [
        await loop.create_server(factory, "127.0.0.1", port, backlog=4096, reuse_address=True)
        for port, factory in ports
    ]
    print("canned backend ready on", ", ".join(str(port) for port, _ in ports), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-canned", action="store_true", help="serve only the paced port")
    parser.add_argument("--paced-port", type=int, default=None)
    parser.add_argument("--gap-ms", type=float, default=2.0, help="paced stream: event spacing")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(not args.no_canned, args.paced_port, args.gap_ms / 1000))


if __name__ == "__main__":
    main()
