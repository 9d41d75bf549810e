"""What Litestar costs per request and per dashboard WebSocket, against plain ASGI.

Three measurements, each printed as a small table:

- ``ws``: the dashboard's ``/ws``, driven in process through the app's ASGI interface (no
  sockets, so only the app's own work shows): connections per second (connect, accept, the
  snapshot, disconnect) and the time for one broadcast to reach 100 connected pages. Run it on
  two checkouts to compare how ``/ws`` is dispatched.
- ``door``: ``POST /v1/chat/completions`` through one ``nexus serve`` in front of the canned
  backend (nginx when installed), sent straight to the proxy door (Nexus's own dispatch) and
  with a trailing ``/``, which Litestar's router takes to the same door (its router, middleware
  and ASGI route handler in front of the same work). wrk, non-streaming.
- ``answers``: the admin API's backend listing (50 backends of 20 models each) turned into its
  answer type and encoded as Litestar does: a msgspec Struct (``nexus_server.schemas``) against
  the same types as pydantic models.
- ``routes``: a minimal JSON ``POST`` (parse the chat body, answer a small JSON object) served by
  one uvicorn process as plain ASGI and as a Litestar handler taking the body as
  ``data: dict[str, Any]``: what a typed Litestar handler costs before any proxying.

Run: uv run python benchmarks/litestar_cost.py [ws|answers|door|routes ...] [--duration 5]
     [--connections 1,32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from harness import CHAT, NexusOptions

os.environ.setdefault("NEXUS_DISCOVERY", "false")

ROUTES_PORT = 18041


# -- /ws in process -----------------------------------------------------------------------------


class Lifespan:
    """Runs an ASGI app's lifespan startup and shutdown."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lifespan:
        self.task = asyncio.create_task(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, self.inbox.get, self._send)
        )
        await self.inbox.put({"type": "lifespan.startup"})
        assert (await self.outbox.get())["type"] == "lifespan.startup.complete"
        return self

    async def _send(self, message: dict[str, Any]) -> None:
        await self.outbox.put(message)

    async def __aexit__(self, *_: object) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.outbox.get()
        assert self.task is not None
        await self.task


def ws_scope() -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
        "state": {},
    }


