"""Gateway overhead: the same canned backend called directly and through Nexus.

Needs Debian's nginx-light and wrk (`apt-get install -y nginx-light wrk`). Starts the canned
OpenAI backend (nginx, ports 18001 plain / 18011 streaming), one `nexus serve` process pointing at
it, and runs wrk against both. Prints requests/s and p50/p99 for each, and Nexus's added latency.

Run: uv run python benchmarks/overhead.py [--duration 8] [--port 8000] [--metrics on|off]
     [--log-level info|warning]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT = re.compile(r"RESULT rps=(\S+) p50_ms=(\S+) p90_ms=(\S+) p99_ms=(\S+) errors=(\d+)")


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:g} s")


def wrk(url: str, connections: int, duration: float, stream: bool) -> dict[str, float]:
    env = {**os.environ, "MODEL": "mock", "STREAM": "true" if stream else "false"}
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "-s",
        str(HERE / "post.lua"),
        url,
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    match = RESULT.search(output)
    if match is None:
        raise SystemExit(f"wrk printed no RESULT line:\n{output}")
    rps, p50, _p90, p99, errors = match.groups()
    return {"rps": float(rps), "p50": float(p50), "p99": float(p99), "errors": float(errors)}


@contextlib.contextmanager
def nexus_serving(
    work: Path, backend: str, port: int, *, metrics: bool = True, log_level: str = "warning"
) -> Iterator[str]:
    """One `nexus serve` process in front of ``backend``; yields its chat completions URL."""
    config = work / "nexus.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
[logging]
level = "{log_level}"
[telemetry]
metrics = {"true" if metrics else "false"}
[[backends]]
name = "canned"
url = "{backend}"
"""
    )
    nexus = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nexus_server.cli",
            "serve",
            "--config",
            str(config),
            "--no-discovery",
        ],
        env={**os.environ, "NEXUS_DISCOVERY": "false"},
        stderr=subprocess.DEVNULL if log_level == "info" else None,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health/ready")
        yield base + "/v1/chat/completions"
    finally:
        nexus.send_signal(signal.SIGTERM)
        try:
            nexus.wait(timeout=30)
        except subprocess.TimeoutExpired:
            nexus.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--metrics",
        choices=("on", "off"),
        default="on",
        help="telemetry.metrics: count requests for /metrics, /v1/stats, /v1/history (default on)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        help="logging.level of the nexus process; 'info' adds one log line per request "
        "(written to /dev/null). Default warning.",
    )
    parser.add_argument(
        "--only", default="", help="run only the cases whose label contains this ('c=32')"
    )
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y nginx-light wrk")

    work = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    nginx_conf = work / "mock-nginx.conf"
    nginx_conf.write_text((HERE / "mock-nginx.conf").read_text())
    nginx = subprocess.Popen(["nginx", "-c", str(nginx_conf)])
    try:
        wait_http("http://127.0.0.1:18001/v1/models")
        direct = "http://127.0.0.1:18001/v1/chat/completions"
        direct_stream = "http://127.0.0.1:18011/v1/chat/completions"
        rows = []
        for label, connections, stream in (
            ("plain c=1", 1, False),
            ("plain c=32", 32, False),
            ("stream c=1", 1, True),
            ("stream c=32", 32, True),
        ):
            if args.only not in label:
                continue
            backend = "http://127.0.0.1:18011" if stream else "http://127.0.0.1:18001"
            with nexus_serving(
                work,
                backend,
                args.port,
                metrics=args.metrics == "on",
                log_level=args.log_level,
            ) as through:
                n = wrk(through, connections, args.duration, stream)
            d = wrk(direct_stream if stream else direct, connections, args.duration, stream)
            rows.append((label, d, n))
        print(
            f"{'case':<12} {'direct rps':>11} {'nexus rps':>10} {'direct p50':>11} "
            f"{'nexus p50':>10} {'added p50':>10} {'nexus p99':>10} {'errors':>7}"
        )
        for label, d, n in rows:
            print(
                f"{label:<12} {d['rps']:>11.0f} {n['rps']:>10.0f} {d['p50']:>9.3f}ms "
                f"{n['p50']:>8.3f}ms {n['p50'] - d['p50']:>8.3f}ms {n['p99']:>8.3f}ms "
                f"{n['errors']:>7.0f}"
            )
        return 0
    finally:
        nginx.send_signal(signal.SIGTERM)
        nginx.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
