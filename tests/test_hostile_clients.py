"""Hostile clients against a real ``nexus serve``: every read from a client is bounded.

Each test is an attack made with raw sockets, as an attacker would make it: headers that never
end, thousands of idle or half-sent connections, a body dripped a byte at a time, bodies over the
limit on every route, bytes that are not HTTP. The server must answer each in the shape of the
door the request was for (or close), keep its memory where it was, and keep serving everyone
else. Memory is read from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from nexus_core.testing import Behaviour, FakeBackend
from tests.conftest import gateway_config, nexus_serve, toml_text

MESSAGES = [{"role": "user", "content": "Hi"}]


def rss_kib(pid: int) -> int:
    """The resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def serve_config(tmp_path: Path, backend: FakeBackend, **server: Any) -> Path:
    """A config file for ``backend`` with the given ``[server]`` settings."""
    config = gateway_config(backend)
    config["server"].update(server)
    path = tmp_path / "nexus.toml"
    path.write_text(toml_text(config))
    return path


def connect(url: str, timeout: float = 5.0) -> socket.socket:
    """A raw TCP connection to the server."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_answer(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes (or ``limit`` seconds pass)."""
    sock.settimeout(limit)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def status_and_body(answer: bytes) -> tuple[int, Any]:
    """The status and the JSON body of a raw HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend("good", models=["fake-model"])
    with fake.running():
        yield fake


def test_headers_that_never_end_get_431_without_being_buffered(
    tmp_path: Path, backend: FakeBackend
) -> None:
    config = serve_config(tmp_path, backend, max_header_bytes=4096)
    with nexus_serve(config) as (process, url):
        before = rss_kib(process.pid)
        answers = {}
        for path in ("/v1/chat/completions", "/api/chat", "/v1/messages"):
            sock = connect(url)
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ".encode())
            sent = 0
            # 64 MiB of one header value, never ending: the server must stop reading long before.
            chunk = b"a" * 65536
            with contextlib.suppress(OSError):
                while sent < 64 * 1024 * 1024:
                    sock.sendall(chunk)
                    sent += len(chunk)
            answers[path] = status_and_body(read_answer(sock))
            assert sent < 64 * 1024 * 1024, "the server read a header of 64 MiB"
            sock.close()
        after = rss_kib(process.pid)
        assert answers["/v1/chat/completions"][0] == 431
        assert answers["/v1/chat/completions"][1]["error"]["code"] == (
            "request_header_fields_too_large"
        )
        assert answers["/api/chat"] == (431, {"error": answers["/api/chat"][1]["error"]})
        assert isinstance(answers["/api/chat"][1]["error"], str)
        assert answers["/v1/messages"][1]["type"] == "error"
        assert after - before < 50 * 1024, f"RSS grew by {after - before} KiB"
        assert httpx.get(url + "/health").status_code == 200


def test_thousands_of_idle_and_half_sent_connections_never_starve_the_server(
    tmp_path: Path, backend: FakeBackend
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        soft = min(hard, 4096)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Many times the cap, within what this process may open.
    count = min(1500, soft - 300)
    assert count >= 600, f"the open-file limit ({soft}) is too low for this test"
    # A long header timeout: what keeps the server answering here is the connection cap.
    config = serve_config(tmp_path, backend, max_connections=200, header_timeout_seconds=60)
    with nexus_serve(config) as (_process, url):
        held: list[socket.socket] = []
        try:
            for index in range(count):
                sock = connect(url)
                if index % 2:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                held.append(sock)
            # The server keeps answering: health, listings and inference through the SDK.
            assert httpx.get(url + "/health", timeout=5).status_code == 200
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=5)
            answer = client.chat.completions.create(model="fake-model", messages=MESSAGES)
            assert answer.choices[0].message.content == "Hello from good"
            # The oldest idle connections were closed to make room.
            closed = 0
            for sock in held[: count - 300]:
                sock.settimeout(0.01)
                try:
                    if sock.recv(1) == b"":
                        closed += 1
                except TimeoutError:
                    pass
                except OSError:
                    closed += 1
            assert closed >= 0.9 * (count - 300)
        finally:
            for sock in held:
                sock.close()
        stats = httpx.get(url + "/v1/stats").json()
        assert all(b["pending"] == 0 for b in stats["backends"])


def test_idle_and_half_sent_connections_are_cut_after_the_header_timeout(
    tmp_path: Path, backend: FakeBackend
) -> None:
    config = serve_config(tmp_path, backend, header_timeout_seconds=1)
    with nexus_serve(config) as (_, url):
        silent = [connect(url) for _ in range(20)]
        partial = [connect(url) for _ in range(20)]
        for sock in partial:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # Dripping a byte now and then does not extend the deadline.
        for _ in range(3):
            time.sleep(0.4)
            for sock in partial:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
        for sock in silent:
            assert read_answer(sock, 5) == b""  # closed without a word: nothing was asked
        for sock in partial:
            status, body = status_and_body(read_answer(sock, 5))
            assert status == 408
            assert body["error"]["code"] == "request_timeout"
            assert "server.header_timeout_seconds" in body["error"]["message"]
        # A keep-alive client that sends its next request in time is served as usual.
        with httpx.Client() as http:
            for _ in range(3):
                assert http.get(url + "/health").status_code == 200
                time.sleep(0.3)


def test_a_dripped_body_is_cut_by_the_body_timeout(tmp_path: Path, backend: FakeBackend) -> None:
    config = serve_config(tmp_path, backend, body_timeout_seconds=1)
    with nexus_serve(config) as (_, url):
        sock = connect(url)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        started = time.monotonic()
        dripping = threading.Event()

        def drip() -> None:
            with contextlib.suppress(OSError):
                while not dripping.is_set():
                    sock.sendall(b" ")
                    time.sleep(0.2)

        thread = threading.Thread(target=drip, daemon=True)
        thread.start()
        try:
            status, body = status_and_body(read_answer(sock, 10))
        finally:
            dripping.set()
        assert status == 408
        assert body["error"]["code"] == "request_timeout"
        assert time.monotonic() - started < 8
        assert not backend.inference_requests
        stats = httpx.get(url + "/v1/stats").json()
        assert all(b["pending"] == 0 for b in stats["backends"])


def test_when_every_connection_is_busy_a_new_one_gets_503(tmp_path: Path) -> None:
    slow = FakeBackend("slow", models=["fake-model"])
    with slow.running():
        config = serve_config(tmp_path, slow, max_connections=16, idle_timeout_seconds=30)
        with nexus_serve(config) as (_, url):
            slow.push(Behaviour(delay_between_events=1.0, times=16))
            streams = []
            for _ in range(16):
                sock = connect(url)
                body = json.dumps({"model": "fake-model", "messages": MESSAGES, "stream": True})
                sock.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
                )
                sock.settimeout(5)
                assert sock.recv(12).startswith(b"HTTP/1.1 200")
                streams.append(sock)
            refused = connect(url)
            status, error = status_and_body(read_answer(refused, 5))
            assert status == 503
            assert error["error"]["code"] == "overloaded"
            for sock in streams:
                sock.close()
            slow.reset()
            deadline = time.monotonic() + 10
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the server did not take connections again"
                time.sleep(0.1)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_413_on_every_route(
    tmp_path: Path, backend: FakeBackend, chunked: bool
) -> None:
    config = serve_config(tmp_path, backend, max_body_bytes=65536)
    big = json.dumps({"url": "http://127.0.0.1:1", "name": "x" * 100_000}).encode()
    shapes = {
        "/admin/backends": lambda body: body["error"]["code"] == "request_too_large",
        "/api/show": lambda body: isinstance(body["error"], str) and "65536" in body["error"],
        "/v1/chat/completions": lambda body: body["error"]["code"] == "request_too_large",
        "/v1/responses": lambda body: body["error"]["code"] == "request_too_large",
        "/v1/messages": lambda body: (
            body["type"] == "error" and body["error"]["type"] == "request_too_large"
        ),
        "/api/chat": lambda body: isinstance(body["error"], str),
    }
    with nexus_serve(config) as (_, url):
        for path, shaped in shapes.items():

            def body_parts() -> Iterator[bytes]:
                for start in range(0, len(big), 8192):
                    yield big[start : start + 8192]

            content: Any = body_parts() if chunked else big
            response = httpx.post(
                url + path, content=content, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 413, (path, response.text)
            assert shaped(response.json()), (path, response.text)
        names = [b["name"] for b in httpx.get(url + "/admin/backends").json()["data"]]
        assert names == ["good"]


def test_bytes_that_are_not_http_get_a_json_400_and_no_log_flood(
    tmp_path: Path, backend: FakeBackend
) -> None:
    config = serve_config(tmp_path, backend)
    with nexus_serve(config) as (_, url):
        for _ in range(200):
            sock = connect(url)
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
            status, body = status_and_body(read_answer(sock, 5))
            assert status == 400
            assert body["error"]["code"] == "invalid_http"
            sock.close()
        assert httpx.get(url + "/health").status_code == 200
    log = config.with_suffix(".log").read_text()
    assert "Traceback" not in log
    assert log.count("invalid") <= 2, log


def test_huge_model_names_are_kept_short_in_history_and_logs(
    tmp_path: Path, backend: FakeBackend
) -> None:
    config = serve_config(tmp_path, backend)
    with nexus_serve(config) as (process, url):
        before = rss_kib(process.pid)
        name = "m" * 1_000_000
        with httpx.Client() as http:
            for _ in range(100):  # as many as the history keeps
                response = http.post(
                    url + "/v1/chat/completions", json={"model": name, "messages": MESSAGES}
                )
                assert response.status_code == 404
            history = http.get(url + "/v1/history").json()["data"]
        assert len(history) == 100
        assert all(len(entry["model"]) <= 257 for entry in history)
        # 100 MB of names went through; the server kept none of them.
        assert rss_kib(process.pid) - before < 50 * 1024
    assert config.with_suffix(".log").stat().st_size < 200_000


def test_at_the_cap_a_keep_alive_connection_between_requests_makes_room(
    tmp_path: Path, backend: FakeBackend
) -> None:
    config = serve_config(tmp_path, backend, max_connections=16)
    with nexus_serve(config) as (_, url):
        held = []
        try:
            for _ in range(16):
                sock = connect(url)
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
                held.append(sock)  # kept open between requests, as a pooling client does
            # Every slot holds a keep-alive connection: the newcomer takes the place of one.
            assert httpx.get(url + "/health", timeout=5).status_code == 200
            # ... at once, long before uvicorn's keep-alive timeout (5 s) would close any.
            closed = 0
            for sock in held:
                sock.settimeout(0.05)
                with contextlib.suppress(TimeoutError):
                    closed += sock.recv(1) == b""
            assert 1 <= closed < 16
        finally:
            for sock in held:
                sock.close()
