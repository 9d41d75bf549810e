"""Open streams: how many slow SSE streams one Nexus process holds, and what it adds to their pace.

A paced backend (OpenAI chat-completion chunks, one every `--gap-ms`, `--chunks` of them, then
`data: [DONE]`) and the load generators run in processes of their own: the backend in one,
the streams spread over `--generators` client processes (uvloop, one raw `asyncio.Protocol`
per stream, a connection each). For each N in `--streams` the generators open N streams over
`--ramp` seconds, first against the backend directly, then through a fresh `nexus serve`
(`--no-discovery`, one `[[backends]]` entry: the paced backend; `--workers N`: N forked worker
processes). With `--proxy nginx` (or `--only nginx`) a control path follows: the same streams
through a fresh nginx (one worker process, `proxy_buffering off`, upstream keep-alive) in front
of the same backend, so Nexus's cost can be set against a plain C reverse proxy's on the same
machine. Each client records when every read holding events arrived; the gap between two such
reads is the inter-arrival gap.

Printed per N and path: errors, completed streams, the most streams open at once, the gaps'
p50/p99 (and the *added* p50/p99: through the proxy minus direct), the proxy's peak RSS (VmHWM
from /proc, a fresh proxy per N; summed over Nexus's workers, or nginx's worker alone) and CPU
seconds per 1,000 events (utime + stime from /proc, of the same processes), and where the
machine's CPU went (backend, generators, proxy, in cores used over the run).

Run: uv run python benchmarks/streams.py [--streams 1000,5000,10000] [--chunks 100]
     [--gap-ms 50] [--generators 2] [--ramp 3] [--workers 1] [--proxy nginx] [--json out.json]
     uv run python benchmarks/streams.py --streams 50 --chunks 5 --ramp 0.5   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import harness
from canned_backend import CannedProtocol, _chunk, answers
from harness import NexusOptions

BACKEND_PORT = 18041
NEXUS_PORT = 18741
NGINX_PORT = 18761
#: What one client reads at most per stream before it calls the stream broken (bytes).
MAX_STREAM_BYTES = 4 * 1024 * 1024


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to the hard one; return the soft limit.

    Children (the backend, the generators, Nexus) inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


# --- the paced backend (its own process) --------------------------------------------------------


def paced_events(chunks: int) -> list[bytes]:
    """``chunks`` chat-completion chunks (role first, finish_reason last), each framed chunked."""
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": f" word{index}"}) for index in range(1, chunks - 1)]
    events.append(_chunk({}, "stop"))
    framed = [b"%x\r\n%s\r\n" % (len(event), event) for event in events]
    done = b"data: [DONE]\n\n"
    # The last chunk, [DONE] and the end of the chunked body leave in one write.
    framed[-1] += b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)
    return framed


class PacedProtocol(CannedProtocol):
    """The canned backend's request reading; a chat completion is answered with a paced stream."""

    events: list[bytes] = []
    gap = 0.05

    def _pace(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        )
        events, gap, last = self.events, self.gap, len(self.events) - 1

        def send(index: int) -> None:
            if transport.is_closing():
                return
            transport.write(events[index])
            if index < last:
                loop.call_later(gap, send, index + 1)

        send(0)


async def serve_backend(port: int, chunks: int, gap: float) -> None:
    """Serve the paced stream on ``port`` until cancelled."""
    PacedProtocol.events = paced_events(chunks)
    PacedProtocol.gap = gap
    table = answers("mock", b"", b"text/event-stream")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: PacedProtocol(table, gap), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()


# --- the load generator (its own processes) ------------------------------------------------------


def request_bytes(port: int) -> bytes:
    """One streamed chat completion, as the wire carries it."""
    body = b'{"model":"mock","messages":[{"role":"user","content":"Hello!"}],"stream":true}'
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer sk-bench\r\n"
        b"Content-Length: %d\r\n\r\n" % (port, len(body))
    ) + body


