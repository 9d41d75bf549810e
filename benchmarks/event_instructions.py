"""Instructions per relayed stream event, counted by callgrind: a figure that other load on the
machine does not move (CPU time per event does, by ±10 % from run to run here).

`nexus serve` runs under `valgrind --tool=callgrind`, counting only inside the event loop
(`--toggle-collect=uv_run`: start-up and imports are left out). The paced backend and the
stream generator of `streams.py` run natively, in processes of their own. Two runs: N streams
and 2N streams, each `--chunks` events `--gap-ms` apart (the same length of time, so the
loop's own timers and the health checks cost the same in both); what the second costs more,
divided by the events it relayed more, is the cost of one event (each stream's setup spread
over its events). Events come far enough apart that each arrives in a read of its own, as in
`streams.py`.

Run: uv run python benchmarks/event_instructions.py [--streams 10] [--chunks 300] [--gap-ms 50]
(about two minutes; needs valgrind: apt-get install valgrind)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import harness

HERE = Path(__file__).resolve().parent
STREAMS = HERE / "streams.py"
NEXUS_PORT = 18841
BACKEND_PORT = 18842


def wait_for_model(url: str, model: str, seconds: float) -> None:
    """Until ``url`` (/v1/models) lists ``model``: Nexus under valgrind starts slowly."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(url, timeout=2) as answer,
        ):
            if model in answer.read().decode():
                return
        time.sleep(1)
    raise SystemExit(f"{url} did not list {model} within {seconds:g} s")


def generate(port: int, count: int, timeout: float) -> int:
    """``count`` streams through ``port`` (streams.py's generator); the events relayed."""
    with tempfile.TemporaryDirectory(prefix="nexus-instr-gen-") as work:
        out = Path(work) / "out.json"
        start_at = time.monotonic() + 0.5
        command = [sys.executable, str(STREAMS), "generate", "--port", str(port)]
        command += ["--count", str(count), "--ramp", "0.5", "--start-at", repr(start_at)]
        command += ["--timeout", str(timeout), "--out", str(out)]
        subprocess.run(command, check=True)
        figures = json.loads(out.read_text())
    if figures["errors"]:
        raise SystemExit(f"streams failed: {figures['errors']}")
    return int(figures["events"])


def counted(streams: int, args: argparse.Namespace, work: Path) -> tuple[int, int]:
    """One run: (instructions inside the event loop, events relayed, warm-up included)."""
    config = work / f"nexus-{streams}.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {NEXUS_PORT}\n[state]\nbackend = "memory"\n'
        f'[[backends]]\nname = "paced"\nurl = "http://127.0.0.1:{BACKEND_PORT}"\n'
    )
    out = work / f"callgrind-{streams}.out"
    command = [sys.executable, str(STREAMS), "backend", "--port", str(BACKEND_PORT)]
    command += ["--chunks", str(args.chunks), "--gap-ms", str(args.gap_ms)]
    backend = subprocess.Popen(command, stdout=subprocess.PIPE)
    nexus = None
    try:
        assert backend.stdout is not None
        if backend.stdout.readline().strip() != b"ready":
            raise SystemExit("the paced backend did not start")
        command = ["valgrind", "--tool=callgrind", "--collect-atstart=no"]
        command += ["--toggle-collect=uv_run", f"--callgrind-out-file={out}"]
        command += [sys.executable, harness.nexus_executable(), "serve"]
        command += ["--config", str(config), "--no-discovery"]
        env = {**os.environ, "NEXUS_DISCOVERY": "false"}
        nexus = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_model(f"http://127.0.0.1:{NEXUS_PORT}/v1/models", "mock", 180)
        timeout = args.chunks * args.gap_ms / 1000 * 10 + 60
        events = generate(NEXUS_PORT, 2, timeout)  # warm-up: first-use costs in both runs
        events += generate(NEXUS_PORT, streams, timeout)
    finally:
        if nexus is not None:
            harness.stop(nexus, 60)
        harness.stop(backend, 10)
    match = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no totals in {out}")
    return int(match.group(1)), events


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=10, help="N; the second run has 2N (10)")
    parser.add_argument("--chunks", type=int, default=300, help="events per stream (300)")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="between events (50)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="nexus-instr-") as name:
        work = Path(name)
        small, small_events = counted(args.streams, args, work)
        large, large_events = counted(2 * args.streams, args, work)
    extra = large_events - small_events
    print(f"{args.streams} streams: {small:,} instructions, {small_events:,} events")
    print(f"{2 * args.streams} streams: {large:,} instructions, {large_events:,} events")
    print(f"per relayed event: {(large - small) / max(extra, 1):,.0f} instructions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
