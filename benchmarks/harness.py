"""What the benchmark scripts share: the canned backend, `nexus serve`, load generators, /proc.

Nothing here is imported by Nexus; the scripts next to this file import it by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT = re.compile(
    r"RESULT rps=(\S+) p50_ms=(\S+) p90_ms=(\S+) p99_ms=(\S+) errors=(\d+) requests=(\d+)"
)
PLAIN = "http://127.0.0.1:18001"
STREAM = "http://127.0.0.1:18011"
MIXED_STREAM = "http://127.0.0.1:18021"
PACED_PORT = 18031
CHAT = "/v1/chat/completions"
TICK = os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Block until ``url`` answers (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:g} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the canned backend -----------------------------------------------------------------------


@contextlib.contextmanager
def canned_backend(work: Path, kind: str = "auto") -> Iterator[str]:
    """Serve the canned backend on 18001/18011/18021; yields "nginx" or "builtin"."""
    if kind == "auto":
        kind = "nginx" if shutil.which("nginx") else "builtin"
    if kind == "nginx":
        config = work / "mock-nginx.conf"
        text = (HERE / "mock-nginx.conf").read_text()
        text = re.sub(r"pid [^;]+;", f"pid {work / 'nginx.pid'};", text)
        text = re.sub(r"error_log [^;]+;", f"error_log {work / 'nginx-error.log'} warn;", text)
        config.write_text(text)
        command = ["nginx", "-c", str(config)]
    else:
        command = [sys.executable, str(HERE / "canned_backend.py")]
    for base in (PLAIN, STREAM, MIXED_STREAM):
        port = int(base.rsplit(":", 1)[1])
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                # Something already answers there: the figures would be that server's.
                raise SystemExit(f"port {port} is in use: stop what listens there first")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        for base in (PLAIN, STREAM, MIXED_STREAM):
            wait_http(base + "/v1/models")
        yield kind
    finally:
        stop(process, 20)


@contextlib.contextmanager
def paced_backend(gap_ms: float) -> Iterator[str]:
    """The built-in backend's paced stream (events ``gap_ms`` apart); yields its base URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "canned_backend.py"),
            "--no-canned",
            "--paced-port",
            str(PACED_PORT),
            "--gap-ms",
            str(gap_ms),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{PACED_PORT}"
        wait_http(base + "/v1/models")
        yield base
    finally:
        stop(process, 20)


# --- Nexus ------------------------------------------------------------------------------------


def nexus_executable() -> str:
    """The `nexus` console script of this environment."""
    script = Path(sys.executable).with_name("nexus")
    if script.exists():
        return str(script)
    found = shutil.which("nexus")
    if found is None:
        raise SystemExit("the nexus console script is not installed: uv sync --all-packages")
    return found


def serve_flags() -> set[str]:
    """The long options `nexus serve --help` lists."""
    help_text = subprocess.run(
        [nexus_executable(), "serve", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return set(re.findall(r"(--[a-z][a-z-]+)", help_text))


@dataclass
class NexusOptions:
    """How the Nexus under test is configured."""

    port: int = 8000
    log_level: str = "info"
    metrics: bool = True
    workers: int | None = None


@contextlib.contextmanager
def nexus_serving(
    work: Path, backends: dict[str, str], options: NexusOptions
) -> Iterator[tuple[str, int]]:
    """One `nexus serve` in front of ``backends`` (name → URL); yields (base URL, pid)."""
    config = work / f"nexus-{options.port}.toml"
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {options.port}",
        "[logging]",
        f'level = "{options.log_level}"',
        "[telemetry]",
        f"metrics = {'true' if options.metrics else 'false'}",
        "[state]",
        # Several workers share spend, keys and limits through a store; one keeps it in memory.
        'backend = "memory"'
        if not options.workers or options.workers < 2
        else f'backend = "sqlite"\npath = "{work / "state.sqlite3"}"',
    ]
    for name, url in backends.items():
        lines += ["[[backends]]", f'name = "{name}"', f'url = "{url}"']
    config.write_text("\n".join(lines) + "\n")
    command = [nexus_executable(), "serve", "--config", str(config), "--no-discovery"]
    if options.workers is not None:
        command += ["--workers", str(options.workers)]
    nexus = subprocess.Popen(
        command,
        env={**os.environ, "NEXUS_DISCOVERY": "false"},
        stdout=subprocess.DEVNULL,
        # At info level every request logs a line: it goes to /dev/null, as the cost is the
        # formatting and writing, not a terminal's scrolling.
        stderr=subprocess.DEVNULL if options.log_level in ("debug", "info") else None,
    )
    try:
        base = f"http://127.0.0.1:{options.port}"
        wait_http(base + "/health/ready")
        yield base, nexus.pid
    finally:
        stop(nexus)


# --- one process tree's CPU and memory, from /proc ----------------------------------------------


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for current in pids:
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids += [int(child) for child in task.read_text().split()]
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its children (workers), in seconds."""
    total = 0
    for each in _tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{each}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of ``pid`` and its children in MB (VmRSS, VmHWM summed)."""
    rss = peak = 0
    for each in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak += int(line.split()[1])
    return rss / 1024, peak / 1024


# --- load generators ---------------------------------------------------------------------------


@dataclass
class Load:
    """One load run's figures (latencies in ms)."""

    rps: float
    p50: float
    p99: float
    errors: int
    requests: int


def wrk(
    url: str, connections: int, duration: float, stream: bool, model: str = "mock", key: str = ""
) -> Load:
    """One `wrk -t1` run with post.lua."""
    env = {**os.environ, "MODEL": model, "STREAM": "true" if stream else "false"}
    if key:
        env["KEY"] = key
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "post.lua"),
        url,
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    match = RESULT.search(output)
    if match is None:
        raise SystemExit(f"wrk printed no RESULT line:\n{output}")
    rps, p50, _p90, p99, errors, requests = match.groups()
    return Load(float(rps), float(p50), float(p99), int(errors), int(requests))


