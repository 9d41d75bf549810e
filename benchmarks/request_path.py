"""CPU cost of one request through ``Gateway.proxy`` (analyse, route, fail over, record), in µs.

The backend is an adapter that answers from memory, so no socket, event-loop wake-up or HTTP
parsing is counted: only Nexus's own request path. CPU time (``time.process_time``), best of
seven rounds, so other processes on a shared machine disturb it less than wall time. Compare two
checkouts with the same interpreter:

    PYTHONPATH=<checkout>/packages/nexus-core/src uv run python benchmarks/request_path.py

Arguments: the rounds per measurement (4000), then the routing strategy (``smart``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator

from nexus_core import Gateway
from nexus_core.adapters import BackendStatus, Endpoint, ModelInfo, Timeouts, UpstreamResponse
from nexus_core.config import BackendConfig
from nexus_core.registry import Backend

ANSWER = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()
EVENTS = [b'data: {"choices":[{"delta":{"content":"h"}}]}\n\n'] * 5 + [b"data: [DONE]\n\n"]


class MemoryAdapter:
    """Answers every request at once from memory."""

    name = "memory"
    url = "http://127.0.0.1:9"
    type_name = "generic"
    is_cloud = False

    async def send(
        self, endpoint: Endpoint, payload: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """A whole JSON answer, or a stream of five chunks and ``[DONE]``."""
        if not stream:
            return UpstreamResponse(200, "application/json", body=ANSWER)

        async def events() -> AsyncIterator[bytes]:
            for event in EVENTS:
                yield event

        return UpstreamResponse(200, "text/event-stream", events=events())

    async def close(self) -> None:
        """Nothing to close."""


async def measure(rounds: int, strategy: str = "smart") -> dict[str, float]:
    """Best per-request CPU µs for a whole answer and for a stream, two backends serving."""
    gateway = Gateway({"state": {"backend": "memory"}, "routing": {"strategy": strategy}})
    for index in range(2):
        config = BackendConfig(name=f"b{index}", url=f"http://127.0.0.1:{9 + index}")
        backend = Backend(
            name=config.name,
            config=config,
            adapter=MemoryAdapter(),  # type: ignore[arg-type]
            zone=config.zone_for(False),
            is_cloud=False,
        )
        gateway.registry.add(backend)
        gateway.registry.set_models(backend, [ModelInfo("m")])
        gateway.registry.set_status(backend, BackendStatus.HEALTHY)
    message = {"role": "user", "content": "hello there"}
    bodies = {
        "whole": json.dumps({"model": "m", "messages": [message]}).encode(),
        "stream": json.dumps({"model": "m", "stream": True, "messages": [message]}).encode(),
    }
    best: dict[str, float] = {}
    for label, body in bodies.items():
        best[label] = float("inf")
        for _ in range(7):
            started = time.process_time()
            for _ in range(rounds):
                result = await gateway.proxy(Endpoint.CHAT, body)
                if result.stream is not None:
                    async for _event in result.stream:
                        pass
            best[label] = min(best[label], (time.process_time() - started) / rounds * 1e6)
    return best


def main() -> None:
    """Print the figures."""
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    strategy = sys.argv[2] if len(sys.argv) > 2 else "smart"
    figures = asyncio.run(measure(rounds, strategy))
    print(", ".join(f"{label} {value:.2f} µs" for label, value in figures.items()))


if __name__ == "__main__":
    main()
