"""What the dashboard's live feed costs the server: CPU per update with 0 to 200 `/ws` clients.

A real ``nexus serve`` process (``--nexus``: the binary of the checkout to measure, so that two
checkouts can be compared with one script) in front of four fake backends listing 20,002
distinct models; ``--clients`` WebSocket clients (the ``websockets`` library, which negotiates
permessage-deflate as browsers do) connect to ``/ws`` and read everything. Over ``--seconds``
the server's CPU time (utime + stime of ``/proc/<pid>/stat``) is read, with no traffic and with
``--rps`` chat completions per second (sent from here, so the proxying is the same in every
row: the rows with 0 clients are the baseline). An update is one 2 s step of the feed.

Run: uv run python benchmarks/dashboard_broadcast.py [--nexus .venv/bin/nexus]
     [--clients 0,1,20,200] [--seconds 10] [--rps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from nexus_core.testing import FakeBackend

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
STEP = 2.0
FLEET = 5_000


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(nexus: str, backends: list[FakeBackend]) -> Iterator[tuple[int, str]]:
    """``nexus serve`` for ``backends`` until the block ends: its pid and URL."""
    entries = "\n".join(
        f'[[backends]]\nname = "{b.name}"\nurl = "{b.url}"\npriority = {10 * (i + 1)}\n'
        for i, b in enumerate(backends)
    )
    config = (
        "[discovery]\nenabled = false\n[health_check]\ninterval_seconds = 3600\n"
        '[state]\nbackend = "memory"\n[logging]\nlevel = "warning"\n' + entries
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nexus.toml"
        path.write_text(config)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        env["NEXUS_DISCOVERY"] = "false"
        process = subprocess.Popen(
            [nexus, "serve", "--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(Path(tmp) / "log").open("wb"),
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise SystemExit((Path(tmp) / "log").read_text(errors="replace"))
                with contextlib.suppress(httpx.HTTPError):
                    ready = httpx.get(url + "/health", timeout=2).json()
                    if ready.get("models", 0) >= 4 * FLEET:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("nexus serve did not list the fleet's models")
                time.sleep(0.2)
            yield process.pid, url
        finally:
            process.kill()
            process.wait(10)


async def measure(pid: int, url: str, clients: int, seconds: float, rps: float) -> dict[str, float]:
    """Server CPU, bytes and messages over ``seconds`` with ``clients`` readers on /ws."""
    received = {"bytes": 0, "messages": 0}
    counting = asyncio.Event()

    async def reader(ready: asyncio.Event) -> None:
        async with connect(url.replace("http", "ws") + "/ws", max_size=None) as ws:
            ready.set()
            async for message in ws:
                if counting.is_set():
                    received["bytes"] += len(message)
                    received["messages"] += 1

    readies = [asyncio.Event() for _ in range(clients)]
    tasks = [asyncio.ensure_future(reader(ready)) for ready in readies]
    for ready in readies:
        await asyncio.wait_for(ready.wait(), 60)
    await asyncio.sleep(STEP * 1.5)  # every client has had its first message and a step
    body = {"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]}
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        counting.set()
        started_cpu, started = cpu_seconds(pid), time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            if rps and sent < elapsed * rps:
                sent += 1
                await http.post("/v1/chat/completions", json=body)
            else:
                await asyncio.sleep(0.01)
        spent = cpu_seconds(pid) - started_cpu
        elapsed = time.monotonic() - started
        counting.clear()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    updates = elapsed / STEP
    return {
        "clients": clients,
        "rps": rps,
        "cpu_ms_per_s": 1000 * spent / elapsed,
        "cpu_ms_per_update": 1000 * spent / updates,
        "kib_per_client_per_update": received["bytes"] / 1024 / max(1, clients) / updates,
        "messages_per_client_per_s": received["messages"] / max(1, clients) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nexus", default=str(Path(sys.executable).parent / "nexus"))
    parser.add_argument("--clients", default="0,1,20,200")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rps", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="one JSON line per row")
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    names = ("alpha", "beta", "gamma", "delta")
    backends = [
        FakeBackend(name, models=[f"{name}-model-{n:04d}" for n in range(FLEET)] + ["llama3.2:3b"])
        for name in names
    ]
    with contextlib.ExitStack() as stack:
        for backend in backends:
            stack.enter_context(backend.running())
        pid, url = stack.enter_context(serve(args.nexus, backends))
        print(f"{args.nexus}: {httpx.get(url + '/health').json()['models']} models")
        print(
            f"{'clients':>7} {'req/s':>5} {'CPU ms/s':>9} {'CPU ms/update':>14} "
            f"{'KiB/client/update':>18} {'msgs/client/s':>14}"
        )
        for rps in (0.0, args.rps):
            for clients in counts:
                row = asyncio.run(measure(pid, url, clients, args.seconds, rps))
                if args.json:
                    print(json.dumps(row))
                print(
                    f"{clients:7d} {rps:5g} {row['cpu_ms_per_s']:9.1f} "
                    f"{row['cpu_ms_per_update']:14.1f} {row['kib_per_client_per_update']:18.1f} "
                    f"{row['messages_per_client_per_s']:14.2f}"
                )


if __name__ == "__main__":
    main()