def _request(port: int, stream: bool, model: str, key: str) -> bytes:
    body = b'{"model":"%s","messages":[{"role":"user","content":"Hello!"}],"stream":%s}' % (
        model.encode(),
        b"true" if stream else b"false",
    )
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (port, (key or "sk-bench").encode(), len(body))
    ) + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    marker = lower.find(b"content-length:")
    if marker >= 0:
        end = lower.find(b"\r\n", marker)
        await reader.readexactly(int(lower[marker + 15 : end]))
    elif b"chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _client_load(
    port: int, connections: int, duration: float, stream: bool, model: str, key: str
) -> Load:
    request = _request(port, stream, model, key)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                if await _read_response(reader) != 200:
                    errors += 1
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    if not latencies:
        return Load(0.0, 0.0, 0.0, errors, 0)
    return Load(
        rps=len(latencies) / elapsed,
        p50=latencies[len(latencies) // 2] * 1000,
        p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        errors=errors,
        requests=len(latencies),
    )


def client_load(
    url: str, connections: int, duration: float, stream: bool, model: str = "mock", key: str = ""
) -> Load:
    """The built-in load generator (asyncio, keep-alive): for machines without wrk.

    It runs in this Python process, so its own cost caps what it can measure far below wrk.
    """
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return _run(_client_load(port, connections, duration, stream, model, key))


def _run(coroutine):  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# --- streaming: time to first byte and event spacing -------------------------------------------


@dataclass
class StreamTiming:
    """Arrival of one streamed response, read with one recv per loop turn."""

    ttfb: float  # seconds from the request's last byte to the first body byte
    reads: list[tuple[float, int]] = field(default_factory=list)  # (time, events in that read)


async def _time_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, model: str, key: str
) -> StreamTiming:
    """One streamed request on a kept-alive connection, each read's arrival recorded."""
    writer.write(_request(port, True, model, key))
    await writer.drain()
    sent = time.perf_counter()
    timing = StreamTiming(ttfb=0.0)
    head = b""
    chunked = False
    tail = b""
    done = False
    while True:
        data = await reader.read(65536)
        now = time.perf_counter()
        if not data:
            raise ConnectionError("the server closed the connection mid-stream")
        if not head:
            tail += data
            if b"\r\n\r\n" not in tail:
                continue
            head, data = tail.split(b"\r\n\r\n", 1)
            chunked = b"chunked" in head.lower()
            tail = b""
        events = data.count(b"data:")
        if events:
            if not timing.reads:
                timing.ttfb = now - sent
            timing.reads.append((now, events))
        tail = tail[-32:] + data
        done = done or b"[DONE]" in tail
        # The response ends with the [DONE] event (Content-Length) or the last chunk after it.
        if done and (not chunked or tail.endswith(b"0\r\n\r\n")):
            return timing


def time_streams(url: str, count: int, model: str = "mock", key: str = "") -> list[StreamTiming]:
    """``count`` streamed requests one after another on one kept-alive connection."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])

    async def all_of() -> list[StreamTiming]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return [await _time_stream(reader, writer, port, model, key) for _ in range(count)]
        finally:
            writer.close()

    result: list[StreamTiming] = _run(all_of())
    return result


def stream_summary(timings: list[StreamTiming]) -> dict[str, float]:
    """Median TTFB, reads per stream, reads holding several events and the gap between reads."""
    gaps = [
        (later[0] - earlier[0]) * 1000
        for timing in timings
        for earlier, later in zip(timing.reads, timing.reads[1:], strict=False)
    ]
    events = [count for timing in timings for _, count in timing.reads]
    return {
        "ttfb_ms": statistics.median(t.ttfb for t in timings) * 1000,
        "reads_per_stream": statistics.median(len(t.reads) for t in timings),
        "events_per_stream": statistics.median(sum(c for _, c in t.reads) for t in timings),
        "max_events_per_read": max(events) if events else 0,
        "coalesced_read_share": sum(1 for c in events if c > 1) / max(len(events), 1),
        "median_gap_ms": statistics.median(gaps) if gaps else 0.0,
    }