class Page:
    """One connected dashboard page: counts what it receives, leaves when told."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received = 0
        self.accepted = asyncio.Event()
        self.enough = asyncio.Event()
        self.wanted = 1

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.accept":
            self.accepted.set()
        elif message["type"] == "websocket.send":
            self.received += 1
            if self.received >= self.wanted:
                self.enough.set()
        elif message["type"] == "websocket.close":
            raise SystemExit(f"the dashboard refused the page: {message}")

    def run(self) -> asyncio.Task[None]:
        self.inbox.put_nowait({"type": "websocket.connect"})
        return asyncio.ensure_future(self.app(ws_scope(), self.inbox.get, self._send))

    def leave(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})


def dashboard_of(gateway: Any) -> Any:
    from nexus_server.dashboard import Dashboard

    for listener in gateway.monitor.subscribers:
        owner = getattr(listener, "__self__", None)
        if isinstance(owner, Dashboard):
            return owner
    raise SystemExit("no dashboard listens to this gateway")


async def measure_ws(connections: int, pages: int, broadcasts: int) -> dict[str, float]:
    from nexus_core.config import validate_config
    from nexus_core.gateway import Gateway
    from nexus_server.app import create_app

    config = validate_config(
        {
            "server": {"host": "127.0.0.1", "port": 8000},
            "discovery": {"enabled": False},
            "health_check": {"enabled": False},
            "state": {"backend": "memory"},
        },
        source="benchmark",
    )
    gateway = Gateway(config)
    app = create_app(gateway)
    async with Lifespan(app):
        dashboard = dashboard_of(gateway)
        # Connections: one after the other, each until its first message arrived.
        started = time.perf_counter()
        for _ in range(connections):
            page = Page(app)
            task = page.run()
            await page.enough.wait()
            page.leave()
            await task
        per_connection = (time.perf_counter() - started) / connections
        # Broadcasts: ``pages`` pages connected; each message reaches all of them before the
        # next is sent (a page's queue is bounded: a burst would close slow pages).
        crowd = [Page(app) for _ in range(pages)]
        tasks = [page.run() for page in crowd]
        for page in crowd:
            await page.enough.wait()
        # What a flush queues: one encoded text, the same object for every page.
        message = json.dumps({"type": "fragments", "fragments": {"history-rows": "x" * 200}})
        started = time.perf_counter()
        for sent in range(1, broadcasts + 1):
            for page in crowd:
                page.wanted = 1 + sent
                page.enough.clear()
            for client in dashboard.clients:
                client.offer(message)
            for page in crowd:
                await page.enough.wait()
        per_broadcast = (time.perf_counter() - started) / broadcasts
        for page in crowd:
            page.leave()
        await asyncio.gather(*tasks)
    return {
        "connections/s": 1 / per_connection,
        "µs per connection": per_connection * 1e6,
        f"µs per broadcast to {pages} pages": per_broadcast * 1e6,
    }


def run_ws(args: argparse.Namespace) -> None:
    runs = [asyncio.run(measure_ws(1000, 100, 100)) for _ in range(args.repeat)]
    print(f"/ws in process (best of {args.repeat}):")
    for key in runs[0]:
        values = [run[key] for run in runs]
        best = max(values) if key.endswith("/s") else min(values)
        print(f"  {key:32} {best:10.1f}")


# -- typed answers: msgspec Structs or pydantic models -----------------------------------------


def listing(backends: int = 50, models: int = 20) -> dict[str, Any]:
    """A ``GET /admin/backends`` answer as the core builds it (``Backend.snapshot()``)."""
    model = {"context_length": 8192, "vision": None, "tools": True, "json_mode": None}
    return {
        "object": "list",
        "data": [
            {
                "name": f"gpu-{n}", "url": f"http://10.0.0.{n}:11434", "type": "ollama",
                "kind": "local", "source": "static", "status": "healthy", "zone": "restricted",
                "tier": 2, "priority": 50, "max_concurrent": None, "pending": 0,
                "latency_ms": 1.5, "last_error": None, "last_checked": 1.0, "version": "0.12.6",
                "requests_total": 10, "errors_total": 0,
                "models": [{"id": f"m{i}", **model, "embeddings": False} for i in range(models)],
            }
            for n in range(backends)
        ],
    }  # fmt: skip


def run_answers(args: argparse.Namespace) -> None:
    import timeit

    import msgspec
    from litestar.plugins.pydantic import PydanticInitPlugin
    from litestar.serialization import encode_json, get_serializer
    from pydantic import BaseModel, ConfigDict, create_model

    from nexus_server import schemas

    def as_pydantic(struct: type[Any], made: dict[type[Any], type[BaseModel]]) -> type[BaseModel]:
        if struct not in made:
            fields: dict[str, Any] = {}
            for field in msgspec.structs.fields(struct):
                kind = field.type
                if (
                    getattr(kind, "__origin__", None) is list
                    and isinstance(kind.__args__[0], type)
                    and issubclass(kind.__args__[0], msgspec.Struct)
                ):
                    kind = list[as_pydantic(kind.__args__[0], made)]  # type: ignore[misc]
                fields[field.name] = (kind, ...)
            made[struct] = create_model(  # type: ignore[call-overload]
                struct.__name__, __config__=ConfigDict(extra="forbid"), **fields
            )
        return made[struct]

    value = listing()
    model = as_pydantic(schemas.BackendList, {})
    # As Litestar encodes a pydantic answer: through the pydantic plugin's type encoders.
    pydantic_encoder = get_serializer(PydanticInitPlugin.encoders())
    struct_time = min(
        timeit.repeat(
            lambda: encode_json(schemas.answer(schemas.BackendList, value)), number=200, repeat=5
        )
    )
    pydantic_time = min(
        timeit.repeat(
            lambda: encode_json(model.model_validate(value), pydantic_encoder), number=200, repeat=5
        )
    )
    plain_time = min(timeit.repeat(lambda: encode_json(value), number=200, repeat=5))
    print("GET /admin/backends answer, 50 backends x 20 models, typed and encoded (best of 5):")
    print(f"  {'dict, untyped':26} {plain_time / 200 * 1e6:8.0f} µs")
    print(f"  {'msgspec Struct':26} {struct_time / 200 * 1e6:8.0f} µs")
    print(f"  {'pydantic model':26} {pydantic_time / 200 * 1e6:8.0f} µs")


# -- the proxy door, straight or through Litestar's router ---------------------------------------


def cpu_per_1000(pid: int, url: str, connections: int, duration: float) -> tuple[Any, float]:
    """One wrk run (non-streaming chat) and the server's CPU seconds per 1,000 requests."""
    before = harness.cpu_seconds(pid)
    load = harness.wrk(url, connections, duration, False)
    return load, (harness.cpu_seconds(pid) - before) / max(load.requests, 1) * 1000


