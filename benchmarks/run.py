"""Gateway overhead: the same canned backend called directly and through one Nexus process.

Starts its own canned OpenAI backend (nginx with `mock-nginx.conf` when installed, else the
built-in `canned_backend.py`), one `nexus serve` per mode, and a load generator (wrk with
`post.lua` when installed, else a built-in asyncio client). Prints one table — non-streaming
and streaming at 1, 32 and 256 connections: requests/s, p50, p99, added p50, Nexus's CPU seconds
per 1,000 requests and its RSS — then the streaming checks (time to first byte; events relayed
one by one) and the targets. `--json` writes every figure for comparison between runs.

Run: uv run python benchmarks/run.py [--quick] [--duration 8] [--repeat 1] [--json out.json]
     [--with-litellm] [--workers N] [--metrics on|off] [--log-level warning|info] [--only c=32]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness
from harness import CHAT, Load, NexusOptions

LITELLM_PORT = 18003
LITELLM_KEY = "sk-bench"

#: (figure, comparison, limit) checked against this machine's targets.
TARGETS = (
    ("added p50, non-streaming c=1 (ms)", "<=", 0.3),
    ("req/s, non-streaming c=32", ">=", 4000.0),
    ("req/s, streaming c=32", ">=", 2000.0),
    ("added TTFB, streaming c=1 (ms)", "<=", 0.5),
    ("RSS idle (MB)", "<=", 80.0),
)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=harness.HERE, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit + ("-dirty" if dirty else ""),
    }


def median_load(runs: list[Load]) -> Load:
    """Each figure's median over repeated runs (requests and errors summed)."""
    return Load(
        rps=statistics.median(r.rps for r in runs),
        p50=statistics.median(r.p50 for r in runs),
        p99=statistics.median(r.p99 for r in runs),
        errors=sum(r.errors for r in runs),
        requests=sum(r.requests for r in runs),
    )


