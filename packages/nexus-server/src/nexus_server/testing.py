"""Run a real Nexus server in a background thread, for end-to-end tests with real clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn

from nexus_core.adapters import AdapterFactory
from nexus_core.config import NexusConfig, validate_config
from nexus_core.gateway import Gateway
from nexus_server.app import create_app
from nexus_server.serve import uvicorn_config

T = TypeVar("T")


@dataclass
class RunningServer:
    """A server started by ``running_server``: its base URL and its gateway."""

    url: str
    gateway: Gateway
    server: uvicorn.Server
    #: The server's event loop (it runs in another thread).
    loop: asyncio.AbstractEventLoop

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coroutine`` on the server's loop (where the gateway lives); return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def base_url(self) -> str:
        """The OpenAI SDK ``base_url`` (``.../v1``)."""
        return self.url + "/v1"


@contextmanager
def running_server(
    config: NexusConfig | Mapping[str, Any],
    *,
    backend_types: Mapping[str, AdapterFactory] | None = None,
    startup_timeout: float = 15.0,
    http: type[asyncio.Protocol] | str | None = None,
) -> Iterator[RunningServer]:
    """Serve ``config`` on 127.0.0.1 (a free port) in a thread until the block ends.

    ``http``: uvicorn's HTTP protocol; by default the one ``nexus serve`` uses, with the
    configuration's client limits.
    """
    if not isinstance(config, NexusConfig):
        config = validate_config(config, source="test config")
    # It listens on 127.0.0.1 whatever the config says; the app's rules must know it.
    config = config.model_copy(
        update={"server": config.server.model_copy(update={"host": "127.0.0.1"})}
    )
    gateway = Gateway(config, backend_types=backend_types)
    app = create_app(gateway)
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "loop": "asyncio"}
    if http is not None:
        options["http"] = http
    server = uvicorn.Server(uvicorn_config(app, config, timeout_graceful_shutdown=5, **options))
    thread = threading.Thread(target=server.run, name="nexus-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        loop = server.servers[0].get_loop()
        yield RunningServer(
            url=f"http://127.0.0.1:{port}", gateway=gateway, server=server, loop=loop
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)
