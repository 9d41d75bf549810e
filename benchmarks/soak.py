"""Soak: a bounded run of mixed streaming and non-streaming requests, sampling Nexus's memory.

One `nexus serve` in front of the canned backend (model `mock` answers JSON, `mock-stream`
answers an SSE stream of 11 events); in each slice two load generators run side by side, one
non-streaming and one streaming. After every slice it samples Nexus's resident memory, and at the
end prints the samples and whether the last half grew: a plateau is what is expected.

Run: uv run python benchmarks/soak.py [--requests 200000] [--quick] [--json soak.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from harness import CHAT, NexusOptions
from run import machine

#: The most the last half may grow, per 100,000 requests, to count as a plateau (MB).
PLATEAU_MB_PER_100K = 1.0


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points."""
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200_000, help="total requests (200,000)")
    parser.add_argument("--quick", action="store_true", help="20,000 requests")
    parser.add_argument("--slice", type=float, default=3.0, help="seconds per load slice")
    parser.add_argument("--connections", type=int, default=16, help="per generator (16)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--backend", choices=("auto", "nginx", "builtin"), default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    total = 20_000 if args.quick else args.requests
    load = harness.wrk if shutil.which("wrk") else harness.client_load
    work = Path(tempfile.mkdtemp(prefix="nexus-soak-"))
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    try:
        with (
            harness.canned_backend(work, args.backend) as backend_kind,
            harness.nexus_serving(
                work,
                {"canned": harness.PLAIN, "canned-stream": harness.MIXED_STREAM},
                NexusOptions(port=args.port, log_level=args.log_level),
            ) as (base, pid),
            concurrent.futures.ThreadPoolExecutor(2) as pool,
        ):
            idle, _ = harness.memory_mb(pid)
            print(f"backend {backend_kind}; Nexus RSS idle {idle:.1f} MB; {total:,} requests")
            print(f"{'requests':>9} {'plain':>7} {'stream':>7} {'RSS MB':>7} {'peak MB':>7}")
            done = errors = 0
            while done < total:
                plain = pool.submit(
                    load, base + CHAT, args.connections, args.slice, False, model="mock"
                )
                stream = pool.submit(
                    load, base + CHAT, args.connections, args.slice, True, model="mock-stream"
                )
                results = plain.result(), stream.result()
                done += sum(r.requests for r in results)
                errors += sum(r.errors for r in results)
                rss, peak = harness.memory_mb(pid)
                samples.append({"requests": done, "rss_mb": rss, "peak_rss_mb": peak})
                print(
                    f"{done:>9,} {results[0].rps:>7,.0f} {results[1].rps:>7,.0f} "
                    f"{rss:>7.1f} {peak:>7.1f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    last_half = samples[len(samples) // 2 :]
    rss_last = [s["rss_mb"] for s in last_half]
    growth = rss_last[-1] - rss_last[0]
    per_100k = slope([(s["requests"], s["rss_mb"]) for s in last_half]) * 100_000
    plateau = per_100k <= PLATEAU_MB_PER_100K
    report: dict[str, Any] = {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "requests": done,
        "errors": errors,
        "elapsed_s": round(time.monotonic() - started, 1),
        "idle_rss_mb": idle,
        "final_rss_mb": samples[-1]["rss_mb"],
        "peak_rss_mb": samples[-1]["peak_rss_mb"],
        "last_half": {
            "min_rss_mb": min(rss_last),
            "max_rss_mb": max(rss_last),
            "growth_mb": growth,
            "slope_mb_per_100k_requests": per_100k,
            "plateau": plateau,
        },
        "samples": samples,
    }
    print(
        f"\n{done:,} requests ({errors} errors) in {report['elapsed_s']:g} s. RSS idle "
        f"{idle:.1f} MB, final {samples[-1]['rss_mb']:.1f} MB, peak "
        f"{samples[-1]['peak_rss_mb']:.1f} MB. Last half: {min(rss_last):.1f}-"
        f"{max(rss_last):.1f} MB, first to last {growth:+.1f} MB, slope {per_100k:+.2f} MB "
        f"per 100k requests -> {'plateau' if plateau else 'GROWING'}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if plateau else 1


if __name__ == "__main__":
    raise SystemExit(main())
