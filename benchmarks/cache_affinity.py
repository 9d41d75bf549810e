"""Cache-aware routing on real llama-servers: time to first token by strategy, side by side.

Two real ``llama-server``s (``NEXUS_LLAMA_SERVER``, else the build script's binary) serve a random
model made at run time with ``tests/real/tiny_model.py`` at a size where prefill dominates on one
thread (512 wide, 8 layers, 8k context), each started with ``--threads 1 -np 2 --cache-ram 0``:
two slots and no host prompt cache, so a server holds two conversations' prompts at most and
placement decides whether a turn finds its prefix cached. ``--conversations`` conversations, each
with its own long system prompt, run at once (their turns interleave), ``--turns`` turns each,
streamed through a Nexus (in this process) with each ``--strategies`` in turn; the servers are
restarted between strategies so each starts cold. Printed per strategy: median and p90 time to
first token, the share of prompt tokens served from cache (``usage.prompt_tokens_details``), and
each backend's request count; then the issue's goal (cache_affinity's median at most a third of
least_loaded's, request counts within ±25 % of each other).

``--fake``: the same workload against two ``FakeLlamaCpp`` (fakes, no timing meaning; a smoke
test of the script).

    uv run python benchmarks/cache_affinity.py
    uv run python benchmarks/cache_affinity.py --fake --turns 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nexus_core import fastjson  # noqa: E402
from nexus_core.testing import FakeLlamaCpp, free_port  # noqa: E402
from nexus_server.testing import running_server  # noqa: E402

MODEL = "tiny"
STRATEGIES = ("round_robin", "least_loaded", "cache_affinity")
SERVER_ARGS = ("-c", "8192", "-np", "2", "--threads", "1", "--cache-ram", "0")
_WORDS_TEXT = (
    "river stone market lantern orchard copper signal harbor meadow quarry violet engine "
    "cedar thunder ribbon falcon glacier pepper canvas motor saddle timber velvet anchor "
    "bramble cobalt dune ember fable garnet hollow ivory jasper kettle lotus marble nectar "
    "oxide pebble quill rustle sable tundra umber vessel willow yonder zephyr"
)
WORDS = tuple(_WORDS_TEXT.split())
#: System prompt words with ``--fake`` (the fake's slots hold 512 tokens).
FAKE_WORDS = 60


@dataclass
class Turn:
    """One request as the client saw it."""

    conversation: int
    turn: int
    backend: str
    reason: str
    ttft: float
    prompt_tokens: int
    cached_tokens: int


@dataclass
class Run:
    """One strategy's turns."""

    strategy: str
    turns: list[Turn] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Median and p90 TTFT (s), cached share of prompt tokens, requests per backend."""
        ttfts = sorted(t.ttft for t in self.turns)
        prompt = sum(t.prompt_tokens for t in self.turns)
        return {
            "median": statistics.median(ttfts),
            "p90": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))],
            "cached": sum(t.cached_tokens for t in self.turns) / prompt if prompt else 0.0,
            "backends": dict(sorted(Counter(t.backend for t in self.turns).items())),
        }


def system_prompt(seed: int, words: int) -> str:
    """A long system prompt of its own for each conversation (random words, fixed seed)."""
    rng = random.Random(seed)
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"You are assistant number {seed}. Remember these notes: {body}"


async def conversation(
    client: httpx.AsyncClient, url: str, index: int, seed: int, turns: int, words: int
) -> list[Turn]:
    """One conversation: ``turns`` streamed turns, each re-sending the whole history."""
    rng = random.Random(seed)
    await asyncio.sleep(0.4 * index)  # staggered starts: the conversations' turns interleave
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt(seed, words)}]
    done: list[Turn] = []
    for number in range(turns):
        messages.append({"role": "user", "content": f"Question {number}: what about {seed}?"})
        body = {
            "model": MODEL,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 8,
            "temperature": 0,
        }
        started = time.perf_counter()
        ttft: float | None = None
        text: list[str] = []
        usage: dict[str, Any] = {}
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                raise SystemExit(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
            backend = response.headers.get("x-nexus-backend", "?")
            reason = response.headers.get("x-nexus-route-reason", "?")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = fastjson.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if ttft is None and (delta.get("content") or choice.get("finish_reason")):
                        ttft = time.perf_counter() - started
                    text.append(delta.get("content") or "")
        details = usage.get("prompt_tokens_details") or {}
        done.append(
            Turn(
                conversation=index,
                turn=number,
                backend=backend,
                reason=reason,
                ttft=ttft if ttft is not None else time.perf_counter() - started,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                cached_tokens=int(details.get("cached_tokens") or 0),
            )
        )
        messages.append({"role": "assistant", "content": "".join(text)})
        await asyncio.sleep(rng.uniform(0.05, 0.4))  # the user reads, then answers
    return done


async def workload(base_url: str, conversations: int, turns: int, words: int, seed: int) -> Run:
    """Every conversation at once; their turns, in the order they finished."""
    url = base_url + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=conversations * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        results = await asyncio.gather(
            *(
                conversation(client, url, index, seed + index, turns, words)
                for index in range(conversations)
            )
        )
    run = Run("")
    for turns_of_one in results:
        run.turns.extend(turns_of_one)
    return run


@dataclass
class LlamaServer:
    """A ``llama-server`` process."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def llama_binary() -> Path:
    """``NEXUS_LLAMA_SERVER``, else the build script's cache."""
    explicit = os.environ.get("NEXUS_LLAMA_SERVER")
    if explicit:
        return Path(explicit).expanduser()
    return Path.home() / ".cache" / "nexus" / "llama-server-11434.0.0" / "llama-server"


