"""What the Responses door costs against the chat door, for the same backend answer.

One ``nexus serve`` (discovery off) in front of the canned backend (nginx, or the built-in one);
wrk posts the same one-line question to ``/v1/chat/completions`` (``post.lua``) and to
``/v1/responses`` (``post_responses.lua``, ``store: false``), whole and streamed, alternating the
doors; the figures are each door's requests per second, latency and Nexus's CPU per 1,000
requests. The difference is the Responses door's translation both ways (and its event framing).

    cd benchmarks && uv run python responses_cost.py --duration 5 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import harness
from harness import CHAT, NexusOptions

RESPONSES = "/v1/responses"
SCRIPTS = {CHAT: harness.HERE / "post.lua", RESPONSES: harness.HERE / "post_responses.lua"}


def load(url: str, script: Path, connections: int, duration: float, stream: bool) -> harness.Load:
    env = {**os.environ, "MODEL": "mock", "STREAM": "true" if stream else "false"}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s"]
    output = subprocess.run(
        [*command, "-s", str(script), url], env=env, capture_output=True, text=True, check=True
    ).stdout
    match = harness.RESULT.search(output)
    if match is None:
        raise SystemExit(f"wrk printed no RESULT line:\n{output}")
    rps, p50, _p90, p99, errors, requests = match.groups()
    return harness.Load(float(rps), float(p50), float(p99), int(errors), int(requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--port", type=int, default=18700)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        with harness.canned_backend(work) as kind:
            backends = {"mock": harness.PLAIN, "mock-stream": harness.STREAM}
            options = NexusOptions(port=args.port, log_level="warning")
            with harness.nexus_serving(work, {"mock": harness.PLAIN}, options) as (base, pid):
                run(base, pid, kind, args, stream=False)
            with harness.nexus_serving(work, {"mock": backends["mock-stream"]}, options) as (
                base,
                pid,
            ):
                run(base, pid, kind, args, stream=True)


def run(base: str, pid: int, kind: str, args: argparse.Namespace, *, stream: bool) -> None:
    mode = "streaming" if stream else "non-streaming"
    print(f"{mode}, c={args.connections}, canned backend: {kind}")
    print(f"  {'door':22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU s/1k':>9}")
    for _ in range(args.repeat):
        for path, script in SCRIPTS.items():
            before = harness.cpu_seconds(pid)
            result = load(base + path, script, args.connections, args.duration, stream)
            cpu = (harness.cpu_seconds(pid) - before) / max(result.requests, 1) * 1000
            if result.errors:
                raise SystemExit(f"{path}: {result.errors} errors")
            print(
                f"  {path:22} {result.rps:>8.0f} {result.p50:>8.3f} {result.p99:>8.3f} {cpu:>9.3f}"
            )


if __name__ == "__main__":
    main()
