"""Log lines escape control characters from requests and backends, in both formats.

A real ``nexus serve`` process logs to a file while hostile text arrives: a model name, an
``X-Request-Id`` and a path with CR/LF, an ANSI escape and a C1 CSI (U+009B), a request the
HTTP parser refuses, and a backend whose error message carries the same. Every request is
exactly one line, and no control character but the line ends themselves is in the file.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from nexus_core.testing import FakeBackend
from tests.conftest import nexus_serve

HOSTILE = "m\r\nINFO nexus.requests: forged\x1b[31m\x9b2J"
#: Any control character but LF (the line end), DEL, C1 controls, the Unicode line separators.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]
PRETTY_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +([\w.]+): (.*)")


class _TextError(BaseHTTPRequestHandler):
    """Every request: 500 with a text/plain body holding ``HOSTILE`` as raw bytes."""

    def do_GET(self) -> None:
        body = f"backend says {HOSTILE}".encode()
        self.send_response(500)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextmanager
def text_error_backend() -> Iterator[str]:
    """A server on loopback whose errors are raw text: its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TextError)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("log_format", ["pretty", "json"])
def test_every_field_from_outside_is_escaped_in_the_log(tmp_path: Path, log_format: str) -> None:
    good = FakeBackend("good", ["fake-model"])
    config = tmp_path / "nexus.toml"
    with text_error_backend() as broken, good.running():
        config.write_text(
            f'[[backends]]\nname = "broken"\nurl = "{broken}"\ntype = "generic"\n\n'
            f'[[backends]]\nname = "good"\nurl = "{good.url}"\ntype = "generic"\n\n'
            '[state]\nbackend = "memory"\n\n'
            f'[logging]\nformat = "{log_format}"\nlevel = "info"\n',
            encoding="utf-8",
        )
        with nexus_serve(config) as (process, base):
            client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
            # 1. A made-up model name and a request id with a C1 CSI (sent as the byte 0x9b;
            #    the SDK sends ASCII header values only).
            unknown = httpx.post(
                base + "/v1/chat/completions",
                json={"model": HOSTILE, "messages": MESSAGES},
                headers={"X-Request-Id": b"rid-\x9b[2J"},
            )
            assert unknown.status_code == 404
            assert (b"x-request-id", b"rid-\x9b[2J") in unknown.headers.raw
            # 2. An ANSI escape in a request id: the HTTP parser refuses the request (a JSON
            #    400; refusals are counted into a summary line, never logged one by one).
            host, port = base.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as raw:
                raw.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    b"X-Request-Id: \x1b[31mred\r\nContent-Length: 2\r\n\r\n{}"
                )
                refused = raw.recv(65536)
                assert refused.startswith(b"HTTP/1.1 400")
                assert b'"invalid_http"' in refused
            # 3. A path with CR/LF, ESC and U+009B, percent-encoded (raw ones are refused).
            odd = httpx.post(
                base + "/v1/chat%0D%0Acompletions%1B%5B31m%C2%9B", json={"model": "fake-model"}
            )
            assert odd.status_code == 404
            # 4. The broken backend's error text (logged when its probe failed) had them; the
            #    request goes to the good one.
            answer = client.chat.completions.create(model="fake-model", messages=MESSAGES)
            assert answer.choices[0].message.content == "Hello from good"
            # 5. A stream for a model nobody serves, with the hostile name.
            with pytest.raises(openai.NotFoundError):
                list(client.chat.completions.create(model=HOSTILE, messages=MESSAGES, stream=True))
            process.terminate()
            process.wait(15)
    data = config.with_suffix(".log").read_bytes()
    text = data.decode("utf-8")
    found = RAW.search(text)
    assert found is None, f"raw {found.group()!r} in the log:\n{text}"
    lines = text.split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    if log_format == "json":
        entries = [json.loads(line) for line in lines]
        requests = [e["request"] for e in entries if e["logger"] == "nexus.requests"]
        assert [(r["model"], r["status"], r["stream"]) for r in requests] == [
            (HOSTILE, 404, False),
            ("fake-model", 200, False),
            (HOSTILE, 404, True),
        ]
        assert requests[0]["request_id"] == "rid-\x9b[2J"  # JSON gives the value back whole
        health = [e["message"] for e in entries if e["message"].startswith("backend broken: ")]
        assert len(health) == 1
        # A probe's error text is clipped like every backend text in a message: its control
        # characters are spaces before it reaches a log line (``adapters.clip``).
        assert "backend says m INFO nexus.requests: forged [31m 2J" in health[0]
    else:
        escaped = "m\\r\\nINFO nexus.requests: forged\\x1b[31m\\x9b2J"
        # Every line is one record: stamp, level, logger, message.
        parsed = [PRETTY_LINE.fullmatch(line) for line in lines]
        assert all(parsed), text
        by_logger = [(m.group(1), m.group(2)) for m in parsed if m is not None]
        requests = [message for logger, message in by_logger if logger == "nexus.requests"]
        assert len(requests) == 3, text
        assert requests[0].startswith(f"rid-\\x9b[2J chat model={escaped} backend=- ")
        assert requests[1].split(" ", 1)[1].startswith("chat model=fake-model backend=good ")
        assert f" model={escaped} " in requests[2]
        health = [m for logger, m in by_logger if m.startswith("backend broken: ")]
        assert len(health) == 1
        assert "backend says m INFO nexus.requests: forged [31m 2J" in health[0]