def make_model(work: Path, binary: Path) -> Path:
    """The random model: 512 wide, 8 layers, 8 heads (4 KV), feed-forward 1,536, 8k context."""
    from tests.real.tiny_model import Shape, find_vocab, write_tiny_model

    shape = Shape(n_embd=512, n_layer=8, n_head=8, n_head_kv=4, n_ff=1536, n_ctx_train=8192)
    return write_tiny_model(work / "affinity.gguf", find_vocab(binary), shape=shape, name=MODEL)


@contextlib.contextmanager
def llama_servers(binary: Path, model: Path, work: Path, count: int = 2) -> Iterator[list[str]]:
    """``count`` fresh llama-servers (empty caches), until healthy; stopped at the end."""
    servers: list[LlamaServer] = []
    try:
        for index in range(count):
            port = free_port()
            log = (work / f"llama-{index}.log").open("ab")
            command = [
                str(binary),
                *("-m", str(model), "--host", "127.0.0.1", "--port", str(port)),
                *("--alias", MODEL, "--no-webui"),
                *SERVER_ARGS,
            ]
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            servers.append(LlamaServer(process, port))
        for server in servers:
            deadline = time.monotonic() + 120
            while True:
                if server.process.poll() is not None:
                    raise SystemExit(f"llama-server exited; see {work}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("llama-server did not become healthy")
                time.sleep(0.2)
        yield [server.url for server in servers]
    finally:
        for server in servers:
            server.process.terminate()
        for server in servers:
            try:
                server.process.wait(20)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


class _TwoSlotFake(FakeLlamaCpp):
    """A fake llama-server whose prompt cache holds two prompts, as ``-np 2 --cache-ram 0``."""

    prompt_cache_slots = 2


@contextlib.contextmanager
def fake_servers(count: int = 2) -> Iterator[list[str]]:
    """``count`` FakeLlamaCpp (a prompt cache of two prompts each, as ``-np 2``)."""
    with contextlib.ExitStack() as stack:
        fakes = [
            stack.enter_context(_TwoSlotFake(f"fake-{index}", models=(MODEL,)).running())
            for index in range(count)
        ]
        yield [fake.url for fake in fakes]


def nexus_config(urls: list[str], strategy: str) -> dict[str, Any]:
    """Two llama.cpp backends, the strategy, generous timeouts for cold prefills."""
    return {
        "server": {
            "first_byte_timeout_seconds": 300.0,
            "idle_timeout_seconds": 300.0,
            "request_timeout_seconds": 600.0,
        },
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600},
        "routing": {"strategy": strategy, "max_retries": 1},
        "state": {"backend": "memory"},
        "backends": [
            {"name": f"llama-{index}", "url": url, "type": "llamacpp"}
            for index, url in enumerate(urls)
        ],
    }