class StreamClient(asyncio.Protocol):
    """One stream on its own connection: sends the request, timestamps every read with events."""

    def __init__(self, request: bytes, done: asyncio.Future[None], gaps: list[float]) -> None:
        self.request = request
        self.done = done
        self.gaps = gaps
        self.head = b""
        self.status = 0
        self.events = 0
        self.last = 0.0
        self.first = 0.0
        self.size = 0
        self.tail = b""
        self.finished = False
        self.error = ""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.size += len(data)
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head[9:12])
            data = self.head[end + 4 :]
            self.head = b""
            if self.status != 200:
                self._end(f"status {self.status}")
                return
        count = data.count(b"data:")
        if count:
            if self.events:
                self.gaps.append(now - self.last)
            else:
                self.first = now
            # Events that arrived in one read: a gap of nothing each.
            self.gaps.extend([0.0] * (count - 1))
            self.events += count
            self.last = now
        window = self.tail + data
        if b"[DONE]" in window:
            self.finished = True
            self._end("")
            return
        self.tail = window[-8:]
        if self.size > MAX_STREAM_BYTES:
            self._end("stream too long")

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("" if self.finished else f"closed after {self.events} events")

    def _end(self, error: str) -> None:
        if self.done.done():
            return
        self.error = error
        self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()


async def generate(
    port: int, streams: int, ramp: float, start_at: float, patience: float
) -> dict[str, Any]:
    """Open ``streams`` streams spread over ``ramp`` seconds from ``start_at`` (monotonic)."""
    loop = asyncio.get_running_loop()
    request = request_bytes(port)
    gaps: list[float] = []
    spans: list[tuple[float, float]] = []
    firsts: list[float] = []
    errors: dict[str, int] = {}
    events = 0

    async def one(index: int) -> None:
        nonlocal events
        await asyncio.sleep(max(0.0, start_at + ramp * index / max(streams, 1) - time.monotonic()))
        started = time.monotonic()
        done: asyncio.Future[None] = loop.create_future()
        client = StreamClient(request, done, gaps)
        try:
            await loop.create_connection(lambda: client, "127.0.0.1", port)
            await asyncio.wait_for(done, patience)
        except (OSError, TimeoutError) as exc:
            client.error = client.error or type(exc).__name__
            if client.transport is not None:
                client.transport.close()
        events += client.events
        if client.error:
            errors[client.error] = errors.get(client.error, 0) + 1
        else:
            spans.append((started, time.monotonic()))
            firsts.append(client.first - started)

    await asyncio.gather(*(one(index) for index in range(streams)))
    return {"gaps": gaps, "spans": spans, "firsts": firsts, "errors": errors, "events": events}


# --- the runner -------------------------------------------------------------------------------


@dataclass
class PathResult:
    """One path's figures at one N (gaps in ms)."""

    streams: int
    completed: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    peak_open: int = 0
    events: int = 0
    gap_p50: float = 0.0
    gap_p99: float = 0.0
    gap_max: float = 0.0
    first_p50: float = 0.0
    first_p99: float = 0.0
    wall_s: float = 0.0
    cpu_backend_s: float = 0.0
    cpu_generators_s: float = 0.0
    cpu_proxy_s: float = 0.0
    cpu_machine_s: float = 0.0
    measured_s: float = 0.0
    load_average: float = 0.0
    #: The proxy's measured processes: Nexus, each of its workers, or nginx's worker (0: direct).
    proxy_processes: int = 0
    #: Their VmHWM summed, and the largest single one.
    proxy_peak_rss_mb: float = 0.0
    proxy_peak_rss_max_mb: float = 0.0
    proxy_rss_idle_mb: float = 0.0
    proxy_cpu_per_1k_events: float = 0.0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every process, all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user, nice, system, irq, softirq (not idle, iowait or steal)
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / harness.TICK


def percentile(ordered: list[float], share: float) -> float:
    """The value at ``share`` (0..1) of an ascending list."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def peak_open(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant."""
    marks = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in marks:
        current += step
        most = max(most, current)
    return most


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