@contextlib.contextmanager
def litellm_serving(work: Path) -> Iterator[int | None]:
    """LiteLLM's proxy on the kit's config, when installed; yields its pid or None."""
    executable = Path(sys.executable).with_name("litellm")
    found = str(executable) if executable.exists() else shutil.which("litellm")
    if found is None:
        print("--with-litellm: litellm is not installed (pip install 'litellm[proxy]'); skipped")
        yield None
        return
    config = work / "litellm.yaml"
    kit = harness.HERE.parent.parent / "shared" / "bench" / "litellm.yaml"
    config.write_text(
        kit.read_text()
        if kit.exists()
        else "model_list:\n"
        "  - model_name: mock\n"
        "    litellm_params: {model: openai/mock, api_base: 'http://127.0.0.1:18001/v1', "
        "api_key: none}\n"
        "  - model_name: mock-stream\n"
        "    litellm_params: {model: openai/mock, api_base: 'http://127.0.0.1:18011/v1', "
        "api_key: none}\n"
        "litellm_settings: {telemetry: false, drop_params: true}\n"
    )
    process = subprocess.Popen(
        [found, "--config", str(config), "--port", str(LITELLM_PORT)],
        # The local price map: LiteLLM otherwise fetches it from GitHub at start-up.
        env={
            **os.environ,
            "LITELLM_MASTER_KEY": LITELLM_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        harness.wait_http(f"http://127.0.0.1:{LITELLM_PORT}/health/liveliness", timeout=120)
        yield process.pid
    finally:
        harness.stop(process)


def measure(
    load: Callable[..., Load],
    url: str,
    connections: int,
    stream: bool,
    args: argparse.Namespace,
    pid: int | None,
    model: str = "mock",
    key: str = "",
) -> dict[str, Any]:
    """One target at one concurrency: the median of ``--repeat`` runs, with CPU and memory."""
    cpu_before = harness.cpu_seconds(pid) if pid else 0.0
    runs = [
        load(url, connections, args.duration, stream, model=model, key=key)
        for _ in range(args.repeat)
    ]
    result = median_load(runs)
    row: dict[str, Any] = {
        "rps": result.rps,
        "p50_ms": result.p50,
        "p99_ms": result.p99,
        "errors": result.errors,
        "requests": result.requests,
    }
    if pid:
        cpu = harness.cpu_seconds(pid) - cpu_before
        rss, peak = harness.memory_mb(pid)
        row["cpu_s_per_1k"] = cpu / max(result.requests, 1) * 1000
        row["rss_mb"] = rss
        row["peak_rss_mb"] = peak
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every case; the report as a dict."""
    wrk_present = shutil.which("wrk") is not None
    use_wrk = args.load == "wrk" or (args.load == "auto" and wrk_present)
    if use_wrk and not wrk_present:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    load = harness.wrk if use_wrk else harness.client_load
    options = NexusOptions(
        port=args.port, log_level=args.log_level, metrics=args.metrics == "on", workers=None
    )
    if args.workers is not None:
        if "--workers" not in harness.serve_flags():
            print("nexus serve has no --workers flag: running one process")
        else:
            options.workers = args.workers
    report: dict[str, Any] = {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "repeat": args.repeat,
            "concurrency": args.concurrency,
            "load_generator": "wrk -t1" if use_wrk else "built-in asyncio client",
            "metrics": args.metrics,
            "log_level": args.log_level,
            "workers": options.workers or 1,
        },
        "rows": [],
    }
    work = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    try:
        with harness.canned_backend(work, args.backend) as backend_kind:
            report["settings"]["backend"] = backend_kind
            for mode, stream, backend in (
                ("non-streaming", False, harness.PLAIN),
                ("streaming", True, harness.STREAM),
            ):
                cases = [c for c in args.concurrency if args.only in f"{mode} c={c}"]
                if not cases and not (stream and args.only in "streaming ttfb"):
                    continue
                with harness.nexus_serving(work, {"canned": backend}, options) as (base, pid):
                    rss, _ = harness.memory_mb(pid)
                    report.setdefault("nexus_idle_rss_mb", rss)
                    # Warm up: connection pools, caches, the first garbage collections.
                    load(base + CHAT, 8, 1.0, stream)
                    for connections in cases:
                        direct = measure(load, backend + CHAT, connections, stream, args, None)
                        nexus = measure(load, base + CHAT, connections, stream, args, pid)
                        nexus["added_p50_ms"] = nexus["p50_ms"] - direct["p50_ms"]
                        for target, row in (("direct", direct), ("nexus", nexus)):
                            row.update(mode=mode, connections=connections, target=target)
                            report["rows"].append(row)
                        print_row(direct)
                        print_row(nexus)
                    if stream:
                        report["streaming"] = stream_checks(base, backend, args)
                if args.with_litellm:
                    with litellm_serving(work) as litellm_pid:
                        if litellm_pid is None:
                            continue
                        model = "mock-stream" if stream else "mock"
                        url = f"http://127.0.0.1:{LITELLM_PORT}{CHAT}"
                        for connections in cases:
                            row = measure(
                                load,
                                url,
                                connections,
                                stream,
                                args,
                                litellm_pid,
                                model=model,
                                key=LITELLM_KEY,
                            )
                            direct = next(
                                r
                                for r in report["rows"]
                                if r["mode"] == mode
                                and r["connections"] == connections
                                and r["target"] == "direct"
                            )
                            row["added_p50_ms"] = row["p50_ms"] - direct["p50_ms"]
                            row.update(mode=mode, connections=connections, target="litellm")
                            report["rows"].append(row)
                            print_row(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["targets"] = check_targets(report)
    return report


def stream_checks(base: str, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """TTFB direct vs Nexus, and whether events arrive one by one through Nexus."""
    count = 50 if args.quick else 300
    harness.time_streams(base + CHAT, 20)  # warm-up
    direct = harness.stream_summary(harness.time_streams(backend + CHAT, count))
    nexus = harness.stream_summary(harness.time_streams(base + CHAT, count))
    checks: dict[str, Any] = {
        "requests": count,
        "direct": direct,
        "nexus": nexus,
        "added_ttfb_ms": nexus["ttfb_ms"] - direct["ttfb_ms"],
    }
    # The canned backend sends all events at once; a paced one shows whether Nexus holds
    # events back to coalesce them.
    with harness.paced_backend(args.gap_ms) as paced:
        paced_options = NexusOptions(port=args.port + 1, log_level=args.log_level)
        work = Path(tempfile.mkdtemp(prefix="nexus-bench-paced-"))
        try:
            with harness.nexus_serving(work, {"paced": paced}, paced_options) as (paced_base, _):
                harness.time_streams(paced_base + CHAT, 5)  # warm-up
                paced_count = 20 if args.quick else 50
                paced_direct = harness.stream_summary(
                    harness.time_streams(paced + CHAT, paced_count)
                )
                paced_nexus = harness.stream_summary(
                    harness.time_streams(paced_base + CHAT, paced_count)
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    checks["paced"] = {
        "gap_ms": args.gap_ms,
        "requests": paced_count,
        "direct": paced_direct,
        "nexus": paced_nexus,
        # One by one: as many reads as events, as the backend sent them; a rare read holding
        # two events is the VM's scheduling (the client was late), not Nexus holding back.
        "one_by_one": paced_nexus["reads_per_stream"] >= paced_direct["reads_per_stream"]
        and paced_nexus["coalesced_read_share"] <= paced_direct["coalesced_read_share"] + 0.02,
    }
    return checks


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """This machine's targets, each with the measured figure and whether it is met."""

    def row(mode: str, connections: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in report["rows"]
                if r["mode"] == mode and r["connections"] == connections and r["target"] == "nexus"
            ),
            None,
        )

    plain1, plain32, stream32 = (
        row("non-streaming", 1),
        row("non-streaming", 32),
        row("streaming", 32),
    )
    streaming = report.get("streaming")
    values = (
        plain1["added_p50_ms"] if plain1 else None,
        plain32["rps"] if plain32 else None,
        stream32["rps"] if stream32 else None,
        streaming["added_ttfb_ms"] if streaming else None,
        report.get("nexus_idle_rss_mb"),
    )
    checked = []
    for (name, comparison, limit), value in zip(TARGETS, values, strict=True):
        met = None if value is None else (value <= limit if comparison == "<=" else value >= limit)
        checked.append(
            {"figure": name, "target": f"{comparison} {limit:g}", "value": value, "met": met}
        )
    return checked


HEADER = (
    f"{'mode':<14} {'c':>4} {'target':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'added p50':>9} {'CPU s/1k':>8} {'peak RSS':>8} {'RSS':>6} {'errors':>6}"
)


def format_row(row: dict[str, Any]) -> str:
    """One table line."""
    added = f"{row['added_p50_ms']:.3f}" if "added_p50_ms" in row else ""
    cpu = f"{row['cpu_s_per_1k']:.3f}" if "cpu_s_per_1k" in row else ""
    peak = f"{row['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in row else ""
    rss = f"{row['rss_mb']:.0f}" if "rss_mb" in row else ""
    return (
        f"{row['mode']:<14} {row['connections']:>4} {row['target']:<8} {row['rps']:>9,.0f} "
        f"{row['p50_ms']:>8.3f} {row['p99_ms']:>8.2f} {added:>9} {cpu:>8} {peak:>8} {rss:>6} "
        f"{row['errors']:>6}"
    )


_printed_header = False


def print_row(row: dict[str, Any]) -> None:
    """Print a row as soon as it is measured (the header before the first)."""
    global _printed_header
    if not _printed_header:
        print(HEADER, flush=True)
        _printed_header = True
    print(format_row(row), flush=True)


def print_report(report: dict[str, Any]) -> None:
    """The table, the streaming checks and the targets."""
    print()
    print(
        f"{report['timestamp']}  {report['machine']['nproc']} CPUs  "
        f"Python {report['machine']['python']}  commit {report['machine']['git_commit']}  "
        f"backend {report['settings']['backend']}  load {report['settings']['load_generator']}  "
        f"{report['settings']['duration_s']:g} s x {report['settings']['repeat']}"
    )
    print(HEADER)
    for row in report["rows"]:
        print(format_row(row))
    streaming = report.get("streaming")
    if streaming:
        direct, nexus = streaming["direct"], streaming["nexus"]
        print(
            f"\nstreaming c=1, {streaming['requests']} requests on one connection: TTFB direct "
            f"{direct['ttfb_ms']:.3f} ms, Nexus {nexus['ttfb_ms']:.3f} ms, added "
            f"{streaming['added_ttfb_ms']:.3f} ms; reads per stream of "
            f"{direct['events_per_stream']:g} events: direct {direct['reads_per_stream']:g}, "
            f"Nexus {nexus['reads_per_stream']:g}"
        )
        paced = streaming["paced"]
        print(
            f"paced backend ({paced['gap_ms']:g} ms between events, {paced['requests']} "
            f"requests): reads per stream direct {paced['direct']['reads_per_stream']:g}, Nexus "
            f"{paced['nexus']['reads_per_stream']:g}; reads holding more than one event direct "
            f"{paced['direct']['coalesced_read_share']:.1%}, Nexus "
            f"{paced['nexus']['coalesced_read_share']:.1%}; median gap direct "
            f"{paced['direct']['median_gap_ms']:.2f} ms, Nexus "
            f"{paced['nexus']['median_gap_ms']:.2f} ms -> "
            f"{'one by one' if paced['one_by_one'] else 'COALESCED'}"
        )
    if "nexus_idle_rss_mb" in report:
        print(f"Nexus RSS idle (after start, before load): {report['nexus_idle_rss_mb']:.1f} MB")
    print("\ntargets:")
    for target in report["targets"]:
        value = target["value"]
        shown = "not measured" if value is None else f"{value:,.3f}"
        verdict = {True: "met", False: "NOT MET", None: ""}[target["met"]]
        print(f"  {target['figure']:<38} {target['target']:>9}  {shown:>12}  {verdict}")


def parser() -> argparse.ArgumentParser:
    """The command line (shared with overhead.py)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 s per case, fewer samples")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run (8)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; medians reported")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--with-litellm", action="store_true", help="add LiteLLM's proxy")
    parser.add_argument("--workers", type=int, default=None, help="passed to nexus serve")
    parser.add_argument("--port", type=int, default=8000, help="Nexus's port (and port+1)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[1, 32, 256],
        help="comma-separated connection counts (1,32,256)",
    )
    parser.add_argument(
        "--metrics",
        choices=("on", "off"),
        default="on",
        help="telemetry.metrics: count requests for /metrics, /v1/stats, /v1/history",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        help="logging.level of Nexus: 'info' (the default, as `nexus serve`'s) writes one line "
        "per request (to /dev/null); 'warning' leaves it out",
    )
    parser.add_argument(
        "--only", default="", help="run only cases whose label contains this ('c=32')"
    )
    parser.add_argument("--backend", choices=("auto", "nginx", "builtin"), default="auto")
    parser.add_argument("--load", choices=("auto", "wrk", "builtin"), default="auto")
    parser.add_argument(
        "--gap-ms", type=float, default=2.0, help="paced stream's spacing between events"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 8.0
    started = time.monotonic()
    report = run(args)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