def run_strategy(
    strategy: str, servers: contextlib.AbstractContextManager[list[str]], args: argparse.Namespace
) -> Run:
    """Fresh servers, a Nexus with ``strategy``, the workload."""
    with servers as urls, running_server(nexus_config(urls, strategy)) as nexus:
        run = asyncio.run(
            workload(nexus.url, args.conversations, args.turns, args.words, args.seed)
        )
    run.strategy = strategy
    return run


def table(runs: list[Run]) -> str:
    """The figures as a Markdown table."""
    lines = [
        "| strategy | median TTFT | p90 TTFT | cached prompt tokens | requests per backend |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        figures = run.summary()
        counts = ", ".join(f"{name} {count}" for name, count in figures["backends"].items())
        lines.append(
            f"| {run.strategy} | {figures['median']:.2f} s | {figures['p90']:.2f} s "
            f"| {figures['cached'] * 100:.0f} % | {counts} |"
        )
    return "\n".join(lines)


def verdict(runs: list[Run]) -> list[str]:
    """The issue's goal, checked on these figures."""
    by_name = {run.strategy: run.summary() for run in runs}
    lines = []
    affinity, least = by_name.get("cache_affinity"), by_name.get("least_loaded")
    if affinity and least:
        ratio = affinity["median"] / least["median"] if least["median"] else float("inf")
        lines.append(
            f"cache_affinity median / least_loaded median = {ratio:.2f} "
            f"({'met' if ratio <= 1 / 3 else 'not met'}: goal <= 0.33)"
        )
    if affinity:
        counts = list(affinity["backends"].values())
        if len(counts) < 2:
            counts.append(0)
        spread = (max(counts) - min(counts)) / (sum(counts) / len(counts))
        lines.append(
            f"cache_affinity request counts {counts}: spread {spread * 100:.0f} % of the mean "
            f"({'met' if spread <= 0.25 else 'not met'}: goal <= 25 %)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--words", type=int, default=1100, help="system prompt length in words")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fake", action="store_true", help="FakeLlamaCpp instead (smoke test)")
    parser.add_argument("--turns-csv", type=Path, help="write every turn here")
    args = parser.parse_args()
    strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="nexus-affinity-") as scratch:
        work = Path(scratch)
        if args.fake:
            model = binary = None
            args.words = min(args.words, FAKE_WORDS)
        else:
            binary = llama_binary()
            if not binary.exists():
                raise SystemExit(f"no llama-server at {binary}: set NEXUS_LLAMA_SERVER")
            started = time.perf_counter()
            model = make_model(work, binary)
            took = time.perf_counter() - started
            print(f"model {model.stat().st_size / 1e6:.0f} MB in {took:.1f} s")
        for strategy in strategies:
            if args.fake or binary is None or model is None:
                servers: contextlib.AbstractContextManager[list[str]] = fake_servers()
            else:
                servers = llama_servers(binary, model, work)
            started = time.perf_counter()
            run = run_strategy(strategy, servers, args)
            runs.append(run)
            print(f"{strategy}: {len(run.turns)} turns in {time.perf_counter() - started:.1f} s")
            if args.turns_csv is not None:
                with args.turns_csv.open("a") as out:
                    for t in run.turns:
                        out.write(
                            f"{strategy},{t.conversation},{t.turn},{t.backend},{t.reason},"
                            f"{t.ttft:.4f},{t.prompt_tokens},{t.cached_tokens}\n"
                        )
    print()
    print(table(runs))
    print()
    for line in verdict(runs):
        print(line)


if __name__ == "__main__":
    main()