def workers_of(pid: int, count: int, timeout: float = 30.0) -> list[int]:
    """The ``count`` worker processes (children) of ``pid``, once all are forked and idle.

    A worker still starting would charge its start-up to the run: wait until the workers' CPU
    time stops growing (less than 20 ms in half a second), at most ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while len(found := children(pid)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"process {pid} has {len(found)} children, not the {count} expected")
        time.sleep(0.05)
    found = found[:count]
    spent = sum(harness.cpu_seconds(each) for each in found)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(harness.cpu_seconds(each) for each in found)
        if now - spent < 0.02:
            break
        spent = now
    return found


def nginx_binary() -> str | None:
    """Debian's nginx (nginx-light), on the PATH or in /usr/sbin; None when not installed."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def nginx_config(prefix: Path, port: int, backend_port: int, streams: int) -> str:
    """A plain reverse proxy: one worker, no response buffering, kept-alive upstream connections.

    A stream holds two connections in the worker (the client's and the backend's), so
    ``worker_connections`` is 2N plus a margin, and ``worker_rlimit_nofile`` the most this
    process's hard limit allows (nginx sets the worker's soft and hard limit to it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = hard if hard != resource.RLIM_INFINITY else max(soft, 2 * streams + 1024)
    user = ""
    if os.geteuid() == 0:
        # The master needs root for nothing here; the worker runs unprivileged, as by default.
        import grp

        group = "nobody"
        with contextlib.suppress(KeyError):
            group = grp.getgrnam("nogroup").gr_name
        user = f"user nobody {group};"
    return f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {files};
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections {2 * streams + 256};
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream paced {{
        server 127.0.0.1:{backend_port};
        keepalive {max(64, streams)};
    }}
    server {{
        # Nexus listens with uvicorn's backlog, 2048.
        listen 127.0.0.1:{port} backlog=2048;
        location / {{
            proxy_pass http://paced;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_serving(binary: str, port: int, backend_port: int, streams: int) -> Iterator[int]:
    """A fresh nginx in front of the paced backend; yields its worker's pid.

    Its configuration, pid file, error log and temporary paths are in a directory of their own;
    warnings and errors from its log are printed when it stops.
    """
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            # Something already answers there: the figures would be that server's.
            raise SystemExit(f"port {port} is in use: stop what listens there or pass --nginx-port")
    prefix = Path(tempfile.mkdtemp(prefix="nexus-streams-nginx-"))
    prefix.chmod(0o755)  # an unprivileged worker may need its temporary paths
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, port, backend_port, streams))
    command = [binary, "-p", str(prefix), "-c", str(config)]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise SystemExit(f"nginx refused {config}:\n{check.stderr}")
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        harness.wait_http(f"http://127.0.0.1:{port}/v1/models")
        yield workers_of(process.pid, 1)[0]
    finally:
        harness.stop(process, 10)
        log = prefix / "error.log"
        lines = log.read_text().splitlines() if log.exists() else []
        for line in lines[:5]:
            print(f"  nginx: {line}", flush=True)
        if len(lines) > 5:
            print(f"  nginx: … {len(lines) - 5} more lines in {log}", flush=True)


@contextlib.contextmanager
def backend_process(port: int, chunks: int, gap_ms: float) -> Iterator[subprocess.Popen[bytes]]:
    """The paced backend in a process of its own."""
    command = [sys.executable, __file__, "backend", "--port", str(port)]
    command += ["--chunks", str(chunks), "--gap-ms", str(gap_ms)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise SystemExit("the paced backend did not start")
        yield process
    finally:
        harness.stop(process, 10)


def run_load(
    port: int, streams: int, args: argparse.Namespace, backend: int, proxy: list[int]
) -> PathResult:
    """N streams from the generator processes against ``port``; CPU and memory sampled.

    ``proxy``: the processes serving ``port`` that are measured (none when it is the backend).
    """
    generators = max(1, min(args.generators, streams))
    start_at = time.monotonic() + 1.0  # every generator is up and imported by then
    timeout = args.chunks * args.gap_ms / 1000 * 4 + args.ramp + 30
    processes = []
    outs = [
        Path(tempfile.mkdtemp(prefix="nexus-streams-gen-")) / "out.json" for _ in range(generators)
    ]
    for index in range(generators):
        share = streams // generators + (1 if index < streams % generators else 0)
        command = [sys.executable, __file__, "generate", "--port", str(port)]
        command += ["--count", str(share), "--ramp", str(args.ramp)]
        command += ["--start-at", repr(start_at), "--timeout", str(timeout)]
        command += ["--out", str(outs[index])]
        processes.append(subprocess.Popen(command))
    watched = [backend, *(p.pid for p in processes), *proxy]
    before = {pid: harness.cpu_seconds(pid) for pid in watched}
    machine_before = machine_busy_seconds()
    measure_started = time.monotonic()
    result = PathResult(streams=streams, proxy_processes=len(proxy))
    result.proxy_rss_idle_mb = sum(harness.memory_mb(pid)[0] for pid in proxy)
    # A generator's CPU is read just before it exits, from a thread polling /proc.
    last_cpu = dict(before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            for pid in watched:
                with contextlib.suppress(OSError, ValueError):
                    value = harness.cpu_seconds(pid)
                    if value:
                        last_cpu[pid] = value

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for process in processes:
        process.wait()
    outputs = [json.loads(out.read_text()) if out.exists() else {} for out in outs]
    wall = time.monotonic() - start_at
    stop.set()
    sampler.join()
    after = {pid: harness.cpu_seconds(pid) or last_cpu[pid] for pid in watched}
    result.cpu_machine_s = machine_busy_seconds() - machine_before
    result.measured_s = time.monotonic() - measure_started
    result.load_average = float(Path("/proc/loadavg").read_text().split()[0])
    gaps = sorted(g * 1000 for out in outputs for g in out.get("gaps", ()))
    spans = [tuple(span) for out in outputs for span in out.get("spans", ())]
    for out in outputs:
        for kind, count in out.get("errors", {}).items():
            result.error_kinds[kind] = result.error_kinds.get(kind, 0) + count
    result.errors = (
        sum(result.error_kinds.values())
        + streams
        - sum(len(out.get("spans", ())) + sum(out.get("errors", {}).values()) for out in outputs)
    )
    result.completed = len(spans)
    result.peak_open = peak_open(cast(list[tuple[float, float]], spans))
    result.events = sum(out.get("events", 0) for out in outputs)
    result.gap_p50, result.gap_p99 = percentile(gaps, 0.5), percentile(gaps, 0.99)
    result.gap_max = gaps[-1] if gaps else 0.0
    firsts = sorted(f * 1000 for out in outputs for f in out.get("firsts", ()))
    result.first_p50, result.first_p99 = percentile(firsts, 0.5), percentile(firsts, 0.99)
    result.wall_s = wall
    result.cpu_backend_s = after[backend] - before[backend]
    result.cpu_generators_s = sum(after[p.pid] - before[p.pid] for p in processes)
    if proxy:
        result.cpu_proxy_s = sum(after[pid] - before[pid] for pid in proxy)
        peaks = [harness.memory_mb(pid)[1] for pid in proxy]
        result.proxy_peak_rss_mb, result.proxy_peak_rss_max_mb = sum(peaks), max(peaks)
        result.proxy_cpu_per_1k_events = result.cpu_proxy_s / max(result.events / 1000, 1e-9)
    return result


def show(label: str, result: PathResult) -> None:
    """One table row."""
    errors = f"{result.errors}" + (f" {result.error_kinds}" if result.error_kinds else "")
    proxy = (
        f"{result.proxy_peak_rss_mb:8.1f} {result.proxy_cpu_per_1k_events:9.3f}"
        if result.proxy_processes
        else f"{'':8} {'':9}"
    )
    wall = result.measured_s or 1.0
    other = (
        result.cpu_machine_s - result.cpu_backend_s - result.cpu_generators_s - result.cpu_proxy_s
    )
    cores = (
        f"b {result.cpu_backend_s / wall:.2f} g {result.cpu_generators_s / wall:.2f} "
        f"p {result.cpu_proxy_s / wall:.2f} other {other / wall:.2f}"
    )
    largest = (
        f"  largest worker {result.proxy_peak_rss_max_mb:.1f} MB"
        if result.proxy_processes > 1
        else ""
    )
    print(
        f"{label:>14} {result.streams:>7,} {result.completed:>9,} {result.peak_open:>6,} "
        f"{result.events:>10,} {result.gap_p50:8.2f} {result.gap_p99:8.2f} {proxy} "
        f"{result.wall_s:6.1f}  {cores}  first event p50/p99 {result.first_p50:.1f}/"
        f"{result.first_p99:.1f} ms  load {result.load_average:.1f}{largest}  errors {errors}",
        flush=True,
    )


def show_added(size: int, through: PathResult, direct: PathResult, name: str) -> dict[str, Any]:
    """The row of what a proxy adds to the gaps (through it minus direct); its JSON row."""
    added50 = through.gap_p50 - direct.gap_p50
    added99 = through.gap_p99 - direct.gap_p99
    print(
        f"{'added':>14} {size:>7,} {'':>9} {'':>6} {'':>10} {added50:8.2f} "
        f"{added99:8.2f}   (through {name} minus direct, ms)",
        flush=True,
    )
    return {"streams": size, "p50": added50, "p99": added99}


PATHS = ("direct", "nexus", "nginx")


def paths(text: str) -> set[str]:
    """``--only``'s value: a comma-separated choice of PATHS."""
    chosen = {path.strip() for path in text.split(",") if path.strip()}
    if not chosen or not chosen <= set(PATHS):
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(PATHS)}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="role")
    backend_role = sub.add_parser("backend", help="(internal) the paced backend")
    backend_role.add_argument("--port", type=int, default=BACKEND_PORT)
    backend_role.add_argument("--chunks", type=int, default=100)
    backend_role.add_argument("--gap-ms", type=float, default=50.0)
    generator = sub.add_parser("generate", help="(internal) one load generator process")
    generator.add_argument("--port", type=int, required=True)
    generator.add_argument("--count", type=int, required=True)
    generator.add_argument("--ramp", type=float, required=True)
    generator.add_argument("--start-at", type=float, required=True)
    generator.add_argument("--timeout", type=float, required=True)
    generator.add_argument("--out", type=Path, required=True, help="where the figures go (JSON)")
    parser.add_argument("--streams", default="1000,5000,10000", help="N values (1000,5000,10000)")
    parser.add_argument("--chunks", type=int, default=100, help="chunks per stream (100)")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="between chunks (50)")
    parser.add_argument("--generators", type=int, default=2, help="client processes (2)")
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds to open N streams (3)")
    parser.add_argument("--port", type=int, default=NEXUS_PORT, help="Nexus's port")
    parser.add_argument("--backend-port", type=int, default=BACKEND_PORT)
    parser.add_argument("--log-level", default="info", help="Nexus's (info, the default)")
    parser.add_argument(
        "--workers", type=int, default=1, help="`nexus serve --workers` (1; more: sqlite state)"
    )
    parser.add_argument(
        "--proxy",
        choices=("nginx",),
        default=None,
        help="also run the streams through this proxy (a control path)",
    )
    parser.add_argument("--nginx-port", type=int, default=NGINX_PORT)
    parser.add_argument(
        "--only",
        type=paths,
        default=None,
        help="these paths only, comma-separated: direct, nexus, nginx (all but nginx)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    limit = raise_open_file_limit()
    runner: Callable[[Coroutine[Any, Any, Any]], Any] = harness._run
    if args.role == "backend":
        with contextlib.suppress(KeyboardInterrupt):
            runner(serve_backend(args.port, args.chunks, args.gap_ms / 1000))
        return 0
    if args.role == "generate":
        out = runner(generate(args.port, args.count, args.ramp, args.start_at, args.timeout))
        args.out.write_text(json.dumps(out))
        return 0
    if args.workers < 1:
        parser.error("--workers must be 1 or more")
    chosen: set[str] = args.only or {"direct", "nexus", *([args.proxy] if args.proxy else [])}
    run_direct, run_nexus, run_nginx = (path in chosen for path in PATHS)
    nginx = nginx_binary() if run_nginx else None
    sizes = [int(value) for value in args.streams.split(",")]
    needed = max(sizes) + 64
    workers = args.workers
    nexus_label = "through Nexus" if workers == 1 else f"Nexus \N{MULTIPLICATION SIGN}{workers}"
    # What each process needs: a Nexus worker has its own open-file limit and holds its share
    # of the streams, two descriptors each; nginx's worker holds two per stream.
    needs = [f"the generators need {needed:,} per process at most"]
    if run_nexus and workers == 1:
        needs.append(f"Nexus about {2 * max(sizes) + 256:,}: it raises its own")
    elif run_nexus:
        share = 2 * -(-max(sizes) // workers) + 256
        needs.append(f"each of the {workers} Nexus workers about {share:,}: each raises its own")
    if run_nginx:
        needs.append(f"nginx's worker about {2 * max(sizes) + 256:,}: worker_rlimit_nofile")
    print(
        f"open-file limit {limit:,} ({', '.join(needs)}); {args.chunks} chunks "
        f"{args.gap_ms:g} ms apart per stream, {args.generators} generator processes, "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    print(
        f"{'path':>14} {'streams':>7} {'completed':>9} {'open':>6} {'events':>10} "
        f"{'gap p50':>8} {'gap p99':>8} {'peak MB':>8} {'CPU s/1k':>9} {'wall s':>6}  "
        "cores used: backend, generators, proxy (Nexus or nginx), other processes",
        flush=True,
    )
    if limit < needed:
        # The backend holds N sockets: raising the hard limit is the caller's (ulimit -Hn).
        print(
            f"WARNING: the open-file limit {limit:,} is below the {needed:,} the backend needs "
            f"for {max(sizes):,} streams: raise the hard limit (ulimit -Hn {needed})",
            flush=True,
        )
    if run_nginx and nginx is None:
        print(
            "nginx is not installed (Debian: apt-get install nginx-light): no 'through nginx' rows",
            flush=True,
        )
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="nexus-streams-"))
    ok = True
    with backend_process(args.backend_port, args.chunks, args.gap_ms) as backend:
        for size in sizes:
            direct: PathResult | None = None
            if run_direct:
                direct = run_load(args.backend_port, size, args, backend.pid, [])
                show("direct", direct)
                rows.append({"path": "direct", **asdict(direct)})
            if run_nexus:
                backends = {"paced": f"http://127.0.0.1:{args.backend_port}"}
                options = NexusOptions(
                    port=args.port,
                    log_level=args.log_level,
                    workers=workers if workers > 1 else None,
                )
                with harness.nexus_serving(work, backends, options) as (_base, pid):
                    serving = workers_of(pid, workers) if workers > 1 else [pid]
                    through = run_load(args.port, size, args, backend.pid, serving)
                show(nexus_label, through)
                rows.append({"path": "nexus", "workers": workers, **asdict(through)})
                ok = ok and through.errors == 0
                if direct is not None:
                    added = show_added(size, through, direct, nexus_label.removeprefix("through "))
                    rows.append({"path": "added", **added})
            if nginx is not None:
                with nginx_serving(nginx, args.nginx_port, args.backend_port, size) as worker:
                    control = run_load(args.nginx_port, size, args, backend.pid, [worker])
                show("through nginx", control)
                rows.append({"path": "nginx", **asdict(control)})
                ok = ok and control.errors == 0
                if direct is not None:
                    rows.append(
                        {"path": "added-nginx", **show_added(size, control, direct, "nginx")}
                    )
    if args.json:
        from run import machine

        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "time": datetime.datetime.now(datetime.UTC).isoformat(),
                    "options": {k: str(v) for k, v in vars(args).items()},
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
