"""The benchmark scripts still run (they are not part of the test run, so nothing else notices).

Each micro-benchmark runs once with timing off (``--benchmark-disable``), ``run.py`` and
``soak.py`` parse their options, ``cache_affinity.py`` runs its workload on fakes, and
``streams.py`` runs 50 streams (its paced backend, generator processes and a real
``nexus serve``, one process or two workers, and Debian's nginx as the control path); the
figures themselves are for ``docs/performance.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nexus_core.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_the_micro_benchmarks_run() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "benchmarks" / "test_micro.py"),
            "--benchmark-disable",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout


def test_the_benchmark_commands_parse_their_options() -> None:
    for script in ("run.py", "soak.py"):
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "--json" in result.stdout


def test_the_request_path_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "request_path.py"), "20"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("whole ")
    assert ", stream " in result.stdout


def test_the_litestar_cost_benchmark_runs_in_process() -> None:
    """Its in-process parts (``ws``, ``answers``) run; ``door`` and ``routes`` need wrk."""
    script = str(ROOT / "benchmarks" / "litestar_cost.py")
    result = subprocess.run(
        [sys.executable, script, "ws", "answers", "--repeat", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT / "benchmarks",
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("connections/s", "per broadcast to 100 pages", "msgspec Struct", "pydantic model"):
        assert row in result.stdout


def test_the_cache_affinity_benchmark_runs_on_fakes() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "cache_affinity.py"),
            "--fake",
            "--turns",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    figures = {row[0].strip(): [cell.strip() for cell in row[1:]] for row in rows[1:]}
    assert list(figures) == ["round_robin", "least_loaded", "cache_affinity"]
    # Each conversation's second turn found its first in the fake's prompt cache.
    assert figures["cache_affinity"][2] != "0 %"
    assert "cache_affinity median / least_loaded median" in result.stdout
    assert "cache_affinity request counts" in result.stdout


def _streams(tmp_path: Path, *options: str) -> tuple[str, list[dict[str, Any]]]:
    """streams.py on 50 streams of 5 chunks with ``options``, on free ports (tests run in
    parallel): its output and its JSON rows."""
    out = tmp_path / "streams.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "streams.py"),
            "--streams",
            "50",
            "--chunks",
            "5",
            "--ramp",
            "0.5",
            "--port",
            str(free_port()),
            "--backend-port",
            str(free_port()),
            "--nginx-port",
            str(free_port()),
            "--json",
            str(out),
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows: list[dict[str, Any]] = json.loads(out.read_text())["rows"]
    return result.stdout, rows


def test_the_streams_benchmark_runs_a_few_streams(tmp_path: Path) -> None:
    """50 paced streams of 5 chunks, directly and through a real `nexus serve`."""
    output, _ = _streams(tmp_path, "--generators", "2")
    rows = {line.split()[0]: line.split() for line in output.splitlines() if line.strip()}
    # path, streams, completed: every stream completed on both paths, with no error.
    assert rows["direct"][1:3] == ["50", "50"], output
    through = next(line for line in output.splitlines() if "through Nexus" in line)
    assert through.split()[2:4] == ["50", "50"], output
    assert through.endswith("errors 0"), output
    assert "added" in rows


def test_the_streams_benchmark_measures_every_nexus_worker(tmp_path: Path) -> None:
    """`--workers 2`: `nexus serve --workers 2`, both workers measured, their peaks summed."""
    output, rows = _streams(tmp_path, "--only", "nexus", "--workers", "2")
    assert "each of the 2 Nexus workers about 306" in output, output
    line = next(line for line in output.splitlines() if "Nexus \N{MULTIPLICATION SIGN}2" in line)
    assert line.split()[2:4] == ["50", "50"], output
    assert "largest worker" in line, output
    assert line.endswith("errors 0"), output
    (row,) = rows
    assert (row["path"], row["workers"], row["proxy_processes"]) == ("nexus", 2, 2)
    assert row["completed"] == 50
    assert row["errors"] == 0
    # Two live Python processes: each has a peak, and the sum is more than the larger one.
    assert 0 < row["proxy_peak_rss_max_mb"] < row["proxy_peak_rss_mb"]


def test_the_streams_benchmark_runs_the_nginx_control_path(tmp_path: Path) -> None:
    """`--only direct,nginx`: the same streams through nginx's one worker, measured as Nexus is."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        message = "nginx is not installed (Debian: .ci/run installs nginx-light)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    output, rows = _streams(tmp_path, "--only", "direct,nginx")
    through = next(line for line in output.splitlines() if "through nginx" in line)
    assert through.split()[2:4] == ["50", "50"], output
    assert through.endswith("errors 0"), output
    assert "(through nginx minus direct, ms)" in output, output
    assert [row["path"] for row in rows] == ["direct", "nginx", "added-nginx"]
    nginx = rows[1]
    assert nginx["proxy_processes"] == 1
    assert nginx["completed"] == 50
    assert nginx["proxy_peak_rss_mb"] == nginx["proxy_peak_rss_max_mb"] > 0