def run_door(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        with harness.canned_backend(work) as kind:
            options = NexusOptions(port=args.port, log_level="warning")
            with harness.nexus_serving(work, {"mock": harness.PLAIN}, options) as (base, pid):
                for path in (CHAT, CHAT + "/"):
                    check = subprocess.run(
                        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                         "-H", "Content-Type: application/json", "-d",
                         '{"model":"mock","messages":[{"role":"user","content":"Hi"}]}',
                         base + path],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    if check.stdout != "200":
                        raise SystemExit(f"{path} answered {check.stdout}")
                print(f"proxy door, non-streaming, canned backend: {kind} (best of {args.repeat})")
                paths = {"straight to the door": CHAT, "through Litestar": CHAT + "/"}
                table(base, pid, paths, args)


def table(base: str, pid: int, paths: dict[str, str], args: argparse.Namespace) -> None:
    print(f"  {'':26} {'c':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU s/1k':>9}")
    for connections in args.connections:
        for label, path in paths.items():
            best: tuple[Any, float] | None = None
            for _ in range(args.repeat):
                load, cpu = cpu_per_1000(pid, base + path, connections, args.duration)
                if best is None or load.rps > best[0].rps:
                    best = (load, cpu)
            assert best is not None
            load, cpu = best
            if load.errors:
                raise SystemExit(f"{label}: {load.errors} errors")
            print(
                f"  {label:26} {connections:>4} {load.rps:>8.0f} {load.p50:>8.3f} "
                f"{load.p99:>8.3f} {cpu:>9.3f}"
            )


# -- a minimal JSON route, plain ASGI or Litestar -------------------------------------------------

ROUTES_APP = """
from typing import Any
import json
from litestar import Litestar, post

ANSWER = b'{"id":"x","object":"ok"}'

async def raw(scope, receive, send):
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    data = json.loads(body)
    assert isinstance(data, dict)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})

@post("/litestar", status_code=200)
async def typed(data: dict[str, Any]) -> dict[str, str]:
    return {"id": "x", "object": "ok"}

litestar = Litestar([typed], openapi_config=None, logging_config=None)

async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/raw":
        await raw(scope, receive, send)
    else:
        await litestar(scope, receive, send)
"""


def run_routes(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        module = Path(scratch) / "routes_app.py"
        module.write_text(ROUTES_APP)
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "routes_app:app", "--port", str(ROUTES_PORT),
             "--http", "httptools", "--loop", "asyncio", "--log-level", "warning",
             "--no-access-log"],
            cwd=scratch,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{ROUTES_PORT}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    import urllib.request

                    request = urllib.request.Request(
                        base + "/raw", data=json.dumps({"a": 1}).encode(), method="POST"
                    )
                    urllib.request.urlopen(request, timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            print(f"minimal JSON POST, one uvicorn process (best of {args.repeat})")
            table(base, server.pid, {"plain ASGI": "/raw", "Litestar handler": "/litestar"}, args)
        finally:
            harness.stop(server)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", nargs="*", default=["ws", "answers", "door", "routes"])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--connections", type=lambda v: [int(c) for c in v.split(",")], default=[1, 32]
    )
    args = parser.parse_args()
    for what in args.what:
        {"ws": run_ws, "answers": run_answers, "door": run_door, "routes": run_routes}[what](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
